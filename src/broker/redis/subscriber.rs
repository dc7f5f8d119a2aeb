//! The subscriber: what a node listens to.
//!
//! On one Redis it is a Pub/Sub connection of its own (RESP2), beside the command connection.
//! On a cluster, room and canary channels are *shard channels* (`SSUBSCRIBE`, Redis ≥ 7):
//! each lives on the shard that holds its slot, so a message crosses only that shard instead
//! of every node of the cluster, and Pub/Sub spreads over the shards as the rooms do. The
//! control channel (bans, kicks, direct messages: rare, and for every node) stays classic
//! Pub/Sub, which a cluster carries everywhere. The cluster subscriber is a cluster connection
//! of its own, speaking RESP3: its messages arrive as pushes. It is not the command
//! connection, because a shard's unasked `sunsubscribe` push (a slot moved away) would be
//! taken for the reply of whatever command waits on that connection.
//!
//! When a node connection drops, the redis crate reconnects it and subscribes its channels
//! again; what was published meanwhile is recovered from history when the next message or
//! heartbeat shows a room behind, and a shard that stays silent is found by its canary.

use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use futures_util::future::try_join_all;
use futures_util::StreamExt;

use super::conn::{group_by_slot, slot};

pub(super) enum Subscriber {
    /// One Redis: a RESP2 Pub/Sub connection, split.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A cluster: a RESP3 connection, and what its nodes push.
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// A push read while gathering dropped subscriptions, to be handled next.
        held: Option<PushInfo>,
    },
}

/// What the subscriber heard.
pub(super) enum Heard {
    /// A message on one of its channels.
    Message(Message),
    /// A shard took back these subscriptions: their slots moved to another shard (a cluster
    /// tells its subscribers so instead of moving them), or this node unsubscribed them (the
    /// server confirms that the same way). The ones still wanted must be subscribed again.
    Dropped(Vec<String>),
}

/// A message, as the connection it came on has it (no copy).
pub(super) enum Message {
    Single(Msg),
    Cluster { channel: String, payload: Vec<u8> },
}

impl Message {
    pub(super) fn channel(&self) -> &str {
        match self {
            Message::Single(msg) => msg.get_channel_name(),
            Message::Cluster { channel, .. } => channel,
        }
    }

    pub(super) fn payload(&self) -> &[u8] {
        match self {
            Message::Single(msg) => msg.get_payload_bytes(),
            Message::Cluster { payload, .. } => payload,
        }
    }
}

impl Subscriber {
    /// Subscribes channels that belong to a slot: rooms' and canaries' (shard channels on a
    /// cluster).
    pub(super) async fn subscribe_sharded(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.subscribe(channels).await,
            Subscriber::Cluster { conn, .. } => {
                for_each_slot(conn, channels, |mut conn, channels| async move {
                    conn.ssubscribe(channels).await
                })
                .await
            }
        }
    }

    pub(super) async fn unsubscribe_sharded(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.unsubscribe(channels).await,
            Subscriber::Cluster { conn, .. } => {
                for_each_slot(conn, channels, |mut conn, channels| async move {
                    conn.sunsubscribe(channels).await
                })
                .await
            }
        }
    }

    /// Subscribes channels every node of a cluster carries (the control channel).
    pub(super) async fn subscribe_everywhere(&mut self, channels: &[&str]) -> RedisResult<()> {
        match self {
            Subscriber::Single { sink, .. } => sink.subscribe(channels).await,
            Subscriber::Cluster { conn, .. } => conn.subscribe(channels).await,
        }
    }

    /// What comes next; `None` when the subscription is gone (its connection closed).
    pub(super) async fn next(&mut self) -> Option<Heard> {
        match self {
            Subscriber::Single { stream, .. } => stream
                .next()
                .await
                .map(|msg| Heard::Message(Message::Single(msg))),
            Subscriber::Cluster { pushes, held, .. } => loop {
                let push = match held.take() {
                    Some(push) => push,
                    None => pushes.recv().await?,
                };
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some((channel, payload)) = channel_and_payload(push.data) {
                            return Some(Heard::Message(Message::Cluster { channel, payload }));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        // A moved slot drops all its channels at once: gathered, they are
                        // subscribed again in one command per slot.
                        let mut dropped: Vec<String> = channel_and_payload(push.data)
                            .map(|(channel, _)| channel)
                            .into_iter()
                            .collect();
                        while let Ok(next) = pushes.try_recv() {
                            if next.kind != PushKind::SUnsubscribe {
                                *held = Some(next);
                                break;
                            }
                            dropped
                                .extend(channel_and_payload(next.data).map(|(channel, _)| channel));
                        }
                        return Some(Heard::Dropped(dropped));
                    }
                    _ => {}
                }
            },
        }
    }
}

/// Runs `command` once per slot with that slot's channels, all at once: a shard channel
/// command takes channels of one slot only.
async fn for_each_slot<F, Fut>(
    conn: &ClusterConnection,
    channels: &[String],
    command: F,
) -> RedisResult<()>
where
    F: Fn(ClusterConnection, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = RedisResult<()>>,
{
    let by_slot = group_by_slot(channels.iter().cloned(), |channel| {
        Some(slot(channel.as_bytes()))
    });
    try_join_all(
        by_slot
            .into_values()
            .map(|channels| command(conn.clone(), channels)),
    )
    .await
    .map(drop)
}

/// A push's first two values: a message's channel and payload (an unsubscribe's channel and
/// count).
fn channel_and_payload(data: Vec<Value>) -> Option<(String, Vec<u8>)> {
    let mut data = data.into_iter();
    let channel = match data.next()? {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok()?,
        _ => return None,
    };
    let payload = match data.next() {
        Some(Value::BulkString(bytes)) => bytes,
        _ => Vec::new(),
    };
    Some((channel, payload))
}
