//! From what this node observes to the events of the whole cluster.
//!
//! The hub and the sessions report each user's and room's first and last presence on this
//! node ([`Observed`]). The tracker turns them into [`PresenceChange`]s, in order, and asks
//! the ledger (Redis's, through the broker, or its own on one node) which of them are facts for
//! the cluster: a user's first session anywhere is `user.online`; their last, once it has stayed
//! gone `WEBHOOK_OFFLINE_GRACE_SECS`, is `user.offline` (a reconnect within the grace, on any
//! node, cancels both); a room's first member anywhere is `room.occupied`, its last
//! `room.empty`. A node that dies has its users and rooms reported off by another node, once
//! its key expires (`REDIS_KEY_TTL_SECS`).
//!
//! Chat messages go straight to the queue. While Redis is away, changes wait (up to
//! `WEBHOOK_QUEUE` of them; past that they are dropped and this node's presence is rewritten
//! whole when Redis is back, as it is after every reconnect).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::delivery::Queue;
use super::event::{Data, Event};
use super::settings::{Kind, WebhookSettings};
use crate::broker::ledger::PresenceChange;
use crate::broker::{Broker, Cluster};
use crate::observer::Observed;

/// Changes sent to the ledger per round trip at most.
const BATCH: usize = 512;

/// How long to wait before asking an unreachable ledger again.
const RETRY: Duration = Duration::from_secs(1);

/// How often dead nodes' presence is looked for.
const SWEEP: Duration = Duration::from_secs(1);

pub(crate) struct Tracker {
    settings: WebhookSettings,
    broker: Arc<dyn Broker>,
    queue: Queue,
    /// Items this node has.
    here: HashSet<Arc<str>>,
    /// Items reported on (only kept on one node, where this is the ledger).
    on: HashSet<Arc<str>>,
    /// Changes not yet recorded, in order.
    pending: VecDeque<PresenceChange>,
    /// Users whose last session here ended, to settle once their grace is over.
    graces: VecDeque<(Instant, Arc<str>)>,
    /// This node's presence must be rewritten whole (changes were dropped, or Redis came back).
    resync: bool,
    /// The broker's connected period when this node's presence was last written.
    generation: u64,
    retry_at: Option<Instant>,
}

/// An item's name: `user:ID` or `room:NAME`.
fn item(kind: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{kind}:{name}"))
}

impl Tracker {
    pub(crate) fn new(settings: WebhookSettings, broker: Arc<dyn Broker>, queue: Queue) -> Self {
        let generation = broker.generation();
        Tracker {
            settings,
            broker,
            queue,
            here: HashSet::new(),
            on: HashSet::new(),
            pending: VecDeque::new(),
            graces: VecDeque::new(),
            resync: false,
            generation,
            retry_at: None,
        }
    }

