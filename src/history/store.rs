//! The rooms' logs on this node, under one budget.
//!
//! Every entry and read position is also an item in one queue, in the order they were added,
//! so the budget (`HISTORY_MAX_BYTES`) and the age limit (`HISTORY_TTL_SECS`) both take the
//! oldest items of any room first. An item whose entry already went (trimmed to
//! `HISTORY_SIZE`, superseded, its log dropped) stays in the queue, stale, until it reaches the
//! front or the queue is compacted (when stale items outnumber live ones): its bytes are
//! released at once, so the budget counts only what is held.
//!
//! One mutex guards it all. Callers hold their room's lock while they call in (so offsets and
//! the order of frames agree), never the other way round, and every call is short: a replay
//! copies at most `HISTORY_SIZE` pointers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::log::RoomLog;
use super::{new_epoch, Entry, HistorySettings, Position};

/// Stale items tolerated before a compaction, besides as many as there are live ones.
const COMPACT_SLACK: usize = 1024;

/// A read position costs its user id and this.
const SEEN_OVERHEAD: usize = 96;

/// What a join asks of the room's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Request {
    /// Past messages wanted (at most `HISTORY_SIZE`).
    pub history: usize,
    /// Where the client was: it wants exactly what came after.
    pub since: Option<Position>,
}

/// What a joiner is given.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The room's epoch and last offset, if known here.
    pub position: Option<Position>,
    /// With `since`: whether the entries are exactly what the client missed.
    pub recovered: Option<bool>,
    /// Oldest first.
    pub entries: Vec<Arc<Entry>>,
}

/// How a copy of a room (with Redis) took a fresh view of it.
#[derive(Debug, Default)]
pub(crate) struct Reloaded {
    /// Set when members must be told where the room now stands.
    pub notice: Option<Discontinuity>,
    /// Messages the room's members here have not had yet, oldest first.
    pub missed: Vec<Arc<Entry>>,
}

/// Why a room's members cannot be given every message in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Discontinuity {
    /// The room's history was lost (its epoch changed): offsets start again.
    Reset(Position),
    /// Messages up to this position are lost for good; the next is `offset + 1`.
    Gap(Position),
}

/// The outcome of a read position reported by a member.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Higher than before: relay it.
    Raised,
    /// Not higher than what was recorded: nothing to do.
    Unchanged,
    /// Past the room's last message: a protocol violation.
    Ahead,
    /// The room's position is not known here (history off, or Redis away): ignored.
    Unknown,
}

enum What {
    Message(u64),
    Seen(Arc<str>, u64),
}

struct Item {
    room: Arc<str>,
    generation: u64,
    at_ms: u64,
    charge: usize,
    what: What,
}

struct Inner {
    logs: HashMap<Arc<str>, RoomLog>,
    queue: VecDeque<Item>,
    /// Charges of the live items.
    bytes: usize,
    /// Live items: entries and read positions held.
    live: usize,
    next_generation: u64,
}

/// Every room's log on this node.
pub(crate) struct Store {
    settings: HistorySettings,
    /// This node assigns offsets and its logs are the history (one node); otherwise they are
    /// copies of Redis's.
    authoritative: bool,
    inner: Mutex<Inner>,
}

impl Store {
    pub(crate) fn new(settings: HistorySettings, authoritative: bool) -> Store {
        Store {
            settings,
            authoritative,
            inner: Mutex::new(Inner {
                logs: HashMap::new(),
                queue: VecDeque::new(),
                bytes: 0,
                live: 0,
                next_generation: 1,
            }),
        }
    }

    pub(crate) fn settings(&self) -> &HistorySettings {
        &self.settings
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("never poisoned")
    }

