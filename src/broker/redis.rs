//! Rooms shared between nodes through Redis Pub/Sub.
//!
//! Two tasks per node:
//!
//! - the **driver** owns the subscriber connection and a command connection. It (re)connects
//!   with jittered exponential backoff, subscribes every room this node has members in, rebuilds
//!   this node's presence, reads each room's members on other nodes, and then serves: envelopes
//!   from the subscription go to the [`Hub`], rooms are subscribed as they open and unsubscribed
//!   as they close, a heartbeat refreshes this node's keys and forgets nodes whose keys
//!   expired, and a probe pings the subscriber so a connection that went silent is restarted.
//! - the **publisher** drains a bounded queue that [`RedisBroker::publish`] fills without ever
//!   waiting, and writes it to Redis in pipelined batches, in queue order. Sequence numbers are
//!   given here, so they grow in the order envelopes go out.
//!
//! Pub/Sub is at-most-once. While Redis is unreachable, local members still reach each other,
//! cross-node events are dropped and counted, `/readyz` says not ready, and every local member
//! gets a `delivery_interrupted` notice; when it is back, a `delivery_restored` notice follows,
//! along with `join`/`userleave` frames for whatever changed elsewhere meanwhile.
//!
//! The subscriber never waits for a socket: the redis crate reads the subscription into an
//! unbounded channel, and the hub only `try_send`s into member queues, so Redis never sees a
//! slow Pub/Sub client because of a slow browser.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::envelope::{self, PresenceValue};
use super::{BoxFuture, Broker, Envelope, Keys, RemoteEvent, RemoteMember, RoomEvent};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{notice, ServerFrame};

/// The shortest wait before a reconnect; doubled per failure up to `REDIS_RECONNECT_MAX_MS`.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Envelopes written per pipeline round trip at most.
const BATCH: usize = 512;
/// Replaces this node's fields in a room's presence hash and announces the result, atomically,
/// so no join or leave of this node can fall between the two.
const SYNC_SCRIPT: &str = r"
local mine = ARGV[1]
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #mine) == mine then redis.call('HDEL', KEYS[1], field) end
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 5 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
";

/// Settings from the config.
#[derive(Clone, Debug)]
struct Settings {
    key_ttl: Duration,
    timeout: Duration,
    probe_interval: Duration,
    reconnect_max: Duration,
}

/// What the publisher writes.
struct Outgoing {
    room: String,
    event: RemoteEvent,
}

/// What the driver is asked to do.
enum Command {
    /// Subscribe to the room and load its members elsewhere, then reply.
    Open {
        room: String,
        done: oneshot::Sender<()>,
    },
    /// The room has no local members: unsubscribe unless it has some again.
    Closed { room: String },
}

/// The receiving ends, taken once by [`RedisBroker::spawn`].
struct Inboxes {
    commands: mpsc::UnboundedReceiver<Command>,
    outgoing: mpsc::Receiver<Outgoing>,
}

pub struct RedisBroker {
    node: Arc<str>,
    keys: Keys,
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    connected: AtomicBool,
    commands: mpsc::UnboundedSender<Command>,
    outgoing: mpsc::Sender<Outgoing>,
    inboxes: Mutex<Option<Inboxes>>,
    /// The command connection the publisher writes on, `None` while disconnected.
    connection: watch::Sender<Option<Link>>,
    /// Counts connected periods; a failure is only believed for the period it happened in.
    generation: AtomicU64,
    /// The period in which a write last failed (or a join or leave could not be queued).
    failed_generation: AtomicU64,
    /// Raised with `failed_generation`: the driver reconnects and resyncs.
    publish_failed: Notify,
    stop: CancellationToken,
    stopped: CancellationToken,
}

/// A connected period's command connection.
#[derive(Clone)]
struct Link {
    generation: u64,
    conn: MultiplexedConnection,
}

