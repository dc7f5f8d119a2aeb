//! Rooms: their members on this node, what this node knows of their members on other nodes,
//! and bounded fan-out.
//!
//! A room exists while it has local members: created on the first join, dropped with the last
//! leave. (With a Redis broker it may also exist for a moment before the first join, holding the
//! other nodes' members that [`Broker::open_room`] fetched.) Membership changes take the room's
//! map-shard write lock, so a `join`/`userleave` frame and the `totalUsers` it carries are
//! always consistent with every other change, and the broker hears of them in that order.
//! Broadcasts only `try_send` into each member's [`Outbox`], so fan-out never awaits a socket.
//!
//! [`Membership`] is the only way into a room, and leaving happens in its `Drop`: every exit
//! path of a session (clean close, error, kick, shutdown, even a panic) removes the member
//! exactly once and tells the others.

mod remote;
mod room;

use std::sync::Arc;

use dashmap::DashMap;

use crate::broker::{Broker, Delivery, RoomEvent};
use crate::config::{nonzero_usize, Config, ConfigError};
use crate::ids::SessionId;
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::ServerFrame;
use room::Room;

/// What rooms may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoomSettings {
    /// Members per room, on every node together.
    pub max_members: usize,
}

impl RoomSettings {
    pub(crate) fn from_env(env: &Config) -> Result<RoomSettings, ConfigError> {
        Ok(RoomSettings {
            max_members: nonzero_usize("MAX_ROOM_MEMBERS", env.max_room_members)?.get(),
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
}

/// All rooms of this node.
pub(crate) struct Hub {
    rooms: DashMap<String, Room>,
    max_members: usize,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
}

/// A join refused because the room has `MAX_ROOM_MEMBERS` members (on all nodes).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RoomFull;

impl Hub {
    pub(crate) fn new(
        settings: &RoomSettings,
        metrics: Arc<Metrics>,
        broker: Arc<dyn Broker>,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: DashMap::new(),
            max_members: settings.max_members,
            metrics,
            broker,
        })
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Joins `room`, first asking the broker for the room's members elsewhere if this node has
    /// none of its own yet.
    pub(crate) async fn join_everywhere(
        self: &Arc<Self>,
        room: &str,
        member: Member,
    ) -> Result<Membership, RoomFull> {
        if !self.rooms.contains_key(room) {
            self.broker.open_room(room).await;
        }
        self.join(room, member)
    }

    /// Adds `member` to `room` and tells everyone in it, the joiner included (GarinChat's only
    /// acknowledgement of a join). Returns the guard that removes the member when dropped.
    pub(crate) fn join(
        self: &Arc<Self>,
        room: &str,
        member: Member,
    ) -> Result<Membership, RoomFull> {
        let session_id = member.session_id;
        let mut created = false;
        let mut entry = self.rooms.entry(room.to_owned()).or_insert_with(|| {
            created = true;
            Room::new()
        });
        if entry.total() >= self.max_members {
            return Err(RoomFull);
        }
        if created {
            self.broker.room_created(room);
        }
        if entry.members.is_empty() {
            self.metrics.rooms.inc();
        }
        self.metrics.joins.inc();
        let frame =
            ServerFrame::join(&member.display_name, &member.user_id, entry.total() + 1).encode();
        // Joined while other nodes are out of reach: say so, as those already in rooms were.
        let notice =
            (!self.broker.is_connected()).then(|| remote::notice_frame(Delivery::Interrupted));
        let joiner = member.outbox.clone();
        self.broker.publish(
            room,
            RoomEvent::Join {
                session: session_id,
                username: &member.display_name,
                user_id: &member.user_id,
            },
        );
        let membership = Membership {
            hub: Arc::clone(self),
            room: room.to_owned(),
            session_id,
            display_name: Arc::clone(&member.display_name),
            user_id: Arc::clone(&member.user_id),
        };
        entry.members.insert(session_id, member);
        entry.broadcast(&frame, None, &self.metrics);
        drop(entry);
        if let Some(notice) = notice {
            joiner.deliver(Outbound::text(notice));
        }
        Ok(membership)
    }

    /// Sends a chat message to every member of the room except the sender, here and elsewhere.
    fn publish(&self, sender: &Membership, body: &str) {
        if let Some(entry) = self.rooms.get(&sender.room) {
            let frame = ServerFrame::message(body, &sender.display_name, &sender.user_id).encode();
            entry.broadcast(&frame, Some(sender.session_id), &self.metrics);
            self.broker.publish(
                &sender.room,
                RoomEvent::Message {
                    session: sender.session_id,
                    username: &sender.display_name,
                    user_id: &sender.user_id,
                    body,
                },
            );
        }
    }

    /// Removes a member and tells those who remain; false if it was not there.
    fn leave(&self, room: &str, session_id: SessionId) -> bool {
        let Some(mut entry) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(member) = entry.members.remove(&session_id) else {
            return false;
        };
        self.broker.publish(
            room,
            RoomEvent::Leave {
                session: session_id,
            },
        );
        let frame =
            ServerFrame::user_leave(&member.display_name, &member.user_id, entry.total()).encode();
        entry.broadcast(&frame, None, &self.metrics);
        let last_local = entry.members.is_empty();
        drop(entry);
        self.metrics.leaves.inc();
        if last_local {
            self.metrics.rooms.dec();
            // Re-checked under the lock: someone may have joined since we released it.
            if self
                .rooms
                .remove_if(room, |_, room| room.members.is_empty())
                .is_some()
            {
                self.broker.room_closed(room);
            }
        }
        true
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
}

impl Membership {
    /// Relays a chat message to every other member of the room, on every node.
    pub(crate) fn publish(&self, body: &str) {
        self.hub.publish(self, body);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.room, self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::LocalBroker;
    use crate::outbox::OutboxReceiver;

    fn member(id: SessionId) -> (Member, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(4, 1 << 20);
        let name: Arc<str> = Arc::from(format!("user{id}"));
        (
            Member {
                session_id: id,
                user_id: name.clone(),
                display_name: name,
                outbox,
            },
            rx,
        )
    }

    fn hub(max_members: usize) -> Arc<Hub> {
        Hub::new(
            &RoomSettings { max_members },
            Arc::default(),
            Arc::new(LocalBroker),
        )
    }

    #[test]
    fn settings_at_and_past_their_limits() {
        use crate::config::tests::{assert_names, env};
        let settings = RoomSettings::from_env(&env(&[("MAX_ROOM_MEMBERS", "1")])).unwrap();
        assert_eq!(settings.max_members, 1);
        assert_names(
            RoomSettings::from_env(&env(&[("MAX_ROOM_MEMBERS", "0")])),
            "MAX_ROOM_MEMBERS",
        );
    }

    fn next_text(rx: &mut OutboxReceiver) -> String {
        match rx.try_recv().expect("a frame") {
            Outbound::Text(text) => String::from_utf8(text.bytes.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rooms_live_while_they_have_members() {
        let hub = hub(2);
        let (alice, mut alice_rx) = member(1);
        let (bob, mut bob_rx) = member(2);
        let a = hub.join("lobby", alice).unwrap();
        assert!(next_text(&mut alice_rx).contains(r#""totalUsers":1"#));
        let b = hub.join("lobby", bob).unwrap();
        assert_eq!(
            hub.join("lobby", member(3).0).err(),
            Some(RoomFull),
            "at the cap"
        );
        assert_eq!(hub.member_count("lobby"), 2);
        assert!(next_text(&mut alice_rx).contains(r#""username":"user2","totalUsers":2"#));
        assert!(next_text(&mut bob_rx).contains(r#""totalUsers":2"#));
        assert_eq!(hub.member_count("lobby"), 2);

        b.publish("x");
        assert_eq!(
            next_text(&mut alice_rx),
            r#"{"type":"message","body":"x","username":"user2","userId":"user2"}"#
        );
        assert!(bob_rx.try_recv().is_none(), "no echo to the sender");

        drop(b);
        assert!(next_text(&mut alice_rx)
            .contains(r#""type":"userleave","username":"user2","totalUsers":1"#));
        drop(a);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn a_full_queue_evicts_instead_of_blocking() {
        let hub = hub(10);
        let (slow, _slow_rx) = member(1);
        let slow_outbox = slow.outbox.clone();
        let (fast, _fast_rx) = member(2);
        let _s = hub.join("lobby", slow).unwrap();
        let f = hub.join("lobby", fast).unwrap();
        // The slow member's queue (4) holds its own join and the fast one's: room for two more.
        for _ in 0..2 {
            f.publish("x");
        }
        assert!(
            !slow_outbox.is_evicted(),
            "a full queue is not yet an overflow"
        );
        f.publish("x");
        assert!(slow_outbox.is_evicted());
    }
}
