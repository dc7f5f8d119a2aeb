//! Results: one JSON file per run, a markdown summary, and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::api::{ApiConfig, ApiResult};
use crate::capacity::{CapacityConfig, CapacityResult};
use crate::churn::{ChurnConfig, ChurnResult};
use crate::fanout::{FanoutConfig, FanoutResult};
use crate::procfs::Machine;
use crate::rooms::{RoomsConfig, RoomsResult};
use crate::soak::SoakResult;
use charts::{capacity_chart, fanout_chart};

mod charts;
mod scale;

/// Everything one run measured, with what it ran on and how.
#[derive(Debug, Serialize)]
pub struct Run {
    pub started_utc: String,
    pub command: String,
    pub commit: String,
    pub machine: Machine,
    pub quick: bool,
    pub capacity_config: Option<CapacityConfig>,
    pub capacity: Vec<CapacityResult>,
    pub fanout_configs: Vec<FanoutConfig>,
    pub fanout: Vec<FanoutResult>,
    /// Fan-out with history off, then on.
    pub history_config: Option<FanoutConfig>,
    pub history: Vec<FanoutResult>,
    pub churn_config: Option<ChurnConfig>,
    pub churn: Vec<ChurnResult>,
    /// Publishes through the server API into one room.
    pub api_config: Option<ApiConfig>,
    pub api: Vec<ApiResult>,
    /// Users in many rooms: one v2 socket each, then one GarinChat socket per room.
    pub rooms_config: Option<RoomsConfig>,
    pub rooms: Vec<RoomsResult>,
    /// Fan-out over one node, then two, sharing rooms through a Redis the bench started.
    pub two_nodes_config: Option<FanoutConfig>,
    pub two_nodes: Vec<FanoutResult>,
    /// One large room on one node.
    pub large_room_config: Option<FanoutConfig>,
    pub large_room: Vec<FanoutResult>,
    pub soak: Option<SoakResult>,
    /// Scenarios that failed, and why.
    pub errors: Vec<String>,
}

/// The targets the issues set, checked in the summary (idle memory: the idle-socket issue).
const RSS_PER_SOCKET_TARGET_KIB: f64 = 3.5;
const FANOUT_RATIO_TARGET: f64 = 0.8;
const CHURN_TARGET_PER_SEC: f64 = 10_000.0;

