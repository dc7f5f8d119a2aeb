//! Rooms shared between nodes through Redis Pub/Sub.
//!
//! Two tasks per node:
//!
//! - the **driver** ([`driver`]) owns a [`connection`]: the subscriber and a command
//!   connection, and the channels subscribed. It (re)connects with jittered exponential
//!   backoff, subscribes every room this node has members in, rebuilds this node's presence,
//!   reads each room's members on other nodes, and then serves: envelopes from the
//!   subscription go to the node's [`LocalRooms`], rooms are subscribed as they open and
//!   unsubscribed as they close, a heartbeat refreshes this node's keys, forgets
//!   nodes whose keys expired and repairs what was lost, and a [`canary`] sent through Pub/Sub
//!   to itself proves the subscription still delivers (a subscriber that went silent is
//!   restarted). The [`endpoint`] says which Redis to connect to: one URL, the master
//!   Sentinel names (asked again at every connect and followed through a failover), or a Redis
//!   Cluster. The command connection ([`conn`]) sends a batch as one pipeline to one Redis and
//!   as one per hash slot to a cluster; the [`subscriber`] listens on a Pub/Sub connection, or
//!   on a cluster's shard channels.
//! - the **publisher** ([`publisher`]) drains a bounded queue that [`RedisBroker::publish`]
//!   fills without ever waiting, and writes it to Redis in pipelined batches, in queue order.
//!   Sequence numbers are given there, so they grow in the order envelopes go out.
//!
//! Presence ([`presence`]) is a hash per room with one field per member per node. A change of
//! this node's members that could not be written (Redis down, queue full, a failed write)
//! marks the room *dirty*; dirty rooms are resynced — this node's fields replaced with what
//! the hub holds, atomically, with a `sync` envelope — at the next heartbeat or reconnect.
//!
//! Pub/Sub is at-most-once. While Redis is unreachable, local members still reach each other,
//! cross-node events are dropped and counted, `/readyz` says not ready, and every local member
//! gets a `delivery_interrupted` notice; when it is back, a `delivery_restored` notice follows,
//! along with `join`/`userleave` frames for whatever changed elsewhere meanwhile.
//!
//! The subscriber never waits for a socket: the redis crate reads the subscription into an
//! unbounded channel, and the hub only `try_send`s into member queues, so Redis never sees a
//! slow Pub/Sub client because of a slow browser.

mod canary;
mod conn;
mod connection;
mod directory;
mod driver;
mod endpoint;
mod failover;
mod history;
mod ledger;
mod notices;
mod presence;
mod publisher;
mod settings;
mod subscriber;
mod users;

pub(crate) use settings::RedisSettings;

/// Why a Redis call or connection failed. Never the URL: the redis crate's error kinds name
/// the failure, not the address (which may hold a password).
#[derive(Debug, thiserror::Error)]
enum RedisFailure {
    #[error("timed out")]
    Timeout,
    #[error("{0:?}")]
    Redis(redis::ErrorKind),
    #[error("the subscription closed")]
    SubscriptionClosed,
    #[error("a write to redis failed")]
    WriteFailed,
    #[error("the canary did not come back: the subscriber is silent")]
    Silent,
    #[error("sentinel switched the master")]
    MasterSwitched,
}

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use redis::RedisError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use tokio_util::task::TaskTracker;

use super::directory::{Cluster, HistoryPage, KeyClaim, Members, RoomsPage, UserSessions};
use super::ledger::{DeadNode, PresenceChange, Recorded, Stamp, Synced};
use super::{
    BoxFuture, Broker, Keys, LocalControl, LocalRooms, MessageOrder, Notice, RemoteEvent, RoomEvent,
};
use crate::clock;
use crate::metrics::labels::BrokerDrop;
use crate::metrics::Metrics;
use clock::unix_ms as now_ms;
use users::Users;

/// The shortest wait before a reconnect; doubled per failure up to `REDIS_RECONNECT_MAX_MS`.
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// What the publisher writes, in order.
enum Outgoing {
    /// A room's event.
    Room { room: String, event: RemoteEvent },
    /// A ban, unban or kick for the other nodes.
    Control(Notice),
    /// A session of this user, counted on every node, ended.
    Release(Arc<str>),
}

