//! One room on this node: its local members, what this node knows of its members on other
//! nodes, and fan-out to the local members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::Member;
use crate::broker::RemoteMember;
use crate::ids::SessionId;
use crate::metrics::labels::DropReason;
use crate::metrics::Metrics;
use crate::outbox::{Outbound, SharedPayload};
use crate::protocol::ServerFrame;

/// A member on another node: the node's id and its session id.
pub(super) type RemoteKey = (Arc<str>, SessionId);

pub(super) struct Room {
    pub(super) members: HashMap<SessionId, Member>,
    pub(super) remote: HashMap<RemoteKey, RemoteMember>,
    /// The last envelope sequence number seen from each node, to drop duplicates.
    pub(super) last_seq: HashMap<Arc<str>, u64>,
    pub(super) created: Instant,
}

impl Room {
    pub(super) fn new() -> Room {
        Room {
            members: HashMap::new(),
            remote: HashMap::new(),
            last_seq: HashMap::new(),
            created: Instant::now(),
        }
    }

    /// The local members as other nodes see them.
    pub(super) fn local_members(&self) -> Vec<RemoteMember> {
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
    pub(super) fn total(&self) -> usize {
        self.members.len() + self.remote.len()
    }

    /// Queues `frame` to every local member but `except`, never waiting.
    pub(super) fn broadcast(&self, frame: &Bytes, except: Option<SessionId>, metrics: &Metrics) {
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
            metrics.dropped_by(DropReason::QueueFull, dropped);
        }
    }

    pub(super) fn add_remote(&mut self, node: &Arc<str>, member: RemoteMember, metrics: &Metrics) {
        let key = (Arc::clone(node), member.session);
        if self.remote.contains_key(&key) {
            return;
        }
        let frame = ServerFrame::join(&member.username, &member.user_id, self.total() + 1).encode();
        self.remote.insert(key, member);
        self.broadcast(&frame, None, metrics);
    }

    pub(super) fn remove_remote(&mut self, key: &RemoteKey, metrics: &Metrics) {
        if let Some(member) = self.remote.remove(key) {
            let frame =
                ServerFrame::user_leave(&member.username, &member.user_id, self.total()).encode();
            self.broadcast(&frame, None, metrics);
        }
    }

    /// Makes `node`'s members exactly `members` (all nodes' when `node` is None), telling the
    /// local members who left and who joined.
    pub(super) fn replace_remote(
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
