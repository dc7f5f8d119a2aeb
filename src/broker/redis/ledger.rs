//! Presence for the webhooks, decided on every node's state in Redis: whether a user came
//! online (a first session anywhere) or went offline (no session on any live node), whether a
//! room became occupied or empty. Each fact is reported by exactly one node: the one whose
//! script flips the item's `on` flag, on (`on:{token}`) or off (`off:{token}`, kept
//! [`TOMBSTONE`]).
//!
//! A flip carries the token of the ask that made it: this node's id and the ask's
//! [`Stamp`]. An ask whose answer was lost (a timeout, a dropped connection) may have flipped
//! its items all the same; sent again under the same stamp, it finds its own token and is
//! told it flipped them, instead of finding them already flipped and reporting nothing.
//!
//! Each item's keys (who holds it, its `on` flag, a departure's grace) are changed by one
//! script on that item alone ([`ITEM`]); on a Redis Cluster they share the item's slot. What a
//! node holds is also listed in its `node-held:{node}` set: added before a batch takes items,
//! removed after it lets them go, so the set holds at least every item the node holds. A node
//! that dies leaves its items there: a live node that sees its key gone drops the dead node
//! from each listed item (whichever node's script turns an item off reports it, so two nodes
//! sweeping at once report it once), and only then forgets the set. Until it is swept, a dead
//! node still holds its items.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::conn::{Batch, Conn};
use super::RedisBroker;
use crate::broker::directory::Cluster;
use crate::broker::ledger::{PresenceChange, Recorded, Stamp, Synced};

/// How long an item's `off` flag outlives its flip: the time within which the node that
/// turned it off may ask again after a lost answer and still be told so. The tracker asks
/// again every second while Redis is unreachable, and first thing after a reconnect.
const TOMBSTONE: Duration = Duration::from_secs(15 * 60);

/// Changes one item. KEYS: the item's holders (a hash), its `on` flag, its grace. ARGV: the
/// node, what happens, the grace of a user's departure (ms, only for `gone`), the asking
/// node's token (`{node}:{stamp}`), [`TOMBSTONE`] (ms). What happens:
/// - `here`: the node holds it; 1 if that turned it on (now, or under this token before);
/// - `gone`: the node let it go (a user's grace starts); 0;
/// - `settle`: 1 if nobody holds it and this token turned it off (now or before), else
///   2 + the milliseconds left while a grace runs, else 0;
/// - `drop`: the node let it go, or died, and is not waited for; then settles it (no grace).
///
/// A flag of an older version (`1`) reads as on.
const ITEM_LUA: &str = r"
local node, kind, token = ARGV[1], ARGV[2], ARGV[4]
local flag = redis.call('GET', KEYS[2])
local on = flag and string.sub(flag, 1, 4) ~= 'off:'
local function settle()
  if flag == 'off:' .. token then return 1 end
  if on and redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('SET', KEYS[2], 'off:' .. token, 'PX', ARGV[5])
    return 1
  end
  return 0
end
if kind == 'here' then
  redis.call('HSET', KEYS[1], node, 1)
  if flag == 'on:' .. token then return 1 end
  if on then return 0 end
  redis.call('SET', KEYS[2], 'on:' .. token)
  return 1
elseif kind == 'gone' then
  redis.call('HDEL', KEYS[1], node)
  if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[3], 1, 'PX', ARGV[3]) end
  return 0
elseif kind == 'settle' then
  if flag == 'off:' .. token then return 1 end
  local left = redis.call('PTTL', KEYS[3])
  if left > 0 then return 2 + left end
  return settle()
end
redis.call('HDEL', KEYS[1], node)
return settle()
";

/// The scripts pipelined by hash, which every connect loads (see `load_scripts`).
pub(super) const SCRIPTS: [&str; 1] = [ITEM_LUA];

static ITEM: LazyLock<Script> = LazyLock::new(|| Script::new(ITEM_LUA));

impl RedisBroker {
    /// Adds one item's script to `batch`: `kind` happens to `node`'s hold of `item`, asked by
    /// this node under `stamp`.
    fn change_item(
        &self,
        batch: &mut Batch,
        node: &str,
        (kind, item, grace_ms): (&str, &str, u64),
        stamp: Stamp,
    ) {
        batch
            .script(&ITEM, &self.keys.item(item))
            .arg(node)
            .arg(kind)
            .arg(grace_ms)
            .arg(format!("{}:{stamp}", self.node))
            .arg(TOMBSTONE.as_millis() as u64);
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
            self.change_item(&mut items, &self.node, (kind, item, grace_ms), *stamp);
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
                unlist_held(&mut conn, &mine, &let_go).await?;
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
        let mine = self.keys.node_held(&self.node);
        self.ask(|mut conn| async move {
            let listed: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&mine)
                .query_async(&mut conn)
                .await?;
            let now: HashSet<&str> = here.iter().map(|item| &**item).collect();
            let gone: Vec<&str> = listed
                .iter()
                .map(String::as_str)
                .filter(|item| !now.contains(item))
                .collect();
            let here: Vec<&str> = now.into_iter().collect();
            self.list_held(&mut conn, &mine, &here).await?;
            let mut items = Batch::new();
            for item in &here {
                self.change_item(&mut items, &self.node, ("here", item, 0), stamp);
            }
            for item in &gone {
                self.change_item(&mut items, &self.node, ("drop", item, 0), stamp);
            }
            let flipped: Vec<u64> = match items.is_empty() {
                true => Vec::new(),
                false => items.query(&mut conn).await?,
            };
            unlist_held(&mut conn, &mine, &gone).await?;
            let (on, off) = flipped.split_at(here.len());
            let which = |items: &[&str], flipped: &[u64]| -> Vec<String> {
                items
                    .iter()
                    .zip(flipped)
                    .filter(|(_, flipped)| **flipped == 1)
                    .map(|(item, _)| (*item).to_owned())
                    .collect()
            };
            Ok(Synced {
                on: which(&here, on),
                off: which(&gone, off),
            })
        })
        .await
    }

    /// Reports the items of nodes that died, under `stamp`: the ones this node took over and
    /// found off.
    pub(super) async fn sweep_held(&self, stamp: Stamp) -> Cluster<Vec<String>> {
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
            let dead = self.dead_nodes(&mut conn, &listed).await?;
            let mut off = Vec::new();
            for node in dead {
                let theirs = self.keys.node_held(&node);
                let items: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(&theirs)
                    .query_async(&mut conn)
                    .await?;
                if !items.is_empty() {
                    let mut dropped = Batch::new();
                    for item in &items {
                        self.change_item(&mut dropped, &node, ("drop", item, 0), stamp);
                    }
                    let flipped: Vec<u64> = dropped.query(&mut conn).await?;
                    off.extend(
                        items
                            .into_iter()
                            .zip(flipped)
                            .filter(|(_, flipped)| *flipped == 1)
                            .map(|(item, _)| item),
                    );
                }
                // Forgotten only once every item is dropped: a sweep cut short is done again
                // by the next one.
                let mut forget = Batch::new();
                forget.cmd("DEL").arg(&theirs).ignore();
                forget.cmd("SREM").arg(&nodes).arg(&*node).ignore();
                forget.query::<()>(&mut conn).await?;
            }
            Ok(off)
        })
        .await
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
}

/// Takes items out of this node's set once it no longer holds them.
async fn unlist_held(conn: &mut Conn, mine: &str, items: &[&str]) -> Result<(), redis::RedisError> {
    if items.is_empty() {
        return Ok(());
    }
    redis::cmd("SREM")
        .arg(mine)
        .arg(items)
        .query_async(conn)
        .await
}
