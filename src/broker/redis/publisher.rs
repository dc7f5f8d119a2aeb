//! The publisher: writes queued events to Redis in order, a pipelined batch at a time.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::conn::Batch;
use super::{now_ms, Link, Outgoing, RedisBroker};
use crate::broker::envelope::{self, PresenceValue};
use crate::broker::{control, Notice};
use crate::broker::{Keys, RemoteEvent};
use crate::metrics::labels::{BrokerDrop, BrokerFailure};

/// Envelopes written per pipeline round trip at most.
const BATCH: usize = 512;

/// Replaces this node's fields in a room's presence hash and announces the result, atomically,
/// so no join or leave of this node can fall between the two.
/// KEYS[1]: the hash; ARGV: field prefix, TTL, channel, envelope, `PUBLISH` (or `SPUBLISH`),
/// then field, value, …
const SYNC_SCRIPT: &str = r"
local mine = ARGV[1]
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #mine) == mine then redis.call('HDEL', KEYS[1], field) end
end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 6 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
redis.call(ARGV[5], ARGV[3], ARGV[4])
return 0
";

/// Writes an end (a ban's, a revocation's) unless the key holds a later one, expiring with
/// it: every node keeps the later of two ends, and so does Redis for nodes that start later.
/// KEYS[1]: the key; ARGV[1]: the end, Unix milliseconds.
const KEEP_LATER_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1]) end
return 0
";

impl RedisBroker {
    /// Writes queued events in batches, one pipeline per batch, in queue order. A batch that
    /// fails is abandoned whole: its messages are counted as dropped, its rooms' presence is
    /// resynced, and the driver reconnects.
    pub(super) async fn publisher(self: Arc<Self>, mut queue: mpsc::Receiver<Outgoing>) {
        let mut seq: u64 = 0;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                // Stop only once the queue is empty: the last leaves must reach the others.
                count = queue.recv_many(&mut batch, BATCH) => count,
                _ = self.stop.cancelled(), if queue.is_empty() => 0,
            };
            if received == 0 {
                return;
            }
            let link = self.connection.borrow().clone();
            let Some(Link {
                generation,
                mut conn,
            }) = link
            else {
                // Never written: this node's chat messages still reach its own members.
                self.deliver_here(&batch);
                self.abandon(batch.drain(..), BrokerDrop::Down);
                if self.stop.is_cancelled() {
                    return;
                }
                continue;
            };
            let pipe = self.pipeline(&mut seq, &batch);
            match self.within(pipe.query::<()>(&mut conn)).await {
                Ok(()) => {
                    self.metrics.broker_published.inc_by(batch.len() as u64);
                    batch.clear();
                }
                Err(_) => {
                    self.metrics.broker_error(BrokerFailure::Publish);
                    self.abandon(batch.drain(..), BrokerDrop::Down);
                    self.raise_failure(generation);
                    if self.stop.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }

    /// One pipeline for the batch: per event, its presence change, then its envelope (a chat
    /// message with history on, and a read position, through their scripts).
    fn pipeline(&self, seq: &mut u64, batch: &[Outgoing]) -> Batch {
        let ttl = self.settings.key_ttl.as_secs();
        let sent_at = now_ms();
        let mut pipe = Batch::new();
        for outgoing in batch {
            let (room, event) = match outgoing {
                Outgoing::Room { room, event } => (room, event),
                Outgoing::Control(notice) => {
                    self.write_notice(&mut pipe, notice);
                    continue;
                }
                Outgoing::Release(user) => {
                    self.write_release(&mut pipe, user);
                    continue;
                }
            };
            *seq += 1;
            match event {
                RemoteEvent::Message { .. } if self.settings.history.enabled() => {
                    let open = envelope::encode_open(&self.node, *seq, sent_at, event);
                    self.write_numbered(&mut pipe, room, open);
                    continue;
                }
                RemoteEvent::Seen {
                    user_id,
                    epoch,
                    offset,
                    ..
                } => {
                    let payload = envelope::encode(&self.node, *seq, sent_at, event);
                    self.write_seen(&mut pipe, room, user_id, epoch, *offset, payload);
                    continue;
                }
                _ => {}
            }
            let payload = envelope::encode(&self.node, *seq, sent_at, event);
            let channel = self.keys.channel(room);
            let members = self.keys.members(room);
            match event {
                RemoteEvent::Sync(mine) => {
                    let script = pipe
                        .cmd("EVAL")
                        .arg(SYNC_SCRIPT)
                        .arg(1)
                        .arg(&members)
                        .arg(format!("{}:", self.node))
                        .arg(ttl)
                        .arg(&channel)
                        .arg(&payload)
                        .arg(self.publish_verb());
                    for member in mine {
                        script
                            .arg(Keys::member_field(&self.node, member.session))
                            .arg(PresenceValue::encode(&member.username, &member.user_id));
                    }
                    script.ignore();
                    continue;
                }
                RemoteEvent::Join(member) => {
                    pipe.cmd("HSET")
                        .arg(&members)
                        .arg(Keys::member_field(&self.node, member.session))
                        .arg(PresenceValue::encode(&member.username, &member.user_id))
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&members)
                        .arg(ttl)
                        .ignore();
                }
                RemoteEvent::Leave { session } => {
                    pipe.cmd("HDEL")
                        .arg(&members)
                        .arg(Keys::member_field(&self.node, *session))
                        .ignore();
                }
                RemoteEvent::Message { .. } | RemoteEvent::Typing(_) | RemoteEvent::Seen { .. } => {
                }
            }
            pipe.cmd(self.publish_verb())
                .arg(&channel)
                .arg(payload)
                .ignore();
        }
        pipe
    }

