//! The hub as the broker sees it: other nodes' events and members applied to this node's
//! rooms, and the delivery notices.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::room::{RemoteKey, Room};
use super::Hub;
use crate::broker::{Delivery, LocalRooms, RemoteEvent, RemoteMember};
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

    fn replace_remote(&self, room: &str, members: Vec<(Arc<str>, RemoteMember)>) {
        let mut entry = self.rooms.entry(room.to_owned()).or_insert_with(Room::new);
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
        self.rooms
            .retain(|_, room| !room.members.is_empty() || room.created.elapsed() < grace);
    }

    fn delivery_changed(&self, delivery: Delivery) {
        let frame = notice_frame(delivery);
        for room in self.rooms.iter() {
            room.broadcast(&frame, None, &self.metrics);
        }
    }
}

/// The notice that tells members cross-node delivery stopped or is back.
pub(super) fn notice_frame(delivery: Delivery) -> bytes::Bytes {
    ServerFrame::notice(match delivery {
        Delivery::Interrupted => notice::DELIVERY_INTERRUPTED,
        Delivery::Restored => notice::DELIVERY_RESTORED,
    })
    .encode()
}