    fn cutoff_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.settings.ttl.as_millis() as u64)
    }

    /// A member joins `room` on this node: the room's position and the entries it asked for.
    /// An authoritative store starts the room's log if it has none.
    pub(crate) fn join(&self, room: &str, request: &Request, now_ms: u64) -> Replay {
        if !self.enabled() {
            return Replay::default();
        }
        let mut inner = self.lock();
        if self.authoritative && !inner.logs.contains_key(room) {
            let generation = inner.generation();
            inner
                .logs
                .insert(Arc::from(room), RoomLog::new(new_epoch(), generation, 0));
        }
        let Some(log) = inner.logs.get_mut(room) else {
            // A copy not loaded yet (Redis away): nothing is known, nothing is promised.
            return Replay {
                recovered: request.since.as_ref().map(|_| false),
                ..Replay::default()
            };
        };
        log.attended = true;
        let cutoff = self.cutoff_ms(now_ms);
        let wanted = request.history.min(self.settings.size);
        let recovered = request
            .since
            .as_ref()
            .map(|since| *since.epoch == *log.epoch && log.reaches_back_to(since.offset, cutoff));
        let entries = match (&request.since, recovered) {
            (Some(since), Some(true)) => log.after(since.offset, self.settings.size, cutoff),
            _ if wanted > 0 => log.after(0, wanted, cutoff),
            _ => Vec::new(),
        };
        Replay {
            position: Some(log.position()),
            recovered,
            entries,
        }
    }

    /// The room's last member on this node left. A copy is dropped (it stops receiving); an
    /// authoritative log stays while it holds entries.
    pub(crate) fn closed(&self, room: &str) {
        let mut inner = self.lock();
        let Some(log) = inner.logs.get_mut(room) else {
            return;
        };
        log.attended = false;
        if !self.authoritative || log.entries.is_empty() {
            inner.drop_log(room);
        }
    }

    /// The room's position, if known here.
    pub(crate) fn position(&self, room: &str) -> Option<Position> {
        self.lock().logs.get(room).map(RoomLog::position)
    }

    /// Numbers and keeps a message (authoritative store): None if the room has no log (history
    /// off, or no member ever joined it here).
    pub(crate) fn append(
        &self,
        room: &str,
        username: &Arc<str>,
        user_id: &Arc<str>,
        body: &str,
        now_ms: u64,
    ) -> Option<Arc<Entry>> {
        debug_assert!(self.authoritative, "offsets come from Redis");
        let mut inner = self.lock();
        let log = inner.logs.get(room)?;
        let entry = Arc::new(Entry {
            offset: log.last + 1,
            sent_at_ms: now_ms,
            username: Arc::clone(username),
            user_id: Arc::clone(user_id),
            body: body.into(),
            from: None,
        });
        inner.push(room, Arc::clone(&entry), &self.settings);
        Some(entry)
    }

    /// Keeps a message numbered elsewhere (a copy), if it is the next one in the room's
    /// epoch: false otherwise (a duplicate, out of order, or another epoch).
    pub(crate) fn record(&self, room: &str, epoch: &str, entry: Arc<Entry>) -> bool {
        let mut inner = self.lock();
        match inner.logs.get(room) {
            Some(log) if *log.epoch == *epoch && entry.offset == log.last + 1 => {
                inner.push(room, entry, &self.settings);
                true
            }
            _ => false,
        }
    }

    /// Takes a fresh view of a room (a copy): its position in Redis and its newest entries
    /// (ascending, a contiguous run ending at `position.offset`, possibly empty or shorter than
    /// what was missed). Says what the members here must be told and given.
    pub(crate) fn reload(
        &self,
        room: &str,
        position: Position,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Reloaded {
        let mut inner = self.lock();
        let cutoff = self.cutoff_ms(now_ms);
        let entries = entries
            .into_iter()
            .filter(|entry| entry.offset <= position.offset);
        let (had, epoch_changed) = match inner.logs.get(room) {
            None => (None, false),
            Some(log) => (Some(log.last), *log.epoch != *position.epoch),
        };
        match had {
            Some(last) if !epoch_changed && position.offset <= last => Reloaded::default(),
            Some(last) if !epoch_changed => {
                // Behind: deliver what came after, telling of any part that is lost.
                let missed: Vec<Arc<Entry>> = entries
                    .filter(|entry| entry.offset > last)
                    .map(Arc::new)
                    .collect();
                let resumes_at = missed.first().map_or(position.offset + 1, |e| e.offset);
                let notice = (resumes_at > last + 1).then(|| {
                    Discontinuity::Gap(Position {
                        epoch: Arc::clone(&position.epoch),
                        offset: resumes_at - 1,
                    })
                });
                if notice.is_some() {
                    inner.restart(room, &position.epoch, resumes_at - 1, false);
                }
                for entry in &missed {
                    inner.push(room, Arc::clone(entry), &self.settings);
                }
                Reloaded { notice, missed }
            }
            _ => {
                // New here, or the room's history was lost: a fresh log from the view.
                let mut entries: Vec<Entry> =
                    entries.skip_while(|e| e.sent_at_ms < cutoff).collect();
                if entries.last().is_some_and(|e| e.offset != position.offset) {
                    entries.clear(); // Not a run ending at the position: not usable.
                }
                let start = entries.first().map_or(position.offset, |e| e.offset - 1);
                inner.restart(room, &position.epoch, start, true);
                if let Some(log) = inner.logs.get_mut(room) {
                    // A copy exists only for a room open here.
                    log.attended = true;
                }
                for entry in entries {
                    inner.push(room, Arc::new(entry), &self.settings);
                }
                Reloaded {
                    notice: epoch_changed.then_some(Discontinuity::Reset(position)),
                    missed: Vec::new(),
                }
            }
        }
    }

    /// Records that `user` has seen the room up to `offset`.
    pub(crate) fn set_seen(&self, room: &str, user: &Arc<str>, offset: u64, now_ms: u64) -> Seen {
        let mut inner = self.lock();
        let Some(log) = inner.logs.get_mut(room) else {
            return Seen::Unknown;
        };
        if offset > log.last {
            return Seen::Ahead;
        }
        if log.seen.get(user).is_some_and(|&seen| seen >= offset) {
            return Seen::Unchanged;
        }
        let generation = log.generation;
        let charge = SEEN_OVERHEAD + user.len();
        if log.seen.insert(Arc::clone(user), offset).is_some() {
            // The earlier position's item is stale from now on.
            log.charged -= charge;
            log.items -= 1;
            inner.bytes -= charge;
            inner.live -= 1;
        }
        inner.add_item(Item {
            room: Arc::from(room),
            generation,
            at_ms: now_ms,
            charge,
            what: What::Seen(Arc::clone(user), offset),
        });
        inner.enforce(self.settings.max_bytes);
        Seen::Raised
    }

    /// `user`'s last seen offset in the room, if known here.
    pub(crate) fn seen(&self, room: &str, user: &str) -> Option<u64> {
        self.lock().logs.get(room)?.seen.get(user).copied()
    }

    /// Drops what is older than `HISTORY_TTL_SECS`, and logs left empty without members.
    pub(crate) fn sweep(&self, now_ms: u64) {
        let cutoff = self.cutoff_ms(now_ms);
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(|item| item.at_ms < cutoff) {
            inner.pop_front();
        }
    }

    /// Bytes charged and entries held, for the metrics.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        let entries = inner.logs.values().map(|log| log.entries.len()).sum();
        (inner.bytes, entries)
    }

    /// Rooms with a log here (tests).
    #[cfg(test)]
    fn rooms(&self) -> usize {
        self.lock().logs.len()
    }
}

