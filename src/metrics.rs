//! Prometheus metrics, served on the admin listener at `/metrics` (OpenMetrics text format).
//!
//! Every label value comes from a closed set written in this crate (static strings and close
//! codes from our own table): never a room name, user id or address, so the number of series
//! cannot grow with traffic. Hot paths (messages, deliveries) use unlabelled counters.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::CloseCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    /// `server`, `client`, or `none` (the connection dropped without a close frame).
    pub initiator: &'static str,
    pub code: u16,
}

/// Why a connection did not become a session, or `upgraded`.
pub mod outcome {
    pub const UPGRADED: &str = "upgraded";
    pub const BUSY: &str = "busy";
    pub const ORIGIN: &str = "origin";
    pub const HANDSHAKE: &str = "handshake";
    pub const BANNED: &str = "banned";
    pub const TOO_FAST: &str = "too_fast";
    pub const TOO_MANY_FROM_IP: &str = "too_many_from_ip";
    pub const ALL: [&str; 7] = [
        UPGRADED,
        BUSY,
        ORIGIN,
        HANDSHAKE,
        BANNED,
        TOO_FAST,
        TOO_MANY_FROM_IP,
    ];
}

/// Every `reason` of `palisade_auth_failures_total`: the token verifier's, and the session's.
pub const AUTH_FAILURE_REASONS: [&str; 19] = [
    "malformed",
    "bad_signature",
    "algorithm_not_allowed",
    "missing_claim",
    "bad_claim_format",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "invalid",
    "too_long",
    "crit_header",
    "bad_subject",
    "unknown_key",
    "wrong_azp",
    "revoked",
    "wrong_subject",
    "banned_user",
    "too_many_sessions",
];

pub struct Metrics {
    registry: Registry,
    pub connections: Family<OutcomeLabel, Counter>,
    pub sessions_open: Family<StateLabel, Gauge>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub auth_duration: Histogram,
    pub joins: Counter,
    pub leaves: Counter,
    pub rooms: Gauge,
    pub messages_received: Counter,
    pub messages_delivered: Counter,
    pub messages_dropped: Family<ReasonLabel, Counter>,
    pub fanout_delay: Histogram,
    pub outbound_queue_depth: Histogram,
    pub closes: Family<CloseLabel, Counter>,
    pub rate_limited: Family<KindLabel, Counter>,
    pub bans: Family<KindLabel, Counter>,
    pub sessions_abandoned: Counter,
    pub jwks_fetches: Family<ResultLabel, Counter>,
    pub broker_up: Gauge,
    pub broker_published: Counter,
    pub broker_received: Counter,
    pub broker_errors: Family<KindLabel, Counter>,
    pub broker_reconnects: Counter,
    pub broker_dropped: Family<ReasonLabel, Counter>,
    pub broker_duplicates: Counter,
    pub broker_delay: Histogram,
}