impl Run {
    /// Writes `results.json`, `summary.md` and the charts into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("summary.md"), self.summary())?;
        if !self.capacity.is_empty() {
            capacity_chart(&dir.join("capacity.svg"), &self.capacity)?;
        }
        let mut sizes: Vec<usize> = self.fanout.iter().map(|f| f.room_size).collect();
        sizes.dedup();
        for size in sizes {
            let runs: Vec<&FanoutResult> =
                self.fanout.iter().filter(|f| f.room_size == size).collect();
            fanout_chart(&dir.join(format!("fanout-{size}.svg")), size, &runs)?;
        }
        if let Some(config) = &self.history_config {
            let runs: Vec<&FanoutResult> = self.history.iter().collect();
            fanout_chart(&dir.join("history.svg"), config.room_size, &runs)?;
        }
        if let Some(config) = &self.two_nodes_config {
            let runs: Vec<&FanoutResult> = self.two_nodes.iter().collect();
            fanout_chart(&dir.join("two-nodes.svg"), config.room_size, &runs)?;
        }
        if let Some(config) = &self.large_room_config {
            let runs: Vec<&FanoutResult> = self.large_room.iter().collect();
            fanout_chart(&dir.join("large-room.svg"), config.room_size, &runs)?;
        }
        if let Some(soak) = &self.soak {
            charts::soak_chart(&dir.join("soak.svg"), soak)?;
        }
        Ok(())
    }

    /// The markdown summary: figures, ratios to the ceiling, and the targets.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} at commit `{}`{}.",
            self.started_utc,
            self.commit,
            if self.quick {
                " (quick mode: a smoke test, not a measurement)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {} GiB, Linux {}, open-file limit {}); the load generator \
             and the servers share it.\n",
            self.machine.cpu,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.kernel,
            self.machine.nofile_limit
        );
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        if !self.capacity.is_empty() {
            self.capacity_summary(&mut out);
        }
        let mut sizes: Vec<usize> = self.fanout.iter().map(|f| f.room_size).collect();
        sizes.dedup();
        for size in sizes {
            let _ = writeln!(
                out,
                "### Fan-out: rooms of {size}, {}-byte messages, highest step with p99 ≤ 50 ms\n",
                self.fanout_configs.first().map_or(100, |c| c.body_bytes)
            );
            let _ = writeln!(
                out,
                "| server | rooms | delivered/s | p50 | p99 | p99.9 | server CPU per delivery |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            for f in self.fanout.iter().filter(|f| f.room_size == size) {
                match &f.best {
                    Some(b) => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} µs |",
                            f.target,
                            f.rooms,
                            b.delivered_per_sec,
                            b.p50_ms,
                            b.p99_ms,
                            b.p999_ms,
                            b.server_cpu_us_per_delivery
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | — (no step within the limit) | | | | |",
                            f.target, f.rooms
                        );
                    }
                }
            }
            let limit = self
                .fanout_configs
                .iter()
                .find(|c| c.room_size == size)
                .map_or(50.0, |c| c.p99_limit_ms);
            let _ = writeln!(out);
            for f in self.fanout.iter().filter(|f| f.room_size == size) {
                let _ = writeln!(
                    out,
                    "- {}: the ladder {}.",
                    f.target,
                    scale::ladder_end(f, limit)
                );
            }
            let best = |name| {
                self.fanout
                    .iter()
                    .find(|f| f.room_size == size && f.target == name)
                    .and_then(|f| f.best.as_ref())
                    .map(|b| b.delivered_per_sec)
            };
            if let (Some(p), Some(c)) = (best("palisade"), best("ceiling")) {
                let ratio = p / c.max(1.0);
                let _ = writeln!(out, "\nPalisade delivers {ratio:.2} × the ceiling's rate. Target ≥ {FANOUT_RATIO_TARGET}: **{}**.",
                    verdict(ratio >= FANOUT_RATIO_TARGET));
            }
            if let Some((median, steps)) = self.cpu_ratio(size) {
                let _ = writeln!(out, "At equal load (the {steps} steps both servers ran within 50 ms), Palisade's server CPU per delivery is {median:.2} × the ceiling's (median): a steadier comparison than the highest step, which on a machine shared with the load generator can swing by a step or two between runs.");
            }
            let _ = writeln!(out);
        }
        if let Some(config) = &self.history_config {
            self.history_summary(&mut out, config);
        }
        if let Some(config) = &self.api_config {
            self.api_summary(&mut out, config);
        }
        if let Some(config) = &self.rooms_config {
            self.rooms_summary(&mut out, config);
        }
        if !self.churn.is_empty() {
            let _ = writeln!(
                out,
                "### Churn: connect, auth, join, close, {} concurrent clients\n",
                self.churn_config.as_ref().map_or(0, |c| c.concurrency)
            );
            let _ = writeln!(
                out,
                "| server | token | sessions/s | connect→joined p50 | p99 | failed | server CPU |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
            for c in &self.churn {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} % |",
                    c.target,
                    c.algorithm,
                    c.sessions_per_sec,
                    c.joined_p50_ms,
                    c.joined_p99_ms,
                    c.failed,
                    c.server_cpu_percent
                );
            }
            if let Some(hs) = self
                .churn
                .iter()
                .find(|c| c.target == "palisade" && c.algorithm == "HS256")
            {
                let _ = writeln!(
                    out,
                    "\nHS256 sessions per second: {:.0}. Target ≥ {CHURN_TARGET_PER_SEC}: **{}**.",
                    hs.sessions_per_sec,
                    verdict(hs.sessions_per_sec >= CHURN_TARGET_PER_SEC)
                );
                if let Some(bare) = self.churn.iter().find(|c| c.target == "ceiling") {
                    let _ = writeln!(out, "Against the ceiling's bare connect-upgrade-close rate ({:.0}/s), Palisade's HS256 churn is {:.2} ×: what auth and join cost.",
                        bare.sessions_per_sec, hs.sessions_per_sec / bare.sessions_per_sec.max(1.0));
                }
            }
            let _ = writeln!(out);
        }
        if let Some(config) = &self.two_nodes_config {
            scale::two_nodes_summary(&mut out, config, &self.two_nodes);
        }
        if let Some(config) = &self.large_room_config {
            scale::large_room_summary(&mut out, config, &self.large_room);
        }
        if let Some(soak) = &self.soak {
            scale::soak_summary(&mut out, soak);
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "### Failed scenarios\n");
            for error in &self.errors {
                let _ = writeln!(out, "- {error}");
            }
        }
        out
    }

    /// Idle sockets: memory and CPU per socket, the kernel's beside the process's.
    fn capacity_summary(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Capacity: idle joined sockets, rooms of {}\n",
            self.capacity_config.as_ref().map_or(0, |c| c.room_size)
        );
        let _ = writeln!(out, "| server | sockets held | failed | server RSS | RSS per socket | kernel slab per socket | kernel buffers per socket | idle CPU | idle CPU per socket |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let kib = |value: Option<f64>| value.map_or("—".into(), |v| format!("{v:.2} KiB"));
        for c in &self.capacity {
            if !c.alive {
                let _ = writeln!(
                    out,
                    "| {} | **died during the run** ({} held before) | {} | | | | | | |",
                    c.target, c.sockets_held, c.failed
                );
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} MiB | {} | {} | {} | {:.2} % | {} |",
                c.target,
                c.sockets_held,
                c.failed,
                c.rss_kib as f64 / 1024.0,
                kib(c.rss_per_socket_kib),
                kib(c.kernel.slab_kib),
                match (c.kernel.buffers_kib, c.kernel.buffers_resolution_kib) {
                    (Some(b), Some(r)) => format!("{b:.2} KiB (± {r:.2})"),
                    _ => "—".into(),
                },
                c.idle_cpu_percent,
                c.idle_cpu_us_per_socket_sec
                    .map_or("—".into(), |us| format!("{us:.3} µs/s"))
            );
        }
        let _ = writeln!(out, "\nKernel figures are the growth of machine-wide counters over every TCP socket opened (both ends of each loopback connection: the load generator's are counted and divided out alike): unreclaimable slab (`SUnreclaim`, the socket structures) and queued buffers (`/proc/net/sockstat` `mem`, zero for an idle socket whose queues are empty; charged in per-CPU batches of 1 MiB, hence the ±). Other work on the machine moves both.");
        let rss = |name| self.find_capacity(name).and_then(|c| c.rss_per_socket_kib);
        if let (Some(p), Some(c)) = (rss("palisade"), rss("ceiling")) {
            let _ = writeln!(out, "\nPalisade RSS per socket: {p:.2} KiB = {:.2} × the ceiling's. Target ≤ {RSS_PER_SOCKET_TARGET_KIB} KiB: **{}**.\n",
                p / c.max(0.001),
                verdict(p <= RSS_PER_SOCKET_TARGET_KIB));
        } else {
            let _ = writeln!(out);
        }
    }

    /// Users in many rooms: memory per user with one v2 socket against one socket per room.
    fn rooms_summary(&self, out: &mut String, config: &RoomsConfig) {
        let _ = writeln!(
            out,
            "### Many rooms per user: {} users in {} rooms each (rooms of {}), idle\n",
            config.users, config.rooms_per_user, config.room_size
        );
        let _ = writeln!(
            out,
            "| layout | sockets held | memberships | failed | RSS per user | kernel per user |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for r in &self.rooms {
            let name = if r.layout == "v2" {
                "one `palisade.v2` socket per user"
            } else {
                "one GarinChat socket per room"
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {:.2} KiB | {} |",
                r.sockets_held,
                r.memberships,
                r.failed,
                r.rss_per_user_kib,
                r.kernel_per_user_kib
                    .map_or("—".into(), |k| format!("{k:.2} KiB"))
            );
        }
        let find = |layout: &str| self.rooms.iter().find(|r| r.layout == layout);
        if let (Some(v2), Some(v1)) = (find("v2"), find("v1")) {
            let _ = writeln!(
                out,
                "\nOne socket in {} rooms costs the server {:.2} × the memory of {} sockets in one room each ({:.2} against {:.2} KiB per user).\n",
                config.rooms_per_user,
                v2.rss_per_user_kib / v1.rss_per_user_kib.max(0.001),
                config.rooms_per_user,
                v2.rss_per_user_kib,
                v1.rss_per_user_kib
            );
        }
    }

    /// The server API: every step, and the highest within the limit.
    fn api_summary(&self, out: &mut String, config: &ApiConfig) {
        let _ = writeln!(
            out,
            "### Server API: publishes into a room of {}, {}-byte bodies, p99 from the API call to delivery\n",
            config.room_size, config.body_bytes
        );
        let _ = writeln!(
            out,
            "| server | aimed/s | published/s | delivered/s | p50 | p99 | failed | server CPU |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for result in &self.api {
            for s in &result.steps {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} % |",
                    result.target,
                    s.aimed_publishes_per_sec,
                    s.published_per_sec,
                    s.delivered_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.failed,
                    s.server_cpu_percent
                );
            }
            match &result.best {
                Some(best) => {
                    let _ = writeln!(out, "\nHighest step within p99 ≤ {} ms: **{:.0} publishes/s** ({:.0} deliveries/s), p99 {:.2} ms from the API call to delivery.\n",
                        config.p99_limit_ms, best.published_per_sec, best.delivered_per_sec, best.p99_ms);
                }
                None => {
                    let _ = writeln!(out, "\nNo step within p99 ≤ {} ms.\n", config.p99_limit_ms);
                }
            }
        }
    }

    /// History off against on: the highest step of each, and CPU per delivery at equal load.
    fn history_summary(&self, out: &mut String, config: &FanoutConfig) {
        let _ = writeln!(
            out,
            "### History: fan-out in rooms of {}, history off versus on
",
            config.room_size
        );
        let _ = writeln!(
            out,
            "| server | delivered/s | p50 | p99 | p99.9 | server CPU per delivery |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for f in &self.history {
            match &f.best {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} µs |",
                        f.target,
                        b.delivered_per_sec,
                        b.p50_ms,
                        b.p99_ms,
                        b.p999_ms,
                        b.server_cpu_us_per_delivery
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | — (no step within the limit) | | | | |",
                        f.target
                    );
                }
            }
        }
        if let [off, on] = &self.history[..] {
            if let (Some(off_best), Some(on_best)) = (&off.best, &on.best) {
                let _ = writeln!(
                    out,
                    "
With history on, the highest step is {:.2} × history off's.",
                    on_best.delivered_per_sec / off_best.delivered_per_sec.max(1.0)
                );
            }
            if let Some((median, steps)) = cpu_ratio(on, off, config.p99_limit_ms) {
                let _ = writeln!(out, "At equal load (the {steps} steps both ran within {} ms), server CPU per delivery with history on is {median:.2} × off's (median).", config.p99_limit_ms);
            }
        }
        let _ = writeln!(out);
    }

    /// The median, over steps aimed at the same rate and within the limit for both servers, of
    /// Palisade's CPU per delivery over the ceiling's; and how many steps that was.
    fn cpu_ratio(&self, room_size: usize) -> Option<(f64, usize)> {
        let run = |name| {
            self.fanout
                .iter()
                .find(|f| f.room_size == room_size && f.target == name)
        };
        let (palisade, ceiling) = (run("palisade")?, run("ceiling")?);
        let limit = self
            .fanout_configs
            .iter()
            .find(|c| c.room_size == room_size)?
            .p99_limit_ms;
        cpu_ratio(palisade, ceiling, limit)
    }

    fn find_capacity(&self, name: &str) -> Option<&CapacityResult> {
        self.capacity.iter().find(|c| c.target == name)
    }
}

/// The median, over steps aimed at the same rate and within `limit` for both runs, of `run`'s
/// CPU per delivery over `base`'s; and how many steps that was.
fn cpu_ratio(run: &FanoutResult, base: &FanoutResult, limit: f64) -> Option<(f64, usize)> {
    let mut ratios: Vec<f64> = run
        .steps
        .iter()
        .filter_map(|r| {
            let b = base
                .steps
                .iter()
                .find(|b| b.aimed_deliveries_per_sec == r.aimed_deliveries_per_sec)?;
            // Steps that passed (as the climb judges them) and whose CPU was measured.
            let within = |s: &crate::fanout::FanoutStep| {
                s.passed(limit) && s.server_cpu_us_per_delivery > 0.0
            };
            (within(r) && within(b))
                .then(|| r.server_cpu_us_per_delivery / b.server_cpu_us_per_delivery)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    Some((ratios[ratios.len() / 2], ratios.len()))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}