impl Inner {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Starts the room's log over at `last` (entries and, with `new_life`, read positions
    /// gone), keeping whether it is attended.
    fn restart(&mut self, room: &str, epoch: &Arc<str>, last: u64, new_life: bool) {
        let attended = self.logs.get(room).is_some_and(|log| log.attended);
        let seen = if new_life {
            None
        } else {
            self.logs
                .get_mut(room)
                .map(|log| std::mem::take(&mut log.seen))
        };
        self.drop_log(room);
        let generation = self.generation();
        let mut log = RoomLog::new(Arc::clone(epoch), generation, last);
        log.attended = attended;
        self.logs.insert(Arc::from(room), log);
        // Read positions of the same epoch stay true across a gap: re-added as items.
        for (user, offset) in seen.into_iter().flatten() {
            let charge = SEEN_OVERHEAD + user.len();
            if let Some(log) = self.logs.get_mut(room) {
                log.seen.insert(Arc::clone(&user), offset);
            }
            self.add_item(Item {
                room: Arc::from(room),
                generation,
                at_ms: super::now_ms(),
                charge,
                what: What::Seen(user, offset),
            });
        }
    }

    /// Appends the next entry to the room's log, trims the room to its size and the store to
    /// its budget.
    fn push(&mut self, room: &str, entry: Arc<Entry>, settings: &HistorySettings) {
        let Some(log) = self.logs.get_mut(room) else {
            return;
        };
        debug_assert_eq!(entry.offset, log.last + 1);
        let charge = entry.charge();
        let item = Item {
            room: Arc::from(room),
            generation: log.generation,
            at_ms: entry.sent_at_ms,
            charge,
            what: What::Message(entry.offset),
        };
        log.last = entry.offset;
        log.entries.push_back(entry);
        let trimmed = if log.entries.len() > settings.size {
            log.entries.pop_front()
        } else {
            None
        };
        if let Some(old) = trimmed {
            log.charged -= old.charge();
            log.items -= 1;
            self.bytes -= old.charge();
            self.live -= 1;
        }
        self.add_item(item);
        self.enforce(settings.max_bytes);
    }