/// Ban and unban notices kept while Redis is away, to be written when it is back.
const PENDING_CONTROL: usize = 4096;

/// What the driver is asked to do.
enum Command {
    /// Subscribe to the room and load its members elsewhere, then reply (if anyone waits).
    Open {
        room: String,
        done: Option<oneshot::Sender<()>>,
    },
    /// The room has no local members: unsubscribe unless it has some again.
    Closed { room: String },
}

/// The receiving ends, taken once by [`RedisBroker::spawn`].
struct Inboxes {
    commands: mpsc::UnboundedReceiver<Command>,
    outgoing: mpsc::Receiver<Outgoing>,
}

/// A connected period's command connection.
#[derive(Clone)]
struct Link {
    generation: u64,
    conn: conn::Conn,
}

pub(crate) struct RedisBroker {
    node: Arc<str>,
    keys: Keys,
    /// `{prefix}control`, where bans, unbans and kicks travel.
    control_channel: String,
    settings: RedisSettings,
    metrics: Arc<Metrics>,
    connected: AtomicBool,
    /// Set while the last canary came back: Pub/Sub delivers to this node.
    delivery_ok: AtomicBool,
    /// Set once the bans and revocations in Redis were learned in this connected period.
    caught_up: AtomicBool,
    commands: mpsc::UnboundedSender<Command>,
    outgoing: mpsc::Sender<Outgoing>,
    inboxes: Mutex<Option<Inboxes>>,
    /// Rooms whose presence in Redis may be wrong: a join or leave of ours was not written.
    dirty: Mutex<HashSet<String>>,
    /// Bans and unbans decided while Redis was away, in order.
    pending_control: Mutex<Vec<Notice>>,
    /// The per-user limits every node shares.
    users: Users,
    /// The hub, once started: chat messages that could not be written are delivered there.
    rooms: std::sync::OnceLock<Arc<dyn LocalRooms>>,
    /// The command connection the publisher writes on, `None` while disconnected.
    connection: watch::Sender<Option<Link>>,
    /// Counts connected periods; a failure is only believed for the period it happened in.
    generation: AtomicU64,
    /// Raised at every connect and whenever this node's key had expired: the webhooks then
    /// rewrite this node's presence whole.
    presence_epoch: AtomicU64,
    /// The period in which a write last failed.
    failed_generation: AtomicU64,
    /// Raised with `failed_generation`: the driver reconnects and resyncs.
    publish_failed: Notify,
    stop: CancellationToken,
    stopped: CancellationToken,
}

impl RedisBroker {
    /// A broker for these settings, sharing `user_rate` (messages a second, and a burst) per
    /// user; nothing connects until [`Broker::start`].
    pub(crate) fn new(
        settings: &RedisSettings,
        metrics: Arc<Metrics>,
        user_rate: (f64, u32),
    ) -> Arc<Self> {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (outgoing, outgoing_rx) = mpsc::channel(settings.publish_queue.get());
        let node: Arc<str> = Arc::from(format!("{:016x}", rand::rng().random::<u64>()));
        let keys = Keys::new(&settings.prefix, settings.cluster());
        Arc::new(RedisBroker {
            node,
            control_channel: keys.control(),
            keys,
            settings: settings.clone(),
            metrics,
            connected: AtomicBool::new(false),
            delivery_ok: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            commands,
            outgoing,
            inboxes: Mutex::new(Some(Inboxes {
                commands: commands_rx,
                outgoing: outgoing_rx,
            })),
            dirty: Mutex::new(HashSet::new()),
            pending_control: Mutex::new(Vec::new()),
            users: Users::new(user_rate.0, user_rate.1),
            rooms: std::sync::OnceLock::new(),
            connection: watch::Sender::new(None),
            generation: AtomicU64::new(0),
            presence_epoch: AtomicU64::new(0),
            failed_generation: AtomicU64::new(0),
            publish_failed: Notify::new(),
            stop: CancellationToken::new(),
            stopped: CancellationToken::new(),
        })
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.broker_up.set(i64::from(connected));
    }