    /// Runs until the gateway stops.
    pub(crate) async fn run(
        mut self,
        mut observed: UnboundedReceiver<Observed>,
        stopping: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let grace_due = self.graces.front().map(|(due, _)| *due);
            let wake = [grace_due, self.retry_at].into_iter().flatten().min();
            tokio::select! {
                _ = stopping.cancelled() => return,
                next = observed.recv() => match next {
                    Some(next) => self.observe(next),
                    None => return,
                },
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {}
                _ = sweep.tick() => self.sweep().await,
            }
            while let Ok(next) = observed.try_recv() {
                self.observe(next);
            }
            self.settle_due_graces();
            self.flush().await;
        }
    }

    fn observe(&mut self, observed: Observed) {
        let (item, here, grace) = match observed {
            Observed::Message(posted) => {
                self.queue.push(Event::message(&posted));
                return;
            }
            Observed::User { user, here } => (item("user", &user), here, true),
            Observed::Room { room, here } => (item("room", &room), here, false),
        };
        if here {
            self.here.insert(Arc::clone(&item));
            self.pending.push_back(PresenceChange::Here(item));
        } else {
            self.here.remove(&item);
            self.pending
                .push_back(PresenceChange::Gone(Arc::clone(&item)));
            if grace && !self.settings.offline_grace.is_zero() {
                let due = Instant::now() + self.settings.offline_grace;
                self.graces.push_back((due, item));
            } else {
                self.pending.push_back(PresenceChange::Settle(item));
            }
        }
        if self.pending.len() > self.settings.queue {
            // The ledger is far behind (Redis away for long): rewrite this node's presence
            // whole when it is back rather than keep every step.
            warn!(
                changes = self.pending.len(),
                "webhook presence changes dropped; presence will be resynced"
            );
            self.pending.clear();
            self.resync = true;
        }
    }

    /// Users whose grace is over are settled (those back here meanwhile are not off).
    fn settle_due_graces(&mut self) {
        let now = Instant::now();
        while let Some((due, _)) = self.graces.front() {
            if *due > now {
                break;
            }
            let (_, item) = self.graces.pop_front().expect("just looked");
            if !self.here.contains(&item) {
                self.pending.push_back(PresenceChange::Settle(item));
            }
        }
    }

    /// Records pending changes (or rewrites the presence whole) and sends what flipped.
    async fn flush(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        let generation = self.broker.generation();
        if generation != self.generation {
            self.resync = true;
        }
        if self.resync {
            let here: Vec<Arc<str>> = self.here.iter().cloned().collect();
            match self.broker.sync_presence(&here).await {
                Cluster::Known(synced) => {
                    debug!(
                        on = synced.on.len(),
                        off = synced.off.len(),
                        "presence resynced"
                    );
                    for item in &synced.on {
                        self.report(item, true);
                    }
                    for item in &synced.off {
                        self.report(item, false);
                    }
                    // The rewrite covered every change so far.
                    self.pending.clear();
                    self.resync = false;
                    self.generation = generation;
                }
                Cluster::Alone => self.resync = false,
                Cluster::Unreachable => {
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        while !self.pending.is_empty() {
            let count = self.pending.len().min(BATCH);
            let changes: Vec<PresenceChange> = self.pending.iter().take(count).cloned().collect();
            let flipped = match self.broker.record_presence(&changes).await {
                Cluster::Known(flipped) => flipped,
                Cluster::Alone => changes
                    .iter()
                    .map(|change| self.record_here(change))
                    .collect(),
                Cluster::Unreachable => {
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            };
            self.pending.drain(..count);
            for (change, flipped) in changes.iter().zip(flipped) {
                match change {
                    PresenceChange::Here(item) if flipped => self.report(item, true),
                    PresenceChange::Settle(item) if flipped => self.report(item, false),
                    _ => {}
                }
            }
        }
    }

    /// One node's own ledger: whether a change flips its item.
    fn record_here(&mut self, change: &PresenceChange) -> bool {
        match change {
            PresenceChange::Here(item) => self.on.insert(Arc::clone(item)),
            PresenceChange::Gone(_) => false,
            PresenceChange::Settle(item) => !self.here.contains(item) && self.on.remove(item),
        }
    }

    /// Reports the items of nodes that died.
    async fn sweep(&mut self) {
        if let Cluster::Known(off) = self.broker.sweep_presence().await {
            for item in &off {
                self.report(item, false);
            }
        }
    }

    /// Queues the event for an item that flipped, if that kind of event is wanted.
    fn report(&self, item: &str, on: bool) {
        let (kind, data) = match item.split_once(':') {
            Some(("user", user)) => (
                if on {
                    Kind::UserOnline
                } else {
                    Kind::UserOffline
                },
                Data::User {
                    user_id: Arc::from(user),
                },
            ),
            Some(("room", room)) => (
                if on {
                    Kind::RoomOccupied
                } else {
                    Kind::RoomEmpty
                },
                Data::Room {
                    room: Arc::from(room),
                },
            ),
            _ => return,
        };
        if self.settings.wants(kind) {
            self.queue.push(Event::new(kind, data));
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
