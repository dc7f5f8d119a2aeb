//! The hub as the broker sees it: other nodes' events and members applied to this node's
//! rooms, and the delivery notices.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::room::{RemoteKey, Room};
use super::{frames, Hub};
use crate::broker::{Delivery, LocalRooms, Ordered, RemoteEvent, RemoteMember};
use crate::clock;
use crate::history::{Discontinuity, Entry, Position, Recorded};
use crate::ids::SessionId;
use crate::metrics::labels::Discontinuity as Kind;
use crate::protocol::{notice, ServerFrame};

impl LocalRooms for Hub {
    fn apply_remote(&self, room: &str, node: &Arc<str>, seq: u64, event: RemoteEvent) {
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
            // Numbered messages come through `deliver_ordered`; this one has no offset (history
            // is off, or it was sent while Redis could not number it).
            RemoteEvent::Message {
                username,
                user_id,
                body,
                ..
            } => {
                let frame = ServerFrame::message(&body, &username, &user_id);
                entry.broadcast(&frame, None, &self.metrics);
            }
            RemoteEvent::Typing(member) => {
                let frame = ServerFrame::typing(&member.username, &member.user_id);
                entry.signal(&frame, Some(&member.user_id), &self.metrics);
            }
            RemoteEvent::Seen {
                username,
                user_id,
                epoch,
                offset,
            } => {
                // Learned, so a join here can tell the user where it was; a position this
                // node's copy has not reached yet is relayed all the same.
                let _ =
                    self.history
                        .set_seen(room, &user_id, offset, Some(&epoch), clock::unix_ms());
                let frame = ServerFrame::seen(&username, &user_id, offset);
                entry.signal(&frame, None, &self.metrics);
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

    fn replace_remote(&self, room: &str, members: Vec<(Arc<str>, RemoteMember)>) {
        let mut entry = self
            .rooms
            .entry(room.to_owned())
            .or_insert_with(|| Room::new(room));
        entry.replace_remote(None, members, &self.metrics);
    }

    fn forget_node(&self, node: &str) {
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

    fn remote_nodes(&self) -> HashSet<Arc<str>> {
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

    fn room_names(&self) -> Vec<String> {
        self.rooms.iter().map(|room| room.key().clone()).collect()
    }

    fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    fn with_local_members(&self, room: &str, f: &mut dyn FnMut(Vec<RemoteMember>)) {
        match self.rooms.entry(room.to_owned()) {
            dashmap::Entry::Occupied(entry) => f(entry.get().local_members()),
            // The vacant entry holds the shard's lock until it is dropped, inserting nothing.
            dashmap::Entry::Vacant(_) => f(Vec::new()),
        }
    }

    fn sweep_unjoined(&self, grace: Duration) {
        self.rooms.retain(|name, room| {
            let keep = !room.members.is_empty() || room.created.elapsed() < grace;
            if !keep {
                self.history.closed(name);
            }
            keep
        });
    }

    fn deliver_ordered(&self, room: &str, epoch: &Arc<str>, entry: Entry) -> Ordered {
        let Some(members) = self.rooms.get_mut(room) else {
            return Ordered::Absent;
        };
        let entry = Arc::new(entry);
        if self.history.position(room).is_none() {
            // Members here joined without a copy (Redis was away, or it is still loading):
            // they are given this message as it happens, and the copy is loaded for the next.
            members.deliver_unnumbered(&entry, entry.from, &self.metrics);
            return Ordered::Behind;
        }
        match self.history.record(room, epoch, Arc::clone(&entry)) {
            Recorded::Next => {
                members.deliver(&entry, entry.from, &self.metrics);
                Ordered::Delivered
            }
            Recorded::Duplicate => Ordered::Duplicate,
            // Also a room here whose copy is not loaded yet: loading it delivers this message.
            Recorded::Behind => Ordered::Behind,
        }
    }

    fn deliver_here(&self, room: &str, from: SessionId, username: &str, user_id: &str, body: &str) {
        if let Some(members) = self.rooms.get(room) {
            let frame = ServerFrame::message(body, username, user_id);
            members.broadcast(&frame, Some(from), &self.metrics);
        }
    }

    fn history_position(&self, room: &str) -> Option<Position> {
        self.history.position(room)
    }

    fn reload_history(&self, room: &str, position: Position, entries: Vec<Entry>) {
        // Only rooms this node serves keep a copy (else nothing would ever drop it).
        let Some(members) = self.rooms.get_mut(room) else {
            return;
        };
        let reloaded = self
            .history
            .reload(room, position, entries, clock::unix_ms());
        match &reloaded.notice {
            Some(what) => {
                self.metrics.discontinuity(match what {
                    Discontinuity::Gap(_) => Kind::GapLost,
                    Discontinuity::Reset(_) => Kind::Reset,
                });
                members.signal(&frames::discontinuity(what), None, &self.metrics);
            }
            None if !reloaded.missed.is_empty() => self.metrics.discontinuity(Kind::GapFilled),
            None => {}
        }
        for entry in &reloaded.missed {
            members.deliver(entry, entry.from, &self.metrics);
        }
    }

    fn delivery_changed(&self, delivery: Delivery) {
        let frame = notice_frame(delivery);
        for room in self.rooms.iter() {
            room.broadcast(&frame, None, &self.metrics);
        }
    }
}

/// The notice that tells members cross-node delivery stopped or is back.
pub(super) fn notice_frame(delivery: Delivery) -> ServerFrame<'static> {
    ServerFrame::notice(match delivery {
        Delivery::Interrupted => notice::DELIVERY_INTERRUPTED,
        Delivery::Restored => notice::DELIVERY_RESTORED,
    })
}