    fn add_item(&mut self, item: Item) {
        if let Some(log) = self.logs.get_mut(&item.room) {
            log.charged += item.charge;
            log.items += 1;
        }
        self.bytes += item.charge;
        self.live += 1;
        self.queue.push_back(item);
        if self.queue.len() > 2 * self.live + COMPACT_SLACK {
            self.compact();
        }
    }

    /// Evicts the oldest items until the store is within its budget.
    fn enforce(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes && !self.queue.is_empty() {
            self.pop_front();
        }
    }

    /// Removes the queue's oldest item and, if it is live, what it holds.
    fn pop_front(&mut self) {
        let Some(item) = self.queue.pop_front() else {
            return;
        };
        if !self.is_live(&item) {
            return;
        }
        let Some(log) = self.logs.get_mut(&item.room) else {
            return;
        };
        match item.what {
            What::Message(offset) => {
                // A room's items are queued in its own order: a live one at the front of the
                // queue is the front of its log.
                debug_assert_eq!(log.first(), Some(offset));
                log.entries.pop_front();
            }
            What::Seen(user, _) => {
                log.seen.remove(&user);
            }
        }
        log.charged -= item.charge;
        log.items -= 1;
        self.bytes -= item.charge;
        self.live -= 1;
        if !log.attended && log.entries.is_empty() {
            self.drop_log(&item.room);
        }
    }

    fn is_live(&self, item: &Item) -> bool {
        self.logs.get(&item.room).is_some_and(|log| {
            log.generation == item.generation
                && match &item.what {
                    What::Message(offset) => log.holds(*offset),
                    What::Seen(user, offset) => log.seen.get(user) == Some(offset),
                }
        })
    }

    /// Drops a log; its items in the queue become stale.
    fn drop_log(&mut self, room: &str) {
        if let Some(log) = self.logs.remove(room) {
            self.bytes -= log.charged;
            self.live -= log.items;
        }
    }

