//! A connected period's connection: the command connection and the subscriber, made at
//! connect with the scripts loaded and the control and canary channels subscribed; and which
//! channels it is subscribed to, kept following the hub's rooms, the shards a cluster has,
//! and the subscriptions a shard drops when a slot moves away.

use std::collections::HashSet;

use redis::AsyncConnectionConfig;
use tracing::{debug, info};

use super::canary::{tag_for, Canaries};
use super::conn::{shards, Conn};
use super::endpoint::Endpoint;
use super::subscriber::Subscriber;
use super::{RedisBroker, RedisFailure};

/// Channels per SUBSCRIBE command.
pub(super) const SUBSCRIBE_CHUNK: usize = 256;

/// One connected period's command connection and subscriber.
pub(super) struct Connection {
    /// The server's `host:port` (with Sentinel, the master's at connect; empty for a cluster).
    pub(super) server: String,
    pub(super) conn: Conn,
    pub(super) subscriber: Subscriber,
    /// The rooms whose channels are subscribed.
    pub(super) subscribed: HashSet<String>,
    /// This node's canary channels (one, or one per shard of a cluster).
    pub(super) canaries: Canaries,
    /// A cluster's masters (their ids) when the canaries were last placed.
    masters: Vec<String>,
    /// Shard channels subscribed again since the last heartbeat.
    pub(super) subscribed_again: HashSet<String>,
}

impl RedisBroker {
    /// Connects to the Redis the endpoint names now (with Sentinel, the current master; with
    /// a cluster, every shard): a command connection, and a subscriber listening to the
    /// control and canary channels.
    pub(super) async fn connect(&self) -> Result<Connection, RedisFailure> {
        let (server, conn, subscriber) = match &self.settings.endpoint {
            Endpoint::Cluster(nodes) => {
                let client = |pushes| {
                    nodes
                        .client(pushes, self.settings.timeout)
                        .map_err(|err| RedisFailure::Redis(err.kind()))
                };
                let conn = self.within(client(None)?.get_async_connection()).await?;
                let (pushes, received) = tokio::sync::mpsc::unbounded_channel();
                let subscriber = self
                    .within(client(Some(pushes))?.get_async_connection())
                    .await?;
                let subscriber = Subscriber::Cluster {
                    conn: subscriber,
                    pushes: received,
                    held: None,
                };
                (String::new(), Conn::Cluster(conn), subscriber)
            }
            endpoint => {
                let client = self.within(endpoint.master()).await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(Some(self.settings.timeout));
                let conn = self
                    .within(client.get_multiplexed_async_connection_with_config(&config))
                    .await?;
                let (sink, stream) = self.within(client.get_async_pubsub()).await?.split();
                let server = client.get_connection_info().addr().to_string();
                (
                    server,
                    Conn::Single(conn),
                    Subscriber::Single { sink, stream },
                )
            }
        };
        let mut link = Connection {
            server,
            conn,
            subscriber,
            subscribed: HashSet::new(),
            canaries: Canaries::default(),
            masters: Vec::new(),
            subscribed_again: HashSet::new(),
        };
        self.load_scripts(&mut link.conn).await?;
        let control = [self.control_channel.as_str()];
        self.within(link.subscriber.subscribe_everywhere(&control))
            .await?;
        self.place_canaries(&mut link).await?;
        Ok(link)
    }

    /// Loads the scripts that batches call by hash, on every master of a cluster: Redis
    /// forgets them when it restarts, and a replica promoted by a failover may not have them.
    async fn load_scripts(&self, conn: &mut Conn) -> Result<(), RedisFailure> {
        for script in super::history::SCRIPTS
            .iter()
            .chain(&super::ledger::SCRIPTS)
        {
            let load = redis::cmd("SCRIPT").arg("LOAD").arg(*script).clone();
            self.within(conn.on_all_masters(&load)).await?;
        }
        Ok(())
    }

    /// `PUBLISH`, or `SPUBLISH` for a cluster's shard channels.
    pub(super) fn publish_verb(&self) -> &'static str {
        if self.settings.cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Makes the canary channels one per shard (on one Redis, the one channel), subscribing
    /// new ones and dropping those of shards that are gone. A cluster whose masters changed
    /// (a failover, a new shard) gets the scripts loaded again: a promoted replica has none.
    pub(super) async fn place_canaries(&self, link: &mut Connection) -> Result<(), RedisFailure> {
        let channels: Vec<String> = match &mut link.conn {
            Conn::Single(_) => vec![self.keys.canary(&self.node, None)],
            Conn::Cluster(conn) => {
                let shards = self.within(shards(conn)).await?;
                let mut masters: Vec<String> =
                    shards.iter().map(|shard| shard.id.clone()).collect();
                masters.sort();
                let changed = !link.masters.is_empty() && link.masters != masters;
                link.masters = masters;
                if changed {
                    info!(node = %self.node, "the cluster's masters changed; loading the scripts");
                    self.load_scripts(&mut link.conn).await?;
                }
                shards
                    .iter()
                    .map(|shard| self.keys.canary(&self.node, Some(&tag_for(shard))))
                    .collect()
            }
        };
        let (new, gone) = link.canaries.set_channels(channels);
        if !gone.is_empty() {
            self.within(link.subscriber.unsubscribe_sharded(&gone))
                .await?;
        }
        if !new.is_empty() {
            self.within(link.subscriber.subscribe_sharded(&new)).await?;
        }
        Ok(())
    }

    /// Shards took back subscriptions (their slots moved, or this node unsubscribed them):
    /// subscribes again those still wanted, on the shards that have the slots now, and with
    /// `check` once more at the next heartbeat.
    pub(super) async fn subscribe_again(
        &self,
        link: &mut Connection,
        channels: Vec<String>,
        check: bool,
    ) -> Result<(), RedisFailure> {
        let wanted: Vec<String> = channels
            .into_iter()
            .filter(|channel| {
                link.canaries.owns(channel)
                    || self
                        .keys
                        .room_of_channel(channel)
                        .is_some_and(|room| link.subscribed.contains(room))
            })
            .collect();
        if !wanted.is_empty() {
            debug!(node = %self.node, channels = wanted.len(), "a shard dropped subscriptions; subscribing again");
            self.within(link.subscriber.subscribe_sharded(&wanted))
                .await?;
            if check {
                link.subscribed_again.extend(wanted);
            }
        }
        Ok(())
    }

    /// Subscribes to the rooms' channels not yet subscribed, many per command.
    pub(super) async fn subscribe_rooms(
        &self,
        link: &mut Connection,
        rooms: &[String],
    ) -> Result<(), RedisFailure> {
        let new: Vec<&String> = rooms
            .iter()
            .filter(|room| !link.subscribed.contains(*room))
            .collect();
        for chunk in new.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|room| self.keys.channel(room)).collect();
            self.within(link.subscriber.subscribe_sharded(&channels))
                .await?;
            link.subscribed
                .extend(chunk.iter().map(|room| (*room).clone()));
        }
        Ok(())
    }

    /// Unsubscribes the rooms' channels and forgets them as subscribed.
    pub(super) async fn unsubscribe_rooms(
        &self,
        link: &mut Connection,
        rooms: &[String],
    ) -> Result<(), RedisFailure> {
        if rooms.is_empty() {
            return Ok(());
        }
        for room in rooms {
            link.subscribed.remove(room);
        }
        let channels: Vec<String> = rooms.iter().map(|room| self.keys.channel(room)).collect();
        self.within(link.subscriber.unsubscribe_sharded(&channels))
            .await
    }
}
