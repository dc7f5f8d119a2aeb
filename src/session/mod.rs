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
//! branches: reader events, the outbox's eviction signal, the state's deadline, the
//! [`timers`] and shutdown. The reader and writer are aborted when the session ends, so no
//! task outlives its socket.
//!
//! Every exit is one [`End`](close::End); the member leaves its room before the close frame is
//! written (so the room hears `userleave` at once), then the [`close`] handshake gets
//! `CLOSE_TIMEOUT_MS`.

mod auth;
mod close;
pub mod reader;
pub(crate) mod settings;
mod timers;
pub mod writer;

use std::net::IpAddr;
use std::sync::Arc;

use fastwebsockets::WebSocket;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use crate::admission::Admitted;
use crate::auth::Identity;
use crate::broker::SessionClaim;
use crate::client_ip::IpKey;
use crate::history::{Position, Request};
use crate::hub::{Member, Membership};
use crate::ids::SessionId;
use crate::limits::SessionLimiters;
use crate::metrics::labels::{DropReason, RateLimit, SessionState};
use crate::names::{validate_room, validate_username};
use crate::outbox::{Outbound, Outbox, SharedPayload};
use crate::protocol::{ClientFrame, CloseCode, Since};
use crate::sessions::{Registration, TokenId};
use crate::state::Gateway;
use close::{End, Summary};
use reader::{EventReceiver, Inbound};
use timers::{far_future, Due, Timers};

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
        membership: Membership,
    },
}

impl State {
    fn label(&self) -> SessionState {
        match self {
            State::AwaitAuth => SessionState::AwaitAuth,
            State::AwaitJoin { .. } => SessionState::AwaitJoin,
            State::InRoom { .. } => SessionState::InRoom,
        }
    }

