//! One room's log: its epoch, its last offset, its recent messages in order, and how far each
//! of its users has read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Entry, Position};

pub(super) struct RoomLog {
    pub epoch: Arc<str>,
    /// Told apart from the room's earlier lives in the eviction queue.
    pub generation: u64,
    /// The last message's offset; 0 before the first.
    pub last: u64,
    /// Contiguous and ending at `last` (or empty): offsets `last - len + 1 ..= last`.
    pub entries: VecDeque<Arc<Entry>>,
    /// Each user's highest offset seen, within this epoch.
    pub seen: HashMap<Arc<str>, u64>,
    /// Whether the room has members on this node. An authoritative log without them lives
    /// only as long as its entries.
    pub attended: bool,
    /// What the entries and read positions count against `HISTORY_MAX_BYTES`, and how many
    /// there are: released at once when the log is dropped.
    pub charged: usize,
    pub items: usize,
}

impl RoomLog {
    pub(super) fn new(epoch: Arc<str>, generation: u64, last: u64) -> RoomLog {
        RoomLog {
            epoch,
            generation,
            last,
            entries: VecDeque::new(),
            seen: HashMap::new(),
            attended: false,
            charged: 0,
            items: 0,
        }
    }

    pub(super) fn position(&self) -> Position {
        Position {
            epoch: Arc::clone(&self.epoch),
            offset: self.last,
        }
    }

    /// The oldest offset held, if any.
    pub(super) fn first(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.offset)
    }

    /// Whether the entry at `offset` is held.
    pub(super) fn holds(&self, offset: u64) -> bool {
        self.first()
            .is_some_and(|first| first <= offset && offset <= self.last)
    }

    /// The held entries after `after`, at most `max` of them (the newest), leaving out those
    /// at the front sent before `cutoff_ms` (expired). Only the front: nodes' clocks differ a
    /// little, and a replay must never have a hole in the middle.
    pub(super) fn after(&self, after: u64, max: usize, cutoff_ms: u64) -> Vec<Arc<Entry>> {
        let wanted = self.last.saturating_sub(after).min(max as u64) as usize;
        let skip = self.entries.len().saturating_sub(wanted);
        self.entries
            .iter()
            .skip(skip)
            .skip_while(|entry| entry.offset <= after || entry.sent_at_ms < cutoff_ms)
            .cloned()
            .collect()
    }

    /// The held entry at `offset`.
    pub(super) fn get(&self, offset: u64) -> Option<&Arc<Entry>> {
        let first = self.first()?;
        let index = offset.checked_sub(first)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Whether everything after `offset` is still held (and not expired): a client that saw
    /// up to `offset` can be given exactly what it missed.
    pub(super) fn reaches_back_to(&self, offset: u64, cutoff_ms: u64) -> bool {
        if offset > self.last {
            return false;
        }
        if offset == self.last {
            return true;
        }
        self.get(offset + 1)
            .is_some_and(|entry| entry.sent_at_ms >= cutoff_ms)
    }
}
