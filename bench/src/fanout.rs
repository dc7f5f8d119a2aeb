//! Fan-out: rooms of N members, one sender per room, 100-byte messages stamped with their send
//! time, offered load stepped up until the 99th percentile of end-to-end delay passes the
//! limit (twice in a row). Every member reads every frame; delay is measured at the receiver.
//! The result is the highest step within the limit. With `climb_secs`, the ladder goes on past
//! its last listed step (a quarter higher each time) until the server saturates or the time is
//! up, so that the figure is the server's, not the ladder's top. Members may be spread over
//! several nodes sharing rooms through Redis: member k of each room connects to node k mod n.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{sent_at_nanos, timestamped_message, unix_nanos};
use crate::progress::Progress;
use crate::target::Target;

#[derive(Clone, Debug, Serialize)]
pub struct FanoutConfig {
    pub room_size: usize,
    pub rooms: usize,
    /// Deliveries per second to aim for, step by step (offered messages = deliveries / (N-1)).
    pub delivered_steps: Vec<u64>,
    pub warmup_secs: f64,
    pub window_secs: f64,
    pub body_bytes: usize,
    pub p99_limit_ms: f64,
    pub concurrency: usize,
    /// Past the last listed step, keep climbing (×1.25 per step) for at most this long.
    pub climb_secs: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutStep {
    pub aimed_deliveries_per_sec: u64,
    pub offered_messages_per_sec: f64,
    pub delivered_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Summed over the nodes (Redis not included).
    pub server_cpu_percent: f64,
    /// The load generator's own CPU (this process), in percent of one core: near the
    /// machine's cores, the generator is what saturates.
    pub generator_cpu_percent: f64,
    /// Server CPU time per delivered message, in microseconds.
    pub server_cpu_us_per_delivery: f64,
    /// Sockets the server closed during the step (a slow consumer evicted, say).
    pub sockets_closed: u64,
}

impl FanoutStep {
    /// Within the delay limit, having delivered what was aimed for, with every socket still
    /// open.
    pub fn passed(&self, p99_limit_ms: f64) -> bool {
        self.p99_ms <= p99_limit_ms
            && self.delivered_per_sec >= 0.9 * self.aimed_deliveries_per_sec as f64
            && self.sockets_closed == 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    pub target: &'static str,
    /// Palisade processes the members were spread over.
    pub nodes: usize,
    pub room_size: usize,
    pub rooms: usize,
    pub steps: Vec<FanoutStep>,
    /// The highest step that kept p99 within the limit and delivered what was aimed for.
    pub best: Option<FanoutStep>,
}

pub async fn run(
    nodes: &[&Target],
    config: &FanoutConfig,
    progress: &Progress,
) -> anyhow::Result<FanoutResult> {
    let target = nodes[0];
    let cpu_secs = || nodes.iter().map(|node| node.cpu_secs()).sum::<f64>();
    let generator_cpu_secs =
        || crate::procfs::sample(std::process::id()).map_or(f64::NAN, |sample| sample.cpu_secs);
    let delays = Arc::new(Mutex::new(new_histogram()));
    let delivered = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (rate_tx, rate_rx) = watch::channel(0.0f64);
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut sockets = Vec::new();
    for index in 0..config.rooms * config.room_size {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let dialer = Arc::clone(&nodes[index % config.room_size % nodes.len()].dialer);
        let user = format!("fan{index}");
        let token = target.signer.token(&user);
        let room = format!("fan{}-{}", config.room_size, index / config.room_size);
        let reader = Reader {
            delays: Arc::clone(&delays),
            delivered: Arc::clone(&delivered),
            closed: Arc::clone(&closed),
        };
        let stop = stop.clone();
        sockets.push(tokio::spawn(async move {
            let joined = dialer.joined(&user, &token, &room).await;
            drop(permit);
            // Read from the moment of joining: every later join is announced to the members
            // already there (N²/2 frames for a room of N), and a member that did not read them
            // would be closed as a slow consumer before the first message.
            let (sink, stream) = joined?.split();
            let reading = tokio::spawn(reader.read(stream, stop));
            anyhow::Ok((sink, reading))
        }));
        progress.set(format!(
            "fanout {} rooms of {}: joining {index}",
            target.name, config.room_size
        ));
    }
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let (sink, reading) = socket.await??;
        tasks.push(reading);
        if index % config.room_size == 0 {
            senders.push(sink);
        }
    }
    tasks.push(tokio::spawn(send(
        senders,
        rate_rx,
        config.body_bytes,
        stop.clone(),
    )));

