//! Rooms and their local members, with bounded fan-out.
//!
//! A room exists while it has members: created on the first join, dropped with the last leave.
//! Membership changes take the room's map-shard write lock, so a `join`/`userleave` frame and
//! the `totalUsers` it carries are always consistent with every other change. Broadcasts take
//! the read lock and only `try_send` into each member's [`Outbox`], so fan-out never awaits a
//! socket.
//!
//! [`Membership`] is the only way into a room, and leaving happens in its `Drop`: every exit
//! path of a session (clean close, error, kick, shutdown, even a panic) removes the member
//! exactly once and tells the others.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::ServerFrame;

/// Identifies one socket's session for the lifetime of the process.
pub type SessionId = u64;

/// A socket in a room.
#[derive(Clone, Debug)]
pub struct Member {
    pub session_id: SessionId,
    pub user_id: Arc<str>,
    pub display_name: Arc<str>,
    pub outbox: Outbox,
}

#[derive(Default)]
struct Room {
    members: HashMap<SessionId, Member>,
}

impl Room {
    fn broadcast(&self, frame: &bytes::Bytes, except: Option<SessionId>, metrics: &Metrics) {
        let created = Instant::now();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for member in self.members.values() {
            if Some(member.session_id) != except {
                if member
                    .outbox
                    .deliver(Outbound::Text(frame.clone(), created))
                {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        metrics.messages_delivered.inc_by(delivered);
        if dropped > 0 {
            metrics.dropped_by("queue_full", dropped);
        }
    }
}

/// All rooms of this node.
pub struct Hub {
    rooms: DashMap<String, Room>,
    max_members: usize,
    metrics: Arc<Metrics>,
}

/// A join refused because the room has `MAX_ROOM_MEMBERS` members.
#[derive(Debug, PartialEq, Eq)]
pub struct RoomFull;

impl Hub {
    pub fn new(max_members: usize, metrics: Arc<Metrics>) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: DashMap::new(),
            max_members,
            metrics,
        })
    }

    /// Adds `member` to `room` and tells everyone in it, the joiner included (GarinChat's only
    /// acknowledgement of a join). Returns the guard that removes the member when dropped.
    pub fn join(self: &Arc<Self>, room: &str, member: Member) -> Result<Membership, RoomFull> {
        let session_id = member.session_id;
        let mut entry = self.rooms.entry(room.to_owned()).or_default();
        if entry.members.len() >= self.max_members {
            return Err(RoomFull);
        }
        if entry.members.is_empty() {
            self.metrics.rooms.inc();
        }
        self.metrics.joins.inc();
        let frame = ServerFrame::join(
            &member.display_name,
            &member.user_id,
            entry.members.len() + 1,
        )
        .encode();
        entry.members.insert(session_id, member);
        entry.broadcast(&frame, None, &self.metrics);
        drop(entry);
        Ok(Membership {
            hub: Arc::clone(self),
            room: room.to_owned(),
            session_id,
        })
    }

    /// Sends `frame` to every member of `room` except the sender.
    pub fn publish(&self, room: &str, sender: SessionId, frame: &bytes::Bytes) {
        if let Some(entry) = self.rooms.get(room) {
            entry.broadcast(frame, Some(sender), &self.metrics);
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
        let remaining = entry.members.len();
        let frame =
            ServerFrame::user_leave(&member.display_name, &member.user_id, remaining).encode();
        entry.broadcast(&frame, None, &self.metrics);
        drop(entry);
        self.metrics.leaves.inc();
        // Re-checked under the lock: someone may have joined since we released it.
        let emptied = remaining == 0
            && self
                .rooms
                .remove_if(room, |_, room| room.members.is_empty())
                .is_some();
        if emptied {
            self.metrics.rooms.dec();
        }
        true
    }

    /// Members of `room` on this node.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.members.len())
    }

    /// Rooms with at least one member on this node.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Every (room, session) membership, for invariant checks in tests and fuzzing.
    pub fn memberships(&self) -> Vec<(String, SessionId)> {
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
pub struct Membership {
    hub: Arc<Hub>,
    room: String,
    session_id: SessionId,
}

impl Membership {
    pub fn room(&self) -> &str {
        &self.room
    }

    pub fn publish(&self, frame: &bytes::Bytes) {
        self.hub.publish(&self.room, self.session_id, frame);
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
    use crate::outbox::OutboxReceiver;

    fn member(id: SessionId) -> (Member, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(4);
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

    fn next_text(rx: &mut OutboxReceiver) -> String {
        match rx.queue.try_recv().expect("a frame") {
            Outbound::Text(bytes, _) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rooms_live_while_they_have_members() {
        let hub = Hub::new(2, Arc::default());
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

        b.publish(&bytes::Bytes::from_static(b"x"));
        assert_eq!(next_text(&mut alice_rx), "x");
        assert!(bob_rx.queue.try_recv().is_err(), "no echo to the sender");

        drop(b);
        assert!(next_text(&mut alice_rx)
            .contains(r#""type":"userleave","username":"user2","totalUsers":1"#));
        drop(a);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn a_full_queue_evicts_instead_of_blocking() {
        let hub = Hub::new(10, Arc::default());
        let (slow, _slow_rx) = member(1);
        let slow_outbox = slow.outbox.clone();
        let (fast, _fast_rx) = member(2);
        let _s = hub.join("lobby", slow).unwrap();
        let f = hub.join("lobby", fast).unwrap();
        // The slow member's queue (4) holds its own join and the fast one's: room for two more.
        for _ in 0..2 {
            f.publish(&bytes::Bytes::from_static(b"x"));
        }
        assert!(
            !slow_outbox.is_evicted(),
            "a full queue is not yet an overflow"
        );
        f.publish(&bytes::Bytes::from_static(b"x"));
        assert!(slow_outbox.is_evicted());
    }
}