/// Why a connected period ended.
enum Ended {
    Stopped,
    Lost(&'static str, String),
}

impl RedisBroker {
    /// A broker for `REDIS_URL`; nothing connects until [`spawn`](Self::spawn).
    pub fn new(config: &Config, url: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, RedisError> {
        let client = Client::open(url)?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = mpsc::channel(config.redis_publish_queue);
        let node: Arc<str> = Arc::from(format!("{:016x}", rand::rng().random::<u64>()));
        Ok(Arc::new(RedisBroker {
            node,
            keys: Keys::new(&config.redis_prefix),
            client,
            settings: Settings {
                key_ttl: config.redis_key_ttl(),
                timeout: config.redis_timeout(),
                probe_interval: config.redis_probe_interval(),
                reconnect_max: config.redis_reconnect_max(),
            },
            metrics,
            connected: AtomicBool::new(false),
            commands,
            outgoing,
            inboxes: Mutex::new(Some(Inboxes {
                commands: commands_rx,
                outgoing: outgoing_rx,
            })),
            connection: watch::Sender::new(None),
            generation: AtomicU64::new(0),
            failed_generation: AtomicU64::new(0),
            publish_failed: Notify::new(),
            stop: CancellationToken::new(),
            stopped: CancellationToken::new(),
        }))
    }

    /// This node's id, as it appears in envelopes and presence fields.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Starts the driver and the publisher on `tracker`; they run until [`Broker::stop`].
    pub fn spawn(self: &Arc<Self>, hub: Arc<Hub>, tracker: &tokio_util::task::TaskTracker) {
        let inboxes = self
            .inboxes
            .lock()
            .expect("the lock is never poisoned")
            .take()
            .expect("spawned once");
        let publisher = tracker.spawn(Arc::clone(self).publisher(inboxes.outgoing));
        tracker.spawn(Arc::clone(self).driver(hub, inboxes.commands, publisher));
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_up.set(i64::from(connected));
    }

    /// Reconnects until stopped. Local members are told once when cross-node delivery stops and
    /// once when it is back.
    async fn driver(
        self: Arc<Self>,
        hub: Arc<Hub>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        publisher: tokio::task::JoinHandle<()>,
    ) {
        let mut backoff = RECONNECT_MIN;
        // Until the first connection, members who join are told delivery is interrupted (by
        // their session); the first connection tells them it is restored.
        let mut interrupted = true;
        let mut ever_connected = false;
        info!(node = %self.node, "redis broker starting");
        loop {
            let ended = self
                .connected_period(&hub, &mut commands, &mut interrupted, &mut ever_connected)
                .await;
            let (kind, error) = match ended {
                Ended::Stopped => break,
                Ended::Lost(kind, error) => (kind, error),
            };
            let had_connected = self.connected.load(Ordering::SeqCst);
            self.set_connected(false);
            self.connection.send_replace(None);
            self.metrics.broker_error(kind);
            warn!(node = %self.node, kind, %error, "redis unavailable; rooms are local until it is back");
            if !interrupted {
                interrupted = true;
                hub.notify_all(&ServerFrame::notice(notice::DELIVERY_INTERRUPTED).encode());
            }
            // Opens waiting for a connection would only wait out their timeout.
            while commands.try_recv().is_ok() {}
            if had_connected {
                backoff = RECONNECT_MIN;
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(jittered) => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        // The sessions are gone and their leaves are queued: flush them, then withdraw.
        let _ = tokio::time::timeout(self.settings.timeout, publisher).await;
        self.withdraw().await;
        self.set_connected(false);
        self.connection.send_replace(None);
        self.stopped.cancel();
        info!(node = %self.node, "redis broker stopped");
    }

    /// One connection's lifetime: connect, catch up, serve until it fails or we stop.
    async fn connected_period(
        &self,
        hub: &Arc<Hub>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        interrupted: &mut bool,
        ever_connected: &mut bool,
    ) -> Ended {
        let lost = |kind| move |err: String| Ended::Lost(kind, err);
        let (mut conn, mut sink, mut stream) = match self.connect().await {
            Ok(parts) => parts,
            Err(err) => return lost("connect")(err),
        };
        let rooms = room_names(hub);
        let mut subscribed = HashSet::new();
        if let Err(err) = self
            .subscribe_rooms(&mut sink, &mut subscribed, &rooms)
            .await
        {
            return lost("subscribe")(err);
        }
        if let Err(err) = self.refresh_node_key(&mut conn, hub).await {
            return lost("connect")(err);
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.connection.send_replace(Some(Link {
            generation,
            conn: conn.clone(),
        }));
        // Connected before the resync is queued: an event after this point is queued behind
        // the resync of its room, one before it is superseded by that resync.
        self.set_connected(true);
        hub.for_each_room(|room, members| {
            self.queue(room, RemoteEvent::Sync(members));
        });
        if let Err(err) = self.refresh_views(&mut conn, hub, &rooms).await {
            return lost("connect")(err);
        }
        if *ever_connected {
            self.metrics.broker_reconnects.inc();
            info!(node = %self.node, rooms = rooms.len(), "redis back; rooms resubscribed");
        } else {
            info!(node = %self.node, "redis connected");
        }
        *ever_connected = true;
        if std::mem::take(interrupted) {
            hub.notify_all(&ServerFrame::notice(notice::DELIVERY_RESTORED).encode());
        }

        let mut heartbeat = tokio::time::interval(self.settings.key_ttl / 3);
        let mut probe = tokio::time::interval(self.settings.probe_interval);
        for timer in [&mut heartbeat, &mut probe] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.reset();
        }
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                _ = self.publish_failed.notified() => {
                    // A failure from an earlier period left a permit behind: not ours.
                    if self.failed_generation.load(Ordering::SeqCst) == generation {
                        return lost("publish")("a write to redis failed".into());
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return lost("subscribe")("the subscription closed".into());
                    };
                    self.on_envelope(hub, message.get_channel_name(), message.get_payload_bytes());
                }
                Some(command) = commands.recv() => {
                    if let Err(err) = self
                        .on_command(hub, &mut conn, &mut sink, &mut subscribed, command)
                        .await
                    {
                        return lost("subscribe")(err);
                    }
                }
                _ = heartbeat.tick() => {
                    if let Err(err) = self
                        .heartbeat(&mut conn, &mut sink, &mut subscribed, hub)
                        .await
                    {
                        return lost("probe")(err);
                    }
                }
                _ = probe.tick() => {
                    // A subscriber that stopped answering (a dead peer, a proxy that lost the
                    // connection) would otherwise go unnoticed until TCP gives up.
                    if let Err(err) = self.within(sink.ping::<redis::Value>()).await {
                        return lost("probe")(err);
                    }
                }
            }
        }
    }

    async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, PubSubSink, redis::aio::PubSubStream), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout));
        let conn = self
            .within(
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        let pubsub = self.within(self.client.get_async_pubsub()).await?;
        let (sink, stream) = pubsub.split();
        Ok((conn, sink, stream))
    }

    /// Runs a Redis call with the `REDIS_TIMEOUT_MS` deadline; errors become text for the log
    /// (never the URL: the redis crate's errors name the failing operation, not the address).
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(format!("{:?}", err.kind())),
            Err(_) => Err("timed out".into()),
        }
    }

    fn on_envelope(&self, hub: &Hub, channel: &str, payload: &[u8]) {
        let Some(room) = self.keys.room_of_channel(channel) else {
            return;
        };
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.metrics.broker_error("decode");
                debug!(bytes = payload.len(), %err, "envelope refused");
                return;
            }
        };
        if *envelope.node == *self.node {
            // Our own: its room heard it locally already.
            return;
        }
        self.metrics.broker_received.inc();
        let delay_ms = now_ms().saturating_sub(envelope.sent_at_ms);
        self.metrics.broker_delay.observe(delay_ms as f64 / 1000.0);
        let node: Arc<str> = Arc::from(envelope.node);
        hub.apply_remote(room, &node, envelope.seq, envelope.event);
    }

    async fn on_command(
        &self,
        hub: &Hub,
        conn: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        command: Command,
    ) -> Result<(), String> {
        match command {
            Command::Open { room, done } => {
                self.subscribe_rooms(sink, subscribed, std::slice::from_ref(&room))
                    .await?;
                self.refresh_views(conn, hub, std::slice::from_ref(&room))
                    .await?;
                let _ = done.send(());
            }
            Command::Closed { room } => {
                if !hub.has_room(&room) && subscribed.remove(&room) {
                    self.within(sink.unsubscribe(self.keys.channel(&room)))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Subscribes to the rooms' channels not yet subscribed.
    async fn subscribe_rooms(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        rooms: &[String],
    ) -> Result<(), String> {
        for room in rooms {
            if !subscribed.contains(room) {
                self.within(sink.subscribe(self.keys.channel(room))).await?;
                subscribed.insert(room.clone());
            }
        }
        Ok(())
    }

    /// Reads the rooms' presence hashes (pipelined, a chunk of rooms per round trip) and makes
    /// the hub's view of other nodes match them.
    async fn refresh_views(
        &self,
        conn: &mut MultiplexedConnection,
        hub: &Hub,
        rooms: &[String],
    ) -> Result<(), String> {
        for chunk in rooms.chunks(256) {
            let mut pipe = redis::pipe();
            for room in chunk {
                pipe.cmd("HGETALL").arg(self.keys.members(room));
            }
            let hashes: Vec<Vec<(String, Vec<u8>)>> = self.within(pipe.query_async(conn)).await?;
            let views: Vec<Vec<(Arc<str>, RemoteMember)>> = hashes
                .iter()
                .map(|fields| self.parse_presence(fields))
                .collect();
            let mut nodes: Vec<Arc<str>> = views
                .iter()
                .flatten()
                .map(|(node, _)| Arc::clone(node))
                .collect();
            nodes.sort();
            nodes.dedup();
            let dead = self.dead_nodes(conn, &nodes).await?;
            for (room, mut members) in chunk.iter().zip(views) {
                if !dead.is_empty() {
                    // Fields of a node that crashed: nobody else will remove them.
                    let stale: Vec<String> = members
                        .iter()
                        .filter(|(node, _)| dead.contains(node))
                        .map(|(node, member)| Keys::member_field(node, member.session))
                        .collect();
                    if !stale.is_empty() {
                        self.within(
                            redis::cmd("HDEL")
                                .arg(self.keys.members(room))
                                .arg(stale)
                                .query_async::<()>(conn),
                        )
                        .await?;
                    }
                    members.retain(|(node, _)| !dead.contains(node));
                }
                hub.install_remote_view(room, members);
            }
        }
        Ok(())
    }

    /// Other nodes' members in a presence hash; fields that do not parse are skipped.
    fn parse_presence(&self, fields: &[(String, Vec<u8>)]) -> Vec<(Arc<str>, RemoteMember)> {
        let mut members = Vec::with_capacity(fields.len());
        for (field, value) in fields {
            let Some((node, session)) = Keys::parse_member_field(field) else {
                continue;
            };
            if node == &*self.node {
                continue;
            }
            let Ok(who) = serde_json::from_slice::<PresenceValue<'_>>(value) else {
                self.metrics.broker_error("decode");
                continue;
            };
            members.push((
                Arc::<str>::from(node),
                RemoteMember {
                    session,
                    username: Arc::from(who.username.as_ref()),
                    user_id: Arc::from(who.user_id.as_ref()),
                },
            ));
        }
        members
    }

    /// Which of `nodes` no longer have a live node key.
    async fn dead_nodes(
        &self,
        conn: &mut MultiplexedConnection,
        nodes: &[Arc<str>],
    ) -> Result<Vec<Arc<str>>, String> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|node| self.keys.node(node)).collect();
        let alive: Vec<Option<String>> = self
            .within(redis::cmd("MGET").arg(keys).query_async(conn))
            .await?;
        Ok(nodes
            .iter()
            .zip(alive)
            .filter(|(_, alive)| alive.is_none())
            .map(|(node, _)| Arc::clone(node))
            .collect())
    }

    /// Keeps this node's keys alive, forgets nodes whose keys expired, and re-reads every
    /// room's members elsewhere (which repairs anything a lost envelope left wrong).
    async fn heartbeat(
        &self,
        conn: &mut MultiplexedConnection,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<String>,
        hub: &Hub,
    ) -> Result<(), String> {
        self.refresh_node_key(conn, hub).await?;
        let known: Vec<Arc<str>> = hub.remote_nodes().into_iter().collect();
        for node in self.dead_nodes(conn, &known).await? {
            info!(node = %node, "a node's presence expired; its members left");
            hub.forget_node(&node);
        }
        hub.sweep_unjoined(self.settings.timeout * 2);
        // Subscriptions follow the hub's rooms, whatever raced with the open and close
        // commands.
        let rooms = room_names(hub);
        let stale: Vec<String> = subscribed
            .iter()
            .filter(|room| !hub.has_room(room))
            .cloned()
            .collect();
        for room in stale {
            subscribed.remove(&room);
            self.within(sink.unsubscribe(self.keys.channel(&room)))
                .await?;
        }
        self.subscribe_rooms(sink, subscribed, &rooms).await?;
        self.refresh_views(conn, hub, &rooms).await
    }

    /// Sets this node's key and pushes back the expiry of the rooms it has members in.
    async fn refresh_node_key(
        &self,
        conn: &mut MultiplexedConnection,
        hub: &Hub,
    ) -> Result<(), String> {
        let ttl = self.settings.key_ttl.as_secs();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .ignore();
        for room in room_names(hub) {
            pipe.cmd("EXPIRE")
                .arg(self.keys.members(&room))
                .arg(ttl)
                .ignore();
        }
        self.within(pipe.query_async::<()>(conn)).await
    }

    /// Removes this node's key, so others forget it now rather than after it expires.
    async fn withdraw(&self) {
        let Some(Link { mut conn, .. }) = self.connection.borrow().clone() else {
            return;
        };
        let _: Result<(), String> = self
            .within(
                redis::cmd("DEL")
                    .arg(self.keys.node(&self.node))
                    .query_async(&mut conn),
            )
            .await;
    }

    /// Queues an event for the publisher without waiting. A join or leave that cannot be queued
    /// leaves this node's presence wrong, so it forces a reconnect, which resyncs it.
    fn queue(&self, room: &str, event: RemoteEvent) {
        let changes_presence = !matches!(event, RemoteEvent::Message { .. });
        let outgoing = Outgoing {
            room: room.to_owned(),
            event,
        };
        if self.outgoing.try_send(outgoing).is_err() {
            self.metrics.broker_drop("backlog");
            if changes_presence {
                self.raise_failure(self.generation.load(Ordering::SeqCst));
            }
        }
    }

    /// Writes queued events in batches, one pipeline per batch, in queue order.
    async fn publisher(self: Arc<Self>, mut queue: mpsc::Receiver<Outgoing>) {
        let mut seq: u64 = 0;
        let mut batch = Vec::with_capacity(BATCH);
        let sync = redis::Script::new(SYNC_SCRIPT);
        loop {
            let received = tokio::select! {
                // Stop only once the queue is empty: the last leaves must reach the others.
                count = queue.recv_many(&mut batch, BATCH) => count,
                _ = self.stop.cancelled(), if queue.is_empty() => 0,
            };
            if received == 0 {
                return;
            }
            let Some(Link {
                generation,
                mut conn,
            }) = self.connection.borrow().clone()
            else {
                for _ in batch.drain(..) {
                    self.metrics.broker_drop("down");
                }
                continue;
            };
            let ttl = self.settings.key_ttl.as_secs();
            let sent_at = now_ms();
            let mut pipe = redis::pipe();
            let mut published = 0;
            let mut failed = false;
            for Outgoing { room, event } in batch.drain(..) {
                seq += 1;
                let payload = envelope::encode(&self.node, seq, sent_at, &event);
                let channel = self.keys.channel(&room);
                let members = self.keys.members(&room);
                match &event {
                    RemoteEvent::Sync(mine) => {
                        // Scripts run on their own; flush what came before to keep the order.
                        failed |= self.flush(&mut pipe, &mut conn).await;
                        let mut invocation = sync.key(&members);
                        invocation
                            .arg(format!("{}:", self.node))
                            .arg(ttl)
                            .arg(&channel)
                            .arg(&payload);
                        for member in mine {
                            invocation
                                .arg(Keys::member_field(&self.node, member.session))
                                .arg(PresenceValue::encode(&member.username, &member.user_id));
                        }
                        failed |= self
                            .within(invocation.invoke_async::<()>(&mut conn))
                            .await
                            .is_err();
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
                    RemoteEvent::Message { .. } => {}
                }
                if !matches!(event, RemoteEvent::Sync(_)) {
                    pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
                }
                published += 1;
            }
            failed |= self.flush(&mut pipe, &mut conn).await;
            if failed {
                self.metrics.broker_error("publish");
                self.raise_failure(generation);
            } else {
                self.metrics.broker_published.inc_by(published);
            }
        }
    }
}

impl RedisBroker {
    fn raise_failure(&self, generation: u64) {
        self.failed_generation.store(generation, Ordering::SeqCst);
        self.publish_failed.notify_one();
    }

    /// Sends the pipeline, if it holds anything, and empties it; true if that failed.
    async fn flush(&self, pipe: &mut redis::Pipeline, conn: &mut MultiplexedConnection) -> bool {
        if pipe.is_empty() {
            return false;
        }
        let failed = self.within(pipe.query_async::<()>(conn)).await.is_err();
        pipe.clear();
        failed
    }
}

impl Broker for RedisBroker {
    fn open_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a> {
        Box::pin(async move {
            if !self.connected.load(Ordering::SeqCst) {
                return;
            }
            let (done, opened) = oneshot::channel();
            let command = Command::Open {
                room: room.to_owned(),
                done,
            };
            if self.commands.send(command).is_ok() {
                // On timeout the join goes ahead with what this node knows; the heartbeat
                // re-reads the room soon after.
                let _ = tokio::time::timeout(self.settings.timeout, opened).await;
            }
        })
    }

    fn publish(&self, room: &str, event: RoomEvent<'_>) {
        if !self.connected.load(Ordering::Relaxed) {
            self.metrics.broker_drop("down");
            return;
        }
        self.queue(room, event.to_remote());
    }

    fn room_closed(&self, room: &str) {
        let _ = self.commands.send(Command::Closed {
            room: room.to_owned(),
        });
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn stop(&self) -> BoxFuture<'_> {
        Box::pin(async move {
            self.stop.cancel();
            let _ = tokio::time::timeout(self.settings.timeout * 2, self.stopped.cancelled()).await;
        })
    }
}

fn room_names(hub: &Hub) -> Vec<String> {
    let mut names = Vec::new();
    hub.for_each_room(|room, _| names.push(room.to_owned()));
    names
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
