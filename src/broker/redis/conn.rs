//! The command connection, to one Redis or to a Redis Cluster, and [`Batch`]: pipelined
//! commands that each go to the server holding their key.
//!
//! One Redis (a URL, or the master Sentinel names) takes a whole batch in one pipeline. A
//! cluster refuses a pipeline whose keys are in different hash slots, so a batch is split
//! there into one transaction (`MULTI`/`EXEC`) per slot, sent at once, and the replies are put
//! back in the batch's order. Commands on one slot keep their order; commands on different
//! slots have none between them. Every key of a room shares the room's slot (see [`Keys`]), so
//! a room's events still reach Redis in the order they were queued.
//!
//! Why transactions: when a slot is moving (`MOVED`, `ASK`, `TRYAGAIN`), the redis crate sends
//! a plain pipeline again whole, to the slot's new home, repeating the commands that had
//! already run before the redirected one (a message numbered and published twice). A
//! transaction with a redirected command runs none of them; the crate does not send an
//! aborted transaction again, so [`Batch`] does: after a plain command on the slot has made
//! the crate read the slot map again, and until the slot has settled.
//!
//! [`Keys`]: crate::broker::Keys

use std::collections::HashMap;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    Arg, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind,
    Value,
};

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16_384;

/// A command connection.
#[derive(Clone)]
pub(super) enum Conn {
    /// One Redis.
    Single(MultiplexedConnection),
    /// A Redis Cluster: the redis crate routes each command by its key, follows `MOVED` and
    /// `ASK` redirections, and refreshes its slot map when the cluster changes.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// The servers to ask for something that is spread over all of them (a SCAN): the one
    /// Redis, or every master of the cluster, in the order of their slots.
    pub(super) async fn servers(&mut self) -> RedisResult<Vec<Server>> {
        match self {
            Conn::Single(_) => Ok(vec![Server::One]),
            Conn::Cluster(conn) => {
                let mut masters: Vec<Server> = shards(conn)
                    .await?
                    .into_iter()
                    .map(|shard| Server::Master(shard.first_slot(), shard.id))
                    .collect();
                masters.sort();
                Ok(masters)
            }
        }
    }

    /// Runs `cmd` on `server`.
    pub(super) async fn query_on<T: FromRedisValue>(
        &mut self,
        server: &Server,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        match (self, server) {
            (Conn::Cluster(conn), Server::Master(slot, id)) => {
                // By slot, not by address: the crate's own map knows which master that is. It
                // falls back to any node when it has no connection there, so the answer comes
                // with the id of the node that gave it.
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::new(*slot, SlotAddr::Master));
                let mut pipe = redis::pipe();
                pipe.cmd("CLUSTER").arg("MYID").add_command(cmd.clone());
                let mut values = conn.route_pipeline(pipe, 0, 2, route).await?.into_iter();
                let (Some(answered_by), Some(value)) = (values.next(), values.next()) else {
                    return Err(RedisError::from(std::io::Error::other("no answer")));
                };
                if String::from_redis_value(answered_by)? != *id {
                    return Err(RedisError::from(std::io::Error::other(
                        "another node answered for the master",
                    )));
                }
                Ok(T::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(conn).await,
        }
    }

    /// Runs `cmd` on every master (loading a script, say); a cluster answers with one
    /// master's reply when they agree.
    pub(super) async fn on_all_masters(&mut self, cmd: &Cmd) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => cmd.query_async(conn).await,
            Conn::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                conn.route_command(cmd.clone(), routing).await.map(drop)
            }
        }
    }
}

/// One server of the deployment, for commands that are not about a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Server {
    /// The one Redis.
    One,
    /// A cluster's master: the first slot it serves, and its id.
    Master(u16, String),
}

impl Server {
    /// Where the server is in the order of a scan over all: its first slot.
    pub(super) fn first_slot(&self) -> u16 {
        match self {
            Server::One => 0,
            Server::Master(slot, _) => *slot,
        }
    }
}

/// A master of a cluster and the slots it serves.
#[derive(Debug)]
pub(super) struct Shard {
    /// The master's node id.
    pub id: String,
    /// Inclusive ranges, the lowest first.
    pub slots: Vec<(u16, u16)>,
}

