//! Presence for the webhooks, decided on every node's state in Redis: whether a user came
//! online (a first session anywhere) or went offline (no session on any live node), whether a
//! room became occupied or empty. Each fact is reported by exactly one node: the one whose
//! script flips the item's `on` flag (`SET NX` to report it on, `DEL` returning 1 to report it
//! off). A node that dies leaves its items in `node-held:{node}`; the first live node to see
//! its key gone takes that set (reading and deleting it in one script) and reports what went
//! off with it.
//!
//! The scripts build key names from the prefix and the items (so Redis Cluster, which needs
//! every key declared, is not supported by them).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::RedisBroker;
use crate::broker::directory::Cluster;
use crate::broker::ledger::{PresenceChange, Recorded, Synced};

/// `settle(item, grace)`: 2 + the milliseconds left while a departure's grace runs (with
/// `grace`), else drops the fields of dead nodes from the item's holders and, if no live node
/// holds it, deletes its `on` flag: 1 if this call did (so it reports it off), else 0.
/// ARGV[1] is always the prefix, ARGV[2] the node key prefix.
const SETTLE: &str = r"
local function settle(item, grace)
  if grace then
    local left = redis.call('PTTL', ARGV[1] .. 'grace:' .. item)
    if left > 0 then return 2 + left end
  end
  local held = ARGV[1] .. 'held:' .. item
  for _, node in ipairs(redis.call('HKEYS', held)) do
    if redis.call('EXISTS', ARGV[2] .. node) == 1 then return 0 end
    redis.call('HDEL', held, node)
  end
  return redis.call('DEL', ARGV[1] .. 'on:' .. item)
end
";

/// Applies changes in order. ARGV: prefix, node key prefix, this node, the grace of a user's
/// departure (ms), then per change its kind (`here`, `gone`, `settle`) and item. Returns per
/// change: 1 if it flipped the item (on for `here`, off for `settle`), 2 + ms while a grace
/// holds a `settle` back, else 0.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SETTLE}
local node, grace = ARGV[3], tonumber(ARGV[4])
local mine = ARGV[1] .. 'node-held:' .. node
redis.call('SADD', ARGV[1] .. 'nodes', node)
local results = {{}}
for i = 5, #ARGV, 2 do
  local kind, item = ARGV[i], ARGV[i + 1]
  local result = 0
  if kind == 'here' then
    redis.call('HSET', ARGV[1] .. 'held:' .. item, node, 1)
    redis.call('SADD', mine, item)
    if redis.call('SET', ARGV[1] .. 'on:' .. item, 1, 'NX') then result = 1 end
  elseif kind == 'gone' then
    redis.call('HDEL', ARGV[1] .. 'held:' .. item, node)
    redis.call('SREM', mine, item)
    if grace > 0 and string.sub(item, 1, 5) == 'user:' then
      redis.call('SET', ARGV[1] .. 'grace:' .. item, 1, 'PX', grace)
    end
  else
    result = settle(item, true)
  end
  table.insert(results, result)
end
return results
"
    ))
});

/// Makes this node's items exactly the given ones (after a reconnect, or changes it could not
/// keep): items it no longer has are dropped and settled, the others written. ARGV: prefix,
/// node key prefix, this node, then the items. Returns `{on, off}`: the items it reports.
static SYNC: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SETTLE}
local node = ARGV[3]
local mine = ARGV[1] .. 'node-held:' .. node
local now = {{}}
for i = 4, #ARGV do now[ARGV[i]] = true end
local on, off = {{}}, {{}}
for _, item in ipairs(redis.call('SMEMBERS', mine)) do
  if not now[item] then
    redis.call('SREM', mine, item)
    redis.call('HDEL', ARGV[1] .. 'held:' .. item, node)
    if settle(item, false) == 1 then table.insert(off, item) end
  end
end
for i = 4, #ARGV do
  local item = ARGV[i]
  redis.call('HSET', ARGV[1] .. 'held:' .. item, node, 1)
  redis.call('SADD', mine, item)
  if redis.call('SET', ARGV[1] .. 'on:' .. item, 1, 'NX') then table.insert(on, item) end
end
redis.call('SADD', ARGV[1] .. 'nodes', node)
return {{on, off}}
"
    ))
});

/// Takes a dead node's items and settles each (a departure's grace is not waited for: the node
/// that would have settled it is gone). ARGV: prefix, node key prefix, the dead node. Returns
/// the items it reports off.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{SETTLE}
local dead = ARGV[3]
local theirs = ARGV[1] .. 'node-held:' .. dead
local items = redis.call('SMEMBERS', theirs)
redis.call('DEL', theirs)
redis.call('SREM', ARGV[1] .. 'nodes', dead)
local off = {{}}
for _, item in ipairs(items) do
  redis.call('HDEL', ARGV[1] .. 'held:' .. item, dead)
  if settle(item, false) == 1 then table.insert(off, item) end
end
return off
"
    ))
});

impl RedisBroker {
    fn ledger_script(&self, script: &'static Script) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(self.keys.prefix())
            .arg(self.keys.node(""))
            .arg(&*self.node);
        invocation
    }

    /// Records `changes` in order, a user's departure holding off its settling for `grace`.
    pub(super) async fn record(
        &self,
        changes: &[PresenceChange],
        grace: Duration,
    ) -> Cluster<Vec<Recorded>> {
        if changes.is_empty() {
            return Cluster::Known(Vec::new());
        }
        let mut invocation = self.ledger_script(&RECORD);
        invocation.arg(grace.as_millis() as u64);
        for change in changes {
            let (kind, item) = match change {
                PresenceChange::Here(item) => ("here", item),
                PresenceChange::Gone(item) => ("gone", item),
                PresenceChange::Settle(item) => ("settle", item),
            };
            invocation.arg(kind).arg(&**item);
        }
        self.run_ledger::<Vec<u64>>(invocation)
            .await
            .map(|results| {
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

    /// Makes this node's items in Redis exactly `here`.
    pub(super) async fn sync_held(&self, here: &[Arc<str>]) -> Cluster<Synced> {
        let mut invocation = self.ledger_script(&SYNC);
        for item in here {
            invocation.arg(&**item);
        }
        self.run_ledger::<(Vec<String>, Vec<String>)>(invocation)
            .await
            .map(|(on, off)| Synced { on, off })
    }

    /// Reports the items of nodes that died: the ones this node took over and found off.
    pub(super) async fn sweep_held(&self) -> Cluster<Vec<String>> {
        let nodes = self.keys.nodes();
        let listed = self
            .ask(|mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(&nodes)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
            })
            .await;
        let Cluster::Known(listed) = listed else {
            return listed;
        };
        let others: Vec<&String> = listed.iter().filter(|node| **node != *self.node).collect();
        if others.is_empty() {
            return Cluster::Known(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.cmd("EXISTS").arg(self.keys.node(node));
        }
        let alive = self
            .ask(|mut conn| async move { pipe.query_async::<Vec<bool>>(&mut conn).await })
            .await;
        let Cluster::Known(alive) = alive else {
            return Cluster::Unreachable;
        };
        let mut off = Vec::new();
        for (node, alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            let mut invocation = REAP.prepare_invoke();
            invocation
                .arg(self.keys.prefix())
                .arg(self.keys.node(""))
                .arg(node.as_str());
            match self.run_ledger::<Vec<String>>(invocation).await {
                Cluster::Known(items) => off.extend(items),
                other => return other,
            }
        }
        Cluster::Known(off)
    }

    /// Runs a script on the command connection.
    async fn run_ledger<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Cluster<T> {
        self.ask(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}