    /// Writes a ban (kept in Redis until it ends, so nodes that start or reconnect later learn
    /// it), an unban, or a kick, and tells the other nodes.
    pub(super) fn write_notice(&self, pipe: &mut Batch, notice: &Notice) {
        let keep_later = |pipe: &mut Batch, key: String, until_ms: u64| {
            pipe.cmd("EVAL")
                .arg(KEEP_LATER_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(until_ms)
                .ignore();
        };
        match notice {
            Notice::Ban { offender, until_ms } => {
                keep_later(pipe, self.keys.ban(offender), *until_ms)
            }
            Notice::Unban { offender } => {
                pipe.cmd("DEL").arg(self.keys.ban(offender)).ignore();
            }
            Notice::Revoke { revoked, until_ms } => {
                keep_later(pipe, self.keys.revoked(revoked), *until_ms);
            }
            Notice::Kick { .. } | Notice::Direct(_) => {}
        }
        pipe.cmd("PUBLISH")
            .arg(self.keys.control())
            .arg(control::encode(&self.node, notice))
            .ignore();
    }

    /// Delivers the batch's chat messages on this node (without offsets): with history on they
    /// were left for Redis to number and hand back, which will not happen now.
    fn deliver_here(&self, batch: &[Outgoing]) {
        let Some(rooms) = self.rooms.get().filter(|_| self.settings.history.enabled()) else {
            return;
        };
        for outgoing in batch {
            if let Outgoing::Room {
                room,
                event:
                    RemoteEvent::Message {
                        session,
                        username,
                        user_id,
                        body,
                        ..
                    },
            } = outgoing
            {
                rooms.deliver_here(room, *session, username, user_id, body);
            }
        }
    }

    /// Counts events that will not be written; rooms whose presence they changed are resynced,
    /// bans and unbans are written when Redis is back.
    fn abandon(&self, events: impl Iterator<Item = Outgoing>, reason: BrokerDrop) {
        for outgoing in events {
            self.metrics.broker_drop(reason);
            self.abandon_one(outgoing);
        }
    }
}
