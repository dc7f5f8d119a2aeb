//! What the integration tests, the fuzz targets, the examples and the benchmark need from
//! inside the crate, in one place. Not part of the gateway's API (hidden from its docs): it
//! follows the internals it exposes.

use std::net::IpAddr;
use std::sync::Arc;

use fastwebsockets::{Role, WebSocket};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;

use crate::client_ip::IpKey;
use crate::ids::SessionId;
use crate::state::Gateway;
use crate::RunningGateway;

pub use crate::auth::jwt::unix_now;
pub use crate::auth::TokenVerifier;
pub use crate::outbox::{Outbound, Outbox, SharedPayload};
pub use crate::protocol::{ClientFrame, ClientRequest, Since, Version};
pub use crate::socket::reader::{Inbound, MessageReader, ReadLimits};
pub use crate::socket::writer::CloseRequest;
pub use crate::socket::{Event, Socket};

/// Settings that lift every limit a load, fuzz or functional test would hit by accident: the
/// defaults are for the open internet, not for thousands of sockets from one host. Tests of a
/// limit set it back explicitly.
pub const NO_LIMITS: &[(&str, &str)] = &[
    ("MAX_CONNECTIONS", "19500"),
    ("MAX_CONNECTIONS_PER_IP", "19500"),
    ("CONNECT_RATE_PER_SEC", "1000000"),
    ("CONNECT_BURST", "1000000"),
    ("MAX_SESSIONS_PER_USER", "100000"),
    ("MSG_RATE_PER_SEC", "1000000"),
    ("MSG_BURST", "1000000"),
    ("USER_MSG_RATE_PER_SEC", "1000000"),
    ("USER_MSG_BURST", "1000000"),
    ("CONTROL_RATE_PER_SEC", "1000000"),
    ("CONTROL_BURST", "1000000"),
    ("TYPING_RATE_PER_SEC", "1000000"),
    ("TYPING_BURST", "1000000"),
    ("DM_RATE_PER_SEC", "1000000"),
    ("DM_BURST", "1000000"),
    ("MAX_ROOMS_PER_USER", "1000000"),
    ("BAN_STRIKES", "1000000"),
    ("MAX_TRACKED_CLIENTS", "1000000"),
    ("API_RATE_PER_SEC", "1000000"),
    ("API_BURST", "1000000"),
    ("API_MAX_CONNECTIONS", "1024"),
];

/// A view of a gateway's insides, for assertions.
#[derive(Clone)]
pub struct Probe(Arc<Gateway>);

impl Probe {
    pub fn of(running: &RunningGateway) -> Probe {
        Probe(Arc::clone(running.gateway()))
    }

    /// Local members of `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.0.hub.member_count(room)
    }

    /// Members of `room` on every node, as this node knows them.
    pub fn total_count(&self, room: &str) -> usize {
        self.0.hub.total_count(room)
    }

    /// Rooms with members on this node.
    pub fn room_count(&self) -> usize {
        self.0.hub.room_count()
    }

    /// Every (room, session) membership.
    pub fn memberships(&self) -> Vec<(String, SessionId)> {
        self.0.hub.memberships()
    }

    /// Open connections (HTTP or WebSocket).
    pub fn open_connections(&self) -> usize {
        self.0.admission.open_connections()
    }

    /// Client addresses the connect-rate limiter remembers.
    pub fn tracked_clients(&self) -> usize {
        self.0.admission.tracked_clients()
    }

    /// Entries held by the ban list: (offenders with strikes, offenders banned).
    pub fn tracked_offenders(&self) -> (usize, usize) {
        self.0.moderation.bans().tracked()
    }

    /// The metrics exposition.
    pub fn metrics(&self) -> String {
        self.0.metrics.encode()
    }

    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    /// Bans `offender` (`user:ID` or `ip:ADDRESS`) for `duration`, on every node.
    pub fn ban(&self, offender: &str, duration: std::time::Duration) {
        let offender = crate::bans::Offender::parse(offender).expect("user:ID or ip:ADDRESS");
        self.0.moderation.ban(offender, duration);
    }

    /// Lifts a ban on every node; whether this node knew of it.
    pub fn unban(&self, offender: &str) -> bool {
        let offender = crate::bans::Offender::parse(offender).expect("user:ID or ip:ADDRESS");
        self.0.moderation.unban(offender)
    }

    /// Whether `offender` is banned as this node knows it.
    pub fn is_banned(&self, offender: &str) -> bool {
        let offender = crate::bans::Offender::parse(offender).expect("user:ID or ip:ADDRESS");
        self.0.moderation.bans().remaining(&offender).is_some()
    }

    /// Closes every session of `user`, on every node, with `code`.
    pub fn kick(&self, user: &str, code: crate::CloseCode) {
        self.0.moderation.kick(std::sync::Arc::from(user), code);
    }

    /// Bytes charged and messages held by the rooms' history on this node.
    pub fn history_usage(&self) -> (usize, usize) {
        self.0.hub.history_usage()
    }

    /// Sessions of `user` open on this node.
    pub fn user_sessions(&self, user: &str) -> usize {
        self.0.sessions.user_count(&std::sync::Arc::from(user))
    }
}

/// A gateway's state without listeners, for driving sessions over in-memory sockets.
pub fn gateway(settings: &crate::Settings) -> Arc<Gateway> {
    Gateway::new(settings).expect("the files the settings name can be read")
}

/// The token verifier `settings` describe, on its own.
pub fn verifier(settings: &crate::Settings) -> TokenVerifier {
    TokenVerifier::new(&settings.auth, &Arc::default()).expect("the revocation file can be read")
}

/// Starts a session on `gateway` over an in-memory socket, as if `ip` had connected and
/// upgraded speaking `version`; returns the client's end (after the handshake) and the
/// session's task.
pub fn connect_in_memory(
    gateway: &Arc<Gateway>,
    ip: IpAddr,
    version: Version,
) -> (WebSocket<DuplexStream>, JoinHandle<()>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let admitted = crate::admission::Admitted {
        _connection: Arc::new(
            gateway
                .admission
                .try_connection()
                .expect("under MAX_CONNECTIONS"),
        ),
        ip: gateway
            .admission
            .admit_upgrade(IpKey::of(ip), None)
            .expect("admitted"),
    };
    let session = tokio::spawn(crate::session::run(
        Arc::clone(gateway),
        server_io,
        Vec::new(),
        ip,
        admitted,
        version,
    ));
    let mut client = WebSocket::after_handshake(client_io, Role::Client);
    client.set_auto_close(false);
    client.set_auto_pong(true);
    (client, session)
}

/// Every (room, session) membership of an in-memory gateway.
pub fn memberships(gateway: &Gateway) -> Vec<(String, SessionId)> {
    gateway.hub.memberships()
}

/// Rooms with members on an in-memory gateway.
pub fn room_count(gateway: &Gateway) -> usize {
    gateway.hub.room_count()
}

/// The metrics exposition of a gateway that has done nothing yet.
pub fn fresh_metrics() -> String {
    crate::metrics::Metrics::new().encode()
}
