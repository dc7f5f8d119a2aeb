//! Presence for the webhooks, decided on every node's state in Redis: whether a user came
//! online (a first session anywhere) or went offline (no session on any live node), whether a
//! room became occupied or empty. Each fact is reported by exactly one node: the one whose
//! script flips the item's `on` flag (`SET NX` to report it on, `DEL` returning 1 to report it
//! off).
//!
//! An item's recent flips are kept ([`FLIP_MEMORY`]) under the change that made each one (the
//! asking node's id and the change's [`Stamp`]). A change whose answer was lost (a timeout, a
//! dropped connection, one shard of a cluster failing mid-batch) may have flipped its item all
//! the same; asked again under the same stamp, it is told it did, instead of finding the item
//! flipped already and reporting nothing.
//!
//! Each item's keys (who holds it, its `on` flag, a departure's grace, its recent flips) are
//! changed by one script on that item alone ([`ITEM`]); on a Redis Cluster they share the
//! item's slot. What a node holds is also listed in its `node-held:{node}` set: added before a
//! batch takes items, removed after it lets them go, so the set holds at least every item the
//! node holds. A node that dies leaves its items there: a live node that sees its key gone
//! reads the set, drops the dead node from each item listed (whichever node's `DEL` of an `on`
//! flag returns 1 reports that item off, so two nodes sweeping at once report it once), and
//! forgets the set once that answer is in. Until it is swept, a dead node still holds its
//! items.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tracing::debug;

use super::conn::{Batch, Conn};
use super::RedisBroker;
use crate::broker::directory::Cluster;
use crate::broker::ledger::{DeadNode, PresenceChange, Recorded, Stamp, Synced};

/// How long an item's recent flips are kept after its last one (and at most the last 64 of
/// them): within that, the change that made a flip may be asked again after a lost answer and
/// be told so. The tracker asks again every second while Redis does not answer, and first
/// thing after a reconnect.
const FLIP_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Changes one item. KEYS: the item's holders (a hash), its `on` flag, its grace, its recent
/// flips (a sorted set: `{asker}:{stamp}:on|off` by the flip's number). ARGV: the node whose
/// hold changes, what happens, the grace of a user's departure (ms, only for `gone`), the
/// change's stamp, [`FLIP_MEMORY`] (ms), the asker (this node, or its sweeper). What happens:
/// - `here`: the node holds it; 1 if that turned it on;
/// - `gone`: the node let it go (a user's grace starts, again if asked again); 0;
/// - `settle`: 1 if that turned it off (nobody holds it), else 2 + the milliseconds left
///   while a grace runs, else 0;
/// - `drop`: the node let it go, or died, and is not waited for; then settles it (no grace).
///
/// A change asked again finds its own flip and answers 1 again, unless another asker flipped
/// the item since (or its flip was forgotten): then it is decided anew, so a late event never
/// contradicts a newer one. An asker's own later flips do not count: they are the rest of
/// the batch being asked again, in order.
const ITEM_LUA: &str = r"
local node, kind, asker = ARGV[1], ARGV[2], ARGV[6]
local token = asker .. ':' .. ARGV[4]
local function asked_before(way)
  local at = redis.call('ZSCORE', KEYS[4], token .. ':' .. way)
  if not at then return false end
  for _, later in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. at, '+inf')) do
    if string.sub(later, 1, #asker + 1) ~= asker .. ':' then return false end
  end
  return true
end
local function remember(way)
  local last = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')[2]
  local number = (tonumber(last) or 0) + 1
  redis.call('ZADD', KEYS[4], number, token .. ':' .. way)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', number - 64)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  return 1
end
local function turn_off()
  if redis.call('HLEN', KEYS[1]) > 0 or redis.call('DEL', KEYS[2]) == 0 then return 0 end
  return remember('off')
end
if kind == 'here' then
  redis.call('HSET', KEYS[1], node, 1)
  if asked_before('on') then return 1 end
  if not redis.call('SET', KEYS[2], 1, 'NX') then return 0 end
  return remember('on')
elseif kind == 'gone' then
  redis.call('HDEL', KEYS[1], node)
  if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[3], 1, 'PX', ARGV[3]) end
  return 0
elseif kind == 'settle' then
  if asked_before('off') then return 1 end
  local left = redis.call('PTTL', KEYS[3])
  if left > 0 then return 2 + left end
  return turn_off()
end
redis.call('HDEL', KEYS[1], node)
if asked_before('off') then return 1 end
return turn_off()
";

