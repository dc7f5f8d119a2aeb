//! Sending events: a bounded queue that nothing waits on, and one task that POSTs batches in
//! order, signed, retrying a failed batch with jittered exponential backoff up to
//! `WEBHOOK_MAX_ATTEMPTS` times. A receiver that is down, slow or failing holds back only this
//! task: events wait in the queue (`WEBHOOK_QUEUE`), and past it they are dropped and counted,
//! never blocking a room or the API.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::event::{batch_body, signature, Event};
use super::settings::WebhookSettings;
use crate::metrics::labels::{WebhookOutcome, WebhookPost};
use crate::metrics::Metrics;
use crate::observer::Posted;

/// The first wait before a retry; doubled per failure up to `WEBHOOK_RETRY_MAX_SECS`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The next chat message, if messages are reported (never, otherwise).
async fn next_message(messages: &mut Option<mpsc::Receiver<Arc<Posted>>>) -> Option<Arc<Posted>> {
    match messages {
        Some(messages) => messages.recv().await,
        None => std::future::pending().await,
    }
}

/// Where events are queued for sending.
#[derive(Clone)]
pub(crate) struct Queue {
    sender: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub(crate) fn new(capacity: usize, metrics: Arc<Metrics>) -> (Queue, mpsc::Receiver<Event>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (Queue { sender, metrics }, receiver)
    }

    /// Queues an event without waiting; a full queue drops it (counted).
    pub(crate) fn push(&self, event: Event) {
        match self.sender.try_send(event) {
            Ok(()) => {
                self.metrics.webhook_queued.inc();
            }
            Err(_) => self.metrics.webhook_event(WebhookOutcome::QueueFull, 1),
        }
    }
}

/// The sending task.
pub(crate) struct Sender {
    settings: WebhookSettings,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub(crate) fn new(settings: WebhookSettings, metrics: Arc<Metrics>) -> Sender {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A receiver's redirect would send signed events somewhere nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("palisade-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client without custom TLS always builds");
        Sender {
            settings,
            client,
            metrics,
        }
    }

    /// Sends batches until the gateway stops; what is queued then gets one try.
    pub(crate) async fn run(
        self,
        mut queue: mpsc::Receiver<Event>,
        mut messages: Option<mpsc::Receiver<Arc<Posted>>>,
        stopping: CancellationToken,
    ) {
        let max = self.settings.batch_max;
        let mut batch = Vec::with_capacity(max);
        loop {
            tokio::select! {
                received = queue.recv_many(&mut batch, max) => if received == 0 { return },
                Some(posted) = next_message(&mut messages) => batch.push(self.message(&posted)),
                _ = stopping.cancelled() => break,
            }
            // Wait a little for more, so that a burst goes out as one POST.
            let full_by = Instant::now() + self.settings.batch_wait;
            while batch.len() < max {
                let room = max - batch.len();
                tokio::select! {
                    more = queue.recv_many(&mut batch, room) => if more == 0 { break },
                    Some(posted) = next_message(&mut messages) => batch.push(self.message(&posted)),
                    _ = tokio::time::sleep_until(full_by) => break,
                }
            }
            self.send(&mut batch, self.settings.max_attempts, &stopping)
                .await;
        }
        let mut rest: Vec<Event> = std::iter::from_fn(|| queue.try_recv().ok()).collect();
        if let Some(messages) = &mut messages {
            while let Ok(posted) = messages.try_recv() {
                rest.push(self.message(&posted));
            }
        }
        for event in rest {
            batch.push(event);
            if batch.len() == max {
                self.send(&mut batch, 1, &stopping).await;
            }
        }
        if !batch.is_empty() {
            self.send(&mut batch, 1, &stopping).await;
        }
    }

    /// A chat message's event, counted as queued like the others.
    fn message(&self, posted: &Posted) -> Event {
        self.metrics.webhook_queued.inc();
        Event::message(posted)
    }

    /// Sends a batch with at most `attempts` tries, and empties it.
    async fn send(&self, batch: &mut Vec<Event>, attempts: usize, stopping: &CancellationToken) {
        self.metrics.webhook_queued.dec_by(batch.len() as i64);
        self.deliver(batch, attempts, stopping).await;
        batch.clear();
    }

    /// POSTs one batch until it is accepted or `attempts` tries are spent (retries stop early
    /// when the gateway stops).
    async fn deliver(&self, batch: &[Event], attempts: usize, stopping: &CancellationToken) {
        let body = batch_body(batch);
        let count = batch.len() as u64;
        for attempt in 0..attempts {
            if attempt > 0 {
                self.metrics.webhook_retries.inc();
                let wait = self.backoff(attempt);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopping.cancelled() => break,
                }
            }
            let started = Instant::now();
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let sent = self
                .client
                .post(self.settings.url.clone())
                .header("content-type", "application/json")
                .header(
                    "palisade-signature",
                    signature(&self.settings.secret, timestamp, &body),
                )
                .body(body.clone())
                .send()
                .await;
            self.metrics
                .webhook_post_seconds
                .observe(started.elapsed().as_secs_f64());
            match sent {
                Ok(response) if response.status().is_success() => {
                    self.metrics.webhook_post(WebhookPost::Ok);
                    self.metrics.webhook_event(WebhookOutcome::Sent, count);
                    debug!(
                        events = count,
                        bytes = body.len(),
                        "webhook batch delivered"
                    );
                    return;
                }
                Ok(response) => {
                    self.metrics.webhook_post(WebhookPost::Refused);
                    debug!(
                        status = response.status().as_u16(),
                        attempt, "webhook batch refused"
                    );
                }
                Err(err) => {
                    self.metrics.webhook_post(WebhookPost::Failed);
                    // Without the URL: it may carry credentials.
                    debug!(err = %err.without_url(), attempt, "webhook batch not delivered");
                }
            }
        }
        warn!(
            events = count,
            attempts, "webhook batch dropped after its last try"
        );
        self.metrics.webhook_event(WebhookOutcome::GaveUp, count);
    }

    /// The wait before try `attempt` (from 1): doubling from 250 ms to the maximum, with
    /// jitter so that nodes do not retry in step.
    fn backoff(&self, attempt: usize) -> Duration {
        let doubled = FIRST_RETRY.saturating_mul(1 << attempt.min(16) as u32 >> 1);
        let capped = doubled.min(self.settings.retry_max);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}