    fn compact(&mut self) {
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue
            .into_iter()
            .filter(|item| self.is_live(item))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::ENTRY_OVERHEAD;

    fn settings(size: usize, max_bytes: usize) -> HistorySettings {
        HistorySettings {
            size,
            ttl: Duration::from_secs(60),
            on_join: 0,
            max_bytes,
        }
    }

    fn say(store: &Store, room: &str, body: &str, at: u64) -> u64 {
        let name: Arc<str> = Arc::from("ann");
        store.append(room, &name, &name, body, at).unwrap().offset
    }

    fn offsets(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|entry| entry.offset).collect()
    }

    fn since(position: &Position, offset: u64) -> Request {
        Request {
            history: 0,
            since: Some(Position {
                epoch: Arc::clone(&position.epoch),
                offset,
            }),
        }
    }

    #[test]
    fn offsets_grow_by_one_and_a_room_keeps_its_last_messages() {
        let store = Store::new(settings(3, 1 << 20), true);
        let first = store.join("r", &Request::default(), 0);
        assert_eq!(first.position.as_ref().unwrap().offset, 0);
        for n in 1..=5 {
            assert_eq!(say(&store, "r", "x", 1), n);
        }
        let replay = store.join(
            "r",
            &Request {
                history: 10,
                since: None,
            },
            2,
        );
        assert_eq!(
            offsets(&replay.entries),
            [3, 4, 5],
            "capped at HISTORY_SIZE"
        );
        assert_eq!(replay.position.unwrap().offset, 5);
        let two = store.join(
            "r",
            &Request {
                history: 2,
                since: None,
            },
            2,
        );
        assert_eq!(offsets(&two.entries), [4, 5]);
    }

    #[test]
    fn recovery_gives_exactly_what_was_missed_or_says_it_cannot() {
        let store = Store::new(settings(3, 1 << 20), true);
        let position = store.join("r", &Request::default(), 0).position.unwrap();
        for _ in 0..4 {
            say(&store, "r", "x", 1);
        }
        let cases = [
            (4, Some(true), vec![]),
            (2, Some(true), vec![3, 4]),
            (1, Some(true), vec![2, 3, 4]),
            (0, Some(false), vec![]),
            (5, Some(false), vec![]),
        ];
        for (offset, recovered, expected) in cases {
            let replay = store.join("r", &since(&position, offset), 2);
            assert_eq!(replay.recovered, recovered, "since {offset}");
            assert_eq!(offsets(&replay.entries), expected, "since {offset}");
        }
        let other = Position {
            epoch: Arc::from("another"),
            offset: 4,
        };
        let replay = store.join("r", &since(&other, 4), 2);
        assert_eq!(replay.recovered, Some(false), "another epoch");
    }

    #[test]
    fn expired_messages_are_neither_replayed_nor_recovered() {
        let store = Store::new(settings(10, 1 << 20), true);
        let position = store.join("r", &Request::default(), 0).position.unwrap();
        say(&store, "r", "old", 1_000);
        say(&store, "r", "new", 50_000);
        let later = 61_500;
        let replay = store.join("r", &since(&position, 0), later);
        assert_eq!(replay.recovered, Some(false), "offset 1 expired");
        let replay = store.join("r", &since(&position, 1), later);
        assert_eq!(offsets(&replay.entries), [2]);
        store.sweep(later);
        assert_eq!(store.usage().1, 1);
    }

    #[test]
    fn the_budget_evicts_the_oldest_entries_of_any_room_and_empty_rooms_go() {
        let entry = |body: &str| ENTRY_OVERHEAD + body.len() + 6;
        let store = Store::new(settings(100, entry("x") * 4), true);
        store.join("a", &Request::default(), 0);
        store.join("b", &Request::default(), 0);
        for room in ["a", "b", "a", "b"] {
            say(&store, room, "x", 1);
        }
        store.closed("a");
        assert_eq!(store.usage(), (entry("x") * 4, 4));
        assert_eq!(
            store.rooms(),
            2,
            "a has no members: its log lives on its entries"
        );
        for _ in 0..3 {
            say(&store, "b", "x", 1);
        }
        // Queued: a1 b1 a2 b2 b3 b4 b5; the three oldest went.
        assert_eq!(store.usage().1, 4);
        assert_eq!(
            store.rooms(),
            1,
            "a's entries all evicted, and it has no members"
        );
    }

