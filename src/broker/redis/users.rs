//! Per-user limits held on every node: the session cap and the message rate.
//!
//! **Sessions.** `{prefix}sessions:{user}` is a hash with one field per node: how many sessions
//! the user has there. A claim is one atomic script on that one key: it sums the fields,
//! refuses at the cap, and counts the new session. A refusal names the other nodes it counted;
//! if any of them is dead (its key expired) the claim is made again with their fields dropped.
//! Node keys are not read inside the script because on a Redis Cluster they live on other
//! shards than the user's hash. A release takes a session back. A node rewrites its fields after a reconnect (and for users whose
//! counts could not be written), and keeps the hashes of its users alive with its heartbeat.
//! While Redis is away a claim says yes: the cap on each node still holds (fail open).
//!
//! **Message rate.** Each node counts its users' messages and, every `REDIS_RATE_SYNC_MS`, adds
//! them to `{prefix}rate:{user}:{window}`, the user's count in the current [`RATE_WINDOW`] on
//! every node. The user's rate is estimated over a sliding window (the previous window's count,
//! weighted by how much of it the sliding window still covers, plus the current one); past
//! `USER_MSG_RATE_PER_SEC × window + USER_MSG_BURST`, its next message on any node closes its
//! socket (4006). The tolerance: the shared budget allows `USER_MSG_BURST / window` a second
//! above the rate, and between two syncs each node enforces only its own limit, so a user
//! spread over N nodes may send up to N times its rate for one sync interval before every node
//! refuses it. While Redis is away, each node's own limit applies (fail open).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::conn::{Batch, Conn};
use super::{now_ms, Outgoing, RedisBroker, RedisFailure};
use crate::broker::LocalControl;
use crate::metrics::labels::BrokerDrop;

/// Claims a session for a user unless the nodes not known dead already hold `cap` of them.
/// KEYS[1]: the user's sessions hash; ARGV: this node, cap, TTL (s), then nodes known dead,
/// whose fields are dropped. Returns `{1}` if claimed, else `{0, other node, …}`: the other
/// nodes it counted.
const CLAIM_SCRIPT: &str = r"
for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
local total, others = 0, {0}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  total = total + tonumber(fields[i + 1])
  if fields[i] ~= ARGV[1] then table.insert(others, fields[i]) end
end
if total >= tonumber(ARGV[2]) then return others end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1}
";

/// Gives a session back. KEYS[1]: the user's sessions hash; ARGV[1]: this node.
const RELEASE_SCRIPT: &str = r"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
";

/// The window the shared message rate is counted over.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(5);

/// How long a user found over the shared rate is refused before its count is looked at again.
const OVER_RATE_HOLD: Duration = Duration::from_secs(1);

/// What a node holds of its users' shared limits.
pub(super) struct Users {
    /// Chat messages per user since the last rate sync.
    messages: Mutex<HashMap<Arc<str>, u32>>,
    /// Users over the shared rate, and until when.
    over_rate: DashMap<Arc<str>, Instant>,
    /// Messages a user may send in one [`RATE_WINDOW`] on every node together.
    per_window: f64,
    /// Users whose session count in Redis may be wrong.
    dirty: Mutex<HashSet<Arc<str>>>,
}

