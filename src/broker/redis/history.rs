//! Rooms' history in Redis: messages numbered, stored and published in one atomic script, and
//! each node's copy of its rooms kept level with it.
//!
//! Per room (names in [`Keys`](crate::broker::Keys)): a hash `position:{room}` with the epoch
//! and the last offset (kept seven times as long as the messages, so a client back after a
//! quiet spell learns it missed nothing), a stream `history:{room}` of the last `HISTORY_SIZE` envelopes (entry
//! ids `0-{offset}`), and a hash `seen:{room}` of each user's read position. A room's epoch is
//! made (random, by whichever node first needs it) when its position hash is missing: when
//! Redis lost its data, or the room was quiet for longer than the position is kept, its
//! offsets start again under a new epoch, and clients holding the old one are told they
//! cannot recover rather than being handed the wrong messages.
//!
//! A node's copy is refreshed from a *view* (the position and the entries after a given
//! offset) when a room opens here, after every reconnect, when a message arrives with an
//! offset further on than the next one (a Pub/Sub message was lost), and when a heartbeat
//! finds Redis further on than the copy (the lost message was the room's last).

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::conn::{Batch, Conn};
use super::{RedisBroker, RedisFailure};
use crate::broker::{Envelope, LocalRooms, RemoteEvent};
use crate::history::{new_epoch, Entry, Position};

/// Rooms per pipelined read.
const READ_CHUNK: usize = 128;

/// A room's position and read positions outlive its messages this many times over, so a
/// client back after a quiet spell longer than `HISTORY_TTL_SECS` still learns it missed
/// nothing.
const POSITION_TTL_FACTOR: u64 = 7;

/// Numbers a message, keeps it and publishes it, atomically: every node sees the same offsets,
/// and a message is in the history before anyone can receive it. A room without a position, or
/// whose stream is ahead of its position (Redis rolled back: a failover lost writes), starts a
/// new epoch rather than give an offset twice.
/// KEYS: position, stream, seen. ARGV: a fresh epoch, the stream's length, the stream's TTL,
/// the position's TTL, the channel, the envelope without its closing brace, and `PUBLISH`
/// (`SPUBLISH` on a cluster, where the channel is in the room's slot).
const NUMBER_LUA: &str = r#"
local function new_epoch()
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0)
  return ARGV[1]
end
local function add(epoch, offset)
  local payload = ARGV[6] .. ',"offset":' .. string.format('%d', offset) .. ',"epoch":"' .. epoch .. '"}'
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. string.format('%d', offset), 'e', payload)
  if type(added) == 'table' and added.err then return nil end
  return payload
end
local epoch = redis.call('HGET', KEYS[1], 'epoch') or new_epoch()
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = add(epoch, offset)
if not payload then
  epoch = new_epoch()
  offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
  payload = add(epoch, offset)
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call(ARGV[7], ARGV[5], payload)
return offset
"#;

/// A room's position and up to `count` of its newest entries after `after` (all of them if
/// the room's epoch is not `known`). A room without a position gets a new epoch, kept only
/// `REDIS_KEY_TTL_SECS` unless a message follows (heartbeats extend it while a node has members
/// there), so joining fresh room names leaves nothing behind for long. A position below
/// `after` in the `known` epoch means Redis rolled back (a failover lost writes): the same
/// offsets would name other messages, so the room gets a new epoch.
/// KEYS: position, stream, seen. ARGV: a fresh epoch, the known epoch, after, count, the new
/// position's TTL.
const VIEW_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local after = tonumber(ARGV[3])
if epoch == ARGV[2] and offset < after then epoch = false end
if not epoch then
  epoch = ARGV[1]
  offset = 0
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
if epoch ~= ARGV[2] then after = 0 end
local entries = {}
if tonumber(ARGV[4]) > 0 and after < offset then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '0-' .. string.format('%d', after + 1), 'COUNT', ARGV[4])
end
return {epoch, offset, entries}
"#;

/// Raises a user's read position (never lowers it) within the room's current epoch and, if
/// it rose, tells the room.
/// KEYS: seen, position. ARGV: user, offset, TTL, channel, envelope, epoch, `PUBLISH` (or
/// `SPUBLISH`).
const SEEN_LUA: &str = r#"
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[6] then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call(ARGV[7], ARGV[4], ARGV[5])
end
return 0
"#;

/// The scripts pipelined by hash, which every connect loads (see `load_scripts`).
pub(super) const SCRIPTS: [&str; 3] = [NUMBER_LUA, VIEW_LUA, SEEN_LUA];

static NUMBER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(NUMBER_LUA));
static VIEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(VIEW_LUA));
static SEEN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SEEN_LUA));

/// What a view script returns: the epoch, the last offset, and `[id, [field, value]]` entries.
type RawView = (String, u64, Vec<(String, Vec<(String, Vec<u8>)>)>);

impl RedisBroker {
    fn history_ttl(&self) -> u64 {
        self.settings.history.ttl.as_secs().max(1)
    }

    fn position_ttl(&self) -> u64 {
        self.history_ttl() * POSITION_TTL_FACTOR
    }

    /// Adds to `pipe` the numbering of a message whose envelope is `open` (without its closing
    /// brace).
    pub(super) fn write_numbered(&self, pipe: &mut Batch, room: &str, open: Vec<u8>) {
        pipe.script(&NUMBER_SCRIPT, &self.room_keys(room))
            .arg(&*new_epoch())
            .arg(self.settings.history.size)
            .arg(self.history_ttl())
            .arg(self.position_ttl())
            .arg(self.keys.channel(room))
            .arg(open)
            .arg(self.publish_verb())
            .ignore();
    }

