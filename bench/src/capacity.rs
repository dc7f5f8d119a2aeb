//! Capacity: how many idle, joined sockets one server process holds, and what each costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::procfs;
use crate::progress::Progress;
use crate::target::Target;

#[derive(Clone, Debug, Serialize)]
pub struct CapacityConfig {
    pub sockets: usize,
    pub room_size: usize,
    /// Measurements on the way up.
    pub steps: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Time given to the server to settle before each measurement.
    pub settle_secs: f64,
    /// How long idle CPU is measured at the top.
    pub idle_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityPoint {
    pub sockets: usize,
    pub rss_kib: u64,
    pub kernel_tcp_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityResult {
    pub target: &'static str,
    pub baseline_rss_kib: u64,
    pub points: Vec<CapacityPoint>,
    pub sockets_held: usize,
    pub failed: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Server RSS growth per socket, from the baseline to the top.
    pub rss_per_socket_kib: f64,
    /// Kernel TCP memory growth per socket (both ends of each loopback connection).
    pub kernel_tcp_per_socket_kib: f64,
    /// Server CPU while every socket is idle, in percent of one core.
    pub idle_cpu_percent: f64,
}

pub async fn run(
    target: &Target,
    config: &CapacityConfig,
    progress: &Progress,
) -> anyhow::Result<CapacityResult> {
    let baseline = target.sample().unwrap_or_default();
    let kernel_baseline = procfs::tcp_socket_memory_kib();
    let held = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let dialer = Arc::clone(&target.dialer);
    let mut points = Vec::new();
    let mut tasks = Vec::with_capacity(config.sockets);
    let step = config.sockets.div_ceil(config.steps.max(1));
    let mut opened = 0;
    while opened < config.sockets {
        let upto = (opened + step).min(config.sockets);
        for index in opened..upto {
            let permit = Arc::clone(&permits).acquire_owned().await?;
            let token = target.signer.token(&format!("cap{index}"));
            let room = format!("cap{}", index / config.room_size);
            let (dialer, held, failed, stop) = (
                Arc::clone(&dialer),
                Arc::clone(&held),
                Arc::clone(&failed),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let joined = dialer.joined(&token, &room).await;
                drop(permit);
                let Ok(mut ws) = joined else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                held.fetch_add(1, Ordering::Relaxed);
                // Reading answers the server's pings; the socket otherwise stays idle.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        frame = ws.next() => if !matches!(frame, Some(Ok(_))) {
                            held.fetch_sub(1, Ordering::Relaxed);
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        },
                    }
                }
            }));
        }
        opened = upto;
        // Wait for this step's handshakes, then let the server settle.
        while held.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < opened {
            progress.set(format!(
                "capacity {}: {} of {} sockets joined",
                target.name,
                held.load(Ordering::Relaxed),
                config.sockets
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs_f64(config.settle_secs)).await;
        let sample = target.sample().unwrap_or_default();
        points.push(CapacityPoint {
            sockets: held.load(Ordering::Relaxed),
            rss_kib: sample.rss_kib,
            kernel_tcp_kib: procfs::tcp_socket_memory_kib().saturating_sub(kernel_baseline),
        });
    }
    progress.set(format!(
        "capacity {}: {} sockets idle, measuring CPU",
        target.name,
        held.load(Ordering::Relaxed)
    ));
    let cpu_before = target.cpu_secs();
    let idle_start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(config.idle_secs)).await;
    let idle_cpu = (target.cpu_secs() - cpu_before) / idle_start.elapsed().as_secs_f64();
    let after = target.sample().unwrap_or_default();
    let top = points.last().cloned().expect("at least one step");
    let sockets_held = held.load(Ordering::Relaxed);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    // Per socket held when the top was measured.
    let per_socket = |total: u64| total as f64 / top.sockets.max(1) as f64;
    Ok(CapacityResult {
        target: target.name,
        baseline_rss_kib: baseline.rss_kib,
        sockets_held,
        failed: failed.load(Ordering::Relaxed),
        rss_kib: after.rss_kib,
        hwm_kib: after.hwm_kib,
        rss_per_socket_kib: per_socket(top.rss_kib.saturating_sub(baseline.rss_kib)),
        kernel_tcp_per_socket_kib: per_socket(top.kernel_tcp_kib),
        idle_cpu_percent: idle_cpu * 100.0,
        points,
    })
}
