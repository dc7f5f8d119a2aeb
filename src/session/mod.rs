//! One socket's session: the state machine from upgrade to close.
//!
//! ```text
//! AwaitAuth ──auth (AUTH_TIMEOUT_MS)──▶ AwaitJoin ──join (JOIN_TIMEOUT_MS)──▶ InRoom
//!                                           ▲                                   │
//!                                           └────────────── userleave ──────────┘
//! ```
//!
//! Three tasks per socket: the [`reader`] (owns the read half), the [`writer`] (owns the write
//! half and drains the outbox), and this session, which `select!`s only over cancel-safe
//! branches: reader events, the outbox's eviction signal, the state's deadline and shutdown.
//! The reader and writer are aborted when the session ends, so no task outlives its socket.
//!
//! Every exit is one [`End`]; the member leaves its room before the close frame is written (so
//! the room hears `userleave` at once), then the close handshake gets `CLOSE_TIMEOUT_MS`.

pub mod reader;
pub mod writer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::WebSocket;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::admission::{Admitted, UserSlot};
use crate::auth::jwt::unix_now;
use crate::auth::Identity;
use crate::bans::{Offender, StrikeOutcome};
use crate::gateway::Gateway;
use crate::hub::{Member, Membership, SessionId};
use crate::limits::SessionLimiters;
use crate::metrics::client_close_code;
use crate::names::{validate_room, validate_username};
use crate::outbox::{Outbound, Outbox, SharedPayload};
use crate::protocol::{notice, ClientFrame, CloseCode, ServerFrame};
use reader::{EventReceiver, Inbound, ReadLimits};
use writer::CloseRequest;

/// Reader events buffered ahead of the session: small, so a client that floods is held back by
/// TCP rather than by our memory.
const READER_QUEUE: usize = 4;

/// Where a session is in the protocol.
enum State {
    AwaitAuth,
    AwaitJoin {
        identity: Identity,
    },
    InRoom {
        identity: Identity,
        display_name: Arc<str>,
        membership: Membership,
    },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitAuth => "await_auth",
            State::AwaitJoin { .. } => "await_join",
            State::InRoom { .. } => "in_room",
        }
    }

    fn identity(&self) -> Option<&Identity> {
        match self {
            State::AwaitAuth => None,
            State::AwaitJoin { identity } | State::InRoom { identity, .. } => Some(identity),
        }
    }

    fn identity_mut(&mut self) -> Option<&mut Identity> {
        match self {
            State::AwaitAuth => None,
            State::AwaitJoin { identity } | State::InRoom { identity, .. } => Some(identity),
        }
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The server closes with this code.
    Closed(CloseCode),
    /// The client sent a close frame (with this code, if any); we echo it.
    PeerClosed(Option<u16>),
    /// The connection vanished without a close frame.
    Gone,
}

struct Session {
    id: SessionId,
    gateway: Arc<Gateway>,
    outbox: Outbox,
    limiters: SessionLimiters,
    state: State,
    /// When the current state's deadline (auth or join) passes; `None` in a room.
    deadline: Option<Instant>,
    /// This user's place under `MAX_SESSIONS_PER_USER`, once authenticated.
    user_slot: Option<UserSlot>,
    timers: Timers,
}

/// The session's clocks besides the auth/join deadline: server pings, the idle timeout, and
/// the token's expiry.
struct Timers {
    ping_interval: Duration,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// When the next ping is due.
    next_ping: Instant,
    /// Set while a ping is unanswered: the pong must arrive by then.
    pong_due: Option<Instant>,
    /// Reset by every message from the client.
    idle_deadline: Option<Instant>,
    /// The token's `exp` plus the leeway, once authenticated.
    token_expiry: Option<Instant>,
}

impl Timers {
    fn new(config: &crate::config::Config, now: Instant) -> Self {
        let idle_timeout = config.idle_timeout();
        Self {
            ping_interval: config.ping_interval(),
            pong_timeout: config.pong_timeout(),
            idle_timeout,
            next_ping: now + config.ping_interval(),
            pong_due: None,
            idle_deadline: idle_timeout.map(|idle| now + idle),
            token_expiry: None,
        }
    }

