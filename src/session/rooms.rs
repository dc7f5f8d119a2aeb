//! Room frames: `join`, `userleave`, `message`, `members`, `typing` and `seen`, for
//! GarinChat's socket (its one room) and for v2's (the room each frame names).

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::{Answer, Handled, Joined, Refusal, Session, State};
use crate::auth::Identity;
use crate::history::{Position, Request};
use crate::hub::{Member, Membership};
use crate::metrics::labels::{DropReason, RateLimit};
use crate::names::{validate_room, validate_username};
use crate::outbox::Outbound;
use crate::protocol::{CloseCode, Dialect, ErrorCode, Since, Version};

impl Session {
    /// The membership a room frame is for: GarinChat's socket's one room, or the room a v2
    /// frame names. A frame before auth (or, for GarinChat's, before join) is 4004; a v2 room
    /// frame without a room is malformed (4004); one for a room the socket is not in is
    /// `not_joined`.
    pub(super) fn member_of(
        &self,
        frame: &'static str,
        room: Option<&str>,
    ) -> Result<&Membership, Refusal> {
        let State::Authed { rooms, .. } = &self.state else {
            return Err(self.out_of_state(frame).into());
        };
        let joined = match self.version {
            Version::GarinChat => rooms.first().ok_or_else(|| self.out_of_state(frame))?,
            Version::V2 => {
                let Some(room) = room else {
                    debug!(session = self.id, frame, "v2 room frame without a room");
                    return Err(CloseCode::ProtocolViolation.into());
                };
                rooms
                    .iter()
                    .find(|joined| joined.membership.room() == room)
                    .ok_or(Refusal::Error(ErrorCode::NotJoined))?
            }
        };
        Ok(&joined.membership)
    }

    /// `members`: answered with the room's members, under the control budget.
    pub(super) fn on_members(&mut self, room: Option<&str>, id: Option<&str>) -> Handled {
        self.member_of("members", room)?;
        self.spend_control()?;
        let frame = self.member_of("members", room)?.members(id);
        self.outbox.deliver(Outbound::text(frame));
        Ok(Answer::Sent)
    }

    /// `typing`: relayed (coalesced), under its own budget.
    pub(super) fn on_typing(&mut self, room: Option<&str>) -> Handled {
        self.member_of("typing", room)?;
        if !self.limiters.allow_typing(&self.gateway.quotas) {
            debug!(session = self.id, "typing rate exceeded");
            self.gateway.metrics.rate_limit(RateLimit::Typing);
            return Err(CloseCode::RateLimited.into());
        }
        self.member_of("typing", room)?.typing();
        Ok(Answer::Done)
    }

    /// `seen`: the read position recorded and relayed (coalesced), under the control budget.
    pub(super) fn on_seen(
        &mut self,
        room: Option<&str>,
        offset: u64,
        epoch: Option<&str>,
    ) -> Handled {
        self.member_of("seen", room)?;
        self.spend_control()?;
        self.member_of("seen", room)?
            .seen(offset, epoch)
            .map_err(|_| {
                debug!(
                    session = self.id,
                    offset, "seen past the room's last message"
                );
                Refusal::Error(ErrorCode::SeenAhead)
            })?;
        Ok(Answer::Done)
    }

