//! One socket's session: the state machine from upgrade to close.
//!
//! ```text
//! AwaitAuth ──auth (AUTH_TIMEOUT_MS)──▶ AwaitJoin ──join (JOIN_TIMEOUT_MS)──▶ InRoom
//!                                           ▲                                   │
//!                                           └────────────── userleave ──────────┘
//! ```
//!
//! A GarinChat socket is in at most one room. A protocol v2 socket (`docs/PROTOCOL.md`) joins
//! up to `MAX_ROOMS_PER_SOCKET` rooms ([`rooms`]), sends direct messages ([`direct`]), names
//! the room in each frame,
//! and its join deadline runs only until its first join. Every frame is a request: what
//! concerns one room or one frame is refused with an `error` frame in v2 (a [`Refusal::Error`],
//! which a GarinChat socket gets as the close code beside it), what ends the session closes.
//!
//! One task per socket: this session owns its [`Socket`], and `select!`s over cancel-safe
//! branches only: the socket (which writes the outbox as it is polled and returns what the
//! client sent, or a close asked for through the outbox: a ban, a kick, a full queue, or the
//! gateway shutting down), and one timer for the state's deadline and the [`timers`]. While a
//! request is handled (which may wait on other nodes), the socket keeps writing its queue.
//!
//! Every exit is one [`End`](close::End); the member leaves its room before the close frame is
//! written (so the room hears `userleave` at once), then the [`close`] handshake gets
//! `CLOSE_TIMEOUT_MS`.

mod auth;
mod close;
mod direct;
mod rooms;
pub(crate) mod settings;
mod timers;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use crate::admission::Admitted;
use crate::auth::Identity;
use crate::broker::SessionClaim;
use crate::client_ip::IpKey;
use crate::hub::Membership;
use crate::ids::SessionId;
use crate::limits::SessionLimiters;
use crate::metrics::labels::{RateLimit, SessionState};
use crate::names::validate_room;
use crate::outbox::{Outbound, Outbox, SharedPayload};
use crate::protocol::{ClientFrame, ClientRequest, CloseCode, ErrorCode, ServerFrame, Version};
use crate::sessions::{Registration, RoomSlot, TokenId};
use crate::socket::reader::Inbound;
use crate::socket::{Event, Socket};
use crate::state::Gateway;
use close::{End, Summary};
use rooms::JoinRequest;
use timers::{Due, Timers};

/// Where a session is in the protocol.
enum State {
    AwaitAuth,
    /// Authenticated, in `rooms` (none: awaiting a join; a GarinChat socket has at most one).
    Authed {
        identity: Identity,
        rooms: Vec<Joined>,
    },
}

/// A room the socket is in.
struct Joined {
    membership: Membership,
    /// The user's place under `MAX_ROOMS_PER_USER` (v2 sockets).
    _slot: Option<RoomSlot>,
}

impl State {
    fn label(&self) -> SessionState {
        match self {
            State::AwaitAuth => SessionState::AwaitAuth,
            State::Authed { rooms, .. } if rooms.is_empty() => SessionState::AwaitJoin,
            State::Authed { .. } => SessionState::InRoom,
        }
    }

    fn name(&self) -> &'static str {
        self.label().into()
    }

    fn identity(&self) -> Option<&Identity> {
        match self {
            State::AwaitAuth => None,
            State::Authed { identity, .. } => Some(identity),
        }
    }

    fn identity_mut(&mut self) -> Option<&mut Identity> {
        match self {
            State::AwaitAuth => None,
            State::Authed { identity, .. } => Some(identity),
        }
    }
}

/// Why a frame was not done.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The session ends with this code.
    Close(CloseCode),
    /// The request is refused and the session goes on (a GarinChat socket closes instead).
    Error(ErrorCode),
}

impl From<CloseCode> for Refusal {
    fn from(code: CloseCode) -> Refusal {
        Refusal::Close(code)
    }
}

/// What a done request has been answered with.
enum Answer {
    /// Nothing yet: a v2 request with an id gets `ok`.
    Done,
    /// Its own answer (`authed`, the join acknowledgement, `members`) is on its way.
    Sent,
}

type Handled = Result<Answer, Refusal>;