    fn set_delivery_ok(&self, ok: bool) {
        self.delivery_ok.store(ok, Ordering::SeqCst);
        self.metrics.broker_delivery_ok.set(i64::from(ok));
    }

    /// A write of period `generation` failed: the driver ends that period.
    fn raise_failure(&self, generation: u64) {
        self.failed_generation.store(generation, Ordering::SeqCst);
        self.publish_failed.notify_one();
    }

    fn mark_dirty(&self, room: &str) {
        self.dirty
            .lock()
            .expect("the lock is never poisoned")
            .insert(room.to_owned());
    }

    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().expect("the lock is never poisoned"))
    }

    /// Queues an event for the publisher without waiting; false if the queue is full. A join,
    /// leave or sync that cannot be queued leaves this node's presence wrong: its room is
    /// resynced at the next heartbeat.
    fn queue(&self, room: &str, event: RemoteEvent) -> bool {
        let outgoing = Outgoing::Room {
            room: room.to_owned(),
            event,
        };
        match self.outgoing.try_send(outgoing) {
            Ok(()) => true,
            Err(err) => {
                self.metrics.broker_drop(BrokerDrop::Backlog);
                self.abandon_one(err.into_inner());
                false
            }
        }
    }

    /// Keeps a ban or unban that could not be written, to write it when Redis is back (a
    /// kick or a direct message only matters now: it is dropped).
    fn keep_pending(&self, notice: Notice) {
        if matches!(notice, Notice::Kick { .. } | Notice::Direct(_)) {
            return;
        }
        let mut pending = self.pending_control.lock().expect("never poisoned");
        if pending.len() < PENDING_CONTROL {
            pending.push(notice);
        }
    }

    /// Repairs what an event that will not be written leaves wrong.
    fn abandon_one(&self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Room { room, event } => {
                if matches!(
                    event,
                    RemoteEvent::Join(_) | RemoteEvent::Leave { .. } | RemoteEvent::Sync(_)
                ) {
                    self.mark_dirty(&room);
                }
            }
            Outgoing::Control(notice) => self.keep_pending(notice),
            Outgoing::Release(user) => {
                self.users.mark_dirty(&user);
            }
        }
    }

    fn take_pending(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.pending_control.lock().expect("never poisoned"))
    }

    /// Runs a Redis call with the `REDIS_TIMEOUT_MS` deadline.
    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisFailure> {
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(RedisFailure::Redis(err.kind())),
            Err(_) => Err(RedisFailure::Timeout),
        }
    }
}

impl Broker for RedisBroker {
    fn announce(&self, notice: Notice) {
        if !self.connected.load(Ordering::Relaxed) {
            self.metrics.broker_drop(BrokerDrop::Down);
            self.keep_pending(notice);
            return;
        }
        if let Err(err) = self.outgoing.try_send(Outgoing::Control(notice)) {
            self.metrics.broker_drop(BrokerDrop::Backlog);
            self.abandon_one(err.into_inner());
        }
    }

    fn start(
        self: Arc<Self>,
        rooms: Arc<dyn LocalRooms>,
        control: Arc<dyn LocalControl>,
        tasks: &TaskTracker,
    ) {
        let inboxes = self
            .inboxes
            .lock()
            .expect("the lock is never poisoned")
            .take()
            .expect("started once");
        let _ = self.rooms.set(Arc::clone(&rooms));
        let publisher = tasks.spawn(Arc::clone(&self).publisher(inboxes.outgoing));
        tasks.spawn(self.driver(rooms, control, inboxes.commands, publisher));
    }

    fn open_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a> {
        Box::pin(async move {
            if !self.connected.load(Ordering::SeqCst) {
                return;
            }
            let (done, opened) = oneshot::channel();
            let command = Command::Open {
                room: room.to_owned(),
                done: Some(done),
            };
            if self.commands.send(command).is_ok() {
                // On timeout the join goes ahead with what this node knows; the room is opened
                // all the same, and the heartbeat re-reads it soon after.
                let _ = tokio::time::timeout(self.settings.timeout, opened).await;
            }
        })
    }

