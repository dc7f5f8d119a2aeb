//! The server API's questions about the whole cluster, answered from Redis (see
//! [`super::super::directory`]). Every call has the `REDIS_TIMEOUT_MS` deadline and answers
//! [`Cluster::Unreachable`] rather than wait for a Redis that is away.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tracing::warn;

use super::RedisBroker;
use crate::broker::directory::{
    Cluster, HistoryPage, KeyClaim, Members, RoomCount, RoomsPage, UserSessions,
};
use crate::broker::Envelope;
use crate::history::Position;

/// A user's sessions on the nodes that are alive (a crashed node's count stays in the hash
/// until a claim prunes it). KEYS[1]: the sessions hash; ARGV[1]: the node key prefix.
static LIVE_SESSIONS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local live = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if redis.call('EXISTS', ARGV[1] .. fields[i]) == 1 then
    table.insert(live, fields[i])
    table.insert(live, fields[i + 1])
  end
end
return live
",
    )
});

impl RedisBroker {
    /// Runs `call` on the command connection, or says Redis is out of reach.
    pub(super) async fn ask<T, F, Fut>(&self, call: F) -> Cluster<T>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let Some(link) = self.connection.borrow().clone() else {
            return Cluster::Unreachable;
        };
        match tokio::time::timeout(self.settings.timeout, call(link.conn)).await {
            Ok(Ok(value)) => Cluster::Known(value),
            Ok(Err(err)) => {
                warn!(%err, "a server API read from redis failed");
                Cluster::Unreachable
            }
            Err(_) => {
                warn!("a server API read from redis timed out");
                Cluster::Unreachable
            }
        }
    }

    /// One SCAN step over the rooms' presence hashes, with each one's member count. A page
    /// may hold fewer than `limit` rooms (even none) before the end: SCAN's contract.
    pub(super) async fn scan_rooms(&self, cursor: u64, limit: usize) -> Cluster<RoomsPage> {
        let pattern = self.keys.members_pattern();
        let scanned = self
            .ask(|mut conn| async move {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(limit)
                    .query_async::<(u64, Vec<String>)>(&mut conn)
                    .await
            })
            .await;
        let (next, keys) = match scanned {
            Cluster::Known(scanned) => scanned,
            Cluster::Alone => return Cluster::Alone,
            Cluster::Unreachable => return Cluster::Unreachable,
        };
        if keys.is_empty() {
            // SCAN may return nothing before its end; an empty pipeline is an error.
            return Cluster::Known((Vec::new(), (next != 0).then(|| next.to_string())));
        }
        let counts = self
            .ask(|mut conn| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("HLEN").arg(key);
                }
                async move { pipe.query_async::<Vec<usize>>(&mut conn).await }
            })
            .await;
        let Cluster::Known(counts) = counts else {
            return Cluster::Unreachable;
        };
        let mut rooms: Vec<RoomCount> = keys
            .iter()
            .zip(counts)
            .filter(|(_, members)| *members > 0)
            .filter_map(|(key, members)| {
                Some(RoomCount {
                    room: self.keys.room_of_members(key)?.to_owned(),
                    members,
                })
            })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        Cluster::Known((rooms, (next != 0).then(|| next.to_string())))
    }

    /// Every member of `room` on every node, this one included.
    pub(super) async fn read_members(&self, room: &str) -> Cluster<Members> {
        let key = self.keys.members(room);
        let fields = self
            .ask(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async::<Vec<(String, Vec<u8>)>>(&mut conn)
                    .await
            })
            .await;
        fields.map(|fields| self.parse_members(&fields, true))
    }

    /// The room's position and at most `limit` messages after `after`, oldest first; `None`
    /// when the room has no history in Redis.
    pub(super) async fn read_history(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Cluster<Option<HistoryPage>> {
        type Raw = (
            (Option<String>, Option<u64>),
            Vec<(String, Vec<(String, Vec<u8>)>)>,
        );
        let (position_key, history_key) = (self.keys.position(room), self.keys.history(room));
        let raw = self
            .ask(|mut conn| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&position_key)
                    .arg("epoch")
                    .arg("offset")
                    .cmd("XRANGE")
                    .arg(&history_key)
                    .arg(format!("0-{}", after.saturating_add(1)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async::<Raw>(&mut conn)
                    .await
            })
            .await;
        let ((epoch, offset), raw) = match raw {
            Cluster::Known(raw) => raw,
            Cluster::Alone => return Cluster::Alone,
            Cluster::Unreachable => return Cluster::Unreachable,
        };
        let (Some(epoch), Some(offset)) = (epoch, offset) else {
            return Cluster::Known(None);
        };
        let entries = raw
            .into_iter()
            .filter_map(|(_, fields)| {
                let (_, payload) = fields.into_iter().find(|(field, _)| field == "e")?;
                let (entry_epoch, entry) = self.entry(Envelope::decode(&payload).ok()?)?;
                (*entry_epoch == *epoch).then(|| Arc::new(entry))
            })
            .collect();
        let position = Position {
            epoch: Arc::from(epoch),
            offset,
        };
        Cluster::Known(Some((position, entries)))
    }

    /// The user's sessions on every node.
    pub(super) async fn read_sessions(&self, user: &str) -> Cluster<UserSessions> {
        let mut live = LIVE_SESSIONS.prepare_invoke();
        live.key(self.keys.sessions(user)).arg(self.keys.node(""));
        let nodes =
            self.ask(|mut conn| async move {
                live.invoke_async::<Vec<(String, usize)>>(&mut conn).await
            })
            .await;
        nodes.map(|nodes| {
            nodes
                .into_iter()
                .filter(|(_, sessions)| *sessions > 0)
                .map(|(node, sessions)| (Arc::from(node), sessions))
                .collect()
        })
    }

    /// Claims an idempotency key for `lease` (until its request is answered), or says who
    /// holds it.
    pub(super) async fn claim_idempotency(
        &self,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Cluster<KeyClaim> {
        let name = self.keys.idempotency(key);
        let lease_ms = lease.as_millis() as u64;
        self.ask(|mut conn| async move {
            // SET NX GET (Redis 7): the claim and, when it fails, what holds the key, at once.
            let held: Option<String> = redis::cmd("SET")
                .arg(&name)
                .arg(fingerprint)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(lease_ms)
                .query_async(&mut conn)
                .await?;
            Ok(held.map_or(KeyClaim::Claimed, |held| KeyClaim::of(&held, fingerprint)))
        })
        .await
    }

    /// Records what a claimed key holds now, for `window`, or gives the key up (`None`: the
    /// request failed and may be retried).
    pub(super) async fn settle_idempotency(&self, key: &str, held: Option<&str>, window: Duration) {
        let window_ms = window.as_millis() as u64;
        let name = self.keys.idempotency(key);
        let _ = self
            .ask(|mut conn| async move {
                match held {
                    Some(held) => {
                        redis::cmd("SET")
                            .arg(&name)
                            .arg(held)
                            .arg("XX")
                            .arg("PX")
                            .arg(window_ms)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                    None => {
                        redis::cmd("DEL")
                            .arg(&name)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                }
            })
            .await;
    }
}