/// One item's change, as [`ITEM`] takes it.
struct ItemChange<'a> {
    /// The node whose hold of the item changes.
    holder: &'a str,
    /// `here`, `gone`, `settle` or `drop`.
    kind: &'static str,
    item: &'a str,
    /// A user's departure's grace, for `gone`.
    grace_ms: u64,
}

impl<'a> ItemChange<'a> {
    fn new(holder: &'a str, kind: &'static str, item: &'a str) -> Self {
        ItemChange {
            holder,
            kind,
            item,
            grace_ms: 0,
        }
    }
}

/// The scripts pipelined by hash, which every connect loads (see `load_scripts`).
pub(super) const SCRIPTS: [&str; 1] = [ITEM_LUA];

static ITEM: LazyLock<Script> = LazyLock::new(|| Script::new(ITEM_LUA));

impl RedisBroker {
    /// Adds one item's script to `batch`: the change, asked by `asker` under `stamp`.
    fn change_item(&self, batch: &mut Batch, change: ItemChange, asker: &str, stamp: Stamp) {
        batch
            .script(&ITEM, &self.keys.item(change.item))
            .arg(change.holder)
            .arg(change.kind)
            .arg(change.grace_ms)
            .arg(stamp)
            .arg(FLIP_MEMORY.as_millis() as u64)
            .arg(asker);
    }

    /// Records `changes` in order, each under its stamp, a user's departure holding off its
    /// settling for `grace`.
    pub(super) async fn record(
        &self,
        changes: &[(Stamp, PresenceChange)],
        grace: Duration,
    ) -> Cluster<Vec<Recorded>> {
        if changes.is_empty() {
            return Cluster::Known(Vec::new());
        }
        let mine = self.keys.node_held(&self.node);
        let mut items = Batch::new();
        // Whether this node holds each item it took or let go, after all the changes.
        let mut holds: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
        for (stamp, change) in changes {
            let (kind, item, grace_ms) = match change {
                PresenceChange::Here(item) => {
                    holds.insert(item, true);
                    ("here", item, 0)
                }
                PresenceChange::Gone(item) => {
                    holds.insert(item, false);
                    let user = item.starts_with("user:");
                    (
                        "gone",
                        item,
                        if user { grace.as_millis() as u64 } else { 0 },
                    )
                }
                PresenceChange::Settle(item) => ("settle", item, 0),
            };
            let change = ItemChange {
                grace_ms,
                ..ItemChange::new(&self.node, kind, item)
            };
            self.change_item(&mut items, change, &self.node, *stamp);
        }
        let held = |wanted: bool| -> Vec<&str> {
            holds
                .iter()
                .filter(|(_, holds)| **holds == wanted)
                .map(|(item, _)| *item)
                .collect()
        };
        let (taken, let_go) = (held(true), held(false));
        let results = self
            .ask(|mut conn| async move {
                self.list_held(&mut conn, &mine, &taken).await?;
                let results: Vec<u64> = items.query(&mut conn).await?;
                self.unlist_held(&mut conn, &mine, &let_go).await;
                Ok(results)
            })
            .await;
        results.map(|results| {
            results
                .into_iter()
                .map(|result| match result {
                    0 => Recorded::Kept,
                    1 => Recorded::Flipped,
                    wait => Recorded::Wait(Duration::from_millis(wait - 2)),
                })
                .collect()
        })
    }

    /// Makes this node's items in Redis exactly `here`, under `stamp`.
    pub(super) async fn sync_held(&self, here: &[Arc<str>], stamp: Stamp) -> Cluster<Synced> {
        let mine = &self.keys.node_held(&self.node);
        let synced = self
            .ask(|mut conn| async move {
                let listed: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(mine)
                    .query_async(&mut conn)
                    .await?;
                let now: HashSet<&str> = here.iter().map(|item| &**item).collect();
                let gone: Vec<String> = listed
                    .into_iter()
                    .filter(|item| !now.contains(item.as_str()))
                    .collect();
                let here: Vec<&str> = now.into_iter().collect();
                self.list_held(&mut conn, mine, &here).await?;
                let mut items = Batch::new();
                for item in &here {
                    let change = ItemChange::new(&self.node, "here", item);
                    self.change_item(&mut items, change, &self.node, stamp);
                }
                for item in &gone {
                    let change = ItemChange::new(&self.node, "drop", item);
                    self.change_item(&mut items, change, &self.node, stamp);
                }
                let flipped: Vec<u64> = match items.is_empty() {
                    true => Vec::new(),
                    false => items.query(&mut conn).await?,
                };
                let (on, off) = flipped.split_at(here.len());
                let synced = Synced {
                    on: flipped_ones(&here, on),
                    off: flipped_ones(&gone, off),
                };
                Ok((synced, gone))
            })
            .await;
        let Cluster::Known((synced, gone)) = synced else {
            return synced.map(|(synced, _)| synced);
        };
        // Unlisted once the answer is in: a rewrite asked again reads the list for what this
        // node let go of, and must find there what it dropped the first time.
        let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
        let _ = self
            .ask(|mut conn| async move {
                self.unlist_held(&mut conn, mine, &gone).await;
                Ok(())
            })
            .await;
        Cluster::Known(synced)
    }