impl Shard {
    pub(super) fn first_slot(&self) -> u16 {
        self.slots
            .iter()
            .map(|(start, _)| *start)
            .min()
            .unwrap_or(0)
    }
}

/// The cluster's masters, from `CLUSTER SLOTS` (one row per slot range: its start, its end,
/// then the master's address, port and id, then the replicas'). Masters are told apart by id:
/// the address may be empty, `?` or missing, depending on how the cluster announces itself.
pub(super) async fn shards(conn: &mut ClusterConnection) -> RedisResult<Vec<Shard>> {
    let rows: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut shards: Vec<Shard> = Vec::new();
    for row in rows {
        let mut values = row.into_iter();
        let (Some(start), Some(end), Some(master)) = (values.next(), values.next(), values.next())
        else {
            continue;
        };
        let (start, end): (u16, u16) = (
            FromRedisValue::from_redis_value(start)?,
            FromRedisValue::from_redis_value(end)?,
        );
        let master: Vec<Value> = FromRedisValue::from_redis_value(master)?;
        let id = match master.get(2) {
            Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
            // Before Redis 4 there was no id; the start of its first range names it then.
            _ => format!("{start}"),
        };
        match shards.iter_mut().find(|shard| shard.id == id) {
            Some(shard) => shard.slots.push((start, end)),
            None => shards.push(Shard {
                id,
                slots: vec![(start, end)],
            }),
        }
    }
    for shard in &mut shards {
        shard.slots.sort_unstable();
    }
    Ok(shards)
}

/// The hash slot of a key or a shard channel (the part between the first `{` and the next
/// `}`, if not empty, else the whole name): Redis Cluster's CRC16 modulo 16 384.
pub(super) fn slot(name: &[u8]) -> u16 {
    let hashed = name
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &name[open + 1..];
            let close = rest.iter().position(|&byte| byte == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(name);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// Commands built like a [`redis::Pipeline`], sent as one pipeline to one Redis and as one
/// per hash slot to a cluster.
#[derive(Default)]
pub(super) struct Batch {
    commands: Vec<Cmd>,
    /// Whether each command's reply is left out of the result.
    ignored: Vec<bool>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch::default()
    }

    /// Starts a command.
    pub(super) fn cmd(&mut self, name: &str) -> &mut Batch {
        self.commands.push(redis::cmd(name));
        self.ignored.push(false);
        self
    }

    /// Starts a script's call by its hash (loaded at connect, see `load_scripts`), with its
    /// keys; its arguments follow with [`Batch::arg`].
    pub(super) fn script<K: redis::ToRedisArgs>(
        &mut self,
        script: &redis::Script,
        keys: &[K],
    ) -> &mut Batch {
        self.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
    }

    /// Adds an argument to the last command.
    pub(super) fn arg<T: redis::ToRedisArgs>(&mut self, arg: T) -> &mut Batch {
        self.commands
            .last_mut()
            .expect("an argument follows a command")
            .arg(arg);
        self
    }

    /// Leaves the last command's reply out of the result.
    pub(super) fn ignore(&mut self) -> &mut Batch {
        *self.ignored.last_mut().expect("a command to ignore") = true;
        self
    }

    pub(super) fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Sends the commands; the replies that are not ignored, in order, make `T`. An error in
    /// any command (an ignored one too) is the batch's error.
    pub(super) async fn query<T: FromRedisValue>(&self, conn: &mut Conn) -> RedisResult<T> {
        let replies = match conn {
            Conn::Single(conn) => {
                let values: Vec<Value> = self
                    .pipeline(0..self.commands.len())
                    .query_async(conn)
                    .await?;
                values
            }
            Conn::Cluster(conn) => self.query_by_slot(conn).await?,
        };
        Ok(T::from_redis_value(Value::Array(replies))?)
    }

    /// One transaction per slot, all sent at once; the replies put back in order.
    async fn query_by_slot(&self, conn: &ClusterConnection) -> RedisResult<Vec<Value>> {
        let by_slot = group_by_slot(0..self.commands.len(), |index| {
            key_of_command(&self.commands[*index]).map(slot)
        });
        let sent = by_slot.into_values().map(|indices| {
            let mut pipe = self.pipeline(indices.iter().copied());
            pipe.atomic();
            let key = key_of_command(&self.commands[indices[0]]).map(<[u8]>::to_vec);
            let mut conn = conn.clone();
            async move {
                let values = transaction(&pipe, key.as_deref(), &mut conn).await?;
                Ok::<_, RedisError>((indices, values))
            }
        });
        let mut replies: Vec<Option<Value>> = vec![None; self.commands.len()];
        for (indices, values) in try_join_all(sent).await? {
            let answered = indices.into_iter().filter(|&index| !self.ignored[index]);
            for (index, value) in answered.zip(values) {
                replies[index] = Some(value);
            }
        }
        Ok(replies.into_iter().flatten().collect())
    }

    fn pipeline(&self, indices: impl Iterator<Item = usize>) -> Pipeline {
        let mut pipe = redis::pipe();
        for index in indices {
            pipe.add_command(self.commands[index].clone());
            if self.ignored[index] {
                pipe.ignore();
            }
        }
        pipe
    }
}

/// How many times a slot's transaction is tried while its slot moves, and the pause between:
/// a slot with a few keys moves in milliseconds; the caller's `REDIS_TIMEOUT_MS` bounds it too.
const MOVING_ATTEMPTS: u32 = 50;
const MOVING_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs one slot's transaction, again while the slot is moving. `key` is one of its keys.
async fn transaction(
    pipe: &Pipeline,
    key: Option<&[u8]>,
    conn: &mut ClusterConnection,
) -> RedisResult<Vec<Value>> {
    let mut attempts = 1;
    loop {
        match pipe.query_async::<Vec<Value>>(conn).await {
            Err(err) if attempts < MOVING_ATTEMPTS && moving(&err) => {
                attempts += 1;
                // A plain command meets the redirect itself, and the crate then reads the slot
                // map again (an aborted transaction does not make it).
                if let Some(key) = key {
                    let _: RedisResult<Value> =
                        redis::cmd("EXISTS").arg(key).query_async(conn).await;
                }
                tokio::time::sleep(MOVING_PAUSE).await;
            }
            answer => return answer,
        }
    }
}

/// Whether a transaction was refused, whole and unrun, because its slot is moving or has no
/// master for a moment.
fn moving(err: &RedisError) -> bool {
    if err.kind() != ServerErrorKind::ExecAbort.into() {
        return false;
    }
    err.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty()
            && errors.iter().all(|(_, error)| {
                matches!(
                    error.kind(),
                    Some(
                        ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                    )
                )
            })
    })
}

