//! Rooms: their members on this node, what this node knows of their members on other nodes,
//! their history, and bounded fan-out.
//!
//! A room exists while it has local members: created on the first join, dropped with the last
//! leave. (With a Redis broker it may also exist for a moment before the first join, holding the
//! other nodes' members that [`Broker::open_room`] fetched.) Membership changes take the room's
//! map-shard write lock, so a `join`/`userleave` frame and the `totalUsers` it carries are
//! always consistent with every other change, and the broker hears of them in that order.
//! Broadcasts only `try_send` into each member's [`Outbox`], so fan-out never awaits a socket.
//!
//! With history on, chat messages are numbered (see [`crate::history`]) and delivered in
//! offset order under the room's write lock: by this node on its own, or, with Redis, as they
//! come back from Redis (this node's own included), so every node delivers one order. A member
//! that joined with the room extensions gets frames with offsets, `typing` and `seen` frames
//! and the history notices; every other member gets GarinChat's frames byte for byte.
//!
//! [`Membership`] is the only way into a room, and leaving happens in its `Drop`: every exit
//! path of a session (clean close, error, kick, shutdown, even a panic) removes the member
//! exactly once and tells the others.

mod directory;
mod frames;
mod remote;
mod room;
mod signals;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::broker::{Broker, Delivery, MessageOrder, RoomEvent};
use crate::clock;
use crate::config::{millis, nonzero_usize, Config, ConfigError};
use crate::history::{HistorySettings, Request, Seen, Store};
use crate::ids::{SessionId, SYSTEM_SESSION};
use crate::metrics::labels::WebhookOutcome;
use crate::metrics::Metrics;
use crate::observer::{self, Observed, Observer};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{Dialect, ServerFrame};
pub(crate) use directory::page_after;
use room::Room;
use signals::Signals;

/// What rooms may hold, and how they remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoomSettings {
    /// Members per room, on every node together.
    pub max_members: usize,
    /// Members in one `members` answer.
    pub max_listed: usize,
    /// At most one `typing` relayed per user per room per this.
    pub typing_interval: Duration,
    /// At most one read position relayed per user per room per this.
    pub seen_interval: Duration,
    pub history: HistorySettings,
}

impl RoomSettings {
    pub(crate) fn from_env(env: &Config) -> Result<RoomSettings, ConfigError> {
        Ok(RoomSettings {
            max_members: nonzero_usize("MAX_ROOM_MEMBERS", env.max_room_members)?.get(),
            max_listed: nonzero_usize("MAX_MEMBERS_LISTED", env.max_members_listed)?.get(),
            typing_interval: millis("TYPING_INTERVAL_MS", env.typing_interval_ms)?,
            seen_interval: millis("SEEN_INTERVAL_MS", env.seen_interval_ms)?,
            history: HistorySettings::from_env(env)?,
        })
    }
}

/// A socket in a room.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub session_id: SessionId,
    pub user_id: Arc<str>,
    pub display_name: Arc<str>,
    pub outbox: Outbox,
    /// How its frames look: GarinChat's, with the room extensions, or protocol v2's.
    pub dialect: Dialect,
}

/// All rooms of this node.
pub(crate) struct Hub {
    rooms: DashMap<String, Room>,
    settings: RoomSettings,
    history: Store,
    signals: Signals,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
    /// Told of each room's first and last member here, and of messages posted here.
    observer: Observer,
}

/// Who a chat message is from: a member on this node, or the server API's sender (no session).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sender<'a> {
    pub session: Option<SessionId>,
    pub username: &'a Arc<str>,
    pub user_id: &'a Arc<str>,
}

/// What became of a chat message handed to [`Hub::post`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Posted {
    /// Numbered here (one node with history) and delivered.
    Numbered { epoch: Arc<str>, offset: u64 },
    /// Handed to Redis, which numbers it and delivers it on every node.
    Queued,
    /// Delivered without an offset (history off, or nobody can number it right now).
    Unnumbered,
    /// Reached nobody: the room has no members here and the other nodes are out of reach.
    Undelivered,
}

/// A join refused because the room has `MAX_ROOM_MEMBERS` members (on all nodes).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoomFull;

/// A read position past the room's last message: a protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SeenAhead;

