//! Soak: two Palisade nodes and a Redis the bench starts, under mixed load for a given time:
//! rooms whose members are split over the nodes and check every message by offset, senders on
//! both nodes, churn, history joins and abusive clients. Node RSS, descriptors, threads and
//! open sessions, and Redis memory, are sampled throughout. It passes when no sampled series
//! grows (a fitted line's growth over the window, after a warm-up, under a limit), nothing was
//! lost, repeated or reordered, and every process is still alive.

mod offsets;
mod traffic;
mod trend;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::nodes::Nodes;
use crate::procfs;
use crate::progress::Progress;
use crate::target::Launch;
use traffic::{Load, SideCounts, SideTotals};
pub use trend::{Sample, Trend};

#[derive(Clone, Debug, Serialize)]
pub struct SoakConfig {
    pub duration_secs: f64,
    pub nodes: usize,
    pub rooms: usize,
    /// Checking members per room, alternating over the nodes (plus one sender per node).
    pub members_per_room: usize,
    /// Chat messages per second, over all rooms.
    pub messages_per_sec: f64,
    pub churn_per_sec: f64,
    pub history_per_sec: f64,
    pub abuse_per_sec: f64,
    pub sample_secs: f64,
    /// Samples before this are left out of the trends (allocators and caches warming up).
    pub warmup_secs: f64,
}

impl SoakConfig {
    /// The soak for `duration_secs`: lighter in quick mode (debug builds in CI).
    pub fn new(duration_secs: f64, quick: bool) -> SoakConfig {
        SoakConfig {
            duration_secs,
            nodes: 2,
            rooms: if quick { 6 } else { 20 },
            members_per_room: if quick { 4 } else { 8 },
            messages_per_sec: if quick { 20.0 } else { 80.0 },
            churn_per_sec: if quick { 5.0 } else { 20.0 },
            history_per_sec: if quick { 1.0 } else { 2.0 },
            abuse_per_sec: if quick { 2.0 } else { 5.0 },
            sample_secs: (duration_secs / 120.0).clamp(1.0, 10.0),
            warmup_secs: duration_secs * 0.2,
        }
    }
}

/// What every checking member got, summed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Delivery {
    pub sent: u64,
    pub send_failed: u64,
    /// Deliveries due: each room's sent messages times its members.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Offsets received again, or after a higher one.
    pub repeated_or_reordered: u64,
    /// Offsets beyond anything sent.
    pub unexpected: u64,
    pub loss_notices: u64,
    pub members_closed: u64,
}

#[derive(Debug, Serialize)]
pub struct SoakResult {
    pub config: SoakConfig,
    pub elapsed_secs: f64,
    pub samples: Vec<Sample>,
    pub trends: Vec<Trend>,
    pub delivery: Delivery,
    pub side: SideTotals,
    pub alive: bool,
    pub failures: Vec<String>,
    pub passed: bool,
}

