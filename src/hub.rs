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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::broker::{Broker, RemoteEvent, RemoteMember, RoomEvent};
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox, SharedPayload};
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

/// A member on another node: the node's id and its session id.
type RemoteKey = (Arc<str>, SessionId);

struct Room {
    members: HashMap<SessionId, Member>,
    remote: HashMap<RemoteKey, RemoteMember>,
    /// The last envelope sequence number seen from each node, to drop duplicates.
    last_seq: HashMap<Arc<str>, u64>,
    created: Instant,
}

impl Room {
    fn new() -> Room {
        Room {
            members: HashMap::new(),
            remote: HashMap::new(),
            last_seq: HashMap::new(),
            created: Instant::now(),
        }
    }

    /// The local members as other nodes see them.
    fn local_members(&self) -> Vec<RemoteMember> {
        self.members
            .values()
            .map(|member| RemoteMember {
                session: member.session_id,
                username: Arc::clone(&member.display_name),
                user_id: Arc::clone(&member.user_id),
            })
            .collect()
    }

    /// Members on every node.
    fn total(&self) -> usize {
        self.members.len() + self.remote.len()
    }

    fn broadcast(&self, frame: &Bytes, except: Option<SessionId>, metrics: &Metrics) {
        let shared = SharedPayload::new(frame.clone());
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for member in self.members.values() {
            if Some(member.session_id) != except {
                if member.outbox.deliver(Outbound::Text(Arc::clone(&shared))) {
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

    fn add_remote(&mut self, node: &Arc<str>, member: RemoteMember, metrics: &Metrics) {
        let key = (Arc::clone(node), member.session);
        if self.remote.contains_key(&key) {
            return;
        }
        let frame = ServerFrame::join(&member.username, &member.user_id, self.total() + 1).encode();
        self.remote.insert(key, member);
        self.broadcast(&frame, None, metrics);
    }

    fn remove_remote(&mut self, key: &RemoteKey, metrics: &Metrics) {
        if let Some(member) = self.remote.remove(key) {
            let frame =
                ServerFrame::user_leave(&member.username, &member.user_id, self.total()).encode();
            self.broadcast(&frame, None, metrics);
        }
    }

    /// Makes `node`'s members exactly `members` (all nodes' when `node` is None), telling the
    /// local members who left and who joined.
    fn replace_remote(
        &mut self,
        node: Option<&Arc<str>>,
        members: Vec<(Arc<str>, RemoteMember)>,
        metrics: &Metrics,
    ) {
        let wanted: HashSet<RemoteKey> = members
            .iter()
            .map(|(node, member)| (Arc::clone(node), member.session))
            .collect();
        let gone: Vec<RemoteKey> = self
            .remote
            .keys()
            .filter(|key| node.is_none_or(|node| key.0 == *node) && !wanted.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.remove_remote(&key, metrics);
        }
        for (node, member) in members {
            self.add_remote(&node, member, metrics);
        }
    }
}

/// All rooms of this node.
pub struct Hub {
    rooms: DashMap<String, Room>,
    max_members: usize,
    metrics: Arc<Metrics>,
    broker: Arc<dyn Broker>,
}

/// A join refused because the room has `MAX_ROOM_MEMBERS` members (on all nodes).
#[derive(Debug, PartialEq, Eq)]
pub struct RoomFull;

impl Hub {
    pub fn new(max_members: usize, metrics: Arc<Metrics>, broker: Arc<dyn Broker>) -> Arc<Hub> {
        Arc::new(Hub {
            rooms: DashMap::new(),
            max_members,
            metrics,
            broker,
        })
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Joins `room`, first asking the broker for the room's members elsewhere if this node has
    /// none of its own yet.
    pub async fn join_everywhere(
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
    pub fn join(self: &Arc<Self>, room: &str, member: Member) -> Result<Membership, RoomFull> {
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
        Ok(membership)
    }

    /// Sends a chat message to every member of the room except the sender, here and elsewhere.
    fn publish(&self, sender: &Membership, body: &str, frame: &Bytes) {
        if let Some(entry) = self.rooms.get(&sender.room) {
            entry.broadcast(frame, Some(sender.session_id), &self.metrics);
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

    /// Applies an event from another node to a room this node has members in.
    pub fn apply_remote(&self, room: &str, node: &Arc<str>, seq: u64, event: RemoteEvent) {
        let Some(mut entry) = self.rooms.get_mut(room) else {
            return;
        };
        let last = entry.last_seq.entry(Arc::clone(node)).or_insert(0);
        if seq <= *last {
            self.metrics.broker_duplicates.inc();
            return;
        }
        *last = seq;
        match event {
            RemoteEvent::Join(member) => entry.add_remote(node, member, &self.metrics),
            RemoteEvent::Leave { session } => {
                entry.remove_remote(&(Arc::clone(node), session), &self.metrics)
            }
            RemoteEvent::Message {
                username,
                user_id,
                body,
                ..
            } => {
                let frame = ServerFrame::message(&body, &username, &user_id).encode();
                entry.broadcast(&frame, None, &self.metrics);
            }
            RemoteEvent::Sync(members) => {
                let members = members
                    .into_iter()
                    .map(|member| (Arc::clone(node), member))
                    .collect();
                entry.replace_remote(Some(node), members, &self.metrics);
            }
        }
    }

    /// Replaces what this node knows of `room`'s members elsewhere with a fresh snapshot
    /// (creating the room if this node has no members in it yet), telling local members the
    /// difference.
    pub fn install_remote_view(&self, room: &str, members: Vec<(Arc<str>, RemoteMember)>) {
        let mut entry = self.rooms.entry(room.to_owned()).or_insert_with(Room::new);
        entry.replace_remote(None, members, &self.metrics);
    }

    /// Forgets every member of a node that stopped (its presence expired), telling local
    /// members each one left.
    pub fn forget_node(&self, node: &str) {
        for mut room in self.rooms.iter_mut() {
            let gone: Vec<RemoteKey> = room
                .remote
                .keys()
                .filter(|key| &*key.0 == node)
                .cloned()
                .collect();
            for key in gone {
                room.remove_remote(&key, &self.metrics);
            }
            room.last_seq.retain(|seen, _| &**seen != node);
        }
    }

    /// The nodes this node knows members of.
    pub fn remote_nodes(&self) -> HashSet<Arc<str>> {
        self.rooms
            .iter()
            .flat_map(|room| {
                room.remote
                    .keys()
                    .map(|(node, _)| Arc::clone(node))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Sends `frame` to every local member of every room.
    pub fn notify_all(&self, frame: &Bytes) {
        for room in self.rooms.iter() {
            room.broadcast(frame, None, &self.metrics);
        }
    }

    /// The names of this node's rooms (with local members, or being opened).
    pub fn room_names(&self) -> Vec<String> {
        self.rooms.iter().map(|room| room.key().clone()).collect()
    }

    /// Calls `f` with the room's local members (none if this node does not have the room),
    /// under the room's lock, so that what `f` hands the broker is ordered with the events the
    /// hub publishes for that room.
    pub fn with_local_members(&self, room: &str, f: impl FnOnce(Vec<RemoteMember>)) {
        match self.rooms.entry(room.to_owned()) {
            dashmap::Entry::Occupied(entry) => f(entry.get().local_members()),
            // The vacant entry holds the shard's lock until it is dropped, inserting nothing.
            dashmap::Entry::Vacant(_) => f(Vec::new()),
        }
    }

    /// Drops rooms opened for a join that never came (the session ended in between), once
    /// they are older than `grace`.
    pub fn sweep_unjoined(&self, grace: Duration) {
        self.rooms
            .retain(|_, room| !room.members.is_empty() || room.created.elapsed() < grace);
    }

    /// Whether this node has the room (members in it, or a join on its way).
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Members of `room` on this node.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.members.len())
    }

    /// Members of `room` on every node, as this node knows them.
    pub fn total_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.total())
    }

    /// Rooms with at least one member on this node.
    pub fn room_count(&self) -> usize {
        self.rooms
            .iter()
            .filter(|room| !room.members.is_empty())
            .count()
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
    display_name: Arc<str>,
    user_id: Arc<str>,
}

impl Membership {
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Relays a chat message: `frame` to the local members, `body` to the other nodes.
    pub fn publish(&self, body: &str, frame: &Bytes) {
        self.hub.publish(self, body, frame);
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
            Outbound::Text(text) => String::from_utf8(text.bytes.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rooms_live_while_they_have_members() {
        let hub = Hub::new(2, Arc::default(), Arc::new(LocalBroker));
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

        b.publish("x", &bytes::Bytes::from_static(b"x"));
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
        let hub = Hub::new(10, Arc::default(), Arc::new(LocalBroker));
        let (slow, _slow_rx) = member(1);
        let slow_outbox = slow.outbox.clone();
        let (fast, _fast_rx) = member(2);
        let _s = hub.join("lobby", slow).unwrap();
        let f = hub.join("lobby", fast).unwrap();
        // The slow member's queue (4) holds its own join and the fast one's: room for two more.
        for _ in 0..2 {
            f.publish("x", &bytes::Bytes::from_static(b"x"));
        }
        assert!(
            !slow_outbox.is_evicted(),
            "a full queue is not yet an overflow"
        );
        f.publish("x", &bytes::Bytes::from_static(b"x"));
        assert!(slow_outbox.is_evicted());
    }
}
