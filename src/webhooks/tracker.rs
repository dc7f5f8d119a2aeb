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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::delivery::Queue;
use super::event::{Data, Event};
use super::settings::{Kind, WebhookSettings};
use crate::broker::ledger::{DeadNode, PresenceChange, Recorded, Stamp};
use crate::broker::{Broker, Cluster};
use crate::observer::Observed;

/// Changes sent to the ledger per round trip at most.
const BATCH: usize = 512;

/// How long to wait before asking an unreachable ledger again.
const RETRY: Duration = Duration::from_secs(1);

/// How often dead nodes' presence is looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// Dead nodes swept per round at most.
const SWEPT_PER_ROUND: usize = 16;

pub(crate) struct Tracker {
    settings: WebhookSettings,
    broker: Arc<dyn Broker>,
    queue: Queue,
    /// Items this node has.
    here: HashSet<Arc<str>>,
    /// Items reported on (only kept on one node, where this is the ledger).
    on: HashSet<Arc<str>>,
    /// Items this node let go of whose settling is not recorded yet, with when their latest
    /// departure's grace ends.
    unsettled: HashMap<Arc<str>, Instant>,
    /// Changes not yet recorded, in order, each with its stamp.
    pending: VecDeque<(Stamp, PresenceChange)>,
    /// How many of the first pending changes were sent in an ask whose answer was lost: they
    /// may have flipped items, which only asking again under their stamps tells.
    in_doubt: usize,
    /// The last stamp given (to a change, a rewrite or a sweep).
    stamp: Stamp,
    /// A rewrite whose answer was lost, kept to be asked again as it was: its stamp and the
    /// items it said this node has.
    sync_in_doubt: Option<(Stamp, Vec<Arc<str>>)>,
    /// A sweep whose answer was lost, kept to be asked again as it was: its stamp and the dead
    /// node's items as it found them.
    sweep_in_doubt: Option<(Stamp, DeadNode)>,
    /// When to settle an item, soonest first: at the end of a departure's grace (the latest
    /// departure's counts, see `unsettled`), or later when another node's grace holds it.
    due: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// This node's presence must be rewritten whole (changes were dropped, or the broker
    /// reconnected or found this node's key expired).
    resync: bool,
    /// The broker's presence epoch when this node's presence was last written.
    epoch: u64,
    retry_at: Option<Instant>,
}

/// An item's name: `user:ID` or `room:NAME`.
fn item(kind: &str, name: &str) -> Arc<str> {
    Arc::from(format!("{kind}:{name}"))
}

impl Tracker {
    pub(crate) fn new(settings: WebhookSettings, broker: Arc<dyn Broker>, queue: Queue) -> Self {
        let epoch = broker.presence_epoch();
        Tracker {
            settings,
            broker,
            queue,
            here: HashSet::new(),
            on: HashSet::new(),
            unsettled: HashMap::new(),
            pending: VecDeque::new(),
            in_doubt: 0,
            stamp: 0,
            sync_in_doubt: None,
            sweep_in_doubt: None,
            due: BinaryHeap::new(),
            resync: false,
            epoch,
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
            let next_due = self.due.peek().map(|Reverse((due, _))| *due);
            let wake = [next_due, self.retry_at].into_iter().flatten().min();
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
            self.settle_due();
            self.flush().await;
        }
    }

    fn observe(&mut self, observed: Observed) {
        let (item, here, graced) = match observed {
            Observed::User { user, here } => (item("user", &user), here, true),
            Observed::Room { room, here } => (item("room", &room), here, false),
        };
        if here {
            // Back within the grace: nothing of the departure is left to settle.
            self.unsettled.remove(&item);
            self.here.insert(Arc::clone(&item));
            self.push_change(PresenceChange::Here(item));
        } else {
            self.here.remove(&item);
            self.push_change(PresenceChange::Gone(Arc::clone(&item)));
            let grace = if graced {
                self.settings.offline_grace
            } else {
                Duration::ZERO
            };
            let due = Instant::now() + grace;
            self.unsettled.insert(Arc::clone(&item), due);
            if grace.is_zero() {
                self.push_change(PresenceChange::Settle(item));
            } else {
                self.due.push(Reverse((due, item)));
            }
        }
        if self.pending.len() - self.in_doubt > self.settings.queue {
            // The ledger is far behind (Redis away for long): rewrite this node's presence
            // whole when it is back rather than keep every step (but those in doubt, which
            // are asked again first).
            warn!(
                changes = self.pending.len(),
                "webhook presence changes dropped; presence will be resynced"
            );
            self.pending.truncate(self.in_doubt);
            self.resync = true;
        }
    }

    /// Items whose settling is due are settled, unless back here, or left again since (the
    /// latest departure's grace counts).
    fn settle_due(&mut self) {
        let now = Instant::now();
        while self.due.peek().is_some_and(|Reverse((due, _))| *due <= now) {
            let Reverse((due, item)) = self.due.pop().expect("just looked");
            let latest = self.unsettled.get(&item).copied();
            if !self.here.contains(&item) && latest.is_some_and(|latest| latest <= due) {
                self.push_change(PresenceChange::Settle(item));
            }
        }
    }