/// Every `kind` of `palisade_broker_errors_total`.
pub const BROKER_ERROR_KINDS: [&str; 5] = ["connect", "subscribe", "publish", "probe", "decode"];
/// Every `reason` of `palisade_broker_dropped_total`.
pub const BROKER_DROP_REASONS: [&str; 2] = ["down", "backlog"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let connections = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "connections",
            "WebSocket upgrade attempts by outcome (upgraded, or why refused)",
            connections.clone(),
        );
        let sessions_open = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sessions_open",
            "Open sessions by state",
            sessions_open.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused auth frames by reason",
            auth_failures.clone(),
        );
        let auth_duration = Histogram::new(exponential_buckets(0.000_01, 2.0, 16));
        registry.register_with_unit(
            "auth_duration",
            "Time to verify a token",
            Unit::Seconds,
            auth_duration.clone(),
        );
        let joins = Counter::default();
        registry.register("joins", "Room joins", joins.clone());
        let leaves = Counter::default();
        registry.register("leaves", "Room leaves, by any exit", leaves.clone());
        let rooms = Gauge::default();
        registry.register("rooms", "Rooms with members on this node", rooms.clone());
        let messages_received = Counter::default();
        registry.register(
            "messages_received",
            "Chat messages accepted from clients for relay",
            messages_received.clone(),
        );
        let messages_delivered = Counter::default();
        registry.register(
            "messages_delivered",
            "Frames queued to recipients (chat, join and leave notices)",
            messages_delivered.clone(),
        );
        let messages_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "messages_dropped",
            "Frames not delivered: queue_full (slow consumer), empty (empty chat body)",
            messages_dropped.clone(),
        );
        let fanout_delay = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register_with_unit(
            "fanout_delay",
            "Time from a frame's creation to its write on each recipient's socket",
            Unit::Seconds,
            fanout_delay.clone(),
        );
        let outbound_queue_depth = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "outbound_queue_depth",
            "Frames waiting in a socket's queue when its writer wakes",
            outbound_queue_depth.clone(),
        );
        let closes = Family::<CloseLabel, Counter>::default();
        registry.register(
            "closes",
            "Closed sessions by initiator and close code",
            closes.clone(),
        );
        let rate_limited = Family::<KindLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Sockets closed for going over a rate (message, user_message, control)",
            rate_limited.clone(),
        );
        let bans = Family::<KindLabel, Counter>::default();
        registry.register("bans", "Bans imposed (ip, user)", bans.clone());
        let sessions_abandoned = Counter::default();
        registry.register(
            "sessions_abandoned",
            "Sessions still open when the shutdown grace period ended",
            sessions_abandoned.clone(),
        );
        let jwks_fetches = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Key set fetches from identity providers (ok, error)",
            jwks_fetches.clone(),
        );
        let broker_up = Gauge::default();
        registry.register(
            "broker_up",
            "1 while the Redis broker is connected and subscribed (always 0 without REDIS_URL)",
            broker_up.clone(),
        );
        let broker_published = Counter::default();
        registry.register(
            "broker_published",
            "Envelopes published to Redis (joins, leaves, messages, syncs)",
            broker_published.clone(),
        );
        let broker_received = Counter::default();
        registry.register(
            "broker_received",
            "Envelopes received from other nodes",
            broker_received.clone(),
        );
        let broker_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "broker_errors",
            "Redis failures by kind (connect, subscribe, publish, probe, decode)",
            broker_errors.clone(),
        );
        let broker_reconnects = Counter::default();
        registry.register(
            "broker_reconnects",
            "Redis connections re-established after a loss",
            broker_reconnects.clone(),
        );
        let broker_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "broker_dropped",
            "Events not sent to other nodes: down (Redis unreachable), backlog (publish queue full)",
            broker_dropped.clone(),
        );
        let broker_duplicates = Counter::default();
        registry.register(
            "broker_duplicates",
            "Envelopes dropped because their sequence number was already seen",
            broker_duplicates.clone(),
        );
        let broker_delay = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register_with_unit(
            "broker_delay",
            "Time from publish on one node to receipt on another (wall clocks of both)",
            Unit::Seconds,
            broker_delay.clone(),
        );
        let metrics = Metrics {
            registry,
            connections,
            sessions_open,
            auth_failures,
            auth_duration,
            joins,
            leaves,
            rooms,
            messages_received,
            messages_delivered,
            messages_dropped,
            fanout_delay,
            outbound_queue_depth,
            closes,
            rate_limited,
            bans,
            sessions_abandoned,
            jwks_fetches,
            broker_up,
            broker_published,
            broker_received,
            broker_errors,
            broker_reconnects,
            broker_dropped,
            broker_duplicates,
            broker_delay,
        };
        metrics.create_known_series();
        metrics
    }

    /// Creates every labelled series at zero, so that each is scraped from the start (a
    /// counter that appears only at its first increment hides that increment from `rate()`).
    fn create_known_series(&self) {
        for outcome in outcome::ALL {
            let _ = self.connections.get_or_create(&OutcomeLabel { outcome });
        }
        for state in ["await_auth", "await_join", "in_room"] {
            let _ = self.sessions_open.get_or_create(&StateLabel { state });
        }
        for reason in AUTH_FAILURE_REASONS {
            let _ = self.auth_failures.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["queue_full", "empty"] {
            let _ = self.messages_dropped.get_or_create(&ReasonLabel { reason });
        }
        for code in CloseCode::ALL {
            let _ = self.closes.get_or_create(&CloseLabel {
                initiator: "server",
                code: code.code(),
            });
        }
        for kind in ["message", "user_message", "control"] {
            let _ = self.rate_limited.get_or_create(&KindLabel { kind });
        }
        for kind in ["ip", "user"] {
            let _ = self.bans.get_or_create(&KindLabel { kind });
        }
        for result in ["ok", "error"] {
            let _ = self.jwks_fetches.get_or_create(&ResultLabel { result });
        }
        for kind in BROKER_ERROR_KINDS {
            let _ = self.broker_errors.get_or_create(&KindLabel { kind });
        }
        for reason in BROKER_DROP_REASONS {
            let _ = self.broker_dropped.get_or_create(&ReasonLabel { reason });
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn connection(&self, outcome: &'static str) {
        self.connections
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Moves one session from state `from` (if any) to `to` (if any).
    pub fn session_state(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(state) = from {
            self.sessions_open
                .get_or_create(&StateLabel { state })
                .dec();
        }
        if let Some(state) = to {
            self.sessions_open
                .get_or_create(&StateLabel { state })
                .inc();
        }
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped_by(reason, 1);
    }

    pub fn dropped_by(&self, reason: &'static str, count: u64) {
        self.messages_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }

    pub fn closed(&self, initiator: &'static str, code: u16) {
        self.closes
            .get_or_create(&CloseLabel { initiator, code })
            .inc();
    }

    /// Counts a server close, and what it implies (rate-limit kicks, slow consumers).
    pub fn server_close(&self, code: CloseCode) {
        self.closed("server", code.code());
    }

    pub fn rate_limit(&self, kind: &'static str) {
        self.rate_limited.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn ban(&self, kind: &'static str) {
        self.bans.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn jwks_fetch(&self, result: &'static str) {
        self.jwks_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn broker_error(&self, kind: &'static str) {
        self.broker_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn broker_drop(&self, reason: &'static str) {
        self.broker_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn observe_fanout(&self, delay: Duration) {
        self.fanout_delay.observe(delay.as_secs_f64());
    }
}

/// A client's close code as a label: the common ones, and `0` for any other (a client may
/// send any of 2000 application codes; the label set stays small).
pub fn client_close_code(code: Option<u16>) -> u16 {
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
        assert!(text.contains("palisade_closes_total{initiator=\"server\",code=\"4007\"} 0"));
        assert!(text.contains("palisade_auth_failures_total{reason=\"expired\"} 0"));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.connection(outcome::UPGRADED);
        metrics.session_state(None, Some("await_auth"));
        metrics.closed("server", 4001);
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