    /// A node that died, listed as holding items: the first by id (a node that finds several
    /// takes them one by one).
    pub(super) async fn find_dead_holder(&self) -> Cluster<Option<DeadNode>> {
        let nodes = self.keys.nodes();
        self.ask(|mut conn| async move {
            let listed: Vec<Arc<str>> = redis::cmd("SMEMBERS")
                .arg(&nodes)
                .query_async::<Vec<String>>(&mut conn)
                .await?
                .into_iter()
                .filter(|node| **node != *self.node)
                .map(Arc::from)
                .collect();
            let Some(node) = self.dead_nodes(&mut conn, &listed).await?.into_iter().min() else {
                return Ok(None);
            };
            let items: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.keys.node_held(&node))
                .query_async(&mut conn)
                .await?;
            Ok(Some(DeadNode { node, items }))
        })
        .await
    }

    /// Drops a dead node from each item it held, under `stamp`, and forgets it once the
    /// answer is in: the items this node found off, to report. Asked by this node's sweeper,
    /// an asker of its own: a sweep asked again after a lost answer must not take this node's
    /// own changes made in between for the rest of its batch.
    pub(super) async fn sweep_held(&self, dead: &DeadNode, stamp: Stamp) -> Cluster<Vec<String>> {
        let sweeper = format!("{}/sweep", self.node);
        let mut dropped = Batch::new();
        for item in &dead.items {
            let change = ItemChange::new(&dead.node, "drop", item);
            self.change_item(&mut dropped, change, &sweeper, stamp);
        }
        let swept = self
            .ask(|mut conn| async move {
                match dropped.is_empty() {
                    true => Ok(Vec::new()),
                    false => dropped.query::<Vec<u64>>(&mut conn).await,
                }
            })
            .await;
        let Cluster::Known(flipped) = swept else {
            return swept.map(|_| Vec::new());
        };
        // A forget that fails leaves the node to be found again: its items dropped already,
        // a sweep under another stamp finds nothing left to report.
        let mut forget = Batch::new();
        forget
            .cmd("DEL")
            .arg(self.keys.node_held(&dead.node))
            .ignore();
        forget
            .cmd("SREM")
            .arg(self.keys.nodes())
            .arg(&*dead.node)
            .ignore();
        let _ = self
            .ask(|mut conn| async move { forget.query::<()>(&mut conn).await })
            .await;
        Cluster::Known(flipped_ones(&dead.items, &flipped))
    }

    /// Lists items in this node's set before it holds them, and the node among those that
    /// report presence.
    async fn list_held(
        &self,
        conn: &mut Conn,
        mine: &str,
        items: &[&str],
    ) -> Result<(), redis::RedisError> {
        let mut listed = Batch::new();
        listed
            .cmd("SADD")
            .arg(self.keys.nodes())
            .arg(&*self.node)
            .ignore();
        if !items.is_empty() {
            listed.cmd("SADD").arg(mine).arg(items).ignore();
        }
        listed.query::<()>(conn).await
    }

    /// Takes items out of this node's set once it no longer holds them. A failure leaves them
    /// listed, which only costs a sweep some work: the set may hold more than the node holds.
    async fn unlist_held(&self, conn: &mut Conn, mine: &str, items: &[&str]) {
        if items.is_empty() {
            return;
        }
        let unlisted: Result<(), redis::RedisError> = redis::cmd("SREM")
            .arg(mine)
            .arg(items)
            .query_async(conn)
            .await;
        if let Err(err) = unlisted {
            debug!(node = %self.node, items = items.len(), %err, "items left listed as held");
        }
    }
}

/// The items whose change flipped them (answered 1).
fn flipped_ones<T: AsRef<str>>(items: &[T], answers: &[u64]) -> Vec<String> {
    items
        .iter()
        .zip(answers)
        .filter(|(_, answer)| **answer == 1)
        .map(|(item, _)| item.as_ref().to_owned())
        .collect()
}