impl Hub {
    pub(crate) fn new(
        settings: &RoomSettings,
        metrics: Arc<Metrics>,
        broker: Arc<dyn Broker>,
        observer: Observer,
    ) -> Arc<Hub> {
        // One node numbers its rooms' messages itself; with Redis, its store is a copy.
        let authoritative = broker.message_order() == MessageOrder::Here;
        Arc::new(Hub {
            rooms: DashMap::new(),
            settings: *settings,
            history: Store::new(settings.history, authoritative),
            signals: Signals::new(settings.typing_interval, settings.seen_interval),
            metrics,
            broker,
            observer,
        })
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// History settings, for the sessions' requests.
    pub(crate) fn history_settings(&self) -> &HistorySettings {
        self.history.settings()
    }

    /// Joins `room`, first asking the broker for the room's members (and history) elsewhere if
    /// this node has none of its own yet.
    pub(crate) async fn join_everywhere(
        self: &Arc<Self>,
        room: &str,
        member: Member,
        request: &Request,
        id: Option<&str>,
    ) -> Result<Membership, RoomFull> {
        // A room new here is opened on the broker first; so is one whose copy of the history
        // is not loaded yet (another joiner's open may still be on its way).
        let needs_copy = self.history.enabled()
            && !self.history.is_authoritative()
            && self.history.position(room).is_none();
        if !self.rooms.contains_key(room) || needs_copy {
            self.broker.open_room(room).await;
        }
        let seen_elsewhere = if member.dialect.is_extended() && self.history.enabled() {
            self.broker.last_seen(room, &member.user_id).await
        } else {
            None
        };
        self.join(room, member, request, seen_elsewhere, id)
    }

    /// Adds `member` to `room` and tells everyone in it; the joiner's copy of its `join` frame is
    /// its acknowledgement (GarinChat's only one; in v2 it answers the request `id`), followed
    /// by the history it asked for. Returns the guard that removes the member when dropped.
    pub(crate) fn join(
        self: &Arc<Self>,
        room: &str,
        member: Member,
        request: &Request,
        seen_elsewhere: Option<u64>,
        id: Option<&str>,
    ) -> Result<Membership, RoomFull> {
        let session_id = member.session_id;
        let mut created = false;
        let mut entry = self.rooms.entry(room.to_owned()).or_insert_with(|| {
            created = true;
            Room::new(room)
        });
        if entry.total() >= self.settings.max_members {
            return Err(RoomFull);
        }
        if created {
            self.broker.room_created(room);
        }
        if entry.members.is_empty() {
            self.metrics.rooms.inc();
            self.observer.observe(Observed::Room {
                room: Arc::from(room),
                here: true,
            });
        }
        self.metrics.joins.inc();
        let total = entry.total() + 1;
        let frame = ServerFrame::join(&member.display_name, &member.user_id, total);
        // Joined while other nodes are out of reach: say so, as those already in rooms were.
        let notice = (!self.broker.is_connected()).then(|| {
            remote::notice_frame(Delivery::Interrupted)
                .shaped(member.dialect, room)
                .encode()
        });
        self.broker.publish(
            room,
            RoomEvent::Join {
                session: session_id,
                username: &member.display_name,
                user_id: &member.user_id,
            },
        );
        let replay = self.history.join(room, request, clock::unix_ms());
        let seen = seen_elsewhere.max(self.history.seen(room, &member.user_id));
        let welcome = frames::welcome(
            &frames::Joiner {
                member: &member,
                room,
                id,
            },
            total,
            replay,
            request,
            seen,
        );
        let membership = Membership {
            hub: Arc::clone(self),
            room: room.to_owned(),
            session_id,
            display_name: Arc::clone(&member.display_name),
            user_id: Arc::clone(&member.user_id),
            dialect: member.dialect,
        };
        let joiner = member.outbox.clone();
        entry.broadcast(&frame, Some(session_id), &self.metrics);
        entry.add(member);
        let welcomed = welcome
            .into_iter()
            .filter(|frame| joiner.deliver(Outbound::text(frame.clone())))
            .count();
        self.metrics.messages_delivered.inc_by(welcomed as u64);
        drop(entry);
        if let Some(notice) = notice {
            joiner.deliver(Outbound::text(notice));
        }
        Ok(membership)
    }

    /// Sends a chat message to every member of the room except the sender, here and elsewhere,
    /// numbered when history is on. The room need not have members on this node (a message
    /// from the server API): it still reaches the other nodes, and history keeps it.
    pub(crate) fn post(&self, room: &str, sender: Sender<'_>, body: &str) -> Posted {
        let posted = self.deliver_post(room, sender, body);
        if self.observer.wants_messages() && posted != Posted::Undelivered {
            let position = match &posted {
                Posted::Numbered { epoch, offset } => Some((Arc::clone(epoch), *offset)),
                _ => None,
            };
            let queued = self.observer.posted(observer::Posted {
                room: Arc::from(room),
                username: Arc::clone(sender.username),
                user_id: Arc::clone(sender.user_id),
                body: body.into(),
                sent_at_ms: clock::unix_ms(),
                position,
            });
            if !queued {
                self.metrics.webhook_event(WebhookOutcome::QueueFull, 1);
            }
        }
        posted
    }

    /// [`post`](Self::post)'s delivery.
    fn deliver_post(&self, room: &str, sender: Sender<'_>, body: &str) -> Posted {
        let except = sender.session;
        let event = RoomEvent::Message {
            session: sender.session.unwrap_or(SYSTEM_SESSION),
            username: sender.username,
            user_id: sender.user_id,
            body,
        };
        let plain = || ServerFrame::message(body, sender.username, sender.user_id);
        if !self.history.enabled() {
            // The read lock keeps the message ordered after the room's joins and leaves here.
            let local = self.rooms.get(room);
            if let Some(entry) = &local {
                entry.broadcast(&plain(), except, &self.metrics);
            }
            let sent = self.broker.publish(room, event);
            return if local.is_some() || sent {
                Posted::Unnumbered
            } else {
                Posted::Undelivered
            };
        }
        let order = self.broker.message_order();
        if order == MessageOrder::Broker {
            // Numbered by Redis and delivered here when it comes back; the read lock keeps it
            // ordered after the sender's own join.
            let local = self.rooms.get(room);
            let queued = self.broker.publish(room, event);
            let here = local.is_some();
            drop(local);
            if queued {
                return Posted::Queued;
            }
            if !here {
                return Posted::Undelivered;
            }
        }
        // The write lock: offsets are given and delivered in one order.
        let local = self.rooms.get_mut(room);
        if order == MessageOrder::Here {
            let numbered = self.history.append(
                room,
                sender.username,
                sender.user_id,
                body,
                clock::unix_ms(),
            );
            if let (Some(numbered), Some(position)) = (numbered, self.history.position(room)) {
                if let Some(entry) = &local {
                    entry.deliver(&numbered, except, &self.metrics);
                }
                return Posted::Numbered {
                    epoch: position.epoch,
                    offset: numbered.offset,
                };
            }
        }
        // Nobody can number it now: delivered here only, without an offset, and not kept.
        match local {
            Some(entry) => {
                entry.broadcast(&plain(), except, &self.metrics);
                Posted::Unnumbered
            }
            None => Posted::Undelivered,
        }
    }

    /// Removes a member and tells those who remain; false if it was not there.
    fn leave(&self, room: &str, session_id: SessionId) -> bool {
        let Some(mut entry) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(member) = entry.remove(session_id) else {
            return false;
        };
        self.broker.publish(
            room,
            RoomEvent::Leave {
                session: session_id,
            },
        );
        let frame = ServerFrame::user_leave(&member.display_name, &member.user_id, entry.total());
        entry.broadcast(&frame, None, &self.metrics);
        let last_local = entry.members.is_empty();
        drop(entry);
        self.metrics.leaves.inc();
        if last_local {
            self.metrics.rooms.dec();
            // Re-checked under the lock: someone may have joined since we released it. The room
            // is closed under the lock too, so a join racing in finds either the old room with
            // its history or no room at all, never a room whose history is being dropped.
            self.rooms.remove_if(room, |_, entry| {
                let empty = entry.members.is_empty();
                if empty {
                    self.history.closed(room);
                    self.broker.room_closed(room);
                    self.observer.observe(Observed::Room {
                        room: Arc::from(room),
                        here: false,
                    });
                }
                empty
            });
        }
        true
    }

    /// Relays that a member is typing, at most once per user per room per `TYPING_INTERVAL_MS`.
    fn typing(&self, member: &Membership) {
        if !self.signals.typing(&member.room, &member.user_id) {
            return;
        }
        if let Some(entry) = self.rooms.get(&member.room) {
            let frame = ServerFrame::typing(&member.display_name, &member.user_id);
            entry.signal(&frame, Some(&member.user_id), &self.metrics);
            self.broker.publish(
                &member.room,
                RoomEvent::Typing {
                    session: member.session_id,
                    username: &member.display_name,
                    user_id: &member.user_id,
                },
            );
        }
    }

    /// Records a member's read position and relays it, coalesced.
    fn seen(&self, member: &Membership, offset: u64, epoch: Option<&str>) -> Result<(), SeenAhead> {
        let now = clock::unix_ms();
        match self
            .history
            .set_seen(&member.room, &member.user_id, offset, epoch, now)
        {
            Seen::Ahead => Err(SeenAhead),
            Seen::Unchanged | Seen::Unknown => Ok(()),
            Seen::Raised(epoch) => {
                let due = signals::DueSeen {
                    room: Arc::from(member.room.as_str()),
                    user_id: Arc::clone(&member.user_id),
                    username: Arc::clone(&member.display_name),
                    epoch,
                    offset,
                };
                if let Some(now) = self.signals.seen(due) {
                    self.relay_seen(&now);
                }
                Ok(())
            }
        }
    }

    /// Tells the room (here and elsewhere) how far a user has read.
    fn relay_seen(&self, seen: &signals::DueSeen) {
        if let Some(entry) = self.rooms.get(&*seen.room) {
            let frame = ServerFrame::seen(&seen.username, &seen.user_id, seen.offset);
            entry.signal(&frame, None, &self.metrics);
        }
        self.broker.publish(
            &seen.room,
            RoomEvent::Seen {
                username: &seen.username,
                user_id: &seen.user_id,
                epoch: &seen.epoch,
                offset: seen.offset,
            },
        );
    }

    /// The room's members on every node, one per user, as a `members` frame answering `id`.
    fn members(&self, room: &str, dialect: Dialect, id: Option<&str>) -> bytes::Bytes {
        let max = self.settings.max_listed;
        match self.rooms.get(room) {
            Some(entry) => entry.listing(max, dialect, id),
            None => Room::new(room).listing(max, dialect, id),
        }
    }

    /// Whether `user` is a member of `room` on any node, as this node knows the room.
    pub(crate) fn has_user(&self, room: &str, user: &str) -> bool {
        self.rooms.get(room).is_some_and(|entry| {
            entry
                .members
                .values()
                .any(|member| &*member.user_id == user)
                || entry.remote.values().any(|member| &*member.user_id == user)
        })
    }

    /// Work on a clock: coalesced read positions whose interval passed are relayed, expired
    /// history goes, and the history gauges follow. Called by the gateway's timer.
    pub(crate) fn tick(&self) {
        for due in self.signals.due() {
            self.relay_seen(&due);
        }
        self.history.sweep(clock::unix_ms());
        let (bytes, entries) = self.history.usage();
        self.metrics.history_bytes.set(bytes as i64);
        self.metrics.history_entries.set(entries as i64);
    }

    /// Bytes charged and messages held by this node's history.
    pub(crate) fn history_usage(&self) -> (usize, usize) {
        self.history.usage()
    }

    /// How often [`tick`](Self::tick) should run.
    pub(crate) fn tick_interval(&self) -> Duration {
        (self.settings.seen_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Members of `room` on this node.
    pub(crate) fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.members.len())
    }

    /// Members of `room` on every node, as this node knows them.
    pub(crate) fn total_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.total())
    }

    /// Rooms with at least one member on this node.
    pub(crate) fn room_count(&self) -> usize {
        self.rooms
            .iter()
            .filter(|room| !room.members.is_empty())
            .count()
    }

    /// Every (room, session) membership, for invariant checks in tests and fuzzing.
    pub(crate) fn memberships(&self) -> Vec<(String, SessionId)> {
        self.rooms
            .iter()
            .flat_map(|room| {
                let name = room.key().clone();
                room.members
                    .keys()
                    .map(move |session| (name.clone(), *session))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A member's place in a room; dropping it leaves the room.
pub(crate) struct Membership {
    hub: Arc<Hub>,
    room: String,
    session_id: SessionId,
    display_name: Arc<str>,
    user_id: Arc<str>,
    dialect: Dialect,
}

impl Membership {
    /// The room.
    pub(crate) fn room(&self) -> &str {
        &self.room
    }

    /// Relays a chat message to every other member of the room, on every node.
    pub(crate) fn publish(&self, body: &str) {
        let sender = Sender {
            session: Some(self.session_id),
            username: &self.display_name,
            user_id: &self.user_id,
        };
        self.hub.post(&self.room, sender, body);
    }

    /// Tells the room's other members (with the extensions) that this user is typing.
    pub(crate) fn typing(&self) {
        self.hub.typing(self);
    }

    /// Records that this user has seen the room up to `offset` (in `epoch`, if given).
    pub(crate) fn seen(&self, offset: u64, epoch: Option<&str>) -> Result<(), SeenAhead> {
        self.hub.seen(self, offset, epoch)
    }

    /// The room's members, as the frame that answers `{"type":"members"}` (request `id`).
    pub(crate) fn members(&self, id: Option<&str>) -> bytes::Bytes {
        self.hub.members(&self.room, self.dialect, id)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.room, self.session_id);
    }
}

#[cfg(test)]
mod tests;