    fn name(&self) -> &'static str {
        self.label().into()
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

struct Session {
    id: SessionId,
    gateway: Arc<Gateway>,
    outbox: Outbox,
    limiters: SessionLimiters,
    state: State,
    /// When the current state's deadline (auth or join) passes; `None` in a room.
    deadline: Option<Instant>,
    /// This session under its client address, so a ban of the address closes it.
    _address: Registration<IpKey>,
    /// This session under its user (and the user's place under `MAX_SESSIONS_PER_USER`), once
    /// authenticated.
    user: Option<Registration<Arc<str>>>,
    /// This session under its token's id, so a revocation of the token closes it.
    token: Option<Registration<TokenId>>,
    /// The user's place under `MAX_SESSIONS_PER_USER` counted on every node.
    _claim: Option<SessionClaim>,
    timers: Timers,
}

/// Runs a session on an upgraded socket until it closes.
pub(crate) async fn run<S>(
    gateway: Arc<Gateway>,
    ws: WebSocket<S>,
    client_ip: IpAddr,
    admitted: Admitted,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &gateway.session;
    let started = Instant::now();
    let (read_half, write_half) = tokio::io::split(ws.into_inner());

    let (outbox, outbox_rx) = Outbox::new(
        settings.outbound_queue_frames.get(),
        settings.max_outbound_bytes,
    );
    let (close_tx, close_rx) = oneshot::channel();
    let writer = AbortOnDropHandle::new(tokio::spawn(writer::run(
        write_half,
        outbox_rx,
        close_rx,
        Some(Arc::clone(&gateway.metrics)),
    )));

    let (events_tx, mut events) = reader::events(READER_QUEUE);
    let _reader = AbortOnDropHandle::new(tokio::spawn(reader::run(
        read_half,
        settings.read,
        events_tx,
    )));

    gateway
        .metrics
        .session_state(None, Some(SessionState::AwaitAuth));
    let id = gateway.next_session_id();
    let mut session = Session {
        id,
        _address: gateway
            .sessions
            .register_ip(*admitted.ip.key(), id, &outbox),
        gateway: Arc::clone(&gateway),
        outbox,
        limiters: SessionLimiters::new(&gateway.quotas),
        state: State::AwaitAuth,
        deadline: Some(started + settings.deadlines.auth),
        user: None,
        token: None,
        _claim: None,
        timers: Timers::new(&settings.keepalive, started),
    };
    let end = session.run(&mut events).await;

    let user_id = session.state.identity().map(|id| Arc::clone(&id.user_id));
    let state = session.state.name();
    end.record(&gateway, admitted.ip.key(), user_id.as_ref());
    // Leave the room first, so the others hear `userleave` before the close handshake.
    drop(session);
    close::handshake(end, writer, close_tx, &mut events, settings.deadlines.close).await;
    drop(admitted);
    Summary {
        peer: client_ip,
        user_id: user_id.as_deref(),
        state,
        end,
        duration: started.elapsed(),
    }
    .log();
}

impl Session {
    async fn run(&mut self, events: &mut EventReceiver) -> End {
        let stopping = self.gateway.stopping.clone();
        loop {
            let deadline = self.deadline;
            let timer = self.timers.next_event();
            let event = tokio::select! {
                biased;
                _ = stopping.cancelled() => return End::Closed(CloseCode::GoingAway),
                code = self.outbox.closed() => return End::Closed(code),
                _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                    return End::Closed(self.deadline_code());
                }
                _ = sleep_until(timer) => {
                    match self.timers.due(Instant::now()) {
                        Ok(Due::Ping(payload)) => {
                            self.outbox.deliver(Outbound::Ping(payload));
                        }
                        Ok(Due::Nothing) => {}
                        Err(code) => return End::Closed(code),
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
                Inbound::Pong(payload) => self.timers.on_pong(&payload),
                Inbound::Close(code) => return End::PeerClosed(code),
                Inbound::Violation(code) => return End::Closed(code),
                Inbound::Gone => return End::Gone,
            }
        }
    }

    /// The close code for the current state's deadline.
    fn deadline_code(&self) -> CloseCode {
        match self.state {
            State::AwaitAuth => CloseCode::AuthTimeout,
            _ => CloseCode::JoinTimeout,
        }
    }

    /// Handles one client frame; `Err` closes the socket with that code.
    async fn on_text(&mut self, text: &str) -> Result<(), CloseCode> {
        // The reader lets `auth` frames grow to a token's size; every other frame is held to
        // `MAX_MESSAGE_BYTES`.
        let oversized = text.len() > self.gateway.session.max_message_bytes;
        let frame = match ClientFrame::decode(text) {
            Ok(frame) => frame,
            Err(_) if oversized => return Err(CloseCode::MessageTooBig),
            Err(err) => {
                debug!(session = self.id, state = self.state.name(), %err, "frame refused");
                return Err(CloseCode::ProtocolViolation);
            }
        };
        if oversized && !matches!(frame, ClientFrame::Auth { .. }) {
            return Err(CloseCode::MessageTooBig);
        }
        match frame {
            // Boxed: their futures (a key fetch, a room opened on other nodes) are large, and
            // unboxed they would be part of every idle session's state.
            ClientFrame::Auth { token } => Box::pin(self.on_auth(&token)).await,
            ClientFrame::Join {
                username,
                room,
                history,
                since,
            } => Box::pin(self.on_join(username, &room, history, since)).await,
            ClientFrame::Message { body } => self.on_message(&body),
            ClientFrame::UserLeave => self.on_leave(),
            ClientFrame::Members => self.on_members(),
            ClientFrame::Typing => self.on_typing(),
            ClientFrame::Seen { offset, epoch } => self.on_seen(offset, epoch.as_deref()),
        }
    }

    /// The membership, or 4004 for a frame that needs one.
    fn membership(&self, frame: &'static str) -> Result<&Membership, CloseCode> {
        match &self.state {
            State::InRoom { membership, .. } => Ok(membership),
            _ => Err(self.out_of_state(frame)),
        }
    }

    /// `members`: answered with the room's members, under the control budget.
    fn on_members(&mut self) -> Result<(), CloseCode> {
        self.membership("members")?;
        self.spend_control()?;
        let frame = self.membership("members")?.members();
        self.outbox.deliver(Outbound::text(frame));
        Ok(())
    }

    /// `typing`: relayed (coalesced), under its own budget.
    fn on_typing(&mut self) -> Result<(), CloseCode> {
        self.membership("typing")?;
        if !self.limiters.allow_typing(&self.gateway.quotas) {
            debug!(session = self.id, "typing rate exceeded");
            self.gateway.metrics.rate_limit(RateLimit::Typing);
            return Err(CloseCode::RateLimited);
        }
        self.membership("typing")?.typing();
        Ok(())
    }

    /// `seen`: the read position recorded and relayed (coalesced), under the control budget.
    fn on_seen(&mut self, offset: u64, epoch: Option<&str>) -> Result<(), CloseCode> {
        self.membership("seen")?;
        self.spend_control()?;
        self.membership("seen")?.seen(offset, epoch).map_err(|_| {
            debug!(
                session = self.id,
                offset, "seen past the room's last message"
            );
            CloseCode::ProtocolViolation
        })
    }

    /// Spends one unit of the control budget (joins, leaves, token refreshes); over it, the
    /// socket is closed with 4006.
    fn spend_control(&self) -> Result<(), CloseCode> {
        if self.limiters.allow_control() {
            return Ok(());
        }
        self.gateway.metrics.rate_limit(RateLimit::Control);
        Err(CloseCode::RateLimited)
    }

    async fn on_join(
        &mut self,
        username: Option<String>,
        room: &str,
        history: Option<u64>,
        since: Option<Since>,
    ) -> Result<(), CloseCode> {
        let State::AwaitJoin { identity } = &self.state else {
            return Err(self.out_of_state("join"));
        };
        self.spend_control()?;
        let names = &self.gateway.session.names;
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
        validate_room(room, names.room_max_chars).map_err(|err| {
            debug!(session = self.id, room_bytes = room.len(), %err, "room refused");
            CloseCode::InvalidName
        })?;
        let display_name: Arc<str> = if names.trust_client_username {
            let name = username.ok_or(CloseCode::InvalidName)?;
            validate_username(&name, names.username_max_chars).map_err(|err| {
                debug!(session = self.id, name_bytes = name.len(), %err, "username refused");
                CloseCode::InvalidName
            })?;
            Arc::from(name)
        } else {
            Arc::clone(&identity.display_name)
        };
        let hub = Arc::clone(&self.gateway.hub);
        let member = Member {
            session_id: self.id,
            user_id: Arc::clone(&identity.user_id),
            display_name,
            outbox: self.outbox.clone(),
            extended: history.is_some() || since.is_some(),
        };
        let limits = hub.history_settings();
        let request = Request {
            // More than a room keeps is what it keeps.
            history: history.map_or(limits.on_join, |wanted| {
                usize::try_from(wanted).map_or(limits.size, |wanted| wanted.min(limits.size))
            }),
            since: since.map(|since| Position {
                epoch: Arc::from(since.epoch),
                offset: since.offset,
            }),
        };
        let membership = hub
            .join_everywhere(room, member, &request)
            .await
            .map_err(|_| {
                debug!(session = self.id, "room full");
                CloseCode::RoomFull
            })?;
        let State::AwaitJoin { identity } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        self.enter(
            SessionState::AwaitJoin,
            State::InRoom {
                identity,
                membership,
            },
        );
        self.deadline = None;
        Ok(())
    }

    fn on_message(&mut self, body: &str) -> Result<(), CloseCode> {
        let State::InRoom {
            identity,
            membership,
        } = &self.state
        else {
            return Err(self.out_of_state("message"));
        };
        let metrics = &self.gateway.metrics;
        if !self.limiters.allow_message() {
            debug!(session = self.id, "message rate exceeded");
            metrics.rate_limit(RateLimit::Message);
            return Err(CloseCode::RateLimited);
        }
        let broker = self.gateway.hub.broker();
        if !self.gateway.user_messages.allow(&identity.user_id)
            || broker.over_rate(&identity.user_id)
        {
            debug!(session = self.id, "user message rate exceeded");
            metrics.rate_limit(RateLimit::UserMessage);
            return Err(CloseCode::RateLimited);
        }
        if body.is_empty() {
            // Documented: an empty message is dropped, not relayed (it still counts above).
            metrics.dropped(DropReason::Empty);
            return Ok(());
        }
        broker.count_message(&identity.user_id);
        metrics.messages_received.inc();
        membership.publish(body);
        Ok(())
    }

    fn on_leave(&mut self) -> Result<(), CloseCode> {
        if !matches!(self.state, State::InRoom { .. }) {
            return Err(self.out_of_state("userleave"));
        }
        self.spend_control()?;
        let State::InRoom { identity, .. } = std::mem::replace(&mut self.state, State::AwaitAuth)
        else {
            unreachable!("checked at the top");
        };
        // The membership was dropped with the old state: the room has heard `userleave`.
        self.enter(SessionState::InRoom, State::AwaitJoin { identity });
        self.deadline = Some(Instant::now() + self.gateway.session.deadlines.join);
        Ok(())
    }

    /// A frame not allowed in the current state: logged, then 4004.
    fn out_of_state(&self, frame: &'static str) -> CloseCode {
        debug!(
            session = self.id,
            state = self.state.name(),
            frame,
            "frame refused in this state"
        );
        CloseCode::ProtocolViolation
    }

    /// Enters `next`, leaving the state `from` (the open-sessions gauge follows).
    fn enter(&mut self, from: SessionState, next: State) {
        self.state = next;
        self.gateway
            .metrics
            .session_state(Some(from), Some(self.state.label()));
    }
}

impl Drop for Session {
    /// The gauge of open sessions stays exact on every exit, a panic included.
    fn drop(&mut self) {
        self.gateway
            .metrics
            .session_state(Some(self.state.label()), None);
    }
}

#[cfg(test)]
mod tests;