/// Items grouped by the slot `slot_of` finds for each (`None`: any server), each group in the
/// items' order.
pub(super) fn group_by_slot<T>(
    items: impl IntoIterator<Item = T>,
    slot_of: impl Fn(&T) -> Option<u16>,
) -> HashMap<Option<u16>, Vec<T>> {
    let mut groups: HashMap<Option<u16>, Vec<T>> = HashMap::new();
    for item in items {
        groups.entry(slot_of(&item)).or_default().push(item);
    }
    groups
}

/// A command's key (a script's first key, a shard channel); `None` for a command without one
/// (a `PUBLISH`, which a cluster carries to every node whichever receives it).
fn key_of_command(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let _script = args.next()?;
        if args.next()? == b"0" {
            return None;
        }
    } else if name.eq_ignore_ascii_case(b"PUBLISH") {
        return None;
    }
    args.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from Redis's own CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(
            slot(b"{}x"),
            slot(b""),
            "an empty tag hashes the whole name"
        );
        assert_eq!(slot(b"palisade:room:{lobby}"), slot(b"lobby"));
    }

    #[test]
    fn a_command_goes_to_its_keys_slot() {
        let mut batch = Batch::new();
        batch.cmd("HSET").arg("a:{lobby}").arg("f").arg(1);
        batch
            .cmd("EVALSHA")
            .arg("abc")
            .arg(2)
            .arg("b:{lobby}")
            .arg("c");
        batch.cmd("EVALSHA").arg("abc").arg(0).arg("x");
        batch.cmd("PUBLISH").arg("channel").arg("x");
        let slots: Vec<Option<u16>> = batch
            .commands
            .iter()
            .map(|cmd| key_of_command(cmd).map(slot))
            .collect();
        assert_eq!(
            slots,
            vec![Some(slot(b"lobby")), Some(slot(b"lobby")), None, None]
        );
    }
}
