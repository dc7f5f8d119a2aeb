//! Presence: reading the rooms' member hashes, forgetting dead nodes, resyncing our own
//! fields.

use std::collections::HashSet;
use std::sync::Arc;

use super::conn::{Batch, Conn};
use super::{RedisBroker, RedisFailure};
use crate::broker::envelope::PresenceValue;
use crate::broker::{Keys, LocalRooms, RemoteEvent, RemoteMember};
use crate::metrics::labels::BrokerFailure;

/// Rooms per pipelined read.
const READ_CHUNK: usize = 256;

impl RedisBroker {
    /// Reads the rooms' presence hashes (pipelined, a chunk of rooms per round trip) and makes
    /// the hub's view of other nodes match them.
    pub(super) async fn refresh_views(
        &self,
        conn: &mut Conn,
        local: &dyn LocalRooms,
        rooms: &[String],
    ) -> Result<(), RedisFailure> {
        for chunk in rooms.chunks(READ_CHUNK) {
            let mut pipe = Batch::new();
            for room in chunk {
                pipe.cmd("HGETALL").arg(self.keys.members(room));
            }
            let hashes: Vec<Vec<(String, Vec<u8>)>> = self.within(pipe.query(conn)).await?;
            let views: Vec<Vec<(Arc<str>, RemoteMember)>> = hashes
                .iter()
                .map(|fields| self.parse_presence(fields))
                .collect();
            let mut nodes: Vec<Arc<str>> = views
                .iter()
                .flatten()
                .map(|(node, _)| Arc::clone(node))
                .collect();
            nodes.sort();
            nodes.dedup();
            let dead = self.within(self.dead_nodes(conn, &nodes)).await?;
            let mut prune = Batch::new();
            for (room, mut members) in chunk.iter().zip(views) {
                if !dead.is_empty() {
                    // Fields of a node that crashed: nobody else will remove them. The key was
                    // read a moment ago, not in the same step (on a cluster it is on another
                    // shard): a node that came back within that moment may lose its fresh
                    // fields here, so a node that finds its key had expired resyncs at the
                    // heartbeat after as well.
                    let stale: Vec<String> = members
                        .iter()
                        .filter(|(node, _)| dead.contains(node))
                        .map(|(node, member)| Keys::member_field(node, member.session))
                        .collect();
                    if !stale.is_empty() {
                        prune
                            .cmd("HDEL")
                            .arg(self.keys.members(room))
                            .arg(stale)
                            .ignore();
                    }
                    members.retain(|(node, _)| !dead.contains(node));
                }
                local.replace_remote(room, members);
            }
            if !prune.is_empty() {
                self.within(prune.query::<()>(conn)).await?;
            }
        }
        Ok(())
    }

    /// Other nodes' members in a presence hash; fields that do not parse are skipped.
    fn parse_presence(&self, fields: &[(String, Vec<u8>)]) -> Vec<(Arc<str>, RemoteMember)> {
        self.parse_members(fields, false)
    }

    /// The members in a presence hash (this node's too with `own`); fields that do not parse
    /// are skipped.
    pub(super) fn parse_members(
        &self,
        fields: &[(String, Vec<u8>)],
        own: bool,
    ) -> Vec<(Arc<str>, RemoteMember)> {
        let mut members = Vec::with_capacity(fields.len());
        for (field, value) in fields {
            let Some((node, session)) = Keys::parse_member_field(field) else {
                continue;
            };
            if !own && node == &*self.node {
                continue;
            }
            let Ok(who) = serde_json::from_slice::<PresenceValue<'_>>(value) else {
                self.metrics.broker_error(BrokerFailure::Decode);
                continue;
            };
            members.push((
                Arc::<str>::from(node),
                RemoteMember {
                    session,
                    username: Arc::from(who.username.as_ref()),
                    user_id: Arc::from(who.user_id.as_ref()),
                },
            ));
        }
        members
    }

    /// Which of `nodes` no longer have a live node key (each key on its own: on a cluster
    /// they are on different shards).
    pub(super) async fn dead_nodes(
        &self,
        conn: &mut Conn,
        nodes: &[Arc<str>],
    ) -> redis::RedisResult<Vec<Arc<str>>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut exists = Batch::new();
        for node in nodes {
            exists.cmd("EXISTS").arg(self.keys.node(node));
        }
        let alive: Vec<bool> = exists.query(conn).await?;
        Ok(nodes
            .iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(node, _)| Arc::clone(node))
            .collect())
    }

    /// Queues a `sync` of this node's members for each room (none, for a room it no longer
    /// has), taken under the room's lock so that it is ordered with the hub's own events.
    pub(super) fn resync(&self, local: &dyn LocalRooms, rooms: impl IntoIterator<Item = String>) {
        let rooms: HashSet<String> = rooms.into_iter().collect();
        for room in rooms {
            local.with_local_members(&room, &mut |members| {
                let _ = self.queue(&room, RemoteEvent::Sync(members));
            });
        }
    }
}