    /// The earliest moment something must happen.
    fn next_event(&self) -> Instant {
        [
            Some(self.next_ping),
            self.pong_due,
            self.idle_deadline,
            self.token_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("next_ping is always set")
    }

    fn on_client_message(&mut self, now: Instant) {
        self.idle_deadline = self.idle_timeout.map(|idle| now + idle);
    }

    fn on_pong(&mut self) {
        self.pong_due = None;
    }
}

/// Runs a session on an upgraded socket until it closes.
pub async fn run<S>(gateway: Arc<Gateway>, ws: WebSocket<S>, client_ip: IpAddr, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &gateway.config;
    let started = Instant::now();
    let (read_half, write_half) = tokio::io::split(ws.into_inner());

    let (outbox, outbox_rx) = Outbox::new(config.outbound_queue_frames);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = AbortOnDropHandle::new(tokio::spawn(writer::run(
        write_half,
        outbox_rx,
        close_rx,
        Some(Arc::clone(&gateway.metrics)),
    )));

    let limits = ReadLimits {
        max_message_bytes: config.max_message_bytes,
        max_fragments: config.max_fragments,
    };
    let (events_tx, mut events) = reader::events(READER_QUEUE);
    let _reader = AbortOnDropHandle::new(tokio::spawn(reader::run(read_half, limits, events_tx)));

    gateway
        .metrics
        .session_state(None, Some(State::AwaitAuth.name()));
    let mut session = Session {
        id: gateway.next_session_id(),
        gateway: Arc::clone(&gateway),
        outbox,
        limiters: SessionLimiters::new(&gateway.quotas),
        state: State::AwaitAuth,
        deadline: Some(started + config.auth_timeout()),
        user_slot: None,
        timers: Timers::new(config, started),
    };
    let end = session.run(&mut events).await;

    let user_id = session.state.identity().map(|id| Arc::clone(&id.user_id));
    let last_state = session.state.name();
    // Counted before the session is dropped: once the open-sessions gauge says it is gone,
    // its close and any strike are already on record.
    match end {
        End::Closed(code) => {
            gateway.metrics.server_close(code);
            if code.is_abuse() {
                strike(&gateway, admitted.ip.key(), user_id.as_ref(), code);
            }
        }
        End::PeerClosed(code) => gateway.metrics.closed("client", client_close_code(code)),
        End::Gone => gateway.metrics.closed("none", 1006),
    }
    // Leave the room first, so the others hear `userleave` before the close handshake.
    drop(session);

    let close_timeout = config.close_timeout();
    let close = match end {
        End::Closed(code) => Some(CloseRequest {
            code: Some(code.code()),
            reason: code.reason(),
            drain: code != CloseCode::SlowConsumer,
        }),
        End::PeerClosed(code) => Some(CloseRequest {
            code,
            reason: "",
            drain: true,
        }),
        End::Gone => None,
    };
    if let Some(request) = close {
        let _ = close_tx.send(request);
        let handshake = async {
            let _ = writer.await;
            if matches!(end, End::Closed(_)) {
                // Give the client the chance to answer our close frame before we drop TCP.
                while let Some(event) = events.recv().await {
                    if matches!(
                        event,
                        Inbound::Close(_) | Inbound::Gone | Inbound::Violation(_)
                    ) {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(close_timeout, handshake).await;
    }

    let (code, reason) = match end {
        End::Closed(code) => (code.code(), code.reason()),
        End::PeerClosed(code) => (code.unwrap_or(1005), "closed by client"),
        End::Gone => (1006, "connection lost"),
    };
    drop(admitted);
    info!(
        peer = %client_ip,
        user_id = user_id.as_deref().unwrap_or("-"),
        state = last_state,
        close_code = code,
        reason,
        duration_ms = started.elapsed().as_millis() as u64,
        "session ended"
    );
}

impl Session {
    async fn run(&mut self, events: &mut EventReceiver) -> End {
        let shutdown = self.gateway.shutdown.clone();
        loop {
            let deadline = self.deadline;
            let timer = self.timers.next_event();
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Closed(CloseCode::GoingAway),
                _ = self.outbox.evicted() => return End::Closed(CloseCode::SlowConsumer),
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    return End::Closed(match self.state {
                        State::AwaitAuth => CloseCode::AuthTimeout,
                        _ => CloseCode::JoinTimeout,
                    });
                }
                _ = sleep_until(timer) => {
                    if let Err(code) = self.on_timer() {
                        return End::Closed(code);
                    }
                    continue;
                }
                event = events.recv() => event.unwrap_or(Inbound::Gone),
            };
            match event {
                Inbound::Text(text) => {
                    self.timers.on_client_message(Instant::now());
                    if let Err(code) = self.on_text(&text).await {
                        return End::Closed(code);
                    }
                }
                Inbound::Binary(_) => return End::Closed(CloseCode::UnsupportedData),
                Inbound::Ping(payload) => {
                    self.outbox
                        .deliver(Outbound::Pong(SharedPayload::new(payload.into_vec())));
                }
                Inbound::Pong => self.timers.on_pong(),
                Inbound::Close(code) => return End::PeerClosed(code),
                Inbound::Violation(code) => return End::Closed(code),
                Inbound::Gone => return End::Gone,
            }
        }
    }

    /// Sends the next ping, or closes a socket that missed a pong, went idle, or whose token
    /// expired.
    fn on_timer(&mut self) -> Result<(), CloseCode> {
        let now = Instant::now();
        let timers = &mut self.timers;
        if timers.token_expiry.is_some_and(|due| due <= now) {
            return Err(CloseCode::TokenExpired);
        }
        if timers.pong_due.is_some_and(|due| due <= now) {
            // A half-open TCP peer, or one stalled in the middle of a frame, lands here.
            return Err(CloseCode::PongTimeout);
        }
        if timers.idle_deadline.is_some_and(|due| due <= now) {
            return Err(CloseCode::IdleTimeout);
        }
        if timers.next_ping <= now {
            timers.next_ping = now + timers.ping_interval;
            if timers.pong_due.is_none() {
                timers.pong_due = Some(now + timers.pong_timeout);
                self.outbox.deliver(Outbound::Ping);
            }
        }
        Ok(())
    }

    /// Handles one client frame; `Err` closes the socket with that code.
    async fn on_text(&mut self, text: &str) -> Result<(), CloseCode> {
        let frame = ClientFrame::decode(text).map_err(|err| {
            debug!(session = self.id, state = self.state.name(), %err, "frame refused");
            CloseCode::ProtocolViolation
        })?;
        match frame {
            // Boxed: their futures (a key fetch, a room opened on other nodes) are large, and
            // unboxed they would be part of every idle session's state.
            ClientFrame::Auth { token } => Box::pin(self.on_auth(&token)).await,
            ClientFrame::Join { username, room } => Box::pin(self.on_join(username, &room)).await,
            ClientFrame::Message { body } => self.on_message(&body),
            ClientFrame::UserLeave => self.on_leave(),
        }
    }

    /// The first `auth` authenticates; a later one refreshes the token (same user only).
    async fn on_auth(&mut self, token: &str) -> Result<(), CloseCode> {
        if !matches!(self.state, State::AwaitAuth) && !self.limiters.allow_control() {
            self.gateway.metrics.rate_limit("control");
            return Err(CloseCode::RateLimited);
        }
        let gateway = Arc::clone(&self.gateway);
        let metrics = &gateway.metrics;
        let verifying = Instant::now();
        // Verifying may wait for an identity provider's keys: the state's deadline and
        // shutdown still apply meanwhile.
        let deadline = self.deadline;
        let verified = tokio::select! {
            verified = gateway.verifier.verify(token) => verified,
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                return Err(match self.state {
                    State::AwaitAuth => CloseCode::AuthTimeout,
                    _ => CloseCode::JoinTimeout,
                });
            }
            _ = gateway.shutdown.cancelled() => return Err(CloseCode::GoingAway),
        };
        metrics
            .auth_duration
            .observe(verifying.elapsed().as_secs_f64());
        let identity = verified.map_err(|err| {
            debug!(session = self.id, token_bytes = token.len(), %err, "auth failed");
            metrics.auth_failure(err.label());
            CloseCode::AuthFailed
        })?;
        if !matches!(self.state, State::AwaitAuth) {
            return self.refresh(identity);
        }
        let user = Offender::User(Arc::clone(&identity.user_id));
        if self.gateway.bans.remaining(&user).is_some() {
            debug!(session = self.id, user_id = %identity.user_id, "banned user");
            metrics.auth_failure("banned_user");
            return Err(CloseCode::Banned);
        }
        let Some(slot) = self.gateway.admission.admit_user(&identity.user_id) else {
            debug!(session = self.id, user_id = %identity.user_id, "too many sessions");
            metrics.auth_failure("too_many_sessions");
            return Err(CloseCode::TooManySessions);
        };
        debug!(session = self.id, user_id = %identity.user_id, "authenticated");
        // The token stops being good at `exp` plus the leeway it was accepted with.
        self.timers.token_expiry = Some(token_deadline(
            identity.expires_at,
            self.gateway.config.jwt_leeway_secs,
        ));
        self.user_slot = Some(slot);
        self.transition("await_auth", State::AwaitJoin { identity });
        self.deadline = Some(Instant::now() + self.gateway.config.join_timeout());
        Ok(())
    }

    /// A fresh token for the same user extends the session to its expiry; one for anybody
    /// else is refused.
    fn refresh(&mut self, fresh: Identity) -> Result<(), CloseCode> {
        let Some(current) = self.state.identity_mut() else {
            unreachable!("refresh happens only after auth");
        };
        if current.user_id != fresh.user_id {
            debug!(session = self.id, "refresh with another user's token");
            self.gateway.metrics.auth_failure("wrong_subject");
            return Err(CloseCode::AuthFailed);
        }
        debug!(session = self.id, user_id = %fresh.user_id, "token refreshed");
        current.expires_at = fresh.expires_at;
        current.token_id = fresh.token_id;
        current.rooms = fresh.rooms;
        self.timers.token_expiry = Some(token_deadline(
            fresh.expires_at,
            self.gateway.config.jwt_leeway_secs,
        ));
        Ok(())
    }

    async fn on_join(&mut self, username: Option<String>, room: &str) -> Result<(), CloseCode> {
        let State::AwaitJoin { identity } = &self.state else {
            debug!(
                session = self.id,
                state = self.state.name(),
                "join refused in this state"
            );
            return Err(CloseCode::ProtocolViolation);
        };
        if !self.limiters.allow_control() {
            self.gateway.metrics.rate_limit("control");
            return Err(CloseCode::RateLimited);
        }
        let config = &self.gateway.config;
        if identity
            .rooms
            .as_ref()
            .is_some_and(|rooms| !rooms.allows(room))
        {
            debug!(
                session = self.id,
                room_bytes = room.len(),
                "room not in the token's rooms claim"
            );
            return Err(CloseCode::RoomNotAllowed);
        }
        validate_room(room, config.room_max_chars).map_err(|err| {
            debug!(session = self.id, room_bytes = room.len(), %err, "room refused");
            CloseCode::InvalidName
        })?;
        let display_name: Arc<str> = if config.trust_client_username {
            let name = username.ok_or(CloseCode::InvalidName)?;
            validate_username(&name, config.username_max_chars).map_err(|err| {
                debug!(session = self.id, name_bytes = name.len(), %err, "username refused");
                CloseCode::InvalidName
            })?;
            Arc::from(name)
        } else {
            Arc::clone(&identity.display_name)
        };
        let member = Member {
            session_id: self.id,
            user_id: Arc::clone(&identity.user_id),
            display_name: Arc::clone(&display_name),
            outbox: self.outbox.clone(),
        };
        let hub = Arc::clone(&self.gateway.hub);
        let membership = hub.join_everywhere(room, member).await.map_err(|_| {
            debug!(session = self.id, "room full");
            CloseCode::RoomFull
        })?;
        let State::AwaitJoin { identity } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        self.transition(
            "await_join",
            State::InRoom {
                identity,
                display_name,
                membership,
            },
        );
        self.deadline = None;
        if !hub.broker().is_connected() {
            // Joined while other nodes are out of reach: say so, as those already in rooms
            // were told.
            let notice = ServerFrame::notice(notice::DELIVERY_INTERRUPTED).encode();
            self.outbox.deliver(Outbound::text(notice));
        }
        Ok(())
    }

    fn on_message(&mut self, body: &str) -> Result<(), CloseCode> {
        let State::InRoom {
            identity,
            display_name,
            membership,
        } = &self.state
        else {
            debug!(
                session = self.id,
                state = self.state.name(),
                "message outside a room"
            );
            return Err(CloseCode::ProtocolViolation);
        };
        let metrics = &self.gateway.metrics;
        if !self.limiters.allow_message() {
            debug!(session = self.id, "message rate exceeded");
            metrics.rate_limit("message");
            return Err(CloseCode::RateLimited);
        }
        if !self.gateway.user_messages.allow(&identity.user_id) {
            debug!(session = self.id, "user message rate exceeded");
            metrics.rate_limit("user_message");
            return Err(CloseCode::RateLimited);
        }
        if body.is_empty() {
            // Documented: an empty message is dropped, not relayed (it still counts above).
            metrics.dropped("empty");
            return Ok(());
        }
        metrics.messages_received.inc();
        let frame = ServerFrame::message(body, display_name, &identity.user_id).encode();
        membership.publish(body, &frame);
        Ok(())
    }

    fn on_leave(&mut self) -> Result<(), CloseCode> {
        if !matches!(self.state, State::InRoom { .. }) {
            debug!(
                session = self.id,
                state = self.state.name(),
                "userleave outside a room"
            );
            return Err(CloseCode::ProtocolViolation);
        }
        if !self.limiters.allow_control() {
            self.gateway.metrics.rate_limit("control");
            return Err(CloseCode::RateLimited);
        }
        let State::InRoom { identity, .. } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        // The membership was dropped with the old state: the room has heard `userleave`.
        self.transition("in_room", State::AwaitJoin { identity });
        self.deadline = Some(Instant::now() + self.gateway.config.join_timeout());
        Ok(())
    }

    /// Enters `next`, leaving the state named `from` (the open-sessions gauge follows).
    fn transition(&mut self, from: &'static str, next: State) {
        self.state = next;
        self.gateway
            .metrics
            .session_state(Some(from), Some(self.state.name()));
    }
}

impl Drop for Session {
    /// The gauge of open sessions stays exact on every exit, a panic included.
    fn drop(&mut self) {
        self.gateway
            .metrics
            .session_state(Some(self.state.name()), None);
    }
}

/// Counts an abusive close against the client's IP and user; logs a ban when it causes one.
fn strike(
    gateway: &Gateway,
    ip: &crate::client_ip::IpKey,
    user: Option<&Arc<str>>,
    code: CloseCode,
) {
    let offenders =
        std::iter::once(Offender::Ip(*ip)).chain(user.map(|u| Offender::User(Arc::clone(u))));
    for offender in offenders {
        match gateway.bans.strike(offender.clone()) {
            StrikeOutcome::Banned => {
                warn!(
                    ?offender,
                    reason = code.reason(),
                    "banned after repeated abuse"
                );
                gateway.metrics.ban(match offender {
                    Offender::Ip(_) => "ip",
                    Offender::User(_) => "user",
                });
            }
            StrikeOutcome::NotTracked => warn!(
                reason = code.reason(),
                "strike not recorded: too many tracked clients"
            ),
            StrikeOutcome::Counted => {}
        }
    }
}

/// The longest a token may keep a session open, whatever its `exp` says (ten years): an
/// absurd `exp` must not overflow the clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// When a token accepted now stops being good: `exp` plus the leeway.
fn token_deadline(expires_at: u64, leeway_secs: u64) -> Instant {
    let left = expires_at
        .saturating_add(leeway_secs)
        .saturating_sub(unix_now());
    Instant::now() + Duration::from_secs(left).min(MAX_TOKEN_LIFETIME)
}

/// A deadline for a `select!` branch that is disabled anyway.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
