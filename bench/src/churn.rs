//! Churn: sockets that connect, authenticate, join and close, in a loop, from many concurrent
//! clients: sessions per second, and the time from connect to the join acknowledgement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Protocol;
use crate::progress::Progress;
use crate::target::Target;

#[derive(Clone, Debug, Serialize)]
pub struct ChurnConfig {
    pub concurrency: usize,
    pub secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnResult {
    pub target: &'static str,
    pub algorithm: &'static str,
    pub sessions: u64,
    pub failed: u64,
    pub sessions_per_sec: f64,
    pub joined_p50_ms: f64,
    pub joined_p99_ms: f64,
    pub server_cpu_percent: f64,
}

pub async fn run(
    target: &Target,
    config: &ChurnConfig,
    progress: &Progress,
) -> anyhow::Result<ChurnResult> {
    let times = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let (sessions, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.secs);
    let cpu_before = target.cpu_secs();
    let mut loops = Vec::new();
    for worker in 0..config.concurrency {
        // One user per loop, its token signed once: the server verifies it every time.
        let user = format!("churn{worker}");
        let token = target.signer.token(&user);
        let room = format!("churn{}", worker % 64);
        let dialer = Arc::clone(&target.dialer);
        let (times, sessions, failed) = (
            Arc::clone(&times),
            Arc::clone(&sessions),
            Arc::clone(&failed),
        );
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let connecting = Instant::now();
                match dialer.joined(&user, &token, &room).await {
                    Ok(mut ws) => {
                        let micros = connecting.elapsed().as_micros() as u64;
                        let _ = times.lock().expect("never poisoned").record(micros.max(1));
                        sessions.fetch_add(1, Ordering::Relaxed);
                        // The client closes first, and waits for the server's close.
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while ws.next().await.is_some() {}
                        })
                        .await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    while Instant::now() < deadline {
        progress.set(format!(
            "churn {} {}: {} sessions",
            target.name,
            target.signer.algorithm(),
            sessions.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in loops {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = target.cpu_secs() - cpu_before;
    let times = times.lock().expect("never poisoned").clone();
    let count = sessions.load(Ordering::Relaxed);
    Ok(ChurnResult {
        target: target.name,
        // The bare server verifies nothing.
        algorithm: match target.dialer.protocol {
            Protocol::Bare => "none",
            Protocol::Palisade => target.signer.algorithm(),
        },
        sessions: count,
        failed: failed.load(Ordering::Relaxed),
        sessions_per_sec: count as f64 / elapsed,
        joined_p50_ms: times.value_at_quantile(0.5) as f64 / 1000.0,
        joined_p99_ms: times.value_at_quantile(0.99) as f64 / 1000.0,
        server_cpu_percent: cpu / elapsed * 100.0,
    })
}
