//! One room on this node: its local members, what this node knows of its members on other
//! nodes, and fan-out to the local members.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{frames, Member};
use crate::broker::RemoteMember;
use crate::history::Entry;
use crate::ids::SessionId;
use crate::metrics::labels::DropReason;
use crate::metrics::Metrics;
use crate::outbox::{Outbound, SharedPayload};
use crate::protocol::{Dialect, Listed, MembersFrame, ServerFrame};

/// A member on another node: the node's id and its session id.
pub(super) type RemoteKey = (Arc<str>, SessionId);

pub(super) struct Room {
    name: Arc<str>,
    pub(super) members: HashMap<SessionId, Member>,
    /// Local members by dialect (see [`Dialect::index`]): a frame is encoded once for each
    /// dialect some member speaks, and never for one nobody does.
    dialects: [usize; 3],
    pub(super) remote: HashMap<RemoteKey, RemoteMember>,
    /// The last envelope sequence number seen from each node, to drop duplicates.
    pub(super) last_seq: HashMap<Arc<str>, u64>,
    pub(super) created: Instant,
}

impl Room {
    pub(super) fn new(name: &str) -> Room {
        Room {
            name: Arc::from(name),
            members: HashMap::new(),
            dialects: [0; 3],
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

    pub(super) fn add(&mut self, member: Member) {
        self.dialects[member.dialect.index()] += 1;
        self.members.insert(member.session_id, member);
    }

    pub(super) fn remove(&mut self, session: SessionId) -> Option<Member> {
        let member = self.members.remove(&session)?;
        self.dialects[member.dialect.index()] -= 1;
        Some(member)
    }

    /// Queues `frame` to every local member but `except`, never waiting, as each one's dialect
    /// has it.
    pub(super) fn broadcast(
        &self,
        frame: &ServerFrame<'_>,
        except: Option<SessionId>,
        metrics: &Metrics,
    ) {
        // Most room frames (joins, leaves, notices) carry no position: GarinChat's and the
        // extended dialect's bytes are then the same, encoded once.
        let plain = frame.clone().shaped(Dialect::GarinChat, &self.name);
        let same = plain == frame.clone().shaped(Dialect::Extended, &self.name);
        self.fan_out(
            |dialect| match dialect {
                Dialect::Extended if same => None,
                _ => Some(frame.clone().shaped(dialect, &self.name).encode()),
            },
            same,
            |member| Some(member.session_id) != except,
            metrics,
        );
    }

    /// Queues a numbered message to every local member but its sender: with its offset to
    /// members with the room extensions, as GarinChat's frame to the others.
    pub(super) fn deliver(&self, entry: &Entry, except: Option<SessionId>, metrics: &Metrics) {
        self.broadcast(&frames::live(entry), except, metrics);
    }

    /// Queues a message that has no offset here to every local member but its sender.
    pub(super) fn deliver_unnumbered(
        &self,
        entry: &Entry,
        except: Option<SessionId>,
        metrics: &Metrics,
    ) {
        let frame = ServerFrame::message(&entry.body, &entry.username, &entry.user_id);
        self.broadcast(&frame, except, metrics);
    }

    /// Queues a frame of the room extensions (`typing`, `seen`, a history notice) to the
    /// members that have them, but `except_user`'s.
    pub(super) fn signal(
        &self,
        frame: &ServerFrame<'_>,
        except_user: Option<&str>,
        metrics: &Metrics,
    ) {
        if self.dialects[Dialect::GarinChat.index()] == self.members.len() {
            return;
        }
        self.fan_out(
            |dialect| {
                dialect
                    .is_extended()
                    .then(|| frame.clone().shaped(dialect, &self.name).encode())
            },
            false,
            |member| except_user.is_none_or(|user| *member.user_id != *user),
            metrics,
        );
    }

    /// Queues to each member `to` accepts the frame `encode` gives for its dialect (none: that
    /// dialect is left out), encoding it once per dialect present; with `extended_as_plain`
    /// the extended dialect gets GarinChat's bytes.
    fn fan_out(
        &self,
        encode: impl Fn(Dialect) -> Option<Bytes>,
        extended_as_plain: bool,
        to: impl Fn(&Member) -> bool,
        metrics: &Metrics,
    ) {
        let present = |dialect: Dialect| self.dialects[dialect.index()] > 0;
        let encoded = |dialect: Dialect| {
            present(dialect)
                .then(|| encode(dialect))
                .flatten()
                .map(SharedPayload::new)
        };
        let plain = (present(Dialect::GarinChat)
            || (extended_as_plain && present(Dialect::Extended)))
        .then(|| encode(Dialect::GarinChat).map(SharedPayload::new))
        .flatten();
        let extended = if extended_as_plain {
            plain.clone()
        } else {
            encoded(Dialect::Extended)
        };
        let frames = [plain, extended, encoded(Dialect::V2)];
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for member in self.members.values() {
            let Some(frame) = &frames[member.dialect.index()] else {
                continue;
            };
            if !to(member) {
                continue;
            }
            if member.outbox.deliver(Outbound::Text(Arc::clone(frame))) {
                delivered += 1;
            } else {
                dropped += 1;
            }
        }
        metrics.messages_delivered.inc_by(delivered);
        if dropped > 0 {
            metrics.dropped_by(DropReason::QueueFull, dropped);
        }
    }

    /// The members on every node, one per user: user id → display name, sorted by user id.
    pub(super) fn users(&self) -> BTreeMap<&str, &str> {
        let mut users: BTreeMap<&str, &str> = BTreeMap::new();
        let local = self
            .members
            .values()
            .map(|member| (&*member.user_id, &*member.display_name));
        let remote = self
            .remote
            .values()
            .map(|member| (&*member.user_id, &*member.username));
        for (user_id, username) in local.chain(remote) {
            users.entry(user_id).or_insert(username);
        }
        users
    }

    /// The members on every node, one per user (sorted by user id), at most `max` of them, as
    /// the answer to the request `id` from a socket speaking `dialect`.
    pub(super) fn listing(&self, max: usize, dialect: Dialect, id: Option<&str>) -> Bytes {
        let users = self.users();
        let total = users.len();
        MembersFrame {
            kind: "members",
            id,
            room: (dialect == Dialect::V2).then_some(&*self.name),
            members: users
                .into_iter()
                .take(max)
                .map(|(user_id, username)| Listed { user_id, username })
                .collect(),
            total,
            truncated: total > max,
        }
        .encode()
    }

    pub(super) fn add_remote(&mut self, node: &Arc<str>, member: RemoteMember, metrics: &Metrics) {
        let key = (Arc::clone(node), member.session);
        if self.remote.contains_key(&key) {
            return;
        }
        let total = self.total() + 1;
        let frame = ServerFrame::join(&member.username, &member.user_id, total);
        self.broadcast(&frame, None, metrics);
        self.remote.insert(key, member);
    }

    pub(super) fn remove_remote(&mut self, key: &RemoteKey, metrics: &Metrics) {
        if let Some(member) = self.remote.remove(key) {
            let frame = ServerFrame::user_leave(&member.username, &member.user_id, self.total());
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
