//! Results: one JSON file per run, a markdown summary, and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::api::{ApiConfig, ApiResult};
use crate::capacity::{CapacityConfig, CapacityResult};
use crate::churn::{ChurnConfig, ChurnResult};
use crate::fanout::{FanoutConfig, FanoutResult};
use crate::procfs::Machine;
use crate::rooms::{RoomsConfig, RoomsResult};

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
}

/// The targets of the benchmark issue, checked in the summary.
const RSS_PER_SOCKET_TARGET_KIB: f64 = 10.0;
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
            let _ = writeln!(
                out,
                "### Capacity: idle joined sockets, rooms of {}\n",
                self.capacity_config.as_ref().map_or(0, |c| c.room_size)
            );
            let _ = writeln!(out, "| server | sockets held | failed | server RSS | RSS per socket | kernel TCP per socket | idle CPU |");
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            for c in &self.capacity {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} MiB | {:.2} KiB | {:.2} KiB | {:.2} % |",
                    c.target,
                    c.sockets_held,
                    c.failed,
                    c.rss_kib as f64 / 1024.0,
                    c.rss_per_socket_kib,
                    c.kernel_tcp_per_socket_kib,
                    c.idle_cpu_percent
                );
            }
            if let (Some(p), Some(c)) = (
                self.find_capacity("palisade"),
                self.find_capacity("ceiling"),
            ) {
                let _ = writeln!(out, "\nPalisade RSS per socket: {:.2} KiB = {:.2} × the ceiling's. Target ≤ {RSS_PER_SOCKET_TARGET_KIB} KiB: **{}**.\n",
                    p.rss_per_socket_kib, p.rss_per_socket_kib / c.rss_per_socket_kib.max(0.001),
                    verdict(p.rss_per_socket_kib <= RSS_PER_SOCKET_TARGET_KIB));
            }
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
                let _ = writeln!(out, "\nHS256 sessions per second: {:.0}. Target ≥ {CHURN_TARGET_PER_SEC}: **{}**.\n",
                    hs.sessions_per_sec, verdict(hs.sessions_per_sec >= CHURN_TARGET_PER_SEC));
            }
        }
        out
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
            "| layout | sockets held | memberships | failed | RSS per user | kernel TCP per user |"
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
                "| {name} | {} | {} | {} | {:.2} KiB | {:.2} KiB |",
                r.sockets_held,
                r.memberships,
                r.failed,
                r.rss_per_user_kib,
                r.kernel_tcp_per_user_kib
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

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Server RSS against the number of sockets held, one line per server.
fn capacity_chart(path: &Path, runs: &[CapacityResult]) -> anyhow::Result<()> {
    let x_max = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.sockets))
        .max()
        .unwrap_or(1) as f64;
    let y_max = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.rss_kib))
        .max()
        .unwrap_or(1) as f64
        / 1024.0;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Server RSS against idle joined sockets", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("sockets")
        .y_desc("RSS (MiB)")
        .draw()?;
    for (run, color) in runs.iter().zip(COLORS) {
        let points: Vec<(f64, f64)> = run
            .points
            .iter()
            .map(|p| (p.sockets as f64, p.rss_kib as f64 / 1024.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(run.target)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// p50 and p99 delay against delivered messages per second (log scale), per server.
fn fanout_chart(path: &Path, room_size: usize, runs: &[&FanoutResult]) -> anyhow::Result<()> {
    let x_max = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.delivered_per_sec))
        .fold(10.0, f64::max);
    let x_min = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.delivered_per_sec))
        .fold(x_max, f64::min)
        .max(1.0);
    let y_max = runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.p99_ms))
        .fold(1.0, f64::max)
        .min(200.0);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("End-to-end delay against delivered rate, rooms of {room_size}"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0f64..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("delivered messages per second")
        .y_desc("delay (ms)")
        .draw()?;
    for (index, run) in runs.iter().enumerate() {
        for (quantile, pick, dashed) in [("p50", 0, false), ("p99", 1, true)] {
            let color = COLORS[index % COLORS.len()];
            let points: Vec<(f64, f64)> = run
                .steps
                .iter()
                .map(|s| {
                    (
                        s.delivered_per_sec.max(x_min * 0.8),
                        if pick == 0 { s.p50_ms } else { s.p99_ms }.min(y_max * 1.1),
                    )
                })
                .collect();
            let style = if dashed {
                color.mix(0.6).stroke_width(2)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(format!("{} {quantile}", run.target))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    // The limit the steps are judged by.
    chart
        .draw_series(LineSeries::new(
            vec![(x_min * 0.8, 50.0), (x_max * 1.25, 50.0)],
            BLACK.mix(0.4),
        ))?
        .label("p99 limit (50 ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