struct Session {
    id: SessionId,
    gateway: Arc<Gateway>,
    /// GarinChat's protocol or v2, chosen at the upgrade.
    version: Version,
    outbox: Outbox,
    limiters: SessionLimiters,
    state: State,
    /// When the current state's deadline (auth or join) passes; `None` once joined.
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
    /// The request being handled has spent the control budget (its error need not again).
    spent_control: AtomicBool,
}

/// Runs a session on an upgraded connection until it closes. `early`: bytes the client sent
/// behind its upgrade request, already read.
pub(crate) async fn run<S>(
    gateway: Arc<Gateway>,
    stream: S,
    early: Vec<u8>,
    client_ip: IpAddr,
    admitted: Admitted,
    version: Version,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &gateway.session;
    let started = Instant::now();
    let (outbox, outbox_rx) = Outbox::new(
        settings.outbound_queue_frames.get(),
        settings.max_outbound_bytes,
    );
    let mut socket = Socket::new(
        stream,
        early,
        settings.read,
        outbox_rx,
        Some(Arc::clone(&gateway.metrics)),
    );

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
        version,
        outbox,
        limiters: SessionLimiters::new(&gateway.quotas),
        state: State::AwaitAuth,
        deadline: Some(started + settings.deadlines.auth),
        user: None,
        token: None,
        _claim: None,
        timers: Timers::new(&settings.keepalive, started),
        spent_control: AtomicBool::new(false),
    };
    let end = session.run(&mut socket).await;

    let user_id = session.state.identity().map(|id| Arc::clone(&id.user_id));
    let state = session.state.name();
    end.record(&gateway, admitted.ip.key(), user_id.as_ref());
    // Leave the room first, so the others hear `userleave` before the close handshake.
    drop(session);
    close::handshake(end, &mut socket, settings.deadlines.close).await;
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
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, socket: &mut Socket<S>) -> End {
        // Registered under its address already: from here on, a shutdown closes it through
        // its outbox, so only one that began before this session registered is seen here.
        if self.gateway.stopping.is_cancelled() {
            return End::Closed(CloseCode::GoingAway);
        }
        loop {
            // One timer for the state's deadline and the keepalive clocks: each is a timer
            // entry in every idle session's state.
            let wake = self.deadline.map_or(self.timers.next_event(), |deadline| {
                deadline.min(self.timers.next_event())
            });
            let event = tokio::select! {
                biased;
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|deadline| deadline <= now) {
                        return End::Closed(self.deadline_code());
                    }
                    match self.timers.due(&self.gateway.session.keepalive, now) {
                        Ok(Due::Ping(payload)) => {
                            self.outbox.deliver(Outbound::Ping(payload));
                        }
                        Ok(Due::Nothing) => {}
                        Err(code) => return End::Closed(code),
                    }
                    continue;
                }
                event = socket.next() => match event {
                    Event::Client(event) => event,
                    Event::Closing(code) => return End::Closed(code),
                },
            };
            match event {
                Inbound::Text(text) => {
                    let keepalive = &self.gateway.session.keepalive;
                    self.timers.on_client_message(keepalive, Instant::now());
                    if let Err(code) = socket.writing_while(self.on_text(&text)).await {
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
        let request = match ClientRequest::decode(text, self.version) {
            Ok(request) => request,
            Err(_) if oversized => return Err(CloseCode::MessageTooBig),
            Err(err) => {
                debug!(session = self.id, state = self.state.name(), %err, "frame refused");
                return Err(CloseCode::ProtocolViolation);
            }
        };
        if oversized && !matches!(request.frame, ClientFrame::Auth { .. }) {
            return Err(CloseCode::MessageTooBig);
        }
        // GarinChat's clients choose no ids, and get no answers but its own.
        let id = match self.version {
            Version::GarinChat => None,
            Version::V2 => request.id.as_deref(),
        };
        let frame = &request.frame;
        self.spent_control.store(false, Ordering::Relaxed);
        match self.handle(frame, id).await {
            Ok(Answer::Done) => {
                if id.is_some() {
                    self.answer(ServerFrame::ok().answering(id));
                }
                Ok(())
            }
            Ok(Answer::Sent) => Ok(()),
            Err(Refusal::Close(code)) => Err(code),
            Err(Refusal::Error(code)) => {
                debug!(
                    session = self.id,
                    frame = frame.kind(),
                    code = code.as_str(),
                    "request refused"
                );
                match self.version {
                    Version::GarinChat => Err(code
                        .garinchat_close()
                        .unwrap_or(CloseCode::ProtocolViolation)),
                    Version::V2 => {
                        // Refusals are answered, so each spends the control budget once (if
                        // the request did not already): repeating them is no free loop.
                        if !self.spent_control.load(Ordering::Relaxed) {
                            self.spend_control()?;
                        }
                        // A room name that breaks the rules is not echoed back at any length.
                        let names = &self.gateway.session.names;
                        let room = frame
                            .room()
                            .filter(|room| validate_room(room, names.room_max_chars).is_ok());
                        self.answer(ServerFrame::error(code).answering(id).in_room(room));
                        Ok(())
                    }
                }
            }
        }
    }

    /// Does what one frame asks.
    async fn handle(&mut self, frame: &ClientFrame, id: Option<&str>) -> Handled {
        match frame {
            // Boxed: their futures (a key fetch, a room opened on other nodes, a directory
            // query) are large, and unboxed they would be part of every idle session's state.
            ClientFrame::Auth { token } => {
                Box::pin(self.on_auth(token)).await?;
                self.on_authed(id)
            }
            ClientFrame::Join {
                username,
                room,
                history,
                since,
            } => {
                let asked = JoinRequest {
                    username: username.as_deref(),
                    room,
                    history: *history,
                    since: since.as_ref(),
                    id,
                };
                Box::pin(self.on_join(asked)).await
            }
            ClientFrame::Message { room, body } => self.on_message(room.as_deref(), body),
            ClientFrame::UserLeave { room } => self.on_leave(room.as_deref()),
            ClientFrame::Members { room } => self.on_members(room.as_deref(), id),
            ClientFrame::Typing { room } => self.on_typing(room.as_deref()),
            ClientFrame::Seen {
                room,
                offset,
                epoch,
            } => self.on_seen(room.as_deref(), *offset, epoch.as_deref()),
            ClientFrame::Direct { to, body } => Box::pin(self.on_direct(to, body)).await,
        }
    }

    /// Queues an answer to this socket.
    fn answer(&self, frame: ServerFrame<'_>) {
        self.outbox.deliver(Outbound::text(frame.encode()));
    }

    /// After an `auth`: a v2 socket is told who it is now (GarinChat's hears nothing).
    fn on_authed(&self, id: Option<&str>) -> Handled {
        if self.version == Version::GarinChat {
            return Ok(Answer::Done);
        }
        let identity = self.state.identity().expect("authenticated");
        self.answer(ServerFrame::authed(&identity.display_name, &identity.user_id).answering(id));
        Ok(Answer::Sent)
    }

    /// Spends one unit of the control budget (joins, leaves, token refreshes); over it, the
    /// socket is closed with 4006.
    fn spend_control(&self) -> Result<(), CloseCode> {
        self.spent_control.store(true, Ordering::Relaxed);
        if self.limiters.allow_control() {
            return Ok(());
        }
        self.gateway.metrics.rate_limit(RateLimit::Control);
        Err(CloseCode::RateLimited)
    }

    /// Spends one unit of the socket's and the user's message budgets (a chat message or a
    /// direct one); over either, 4006.
    fn spend_message(&self, user: &Arc<str>) -> Result<(), CloseCode> {
        let metrics = &self.gateway.metrics;
        if !self.limiters.allow_message() {
            debug!(session = self.id, "message rate exceeded");
            metrics.rate_limit(RateLimit::Message);
            return Err(CloseCode::RateLimited);
        }
        let broker = self.gateway.hub.broker();
        if !self.gateway.user_messages.allow(user) || broker.over_rate(user) {
            debug!(session = self.id, "user message rate exceeded");
            metrics.rate_limit(RateLimit::UserMessage);
            return Err(CloseCode::RateLimited);
        }
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
        self.relabel(from);
    }

    /// Moves the open-sessions gauge from `before` to the current state, if it changed.
    fn relabel(&self, before: SessionState) {
        let now = self.state.label();
        if now != before {
            self.gateway.metrics.session_state(Some(before), Some(now));
        }
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
