//! The server API's questions about the whole cluster, answered from Redis (see
//! [`super::super::directory`]). Every call has the `REDIS_TIMEOUT_MS` deadline and answers
//! [`Cluster::Unreachable`] rather than wait for a Redis that is away.

use std::sync::Arc;
use std::time::Duration;

use redis::ServerErrorKind;
use tracing::warn;

use super::conn::{Batch, Conn, Server};
use super::RedisBroker;
use crate::broker::directory::{
    Cluster, HistoryPage, KeyClaim, Members, RoomCount, RoomsPage, UserSessions,
};
use crate::broker::Envelope;
use crate::history::Position;

impl RedisBroker {
    /// Runs `call` on the command connection, or says Redis is out of reach.
    pub(super) async fn ask<T, F, Fut>(&self, call: F) -> Cluster<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let Some(link) = self.connection.borrow().clone() else {
            return Cluster::Unreachable;
        };
        match tokio::time::timeout(self.settings.timeout, call(link.conn)).await {
            Ok(Ok(value)) => Cluster::Known(value),
            Ok(Err(err)) if err.kind() == ServerErrorKind::NoScript.into() => {
                // A server without the scripts (restarted, or a replica a failover promoted):
                // the driver reconnects, which loads them everywhere.
                warn!("redis lost the scripts; reconnecting");
                self.raise_failure(link.generation);
                Cluster::Unreachable
            }
            Ok(Err(err)) => {
                warn!(%err, "a question to redis (server API, webhook presence) failed");
                Cluster::Unreachable
            }
            Err(_) => {
                warn!("a question to redis (server API, webhook presence) timed out");
                Cluster::Unreachable
            }
        }
    }

    /// One SCAN step over the rooms' presence hashes, with each one's member count. A page
    /// may hold fewer than `limit` rooms (even none) before the end: SCAN's contract. On a
    /// cluster the masters are scanned one after the other, in the order of their slots, and
    /// the cursor says which one (`{first slot}-{cursor}`; on one Redis it is SCAN's own). A
    /// master that is gone from where the cursor says (a resharding) is scanned from its
    /// start: a page may then repeat rooms.
    pub(super) async fn scan_rooms(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Cluster<RoomsPage> {
        let Some((at, cursor)) = parse_cursor(cursor) else {
            return Cluster::Known((Vec::new(), None));
        };
        let pattern = self.keys.members_pattern();
        let scanned = self
            .ask(|mut conn| async move {
                let servers = conn.servers().await?;
                let Some(index) = servers.iter().position(|server| server.first_slot() >= at)
                else {
                    return Ok((None, Vec::new()));
                };
                let server = &servers[index];
                let cursor = if server.first_slot() == at { cursor } else { 0 };
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(limit);
                let (next, keys) = conn.query_on::<(u64, Vec<String>)>(server, &scan).await?;
                let next = match (next, server, servers.get(index + 1)) {
                    (0, _, None) => None,
                    (0, _, Some(after)) => Some(format!("{}-0", after.first_slot())),
                    (next, Server::One, _) => Some(next.to_string()),
                    (next, server, _) => Some(format!("{}-{next}", server.first_slot())),
                };
                Ok((next, keys))
            })
            .await;
        let (next, keys) = match scanned {
            Cluster::Known(scanned) => scanned,
            Cluster::Alone => return Cluster::Alone,
            Cluster::Unreachable => return Cluster::Unreachable,
        };
        if keys.is_empty() {
            return Cluster::Known((Vec::new(), next));
        }
        let counts = self
            .ask(|mut conn| {
                let mut pipe = Batch::new();
                for key in &keys {
                    pipe.cmd("HLEN").arg(key);
                }
                async move { pipe.query::<Vec<usize>>(&mut conn).await }
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
        Cluster::Known((rooms, next))
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
                Batch::new()
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
                    .query::<Raw>(&mut conn)
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

    /// The user's sessions on every live node (a crashed node's count stays in the hash until
    /// a claim drops it).
    pub(super) async fn read_sessions(&self, user: &str) -> Cluster<UserSessions> {
        let key = self.keys.sessions(user);
        let counted = self
            .ask(|mut conn| async move {
                let counts: Vec<(String, usize)> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                let mut exists = Batch::new();
                for (node, _) in &counts {
                    exists.cmd("EXISTS").arg(self.keys.node(node));
                }
                let alive: Vec<bool> = match exists.is_empty() {
                    true => Vec::new(),
                    false => exists.query(&mut conn).await?,
                };
                Ok(counts
                    .into_iter()
                    .zip(alive)
                    .filter(|((_, sessions), alive)| *alive && *sessions > 0)
                    .map(|((node, sessions), _)| (Arc::<str>::from(node), sessions))
                    .collect())
            })
            .await;
        counted
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

/// A rooms page's cursor: the first slot of the master it is at (0 on one Redis) and its
/// SCAN cursor (`None` if it is not one of ours: an empty last page).
fn parse_cursor(cursor: Option<&str>) -> Option<(u16, u64)> {
    let Some(cursor) = cursor else {
        return Some((0, 0));
    };
    match cursor.split_once('-') {
        Some((at, cursor)) => Some((at.parse().ok()?, cursor.parse().ok()?)),
        None => Some((0, cursor.parse().ok()?)),
    }
}