    #[test]
    fn trimmed_entries_release_their_bytes_and_the_queue_stays_bounded() {
        let store = Store::new(settings(2, 1 << 20), true);
        store.join("r", &Request::default(), 0);
        for _ in 0..100_000 {
            say(&store, "r", "x", 1);
        }
        let inner = store.lock();
        assert_eq!(inner.live, 2);
        assert!(inner.queue.len() <= 2 * 2 + COMPACT_SLACK + 1);
        assert_eq!(inner.bytes, 2 * (ENTRY_OVERHEAD + 1 + 6));
    }

    #[test]
    fn read_positions_only_rise_and_never_pass_the_last_message() {
        let store = Store::new(settings(10, 1 << 20), true);
        let ann: Arc<str> = Arc::from("ann");
        assert_eq!(store.set_seen("r", &ann, 0, 0), Seen::Unknown);
        store.join("r", &Request::default(), 0);
        say(&store, "r", "x", 1);
        say(&store, "r", "x", 1);
        assert_eq!(store.set_seen("r", &ann, 3, 0), Seen::Ahead);
        assert_eq!(store.set_seen("r", &ann, 1, 0), Seen::Raised);
        assert_eq!(store.set_seen("r", &ann, 1, 0), Seen::Unchanged);
        assert_eq!(store.set_seen("r", &ann, 0, 0), Seen::Unchanged);
        assert_eq!(store.set_seen("r", &ann, 2, 0), Seen::Raised);
        assert_eq!(store.seen("r", "ann"), Some(2));
        let inner = store.lock();
        assert_eq!(inner.live, 3, "two entries and one position");
    }

    #[test]
    fn a_copy_follows_redis_and_says_when_it_cannot() {
        let store = Store::new(settings(10, 1 << 20), false);
        let entry = |offset| Entry {
            offset,
            sent_at_ms: 5,
            username: Arc::from("a"),
            user_id: Arc::from("a"),
            body: "x".into(),
            from: None,
        };
        let epoch: Arc<str> = Arc::from("e1");
        let at = |offset| Position {
            epoch: Arc::clone(&epoch),
            offset,
        };
        assert_eq!(
            store.join("r", &Request::default(), 5).position,
            None,
            "not loaded"
        );
        let fresh = store.reload("r", at(3), vec![entry(2), entry(3)], 5);
        assert!(fresh.notice.is_none() && fresh.missed.is_empty());
        assert!(store.record("r", "e1", Arc::new(entry(4))));
        assert!(!store.record("r", "e1", Arc::new(entry(4))), "a duplicate");
        assert!(!store.record("r", "e1", Arc::new(entry(6))), "out of order");
        assert!(
            !store.record("r", "e2", Arc::new(entry(5))),
            "another epoch"
        );
        let behind = store.reload("r", at(6), vec![entry(5), entry(6)], 5);
        assert_eq!(behind.notice, None);
        assert_eq!(offsets(&behind.missed), [5, 6]);
        let gap = store.reload("r", at(9), vec![entry(9)], 5);
        assert_eq!(gap.notice, Some(Discontinuity::Gap(at(8))));
        assert_eq!(offsets(&gap.missed), [9]);
        let replay = store.join("r", &since(&at(9), 6), 5);
        assert_eq!(replay.recovered, Some(false), "7 and 8 are lost");
        let reset = store.reload(
            "r",
            Position {
                epoch: Arc::from("e2"),
                offset: 1,
            },
            vec![entry(1)],
            5,
        );
        assert!(matches!(reset.notice, Some(Discontinuity::Reset(_))));
        store.closed("r");
        assert_eq!(store.rooms(), 0, "a copy goes with the room's last member");
    }
}