pub async fn run(
    binary: &std::path::Path,
    config: &SoakConfig,
    progress: &Progress,
) -> anyhow::Result<SoakResult> {
    let launch = Launch {
        name: "palisade, soak",
        room_extensions: true,
        metrics: true,
        ..Launch::default()
    };
    let nodes = Nodes::start(binary, config.nodes, &launch).await?;
    let load = Load {
        dialers: nodes.nodes.iter().map(|n| Arc::clone(&n.dialer)).collect(),
        signer: nodes.nodes[0].signer.clone(),
    };
    progress.set("soak: joining the rooms".into());
    let (members, senders) =
        traffic::join_rooms(&load, config.rooms, config.members_per_room).await?;
    let stop_members = CancellationToken::new();
    let stop_load = CancellationToken::new();
    let members: Vec<_> = members
        .into_iter()
        .map(|member| member.spawn(stop_members.clone()))
        .collect();
    let sent = Arc::new((0..config.rooms).map(|_| AtomicU64::new(0)).collect());
    let send_failed = Arc::new(AtomicU64::new(0));
    let side = Arc::new(SideCounts::default());
    let load_tasks = vec![
        traffic::spawn_chat(
            senders,
            config.messages_per_sec,
            Arc::clone(&sent),
            Arc::clone(&send_failed),
            stop_load.clone(),
        ),
        traffic::spawn_churn(
            load.clone(),
            config.rooms,
            config.churn_per_sec,
            Arc::clone(&side),
            stop_load.clone(),
        ),
        traffic::spawn_history(
            load.clone(),
            config.rooms,
            config.history_per_sec,
            Arc::clone(&side),
            stop_load.clone(),
        ),
        traffic::spawn_abuse(
            load,
            config.abuse_per_sec,
            Arc::clone(&side),
            stop_load.clone(),
        ),
    ];

    let started = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(config.sample_secs));
    while started.elapsed().as_secs_f64() < config.duration_secs {
        tick.tick().await;
        let sample = sample(&nodes, started.elapsed().as_secs_f64()).await;
        progress.set(format!(
            "soak: {:.0}/{:.0} s, RSS {} KiB, {} sessions, Redis {} KiB",
            sample.secs,
            config.duration_secs,
            sample
                .nodes
                .iter()
                .map(|n| n.rss_kib.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            sample.nodes.iter().map(|n| n.sessions_open).sum::<u64>(),
            sample.redis_used_kib
        ));
        let dead = sample.nodes.iter().any(|n| !n.alive);
        samples.push(sample);
        if dead {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Stop the load, let the last messages arrive, then stop the members and count.
    stop_load.cancel();
    for task in load_tasks {
        let _ = task.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_members.cancel();
    let mut delivery = Delivery {
        send_failed: send_failed.load(Ordering::Relaxed),
        ..Delivery::default()
    };
    for member in members {
        let report = member.await?;
        let room_sent = sent[report.room].load(Ordering::Relaxed);
        let check = &report.check;
        delivery.expected += room_sent;
        delivery.delivered += check.delivered;
        delivery.lost += check.lost(room_sent);
        delivery.unexpected += check.unexpected(room_sent);
        delivery.repeated_or_reordered += check.repeated;
        delivery.loss_notices += check.loss_notices;
        delivery.members_closed += u64::from(report.closed);
    }
    delivery.sent = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let alive = nodes.nodes.iter().all(|n| n.alive()) && procfs::alive(nodes.redis.pid());
    let trends = trend::trends(&samples, config.warmup_secs);
    let side = side.totals();
    let failures = failures(&delivery, &side, &trends, alive);
    Ok(SoakResult {
        config: config.clone(),
        elapsed_secs: elapsed,
        samples,
        trends,
        delivery,
        side,
        alive,
        passed: failures.is_empty(),
        failures,
    })
}

async fn sample(nodes: &Nodes, secs: f64) -> Sample {
    let mut sample = Sample {
        secs,
        redis_used_kib: nodes.redis.used_memory_kib().await.unwrap_or(0),
        redis_rss_kib: procfs::sample(nodes.redis.pid()).map_or(0, |s| s.rss_kib),
        ..Sample::default()
    };
    for node in &nodes.nodes {
        sample.nodes.push(trend::NodeSample::of(node).await);
    }
    sample
}

/// Why the soak failed, if it did.
fn failures(delivery: &Delivery, side: &SideTotals, trends: &[Trend], alive: bool) -> Vec<String> {
    let mut failures = Vec::new();
    if !alive {
        failures.push("a node or Redis died".to_owned());
    }
    if delivery.sent == 0 {
        failures.push("nothing was sent".to_owned());
    }
    for (what, count) in [
        ("lost", delivery.lost),
        ("repeated or reordered", delivery.repeated_or_reordered),
        ("numbered but never sent", delivery.unexpected),
        ("loss notices", delivery.loss_notices),
        (
            "checking members closed by the server",
            delivery.members_closed,
        ),
        ("sends failed", delivery.send_failed),
        ("history joins not whole", side.history_broken),
    ] {
        if count > 0 {
            failures.push(format!("{count} {what}"));
        }
    }
    if trends.is_empty() {
        failures.push("too few samples after the warm-up to fit a trend".to_owned());
    }
    for trend in trends.iter().filter(|t| !t.passed) {
        failures.push(format!(
            "{} grew {:.0} over the window (limit {:.0}; {:.0} per hour)",
            trend.series, trend.growth, trend.limit, trend.slope_per_hour
        ));
    }
    failures
}
