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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::WebSocket;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::hub::{Member, Membership, SessionId};
use crate::limits::SessionLimiters;
use crate::names::{validate_room, validate_username};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{ClientFrame, CloseCode, ServerFrame};
use reader::{Inbound, ReadLimits};
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
}

/// Runs a session on an upgraded socket until it closes.
pub async fn run<S>(gateway: Arc<Gateway>, ws: WebSocket<S>, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &gateway.config;
    let started = Instant::now();
    let (read_half, write_half) = tokio::io::split(ws.into_inner());

    let (outbox, outbox_rx) = Outbox::new(config.outbound_queue_frames);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = AbortOnDropHandle::new(tokio::spawn(writer::run(write_half, outbox_rx, close_rx)));

    let limits = ReadLimits {
        max_message_bytes: config.max_message_bytes,
        max_fragments: config.max_fragments,
    };
    let (events_tx, mut events) = mpsc::channel(READER_QUEUE);
    let _reader = AbortOnDropHandle::new(tokio::spawn(reader::run(read_half, limits, events_tx)));

    let mut session = Session {
        id: gateway.next_session_id(),
        gateway: Arc::clone(&gateway),
        outbox,
        limiters: SessionLimiters::new(gateway.quotas),
        state: State::AwaitAuth,
        deadline: Some(started + config.auth_timeout()),
    };
    let end = session.run(&mut events).await;

    let user_id = session.state.identity().map(|id| Arc::clone(&id.user_id));
    let last_state = session.state.name();
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
    info!(
        peer = %peer.ip(),
        user_id = user_id.as_deref().unwrap_or("-"),
        state = last_state,
        close_code = code,
        reason,
        duration_ms = started.elapsed().as_millis() as u64,
        "session ended"
    );
}

impl Session {
    async fn run(&mut self, events: &mut mpsc::Receiver<Inbound>) -> End {
        let shutdown = self.gateway.shutdown.clone();
        loop {
            let deadline = self.deadline;
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
                event = events.recv() => event.unwrap_or(Inbound::Gone),
            };
            match event {
                Inbound::Text(text) => {
                    if let Err(code) = self.on_text(&text) {
                        return End::Closed(code);
                    }
                }
                Inbound::Binary => return End::Closed(CloseCode::UnsupportedData),
                Inbound::Ping(payload) => {
                    self.outbox.deliver(Outbound::Pong(payload));
                }
                Inbound::Pong => {}
                Inbound::Close(code) => return End::PeerClosed(code),
                Inbound::Violation(code) => return End::Closed(code),
                Inbound::Gone => return End::Gone,
            }
        }
    }

    /// Handles one client frame; `Err` closes the socket with that code.
    fn on_text(&mut self, text: &str) -> Result<(), CloseCode> {
        let frame = ClientFrame::decode(text).map_err(|err| {
            debug!(session = self.id, state = self.state.name(), %err, "frame refused");
            CloseCode::ProtocolViolation
        })?;
        match frame {
            ClientFrame::Auth { token } => self.on_auth(&token),
            ClientFrame::Join { username, room } => self.on_join(username, &room),
            ClientFrame::Message { body } => self.on_message(&body),
            ClientFrame::UserLeave => self.on_leave(),
        }
    }

    fn on_auth(&mut self, token: &str) -> Result<(), CloseCode> {
        if !matches!(self.state, State::AwaitAuth) {
            debug!(session = self.id, state = self.state.name(), "second auth");
            return Err(CloseCode::ProtocolViolation);
        }
        let identity = self.gateway.verifier.verify(token).map_err(|err| {
            debug!(session = self.id, token_bytes = token.len(), %err, "auth failed");
            CloseCode::AuthFailed
        })?;
        debug!(session = self.id, user_id = %identity.user_id, "authenticated");
        self.state = State::AwaitJoin { identity };
        self.deadline = Some(Instant::now() + self.gateway.config.join_timeout());
        Ok(())
    }

    fn on_join(&mut self, username: Option<String>, room: &str) -> Result<(), CloseCode> {
        let State::AwaitJoin { identity } = &self.state else {
            debug!(
                session = self.id,
                state = self.state.name(),
                "join refused in this state"
            );
            return Err(CloseCode::ProtocolViolation);
        };
        if !self.limiters.allow_control() {
            return Err(CloseCode::RateLimited);
        }
        let config = &self.gateway.config;
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
        let membership = self.gateway.hub.join(room, member);
        let State::AwaitJoin { identity } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        self.state = State::InRoom {
            identity,
            display_name,
            membership,
        };
        self.deadline = None;
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
        if !self.limiters.allow_message() {
            debug!(session = self.id, "message rate exceeded");
            return Err(CloseCode::RateLimited);
        }
        if body.is_empty() {
            // Documented: an empty message is dropped, not relayed (it still counts above).
            return Ok(());
        }
        let frame = ServerFrame::message(body, display_name, &identity.user_id).encode();
        membership.publish(&frame);
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
            return Err(CloseCode::RateLimited);
        }
        let State::InRoom { identity, .. } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        // The membership was dropped with the old state: the room has heard `userleave`.
        self.state = State::AwaitJoin { identity };
        self.deadline = Some(Instant::now() + self.gateway.config.join_timeout());
        Ok(())
    }
}

/// A deadline for a `select!` branch that is disabled anyway.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
