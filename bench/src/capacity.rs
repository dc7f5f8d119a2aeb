//! Capacity: how many idle, joined sockets one server process holds, and what each costs: RSS,
//! kernel memory, and idle CPU. Figures per socket exist only for a server that is still alive
//! and holds sockets: a dead server is reported dead, not as a zombie's zero memory.

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
    pub kernel: procfs::KernelSockets,
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
    /// The server process was still running at the end.
    pub alive: bool,
    /// Server RSS growth per socket, from the baseline to the top.
    pub rss_per_socket_kib: Option<f64>,
    /// Kernel memory per socket, from the baseline to the top, over every TCP socket opened
    /// (both ends of each loopback connection, so the load generator's are accounted for).
    pub kernel: procfs::KernelPerSocket,
    /// Server CPU while every socket is idle, in percent of one core.
    pub idle_cpu_percent: f64,
    /// The same, per socket: microseconds of CPU per socket per second.
    pub idle_cpu_us_per_socket_sec: Option<f64>,
}

impl CapacityResult {
    /// One line for the log.
    pub fn line(&self) -> String {
        let kib = |value: Option<f64>| value.map_or("—".into(), |v| format!("{v:.2} KiB"));
        if !self.alive {
            return format!(
                "{:>8}: DEAD (the server exited during the run)",
                self.target
            );
        }
        format!(
            "{:>8}: {} sockets, {} RSS, {} kernel buffers, {} kernel slab per socket, idle CPU {:.2} %",
            self.target,
            self.sockets_held,
            kib(self.rss_per_socket_kib),
            kib(self.kernel.buffers_kib),
            kib(self.kernel.slab_kib),
            self.idle_cpu_percent
        )
    }
}

pub async fn run(
    target: &Target,
    config: &CapacityConfig,
    progress: &Progress,
) -> anyhow::Result<CapacityResult> {
    let baseline = target.sample().unwrap_or_default();
    let kernel_baseline = procfs::KernelSockets::now().await;
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
            let user = format!("cap{index}");
            let token = target.signer.token(&user);
            let room = format!("cap{}", index / config.room_size);
            let (dialer, held, failed, stop) = (
                Arc::clone(&dialer),
                Arc::clone(&held),
                Arc::clone(&failed),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let joined = dialer.joined(&user, &token, &room).await;
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
            kernel: procfs::KernelSockets::now().await,
        });
        if !target.alive() {
            break;
        }
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
    let alive = target.alive();
    let top = points.last().cloned().expect("at least one step");
    let sockets_held = held.load(Ordering::Relaxed);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    // Per socket held when the top was measured; nothing to divide by when none was held or
    // the server is gone.
    let measured = alive && top.sockets > 0;
    let per_socket = |total: f64| measured.then(|| total / top.sockets as f64);
    Ok(CapacityResult {
        target: target.name,
        baseline_rss_kib: baseline.rss_kib,
        sockets_held,
        failed: failed.load(Ordering::Relaxed),
        rss_kib: after.rss_kib,
        hwm_kib: after.hwm_kib,
        alive,
        rss_per_socket_kib: per_socket(top.rss_kib as f64 - baseline.rss_kib as f64),
        kernel: if measured {
            top.kernel.per_socket_since(&kernel_baseline)
        } else {
            procfs::KernelPerSocket::default()
        },
        idle_cpu_percent: idle_cpu * 100.0,
        idle_cpu_us_per_socket_sec: per_socket(idle_cpu * 1e6),
        points,
    })
}