impl Users {
    /// Users sharing `rate` messages a second, with `burst` back to back.
    pub(super) fn new(rate: f64, burst: u32) -> Users {
        Users {
            messages: Mutex::new(HashMap::new()),
            over_rate: DashMap::new(),
            per_window: rate * RATE_WINDOW.as_secs_f64() + f64::from(burst),
            dirty: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn mark_dirty(&self, user: &Arc<str>) {
        self.dirty
            .lock()
            .expect("never poisoned")
            .insert(Arc::clone(user));
    }

    fn take_dirty(&self) -> HashSet<Arc<str>> {
        std::mem::take(&mut *self.dirty.lock().expect("never poisoned"))
    }

    pub(super) fn count_message(&self, user: &Arc<str>) {
        *self
            .messages
            .lock()
            .expect("never poisoned")
            .entry(Arc::clone(user))
            .or_insert(0) += 1;
    }

    pub(super) fn over_rate(&self, user: &Arc<str>) -> bool {
        self.over_rate
            .get(user)
            .is_some_and(|until| Instant::now() < *until)
    }
}

impl RedisBroker {
    /// A claim for one more session of `user`; yes while Redis is away (fail open) or does
    /// not answer in time, and the count is repaired later.
    pub(super) async fn claim(&self, user: &Arc<str>, max: usize) -> bool {
        let link = self.connection.borrow().clone();
        let Some(mut link) = link.filter(|_| self.connected.load(Ordering::SeqCst)) else {
            self.users.mark_dirty(user);
            return true;
        };
        let claimed = self.try_claim(&mut link.conn, user, max).await;
        claimed.unwrap_or_else(|_| {
            self.users.mark_dirty(user);
            true
        })
    }

    /// The claim, made again without the counts of dead nodes if they made it fail.
    async fn try_claim(
        &self,
        conn: &mut Conn,
        user: &Arc<str>,
        max: usize,
    ) -> Result<bool, RedisFailure> {
        let claim = |dead: Vec<Arc<str>>| {
            let mut claim = redis::cmd("EVAL");
            claim
                .arg(CLAIM_SCRIPT)
                .arg(1)
                .arg(self.keys.sessions(user))
                .arg(&*self.node)
                .arg(max)
                .arg(self.settings.key_ttl.as_secs())
                .arg(dead.iter().map(|node| &**node).collect::<Vec<&str>>());
            claim
        };
        let answer: Vec<String> = self.within(claim(Vec::new()).query_async(conn)).await?;
        let others: Vec<Arc<str>> = answer
            .iter()
            .skip(1)
            .map(|node| Arc::from(node.as_str()))
            .collect();
        if answer.first().map(String::as_str) == Some("1") {
            return Ok(true);
        }
        let dead = self.within(self.dead_nodes(conn, &others)).await?;
        if dead.is_empty() {
            return Ok(false);
        }
        let answer: Vec<String> = self.within(claim(dead).query_async(conn)).await?;
        Ok(answer.first().map(String::as_str) == Some("1"))
    }

    /// Gives a session back, through the publisher so it follows the claim's order.
    pub(super) fn release(&self, user: &Arc<str>) {
        if !self.connected.load(Ordering::Relaxed) {
            self.users.mark_dirty(user);
            return;
        }
        if self
            .outgoing
            .try_send(Outgoing::Release(Arc::clone(user)))
            .is_err()
        {
            self.metrics.broker_drop(BrokerDrop::Backlog);
            self.users.mark_dirty(user);
        }
    }

    /// The commands that give a session of `user` back.
    pub(super) fn write_release(&self, pipe: &mut Batch, user: &str) {
        pipe.cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(self.keys.sessions(user))
            .arg(&*self.node)
            .ignore();
    }

    /// Rewrites this node's session counts: for every local user after a reconnect (`all`),
    /// else for the users whose counts could not be written; and keeps every local user's
    /// hash alive for another TTL.
    pub(super) async fn sync_sessions(
        &self,
        conn: &mut Conn,
        control: &dyn LocalControl,
        all: bool,
    ) -> Result<(), RedisFailure> {
        let local: HashMap<Arc<str>, usize> = control.local_sessions().into_iter().collect();
        let mut rewrite = self.users.take_dirty();
        if all {
            rewrite.extend(local.keys().cloned());
        }
        let ttl = self.settings.key_ttl.as_secs();
        let mut pipe = Batch::new();
        for user in &rewrite {
            let key = self.keys.sessions(user);
            match local.get(user) {
                Some(count) => pipe.cmd("HSET").arg(&key).arg(&*self.node).arg(count),
                None => pipe.cmd("HDEL").arg(&key).arg(&*self.node),
            }
            .ignore();
        }
        for user in local.keys() {
            pipe.cmd("EXPIRE")
                .arg(self.keys.sessions(user))
                .arg(ttl)
                .ignore();
        }
        if !pipe.is_empty() {
            if let Err(err) = self.within(pipe.query::<()>(conn)).await {
                for user in rewrite {
                    self.users.mark_dirty(&user);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Adds the messages counted since the last sync to every user's count for the current
    /// window, and marks the users whose estimated rate went over the shared budget.
    pub(super) async fn sync_rates(&self, conn: &mut Conn) -> Result<(), RedisFailure> {
        let counted = std::mem::take(&mut *self.users.messages.lock().expect("never poisoned"));
        if counted.is_empty() {
            return Ok(());
        }
        let window_ms = RATE_WINDOW.as_millis() as u64;
        let now = now_ms();
        let (window, elapsed) = (now / window_ms, (now % window_ms) as f64 / window_ms as f64);
        let mut pipe = Batch::new();
        let users: Vec<Arc<str>> = counted.keys().cloned().collect();
        for user in &users {
            let key = self.keys.rate(user, window);
            pipe.cmd("INCRBY").arg(&key).arg(counted[user]);
            pipe.cmd("PEXPIRE").arg(&key).arg(window_ms * 2).ignore();
            pipe.cmd("GET")
                .arg(self.keys.rate(user, window.saturating_sub(1)));
        }
        let counts: Vec<(u64, Option<u64>)> = self.within(pipe.query(conn)).await?;
        let until = Instant::now() + OVER_RATE_HOLD;
        for (user, (current, previous)) in users.into_iter().zip(counts) {
            let estimated = previous.unwrap_or(0) as f64 * (1.0 - elapsed) + current as f64;
            if estimated > self.users.per_window {
                self.users.over_rate.insert(user, until);
            }
        }
        self.users
            .over_rate
            .retain(|_, until| Instant::now() < *until);
        Ok(())
    }
}
