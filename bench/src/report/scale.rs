//! The summary's sections for measured scale: two nodes against one, the large room, the
//! soak; and where a ladder stopped (the server saturated, or time ran out first).

use std::fmt::Write as _;

use crate::fanout::{FanoutConfig, FanoutResult, FanoutStep};
use crate::soak::SoakResult;

/// Why `result`'s ladder ended: at the first of its last failed steps (the delay limit passed,
/// or less delivered than aimed for), or without saturating.
pub fn ladder_end(result: &FanoutResult, limit: f64) -> String {
    let last = result.steps.last();
    match last {
        Some(step) if !step.passed(limit) => {
            let first_failed = result
                .steps
                .iter()
                .rev()
                .take_while(|s| !s.passed(limit))
                .last()
                .unwrap_or(step);
            format!(
                "saturated at {} aimed: {} (load generator CPU {:.0} %)",
                first_failed.aimed_deliveries_per_sec,
                why_failed(first_failed, limit),
                first_failed.generator_cpu_percent
            )
        }
        Some(step) => format!(
            "did not saturate: the last step ({} aimed) still passed — raise the climb time",
            step.aimed_deliveries_per_sec
        ),
        None => "ran no step".into(),
    }
}

fn why_failed(step: &FanoutStep, limit: f64) -> String {
    let mut reasons = Vec::new();
    if step.p99_ms > limit {
        reasons.push(format!("p99 {:.1} ms", step.p99_ms));
    }
    if step.delivered_per_sec < 0.9 * step.aimed_deliveries_per_sec as f64 {
        reasons.push(format!("delivered {:.0}/s", step.delivered_per_sec));
    }
    if step.sockets_closed > 0 {
        reasons.push(format!("{} sockets closed", step.sockets_closed));
    }
    reasons.join(", ")
}

/// A table of each run's highest step within the limit, and where each ladder ended.
fn best_table(out: &mut String, config: &FanoutConfig, runs: &[FanoutResult]) {
    let _ = writeln!(
        out,
        "| server | nodes | delivered/s | p50 | p99 | p99.9 | server CPU per delivery | ladder |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for f in runs {
        let end = ladder_end(f, config.p99_limit_ms);
        match &f.best {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} µs | {end} |",
                    f.target,
                    f.nodes,
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
                    "| {} | {} | — (no step within the limit) | | | | | {end} |",
                    f.target, f.nodes
                );
            }
        }
    }
}

pub fn two_nodes_summary(out: &mut String, config: &FanoutConfig, runs: &[FanoutResult]) {
    let _ = writeln!(
        out,
        "### Two nodes: {} rooms of {}, members split over the nodes, through a Redis the bench started\n",
        config.rooms, config.room_size
    );
    best_table(out, config, runs);
    let best = |nodes| {
        runs.iter()
            .find(|f| f.nodes == nodes)
            .and_then(|f| f.best.as_ref())
            .map(|b| b.delivered_per_sec)
    };
    if let (Some(one), Some(two)) = (best(1), best(2)) {
        let _ = writeln!(
            out,
            "\nTwo nodes deliver {:.2} × one node's rate at p99 ≤ {} ms (in this run, each with a fresh Redis of its own; server CPU is the nodes' sum, Redis not included).",
            two / one.max(1.0),
            config.p99_limit_ms
        );
    }
    let _ = writeln!(out);
}

pub fn large_room_summary(out: &mut String, config: &FanoutConfig, runs: &[FanoutResult]) {
    let _ = writeln!(
        out,
        "### One large room: {} members on one node, one sender\n",
        config.room_size
    );
    let _ = writeln!(
        out,
        "| aimed/s | messages/s | delivered/s | p50 | p99 | p99.9 | server CPU | per delivery |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in runs {
        for s in &f.steps {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} % | {:.2} µs |",
                s.aimed_deliveries_per_sec,
                s.offered_messages_per_sec,
                s.delivered_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.server_cpu_percent,
                s.server_cpu_us_per_delivery
            );
        }
        match &f.best {
            Some(b) => {
                let _ = writeln!(out, "\nHighest step within p99 ≤ {} ms: **{:.0} deliveries/s** (p50 {:.2} ms, p99 {:.2} ms); the ladder {}.\n",
                    config.p99_limit_ms, b.delivered_per_sec, b.p50_ms, b.p99_ms, ladder_end(f, config.p99_limit_ms));
            }
            None => {
                let _ = writeln!(out, "\nNo step within p99 ≤ {} ms.\n", config.p99_limit_ms);
            }
        }
    }
}

pub fn soak_summary(out: &mut String, soak: &SoakResult) {
    let c = &soak.config;
    let d = &soak.delivery;
    let s = &soak.side;
    let _ = writeln!(
        out,
        "### Soak: {} nodes and Redis, {:.0} s, {} rooms of {} checking members\n",
        c.nodes, soak.elapsed_secs, c.rooms, c.members_per_room
    );
    let _ = writeln!(
        out,
        "Load: {} chat messages/s (a sender per node in every room), {} churn sessions/s, {} history joins/s, {} abusive clients/s; samples every {:.0} s, trends fitted after {:.0} s of warm-up.\n",
        c.messages_per_sec, c.churn_per_sec, c.history_per_sec, c.abuse_per_sec, c.sample_secs, c.warmup_secs
    );
    let _ = writeln!(out, "| sent | deliveries due | delivered | lost | repeated or reordered | loss notices | churn sessions (failed) | history joins (not whole) | abusive clients answered |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} of {} |\n",
        d.sent,
        d.expected,
        d.delivered,
        d.lost,
        d.repeated_or_reordered,
        d.loss_notices,
        s.churn_sessions,
        s.churn_failed,
        s.history_joins,
        s.history_broken,
        s.abuse_answered,
        s.abuse_sent
    );
    let _ = writeln!(
        out,
        "| series | mean | slope per hour | fitted growth over the window | limit | |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
    for t in &soak.trends {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:+.1} | {:+.1} | {:.0} | {} |",
            t.series,
            t.mean,
            t.slope_per_hour,
            t.growth,
            t.limit,
            if t.passed { "ok" } else { "**grows**" }
        );
    }
    let _ = writeln!(
        out,
        "\nThe limit on a series' fitted growth over the window is 5 % of its mean, at least 4 MiB of RSS, 16 descriptors or sessions, 2 threads, 1 MiB of Redis data. Palisade exposes no task count: open sessions (each a fixed set of tasks) and OS threads are sampled instead.\n"
    );
    let _ = writeln!(
        out,
        "Soak: **{}**{}.\n",
        if soak.passed { "passed" } else { "failed" },
        if soak.failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", soak.failures.join("; "))
        }
    );
}