    pub(super) async fn on_join(&mut self, asked: JoinRequest<'_>) -> Handled {
        let JoinRequest { room, id, .. } = asked;
        let State::Authed { identity, rooms } = &self.state else {
            return Err(self.out_of_state("join").into());
        };
        let settings = &self.gateway.session;
        let in_room = match self.version {
            Version::GarinChat => !rooms.is_empty(),
            Version::V2 => rooms.iter().any(|joined| joined.membership.room() == room),
        };
        if in_room {
            return Err(Refusal::Error(ErrorCode::AlreadyJoined));
        }
        self.spend_control()?;
        if rooms.len() >= settings.max_rooms_per_socket {
            return Err(Refusal::Error(ErrorCode::TooManyRooms));
        }
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
            return Err(Refusal::Error(ErrorCode::RoomNotAllowed));
        }
        let display_name = self.display_name(identity, room, asked.username)?;
        let slot = match self.version {
            Version::GarinChat => None,
            Version::V2 => Some(
                self.gateway
                    .sessions
                    .claim_room(&identity.user_id, settings.max_rooms_per_user)
                    .ok_or(Refusal::Error(ErrorCode::TooManyRoomsForUser))?,
            ),
        };
        let member = Member {
            session_id: self.id,
            user_id: Arc::clone(&identity.user_id),
            display_name,
            outbox: self.outbox.clone(),
            dialect: match self.version {
                Version::V2 => Dialect::V2,
                Version::GarinChat if asked.history.is_some() || asked.since.is_some() => {
                    Dialect::Extended
                }
                Version::GarinChat => Dialect::GarinChat,
            },
        };
        let hub = Arc::clone(&self.gateway.hub);
        let limits = hub.history_settings();
        let request = Request {
            // More than a room keeps is what it keeps.
            history: asked.history.map_or(limits.on_join, |wanted| {
                usize::try_from(wanted).map_or(limits.size, |wanted| wanted.min(limits.size))
            }),
            since: asked.since.map(|since| Position {
                epoch: Arc::from(since.epoch.as_str()),
                offset: since.offset,
            }),
        };
        let membership = hub
            .join_everywhere(room, member, &request, id)
            .await
            .map_err(|_| {
                debug!(session = self.id, "room full");
                Refusal::Error(ErrorCode::RoomFull)
            })?;
        let before = self.state.label();
        if let State::Authed { rooms, .. } = &mut self.state {
            // One room at a time: a Vec's first growth is to four, which every idle GarinChat
            // socket (one room, for good) would carry as three empty slots.
            rooms.reserve_exact(1);
            rooms.push(Joined {
                membership,
                _slot: slot,
            });
        }
        self.relabel(before);
        self.deadline = None;
        Ok(Answer::Sent)
    }

    /// The name the joiner goes by: the token's, or (`TRUST_CLIENT_USERNAME`) the one it sent.
    fn display_name(
        &self,
        identity: &Identity,
        room: &str,
        username: Option<&str>,
    ) -> Result<Arc<str>, Refusal> {
        let names = &self.gateway.session.names;
        validate_room(room, names.room_max_chars).map_err(|err| {
            debug!(session = self.id, room_bytes = room.len(), %err, "room refused");
            Refusal::Error(ErrorCode::InvalidName)
        })?;
        if !names.trust_client_username {
            return Ok(Arc::clone(&identity.display_name));
        }
        let name = username.ok_or(Refusal::Error(ErrorCode::InvalidName))?;
        validate_username(name, names.username_max_chars).map_err(|err| {
            debug!(session = self.id, name_bytes = name.len(), %err, "username refused");
            Refusal::Error(ErrorCode::InvalidName)
        })?;
        Ok(Arc::from(name))
    }

    pub(super) fn on_message(&mut self, room: Option<&str>, body: &str) -> Handled {
        self.member_of("message", room)?;
        let user = Arc::clone(&self.state.identity().expect("in a room").user_id);
        self.spend_message(&user)?;
        if body.is_empty() {
            // Documented: an empty message is dropped, not relayed (it still counts above).
            self.gateway.metrics.dropped(DropReason::Empty);
            return Ok(Answer::Done);
        }
        self.gateway.hub.broker().count_message(&user);
        self.gateway.metrics.messages_received.inc();
        self.member_of("message", room)?.publish(body);
        Ok(Answer::Done)
    }

    pub(super) fn on_leave(&mut self, room: Option<&str>) -> Handled {
        let leaving = self.member_of("userleave", room)?.room().to_owned();
        self.spend_control()?;
        let before = self.state.label();
        if let State::Authed { rooms, .. } = &mut self.state {
            // Dropping the membership leaves the room: it hears `userleave` at once.
            rooms.retain(|joined| joined.membership.room() != leaving);
        }
        self.relabel(before);
        // GarinChat's socket must join again in time; a v2 socket may stay in no room.
        if self.version == Version::GarinChat {
            self.deadline = Some(Instant::now() + self.gateway.session.deadlines.join);
        }
        Ok(Answer::Done)
    }
}

/// What a `join` asks for.
pub(super) struct JoinRequest<'a> {
    pub username: Option<&'a str>,
    pub room: &'a str,
    pub history: Option<u64>,
    pub since: Option<&'a Since>,
    /// The request id the acknowledgement answers (v2).
    pub id: Option<&'a str>,
}