    /// Records pending changes (or rewrites the presence whole) and sends what flipped.
    async fn flush(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        let epoch = self.broker.presence_epoch();
        if epoch != self.epoch {
            self.resync = true;
        }
        while self.resync {
            // Changes whose answer was lost are asked again first: what they flipped is theirs
            // to report, and the rewrite would find it flipped already.
            if self.in_doubt > 0 && !self.record(self.in_doubt).await {
                return;
            }
            // So is a rewrite, as it was (the items here then); a fresh one follows it.
            let (stamp, here, replayed) = match self.sync_in_doubt.take() {
                Some((stamp, here)) => (stamp, here, true),
                None => (
                    self.next_stamp(),
                    self.here.iter().cloned().collect(),
                    false,
                ),
            };
            match self.broker.sync_presence(&here, stamp).await {
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
                    if replayed {
                        continue;
                    }
                    // The rewrite covers every change so far but the settling of what this
                    // node let go of: that is asked again.
                    self.pending.clear();
                    let now = Instant::now();
                    let settle: Vec<Arc<str>> = self
                        .unsettled
                        .iter()
                        .filter(|(item, due)| **due <= now && !self.here.contains(*item))
                        .map(|(item, _)| Arc::clone(item))
                        .collect();
                    for item in settle {
                        self.push_change(PresenceChange::Settle(item));
                    }
                    self.resync = false;
                    self.epoch = epoch;
                }
                Cluster::Alone => self.resync = false,
                Cluster::Unreachable => {
                    self.sync_in_doubt = Some((stamp, here));
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
        while !self.pending.is_empty() {
            if !self.record(self.pending.len().min(BATCH)).await {
                return;
            }
        }
    }

    /// Records the first `count` pending changes and sends what flipped; false if the ledger
    /// could not be asked (they stay pending, in doubt, to be asked again after [`RETRY`]).
    async fn record(&mut self, count: usize) -> bool {
        let changes: Vec<(Stamp, PresenceChange)> =
            self.pending.iter().take(count).cloned().collect();
        let grace = self.settings.offline_grace;
        let recorded = match self.broker.record_presence(&changes, grace).await {
            Cluster::Known(recorded) => recorded,
            Cluster::Alone => changes
                .iter()
                .map(|(_, change)| self.record_here(change))
                .collect(),
            Cluster::Unreachable => {
                self.in_doubt = self.in_doubt.max(count);
                self.retry_at = Some(Instant::now() + RETRY);
                return false;
            }
        };
        self.pending.drain(..count);
        self.in_doubt = 0;
        for ((_, change), recorded) in changes.into_iter().zip(recorded) {
            match (change, recorded) {
                (PresenceChange::Here(item), Recorded::Flipped) => self.report(&item, true),
                (PresenceChange::Settle(item), Recorded::Wait(left)) => {
                    // Another departure's grace (maybe on another node) still runs.
                    self.due.push(Reverse((Instant::now() + left, item)));
                }
                (PresenceChange::Settle(item), recorded) => {
                    self.unsettled.remove(&item);
                    if recorded == Recorded::Flipped {
                        self.report(&item, false);
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Queues a change under a stamp of its own.
    fn push_change(&mut self, change: PresenceChange) {
        let stamp = self.next_stamp();
        self.pending.push_back((stamp, change));
    }

    fn next_stamp(&mut self) -> Stamp {
        self.stamp += 1;
        self.stamp
    }

    /// One node's own ledger: what a change does to its item.
    fn record_here(&mut self, change: &PresenceChange) -> Recorded {
        let flipped = match change {
            PresenceChange::Here(item) => self.on.insert(Arc::clone(item)),
            PresenceChange::Gone(_) => false,
            PresenceChange::Settle(item) => !self.here.contains(item) && self.on.remove(item),
        };
        if flipped {
            Recorded::Flipped
        } else {
            Recorded::Kept
        }
    }

    /// Reports the items of nodes that died, one node per ask (a few per round: a node
    /// whose forgetting failed is found again, with nothing left to report, until the next).
    async fn sweep(&mut self) {
        let mut swept = HashSet::new();
        for _ in 0..SWEPT_PER_ROUND {
            let (stamp, dead) = match self.sweep_in_doubt.take() {
                Some(in_doubt) => in_doubt,
                None => match self.broker.find_dead_presence().await {
                    Cluster::Known(Some(dead)) if !swept.contains(&dead.node) => {
                        (self.next_stamp(), dead)
                    }
                    _ => return,
                },
            };
            match self.broker.sweep_presence(&dead, stamp).await {
                Cluster::Known(off) => {
                    for item in &off {
                        self.report(item, false);
                    }
                    swept.insert(dead.node);
                }
                Cluster::Alone => return,
                // Asked again as it was: what it turned off is still this node's to report.
                Cluster::Unreachable => {
                    self.sweep_in_doubt = Some((stamp, dead));
                    return;
                }
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
