//! Prometheus metrics, served on the admin listener at `/metrics` (OpenMetrics text format).
//!
//! Every label value comes from a closed enum ([`labels`]), so the number of series cannot
//! grow with traffic, and every labelled series exists (at zero) from the start: a counter that
//! appears only at its first increment hides that increment from `rate()`. Hot paths
//! (messages, deliveries) use unlabelled counters.

pub(crate) mod labels;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::auth::error::AuthError;
use crate::protocol::close::CloseCode;
use labels::{
    BanKind, BrokerDrop, BrokerFailure, CloseLabel, Discontinuity, DropReason, FetchResult,
    Initiator, Label, LabelValue, Outcome, RateLimit, SessionState, WebhookOutcome, WebhookPost,
};

/// A counter per value of a label enum.
pub(crate) type Counters<T> = Family<Label<T>, Counter>;

pub struct Metrics {
    registry: Registry,
    pub connections: Counters<Outcome>,
    pub sessions_open: Family<Label<SessionState>, Gauge>,
    pub auth_failures: Counters<AuthError>,
    pub auth_duration: Histogram,
    pub joins: Counter,
    pub leaves: Counter,
    pub rooms: Gauge,
    pub messages_received: Counter,
    pub messages_delivered: Counter,
    pub messages_dropped: Counters<DropReason>,
    pub fanout_delay: Histogram,
    pub outbound_queue_depth: Histogram,
    pub closes: Family<CloseLabel, Counter>,
    pub rate_limited: Counters<RateLimit>,
    pub bans: Counters<BanKind>,
    pub sessions_abandoned: Counter,
    pub jwks_fetches: Counters<FetchResult>,
    pub broker_up: Gauge,
    pub broker_delivery_ok: Gauge,
    pub broker_published: Counter,
    pub broker_received: Counter,
    pub broker_errors: Counters<BrokerFailure>,
    pub broker_reconnects: Counter,
    pub broker_dropped: Counters<BrokerDrop>,
    pub broker_duplicates: Counter,
    pub broker_delay: Histogram,
    pub memory_used: Gauge,
    pub memory_shedding: Gauge,
    pub revocation_invalid_lines: Gauge,
    pub history_bytes: Gauge,
    pub history_entries: Gauge,
    pub history_discontinuities: Counters<Discontinuity>,
    pub webhook_events: Counters<WebhookOutcome>,
    pub webhook_posts: Counters<WebhookPost>,
    pub webhook_retries: Counter,
    pub webhook_post_seconds: Histogram,
    pub webhook_queued: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers metrics under the `palisade` prefix.
struct Registrar(Registry);

impl Registrar {
    fn metric<M>(&mut self, name: &str, help: &str, metric: M) -> M
    where
        M: prometheus_client::metrics::TypedMetric
            + prometheus_client::encoding::EncodeMetric
            + Clone
            + Send
            + Sync
            + std::fmt::Debug
            + 'static,
    {
        self.0.register(name, help, metric.clone());
        metric
    }

    fn seconds(&mut self, name: &str, help: &str, smallest: f64) -> Histogram {
        let histogram = Histogram::new(exponential_buckets(smallest, 2.0, 16));
        self.0
            .register_with_unit(name, help, Unit::Seconds, histogram.clone());
        histogram
    }

