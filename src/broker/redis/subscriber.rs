//! The subscriber: what a node listens to.
//!
//! On one Redis it is a Pub/Sub connection of its own (RESP2), beside the command connection.
//! On a cluster, room and canary channels are *shard channels* (`SSUBSCRIBE`, Redis ≥ 7):
//! each lives on the shard that holds its slot, so a message crosses only that shard instead
//! of every node of the cluster, and Pub/Sub spreads over the shards as the rooms do. The
//! control channel (bans, kicks, direct messages: rare, and for every node) stays classic
//! Pub/Sub, which a cluster carries everywhere. The cluster subscriber is the command
//! connection itself, speaking RESP3: its messages arrive as pushes, and when the connection
//! finds the slots moved it subscribes each channel again on its new shard.

use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use std::collections::HashMap;

use futures_util::future::try_join_all;
use futures_util::StreamExt;

use super::conn::slot;

pub(super) enum Subscriber {
    /// One Redis: a RESP2 Pub/Sub connection, split.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A cluster: the command connection, and what its nodes push.
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

/// What the subscriber heard.
pub(super) enum Heard {
    /// A message on one of its channels.
    Message(Message),
    /// A shard took back a subscription: its slot moved to another shard (a cluster tells
    /// its subscribers so instead of moving them). The channel must be subscribed again.
    Dropped(String),
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

    /// What comes next; `None` when the subscription is gone (its connection closed, or on a
    /// cluster a node's connection dropped: what it pushed meanwhile is lost, and a
    /// reconnect resubscribes and recovers from history).
    pub(super) async fn next(&mut self) -> Option<Heard> {
        match self {
            Subscriber::Single { stream, .. } => stream
                .next()
                .await
                .map(|msg| Heard::Message(Message::Single(msg))),
            Subscriber::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some((channel, payload)) = channel_and_payload(push.data) {
                            return Some(Heard::Message(Message::Cluster { channel, payload }));
                        }
                    }
                    PushKind::SUnsubscribe => {
                        if let Some((channel, _)) = channel_and_payload(push.data) {
                            return Some(Heard::Dropped(channel));
                        }
                    }
                    PushKind::Disconnection => return None,
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
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(slot(channel.as_bytes()))
            .or_default()
            .push(channel.clone());
    }
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