    let fan = (config.room_size - 1) as f64;
    let mut steps = Vec::new();
    let mut failures = 0;
    // The climb's time counts from the end of the listed steps.
    let mut climb_until = None;
    let mut ladder = config.delivered_steps.clone().into_iter();
    let mut last_aimed = 0u64;
    loop {
        let aimed = match ladder.next() {
            Some(aimed) => aimed,
            None => match config.climb_secs.map(|secs| {
                *climb_until.get_or_insert_with(|| {
                    tokio::time::Instant::now() + Duration::from_secs_f64(secs)
                })
            }) {
                Some(until) if tokio::time::Instant::now() < until && last_aimed > 0 => {
                    // A quarter higher, rounded to a thousand.
                    (last_aimed * 5 / 4).div_ceil(1000) * 1000
                }
                _ => break,
            },
        };
        last_aimed = aimed;
        let offered = aimed as f64 / fan;
        rate_tx.send_replace(offered);
        progress.set(format!(
            "fanout {} rooms of {}: {aimed} deliveries/s",
            target.name, config.room_size
        ));
        tokio::time::sleep(Duration::from_secs_f64(config.warmup_secs)).await;
        delays.lock().expect("never poisoned").reset();
        let counted = delivered.load(Ordering::Relaxed);
        let closed_before = closed.load(Ordering::Relaxed);
        let cpu_before = cpu_secs();
        let generator_before = generator_cpu_secs();
        let window_start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(config.window_secs)).await;
        let cpu = cpu_secs() - cpu_before;
        let generator_cpu = generator_cpu_secs() - generator_before;
        let count = delivered.load(Ordering::Relaxed) - counted;
        // The sleep may overshoot on a busy machine: rates use the time that passed.
        let window = window_start.elapsed().as_secs_f64();
        let histogram = delays.lock().expect("never poisoned").clone();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let step = FanoutStep {
            aimed_deliveries_per_sec: aimed,
            offered_messages_per_sec: offered,
            delivered_per_sec: count as f64 / window,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            server_cpu_percent: cpu / window * 100.0,
            generator_cpu_percent: generator_cpu / window * 100.0,
            server_cpu_us_per_delivery: cpu * 1e6 / count.max(1) as f64,
            sockets_closed: closed.load(Ordering::Relaxed) - closed_before,
        };
        progress.println(format!(
            "  fanout {:>8} x{} N={:<3} aimed {:>7}/s delivered {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms p99.9 {:>7.2} ms cpu {:>5.1}% {:>5.2} us/delivery, generator {:>4.0}%",
            target.name,
            nodes.len(),
            config.room_size,
            aimed,
            step.delivered_per_sec,
            step.p50_ms,
            step.p99_ms,
            step.p999_ms,
            step.server_cpu_percent,
            step.server_cpu_us_per_delivery,
            step.generator_cpu_percent
        ));
        let saturated = !step.passed(config.p99_limit_ms);
        steps.push(step);
        // Two saturated steps in a row end the climb: on a machine shared with the load
        // generator one step's p99 can be an outlier.
        failures = if saturated { failures + 1 } else { 0 };
        if failures == 2 {
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
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec))
        .cloned();
    Ok(FanoutResult {
        target: target.name,
        nodes: nodes.len(),
        room_size: config.room_size,
        rooms: config.rooms,
        steps,
        best,
    })
}

/// What a member's reader counts: the delay of every stamped message, how many arrived, and
/// sockets the server closed.
#[derive(Clone)]
pub struct Reader {
    pub delays: Arc<Mutex<Histogram<u64>>>,
    pub delivered: Arc<AtomicU64>,
    pub closed: Arc<AtomicU64>,
}

impl Reader {
    /// Reads a member's socket until stopped or closed.
    pub async fn read(
        self,
        mut stream: futures_util::stream::SplitStream<crate::client::Ws>,
        stop: CancellationToken,
    ) {
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                frame = stream.next() => frame,
            };
            let Some(Ok(frame)) = frame else {
                self.closed.fetch_add(1, Ordering::Relaxed);
                break;
            };
            if let Message::Text(text) = frame {
                if let Some(sent) = sent_at_nanos(&text) {
                    let micros = (unix_nanos().saturating_sub(sent) / 1000) as u64;
                    let _ = self
                        .delays
                        .lock()
                        .expect("never poisoned")
                        .record(micros.max(1));
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Delays in microseconds, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Sends timestamped messages at the current total rate (messages per second), spread over
/// the rooms' senders in turn, in small batches every 2 ms, until stopped. One task for all
/// rooms: a task per room would wake the load generator thousands of times a second for
/// nothing, and its CPU would show up as delay on the shared cores.
async fn send(
    mut sinks: Vec<futures_util::stream::SplitSink<crate::client::Ws, Message>>,
    rate: watch::Receiver<f64>,
    body_bytes: usize,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut credit = 0.0f64;
    let mut next = 0usize;
    let mut fed = vec![false; sinks.len()];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let rate = *rate.borrow();
        credit += rate * (now - last).as_secs_f64();
        last = now;
        // A sender that fell behind does not burst to catch up more than 10 ms' worth.
        credit = credit.min(rate * 0.01 + 1.0);
        while credit >= 1.0 {
            credit -= 1.0;
            let room = next % sinks.len();
            next += 1;
            fed[room] = true;
            let message = Message::text(timestamped_message(body_bytes));
            if sinks[room].feed(message).await.is_err() {
                return;
            }
        }
        for (sink, fed) in sinks.iter_mut().zip(fed.iter_mut()) {
            if std::mem::take(fed) && sink.flush().await.is_err() {
                return;
            }
        }
    }
}