    fn room_created(&self, room: &str) {
        let _ = self.commands.send(Command::Open {
            room: room.to_owned(),
            done: None,
        });
    }

    fn publish(&self, room: &str, event: RoomEvent<'_>) -> bool {
        if !self.connected.load(Ordering::Relaxed) {
            self.metrics.broker_drop(BrokerDrop::Down);
            if matches!(event, RoomEvent::Join { .. } | RoomEvent::Leave { .. }) {
                self.mark_dirty(room);
            }
            return false;
        }
        self.queue(room, event.to_remote())
    }

    fn message_order(&self) -> MessageOrder {
        if self.settings.history.enabled() && self.connected.load(Ordering::SeqCst) {
            MessageOrder::Broker
        } else {
            MessageOrder::Unordered
        }
    }

    fn last_seen<'a>(&'a self, room: &'a str, user: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(self.read_seen(room, user))
    }

    fn room_closed(&self, room: &str) {
        let _ = self.commands.send(Command::Closed {
            room: room.to_owned(),
        });
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Ready on proof of delivery (the last canary came back), not on a connection alone.
    fn is_ready(&self) -> bool {
        self.is_connected()
            && self.caught_up.load(Ordering::SeqCst)
            && self.delivery_ok.load(Ordering::SeqCst)
    }

    fn claim_session<'a>(&'a self, user: &'a Arc<str>, max: usize) -> BoxFuture<'a, bool> {
        Box::pin(self.claim(user, max))
    }

    fn release_session(&self, user: &Arc<str>) {
        self.release(user);
    }

    fn count_message(&self, user: &Arc<str>) {
        if self.connected.load(Ordering::Relaxed) {
            self.users.count_message(user);
        }
    }

    fn over_rate(&self, user: &Arc<str>) -> bool {
        self.users.over_rate(user)
    }

    fn rooms_page<'a>(
        &'a self,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Cluster<RoomsPage>> {
        Box::pin(self.scan_rooms(cursor, limit))
    }

    fn room_members<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Cluster<Members>> {
        Box::pin(self.read_members(room))
    }

    fn history_page<'a>(
        &'a self,
        room: &'a str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Cluster<Option<HistoryPage>>> {
        if !self.settings.history.enabled() {
            return Box::pin(std::future::ready(Cluster::Known(None)));
        }
        Box::pin(self.read_history(room, after, limit))
    }

    fn user_sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Cluster<UserSessions>> {
        Box::pin(self.read_sessions(user))
    }

    fn claim_key<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Cluster<KeyClaim>> {
        Box::pin(self.claim_idempotency(key, fingerprint, lease))
    }

    fn settle_key<'a>(
        &'a self,
        key: &'a str,
        held: Option<&'a str>,
        window: Duration,
    ) -> BoxFuture<'a> {
        Box::pin(self.settle_idempotency(key, held, window))
    }

    fn record_presence<'a>(
        &'a self,
        changes: &'a [(Stamp, PresenceChange)],
        grace: Duration,
    ) -> BoxFuture<'a, Cluster<Vec<Recorded>>> {
        Box::pin(self.record(changes, grace))
    }

    fn sync_presence<'a>(
        &'a self,
        here: &'a [Arc<str>],
        stamp: Stamp,
    ) -> BoxFuture<'a, Cluster<Synced>> {
        Box::pin(self.sync_held(here, stamp))
    }

    fn find_dead_presence(&self) -> BoxFuture<'_, Cluster<Option<DeadNode>>> {
        Box::pin(self.find_dead_holder())
    }

    fn sweep_presence<'a>(
        &'a self,
        dead: &'a DeadNode,
        stamp: Stamp,
    ) -> BoxFuture<'a, Cluster<Vec<String>>> {
        Box::pin(self.sweep_held(dead, stamp))
    }

    fn presence_epoch(&self) -> u64 {
        self.presence_epoch.load(Ordering::SeqCst)
    }

    fn stop(&self) -> BoxFuture<'_> {
        Box::pin(async move {
            self.stop.cancel();
            let _ = tokio::time::timeout(self.settings.timeout * 3, self.stopped.cancelled()).await;
        })
    }
}