    /// A family with a series for every value of its label enum.
    fn family<T: LabelValue, M>(&mut self, name: &str, help: &str) -> Family<Label<T>, M>
    where
        M: prometheus_client::metrics::TypedMetric
            + prometheus_client::encoding::EncodeMetric
            + Default
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        Family<Label<T>, M>: prometheus_client::encoding::EncodeMetric,
    {
        let family = Family::<Label<T>, M>::default();
        for value in <T as strum::IntoEnumIterator>::iter() {
            let _ = family.get_or_create(&Label(value));
        }
        self.metric(name, help, family)
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registrar(Registry::with_prefix("palisade"));
        let closes = Family::<CloseLabel, Counter>::default();
        for code in CloseCode::ALL {
            let _ = closes.get_or_create(&CloseLabel {
                initiator: Initiator::Server,
                code: code.code(),
            });
        }
        Metrics {
            connections: r.family(
                "connections",
                "WebSocket upgrade attempts by outcome (upgraded, or why refused)",
            ),
            sessions_open: r.family("sessions_open", "Open sessions by state"),
            auth_failures: r.family("auth_failures", "Refused auth frames by reason"),
            auth_duration: r.seconds("auth_duration", "Time to verify a token", 0.000_01),
            joins: r.metric("joins", "Room joins", Counter::default()),
            leaves: r.metric("leaves", "Room leaves, by any exit", Counter::default()),
            rooms: r.metric("rooms", "Rooms with members on this node", Gauge::default()),
            messages_received: r.metric(
                "messages_received",
                "Chat messages accepted from clients for relay",
                Counter::default(),
            ),
            messages_delivered: r.metric(
                "messages_delivered",
                "Frames queued to recipients (chat, join and leave notices)",
                Counter::default(),
            ),
            messages_dropped: r.family(
                "messages_dropped",
                "Frames not delivered: queue_full (slow consumer), empty (empty chat body)",
            ),
            fanout_delay: r.seconds(
                "fanout_delay",
                "Time from a frame's creation to its write on each recipient's socket",
                0.000_05,
            ),
            outbound_queue_depth: r.metric(
                "outbound_queue_depth",
                "Frames waiting in a socket's queue when its writer wakes",
                Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            ),
            closes: r.metric(
                "closes",
                "Closed sessions by initiator and close code",
                closes,
            ),
            rate_limited: r.family(
                "rate_limited",
                "Sockets closed for going over a rate (message, user_message, control, typing)",
            ),
            bans: r.family("bans", "Bans imposed (ip, user)"),
            sessions_abandoned: r.metric(
                "sessions_abandoned",
                "Sessions still open when the shutdown grace period ended",
                Counter::default(),
            ),
            jwks_fetches: r.family(
                "jwks_fetches",
                "Key set fetches from identity providers (ok, error)",
            ),
            broker_up: r.metric(
                "broker_up",
                "1 while the Redis broker is connected and subscribed (always 0 without Redis)",
                Gauge::default(),
            ),
            broker_delivery_ok: r.metric(
                "broker_delivery_ok",
                "1 while this node's last canary came back through Redis Pub/Sub: cross-node delivery works (always 0 without Redis)",
                Gauge::default(),
            ),
            broker_published: r.metric(
                "broker_published",
                "Envelopes published to Redis (joins, leaves, messages, syncs)",
                Counter::default(),
            ),
            broker_received: r.metric(
                "broker_received",
                "Envelopes received from other nodes",
                Counter::default(),
            ),
            broker_errors: r.family(
                "broker_errors",
                "Redis failures by kind (connect, subscribe, publish, probe, canary, failover, decode)",
            ),
            broker_reconnects: r.metric(
                "broker_reconnects",
                "Redis connections re-established after a loss",
                Counter::default(),
            ),
            broker_dropped: r.family(
                "broker_dropped",
                "Events not sent to other nodes: down (Redis unreachable), backlog (publish queue full)",
            ),
            broker_duplicates: r.metric(
                "broker_duplicates",
                "Envelopes dropped because their sequence number was already seen",
                Counter::default(),
            ),
            broker_delay: r.seconds(
                "broker_delay",
                "Time from publish on one node to receipt on another (wall clocks of both)",
                0.000_05,
            ),
            memory_used: r.metric(
                "memory_used_bytes",
                "Memory counted against MEMORY_HIGH_WATERMARK: the cgroup's where it has a limit, else RSS",
                Gauge::default(),
            ),
            memory_shedding: r.metric(
                "memory_shedding",
                "1 while new upgrades are shed above MEMORY_HIGH_WATERMARK",
                Gauge::default(),
            ),
            revocation_invalid_lines: r.metric(
                "revocation_invalid_lines",
                "Lines of REVOCATION_FILE skipped at its last read",
                Gauge::default(),
            ),
            history_bytes: r.metric(
                "history_bytes",
                "Bytes of room history and read positions held on this node (HISTORY_MAX_BYTES bounds it)",
                Gauge::default(),
            ),
            history_entries: r.metric(
                "history_entries",
                "Chat messages held in rooms' history on this node",
                Gauge::default(),
            ),
            history_discontinuities: r.family(
                "history_discontinuities",
                "Rooms whose members could not simply be given the next message (gap_filled, gap_lost, reset)",
            ),
            webhook_events: r.family(
                "webhook_events",
                "Webhook events by outcome (sent, queue_full, gave_up)",
            ),
            webhook_posts: r.family(
                "webhook_posts",
                "Webhook POSTs by result (ok, refused: not a 2xx, failed: no answer)",
            ),
            webhook_retries: r.metric(
                "webhook_retries",
                "Webhook batches tried again after a failure",
                Counter::default(),
            ),
            webhook_post_seconds: r.seconds(
                "webhook_post",
                "Time from a webhook POST to its answer (or failure)",
                0.000_5,
            ),
            webhook_queued: r.metric(
                "webhook_queued",
                "Webhook events waiting to be sent",
                Gauge::default(),
            ),
            registry: r.0,
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn connection(&self, outcome: Outcome) {
        self.connections.get_or_create(&Label(outcome)).inc();
    }

    /// Moves one session from state `from` (if any) to `to` (if any).
    pub fn session_state(&self, from: Option<SessionState>, to: Option<SessionState>) {
        if let Some(state) = from {
            self.sessions_open.get_or_create(&Label(state)).dec();
        }
        if let Some(state) = to {
            self.sessions_open.get_or_create(&Label(state)).inc();
        }
    }

    pub fn auth_failure(&self, reason: AuthError) {
        self.auth_failures.get_or_create(&Label(reason)).inc();
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped_by(reason, 1);
    }

    pub fn dropped_by(&self, reason: DropReason, count: u64) {
        self.messages_dropped
            .get_or_create(&Label(reason))
            .inc_by(count);
    }

    pub fn closed(&self, initiator: Initiator, code: u16) {
        self.closes
            .get_or_create(&CloseLabel { initiator, code })
            .inc();
    }

    pub fn server_close(&self, code: CloseCode) {
        self.closed(Initiator::Server, code.code());
    }

    pub fn rate_limit(&self, kind: RateLimit) {
        self.rate_limited.get_or_create(&Label(kind)).inc();
    }

    pub fn ban(&self, kind: BanKind) {
        self.bans.get_or_create(&Label(kind)).inc();
    }

    pub fn jwks_fetch(&self, result: FetchResult) {
        self.jwks_fetches.get_or_create(&Label(result)).inc();
    }

    pub fn broker_error(&self, kind: BrokerFailure) {
        self.broker_errors.get_or_create(&Label(kind)).inc();
    }

    pub fn discontinuity(&self, kind: Discontinuity) {
        self.history_discontinuities
            .get_or_create(&Label(kind))
            .inc();
    }

    pub fn broker_drop(&self, reason: BrokerDrop) {
        self.broker_dropped.get_or_create(&Label(reason)).inc();
    }

    pub fn webhook_event(&self, outcome: WebhookOutcome, count: u64) {
        self.webhook_events
            .get_or_create(&Label(outcome))
            .inc_by(count);
    }

    pub fn webhook_post(&self, result: WebhookPost) {
        self.webhook_posts.get_or_create(&Label(result)).inc();
    }

    pub fn observe_fanout(&self, delay: Duration) {
        self.fanout_delay.observe(delay.as_secs_f64());
    }
}

/// A client's close code as a label: the common ones, and `0` for any other (a client may
/// send any of 2000 application codes; the label set stays small).
pub(crate) fn client_close_code(code: Option<u16>) -> u16 {
    match code {
        None => 1005,
        Some(code @ (1000 | 1001 | 1002 | 1003 | 1007 | 1008 | 1009 | 1010 | 1011)) => code,
        Some(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_exist_from_the_start() {
        let text = Metrics::new().encode();
        assert!(text.contains("palisade_connections_total{outcome=\"busy\"} 0"));
        assert!(text.contains("palisade_connections_total{outcome=\"too_many_from_ip\"} 0"));
        assert!(text.contains("palisade_closes_total{initiator=\"server\",code=\"4007\"} 0"));
        assert!(text.contains("palisade_auth_failures_total{reason=\"expired\"} 0"));
        assert!(text.contains("palisade_auth_failures_total{reason=\"too_many_sessions\"} 0"));
        assert!(text.contains("palisade_broker_dropped_total{reason=\"backlog\"} 0"));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.connection(Outcome::Upgraded);
        metrics.session_state(None, Some(SessionState::AwaitAuth));
        metrics.closed(Initiator::Server, 4001);
        metrics.auth_duration.observe(0.001);
        let text = metrics.encode();
        for line in [
            "palisade_connections_total{outcome=\"upgraded\"} 1",
            "palisade_sessions_open{state=\"await_auth\"} 1",
            "palisade_closes_total{initiator=\"server\",code=\"4001\"} 1",
            "palisade_auth_duration_seconds_count 1",
            "palisade_messages_delivered_total 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