    /// A room's position, stream and read positions: the keys of the numbering and view
    /// scripts.
    fn room_keys(&self, room: &str) -> [String; 3] {
        [
            self.keys.position(room),
            self.keys.history(room),
            self.keys.seen(room),
        ]
    }

    /// Adds to `pipe` a rise of `user`'s read position, announced if it is one.
    pub(super) fn write_seen(
        &self,
        pipe: &mut Batch,
        room: &str,
        user: &str,
        epoch: &str,
        offset: u64,
        envelope: Vec<u8>,
    ) {
        pipe.script(
            &SEEN_SCRIPT,
            &[self.keys.seen(room), self.keys.position(room)],
        )
        .arg(user)
        .arg(offset)
        .arg(self.position_ttl())
        .arg(self.keys.channel(room))
        .arg(envelope)
        .arg(epoch)
        .arg(self.publish_verb())
        .ignore();
    }

    /// Adds to `pipe` what keeps a room's position alive while this node has members there
    /// (never shortening the longer life a message gave it).
    pub(super) fn keep_position(&self, pipe: &mut Batch, room: &str) {
        if self.settings.history.enabled() {
            pipe.cmd("EXPIRE")
                .arg(self.keys.position(room))
                .arg(self.settings.key_ttl.as_secs())
                .arg("GT")
                .ignore();
        }
    }

    /// `user`'s read position in `room`, if Redis answers in time.
    pub(super) async fn read_seen(&self, room: &str, user: &str) -> Option<u64> {
        if !self.settings.history.enabled() {
            return None;
        }
        let mut link = self.connection.borrow().clone()?;
        self.within(
            redis::cmd("HGET")
                .arg(self.keys.seen(room))
                .arg(user)
                .query_async::<Option<u64>>(&mut link.conn),
        )
        .await
        .ok()
        .flatten()
    }

    /// Brings this node's copies of `rooms` level with Redis. With `cheap`, only positions
    /// are read first, and views only for the rooms that moved on (the heartbeat's check for
    /// a lost last message).
    pub(super) async fn sync_history(
        &self,
        conn: &mut Conn,
        local: &dyn LocalRooms,
        rooms: &[String],
        cheap: bool,
    ) -> Result<(), RedisFailure> {
        if !self.settings.history.enabled() {
            return Ok(());
        }
        let behind: Vec<String> = if cheap {
            self.rooms_behind(conn, local, rooms).await?
        } else {
            rooms.to_vec()
        };
        for chunk in behind.chunks(READ_CHUNK) {
            let mut pipe = Batch::new();
            for room in chunk {
                let known = local.history_position(room);
                let (epoch, after) = known
                    .as_ref()
                    .map_or(("", 0), |known| (&*known.epoch, known.offset));
                pipe.script(&VIEW_SCRIPT, &self.room_keys(room))
                    .arg(&*new_epoch())
                    .arg(epoch)
                    .arg(after)
                    .arg(self.settings.history.size)
                    .arg(self.settings.key_ttl.as_secs());
            }
            let views: Vec<RawView> = self.within(pipe.query(conn)).await?;
            for (room, view) in chunk.iter().zip(views) {
                let (position, entries) = self.parse_view(view);
                local.reload_history(room, position, entries);
            }
        }
        Ok(())
    }

    /// The rooms whose position in Redis differs from this node's copy.
    async fn rooms_behind(
        &self,
        conn: &mut Conn,
        local: &dyn LocalRooms,
        rooms: &[String],
    ) -> Result<Vec<String>, RedisFailure> {
        let mut behind = Vec::new();
        for chunk in rooms.chunks(READ_CHUNK) {
            let mut pipe = Batch::new();
            for room in chunk {
                pipe.cmd("HMGET")
                    .arg(self.keys.position(room))
                    .arg("epoch")
                    .arg("offset");
            }
            let positions: Vec<(Option<String>, Option<u64>)> =
                self.within(pipe.query(conn)).await?;
            for (room, (epoch, offset)) in chunk.iter().zip(positions) {
                let level = local.history_position(room).is_some_and(|known| {
                    epoch.as_deref() == Some(&*known.epoch) && offset == Some(known.offset)
                });
                if !level {
                    behind.push(room.clone());
                }
            }
        }
        Ok(behind)
    }

    /// A view's position and entries (ascending; they come newest first). Entries that do not
    /// decode are left out: the copy uses only the run after the last of them, and reports
    /// what precedes it as lost.
    fn parse_view(&self, (epoch, offset, raw): RawView) -> (Position, Vec<Entry>) {
        let mut entries: Vec<Entry> = raw
            .into_iter()
            .filter_map(|(_, fields)| {
                let (_, payload) = fields.into_iter().find(|(field, _)| field == "e")?;
                let envelope = Envelope::decode(&payload).ok()?;
                self.entry(envelope).map(|(_, entry)| entry)
            })
            .collect();
        entries.reverse();
        (
            Position {
                epoch: Arc::from(epoch),
                offset,
            },
            entries,
        )
    }

    /// A numbered message's entry, with the epoch it was numbered in; None for anything else.
    pub(super) fn entry(&self, envelope: Envelope) -> Option<(Arc<str>, Entry)> {
        let RemoteEvent::Message {
            session,
            username,
            user_id,
            body,
            position: Some(position),
        } = envelope.event
        else {
            return None;
        };
        Some((
            position.epoch,
            Entry {
                offset: position.offset,
                sent_at_ms: envelope.sent_at_ms,
                username,
                user_id,
                body: body.into_boxed_str(),
                from: (*envelope.node == *self.node).then_some(session),
            },
        ))
    }
}
