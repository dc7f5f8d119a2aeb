//! The server API: publishes through `POST /api/v1/rooms/{room}/messages` into one room of N
//! members, stamped with the time of the API call, offered at stepped rates over a pool of
//! keep-alive HTTP connections. Measured: publishes answered per second, deliveries per second,
//! and the delay from the API call to each member's receipt (p50, p99). The climb stops after
//! two steps in a row over the delay limit or short of what was offered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::unix_nanos;
use crate::fanout::{new_histogram, Reader};
use crate::progress::Progress;
use crate::target::Target;

#[derive(Clone, Debug, Serialize)]
pub struct ApiConfig {
    pub room_size: usize,
    /// API publishes per second to aim for, step by step.
    pub publish_steps: Vec<u64>,
    /// HTTP requests in flight at most.
    pub connections: usize,
    pub warmup_secs: f64,
    pub window_secs: f64,
    pub body_bytes: usize,
    pub p99_limit_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiStep {
    pub aimed_publishes_per_sec: u64,
    /// Publishes answered 202 per second.
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    /// From the API call to a member's receipt.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests answered otherwise, or not answered.
    pub failed: u64,
    pub server_cpu_percent: f64,
}

impl ApiStep {
    pub fn passed(&self, p99_limit_ms: f64) -> bool {
        self.p99_ms <= p99_limit_ms
            && self.published_per_sec >= 0.9 * self.aimed_publishes_per_sec as f64
            && self.failed == 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiResult {
    pub target: &'static str,
    pub room_size: usize,
    pub steps: Vec<ApiStep>,
    pub best: Option<ApiStep>,
}

pub async fn run(
    target: &Target,
    config: &ApiConfig,
    progress: &Progress,
) -> anyhow::Result<ApiResult> {
    let (base, key) = target
        .api
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the API scenario needs a gateway started with its API"))?;
    let delays = Arc::new(Mutex::new(new_histogram()));
    let delivered = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let room = format!("api{}", config.room_size);
    let mut tasks = Vec::new();
    for index in 0..config.room_size {
        progress.set(format!("api: joining {index}"));
        let user = format!("api{index}");
        let token = target.signer.token(&user);
        let ws = target.dialer.joined(&user, &token, &room).await?;
        let (sink, stream) = ws.split();
        let reader = Reader {
            delays: Arc::clone(&delays),
            delivered: Arc::clone(&delivered),
            closed: Arc::clone(&closed),
        };
        let stopped = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _sink = sink; // kept open: dropping it would close the socket
            reader.read(stream, stopped).await;
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (rate_tx, rate_rx) = watch::channel(0.0f64);
    let url = format!("{base}/rooms/{room}/messages");
    tasks.push(tokio::spawn(publish(
        Publisher {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(config.connections)
                .build()?,
            url,
            key,
            in_flight: Arc::new(Semaphore::new(config.connections)),
            body_bytes: config.body_bytes,
            published: Arc::clone(&published),
            failed: Arc::clone(&failed),
        },
        rate_rx,
        stop.clone(),
    )));

    let mut steps = Vec::new();
    let mut misses = 0;
    for &aimed in &config.publish_steps {
        rate_tx.send_replace(aimed as f64);
        progress.set(format!("api: {aimed} publishes/s"));
        tokio::time::sleep(Duration::from_secs_f64(config.warmup_secs)).await;
        delays.lock().expect("never poisoned").reset();
        let (published_before, delivered_before, failed_before) = (
            published.load(Ordering::Relaxed),
            delivered.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        let cpu_before = target.cpu_secs();
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(config.window_secs)).await;
        let window = started.elapsed().as_secs_f64();
        let cpu = target.cpu_secs() - cpu_before;
        let histogram = delays.lock().expect("never poisoned").clone();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let step = ApiStep {
            aimed_publishes_per_sec: aimed,
            published_per_sec: (published.load(Ordering::Relaxed) - published_before) as f64
                / window,
            delivered_per_sec: (delivered.load(Ordering::Relaxed) - delivered_before) as f64
                / window,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            failed: failed.load(Ordering::Relaxed) - failed_before,
            server_cpu_percent: cpu / window * 100.0,
        };
        progress.println(format!(
            "  api {:>8} N={:<3} aimed {:>6}/s published {:>8.0}/s delivered {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms failed {} cpu {:>5.1}%",
            target.name,
            config.room_size,
            aimed,
            step.published_per_sec,
            step.delivered_per_sec,
            step.p50_ms,
            step.p99_ms,
            step.failed,
            step.server_cpu_percent
        ));
        misses = if step.passed(config.p99_limit_ms) {
            0
        } else {
            misses + 1
        };
        steps.push(step);
        if misses == 2 {
            break;
        }
    }
    rate_tx.send_replace(0.0);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let best = steps
        .iter()
        .filter(|step| step.passed(config.p99_limit_ms))
        .max_by(|a, b| a.published_per_sec.total_cmp(&b.published_per_sec))
        .cloned();
    Ok(ApiResult {
        target: target.name,
        room_size: config.room_size,
        steps,
        best,
    })
}

struct Publisher {
    client: reqwest::Client,
    url: String,
    key: String,
    in_flight: Arc<Semaphore>,
    body_bytes: usize,
    published: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

/// Issues publishes at the current rate (a request whenever credit allows and a connection is
/// free), each in its own task, until stopped.
async fn publish(publisher: Publisher, rate: watch::Receiver<f64>, stop: CancellationToken) {
    let publisher = Arc::new(publisher);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut credit = 0.0f64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let rate = *rate.borrow();
        credit = (credit + rate * (now - last).as_secs_f64()).min(rate * 0.01 + 1.0);
        last = now;
        while credit >= 1.0 {
            credit -= 1.0;
            let Ok(permit) = Arc::clone(&publisher.in_flight).try_acquire_owned() else {
                // Every connection busy: the server is behind; this publish is not offered.
                break;
            };
            let publisher = Arc::clone(&publisher);
            tokio::spawn(async move {
                let stamp = format!("{:020}", unix_nanos());
                let padding = "x".repeat(publisher.body_bytes.saturating_sub(stamp.len() + 1));
                let body = format!(r#"{{"body":"{stamp} {padding}"}}"#);
                let answer = publisher
                    .client
                    .post(&publisher.url)
                    .header("authorization", format!("Bearer {}", publisher.key))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(answer) if answer.status().as_u16() == 202 => {
                        publisher.published.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => publisher.failed.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
        }
    }
}
