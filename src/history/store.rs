//! The rooms' logs on this node, under one budget.
//!
//! Every entry and read position is also an item in one queue, in the order they were added,
//! so the budget (`HISTORY_MAX_BYTES`) and the age limit (`HISTORY_TTL_SECS`) both take the
//! oldest items of any room first. An item whose entry already went (trimmed to
//! `HISTORY_SIZE`, superseded, its log dropped) stays in the queue, stale, until it reaches the
//! front or the queue is compacted (when stale items outnumber live ones): its bytes are
//! released at once, so the budget counts only what is held.
//!
//! One mutex guards it all. Callers that number or deliver messages hold their room's lock
//! while they call in (so offsets and the order of frames agree); the store never calls out,
//! so the order is always room, then store. Every call is short: a replay copies at most
//! `HISTORY_SIZE` pointers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::log::RoomLog;
use super::{new_epoch, Entry, HistorySettings, Position};

/// The run of `entries` (ascending) that ends at `last` without a hole; whatever precedes a
/// missing offset is left out.
fn contiguous_run(entries: Vec<Entry>, last: u64) -> Vec<Entry> {
    let mut run: Vec<Entry> = Vec::with_capacity(entries.len());
    let mut expected = last;
    for entry in entries.into_iter().rev() {
        if entry.offset > expected {
            continue; // Past the position: not counted yet.
        }
        if entry.offset != expected {
            break;
        }
        expected -= 1;
        run.push(entry);
    }
    run.reverse();
    run
}

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

/// What became of a numbered message offered to a copy.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The room's next message: kept.
    Next,
    /// Already held.
    Duplicate,
    /// The copy is behind it, on another epoch, missing, or holds something else under its
    /// offset: it must be brought level from Redis.
    Behind,
}

/// The outcome of a read position reported by a member.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Higher than before, in this epoch: relay it.
    Raised(Arc<str>),
    /// Not higher than what was recorded: nothing to do.
    Unchanged,
    /// Past the room's last message: a protocol violation.
    Ahead,
    /// The room's position is not known here (history off, or Redis away), or the reporter's
    /// epoch is not the room's: ignored.
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
    /// Entries held.
    entries: usize,
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
                entries: 0,
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

    /// Whether this store numbers messages itself (one node) rather than copying Redis's.
    pub(crate) fn is_authoritative(&self) -> bool {
        self.authoritative
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

    /// A page of the room's history for the server API: its position and at most `limit`
    /// entries after `after`, oldest first; `None` if nothing of the room is held here.
    pub(crate) fn page(
        &self,
        room: &str,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Option<(Position, Vec<Arc<Entry>>)> {
        let inner = self.lock();
        let log = inner.logs.get(room)?;
        let cutoff = self.cutoff_ms(now_ms);
        let entries = log
            .entries
            .iter()
            .filter(|entry| entry.offset > after && entry.sent_at_ms >= cutoff)
            .take(limit)
            .cloned()
            .collect();
        Some((log.position(), entries))
    }

    /// Numbers and keeps a message (authoritative store), starting the room's log if it has
    /// none (a message posted into a room nobody has joined yet).
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
        if !inner.logs.contains_key(room) {
            let generation = inner.generation();
            inner
                .logs
                .insert(Arc::from(room), RoomLog::new(new_epoch(), generation, 0));
        }
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

    /// Keeps a message numbered elsewhere (a copy) if it is the room's next one, or says why
    /// not.
    pub(crate) fn record(&self, room: &str, epoch: &str, entry: Arc<Entry>) -> Recorded {
        let mut inner = self.lock();
        let Some(log) = inner.logs.get(room) else {
            return Recorded::Behind;
        };
        if *log.epoch != *epoch || entry.offset > log.last + 1 {
            return Recorded::Behind;
        }
        if entry.offset <= log.last {
            // Already here, unless what is held under that offset is another message: Redis
            // rolled back and numbered new messages again (a failover that lost writes).
            return match log.get(entry.offset) {
                Some(held) if !held.same_message(&entry) => Recorded::Behind,
                _ => Recorded::Duplicate,
            };
        }
        inner.push(room, entry, &self.settings);
        Recorded::Next
    }

    /// Takes a fresh view of a room (a copy): its position in Redis and its newest entries
    /// (ascending; only the contiguous run ending at `position.offset` is used, so an entry
    /// that could not be read never leaves a hole). Says what the members here must be told and
    /// given.
    pub(crate) fn reload(
        &self,
        room: &str,
        position: Position,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Reloaded {
        let mut inner = self.lock();
        let cutoff = self.cutoff_ms(now_ms);
        let run = contiguous_run(entries, position.offset);
        let had = inner
            .logs
            .get(room)
            .map(|log| (Arc::clone(&log.epoch), log.last));
        match had {
            Some((epoch, last)) if epoch == position.epoch && position.offset == last => {
                Reloaded::default()
            }
            Some((epoch, last)) if epoch == position.epoch && position.offset > last => {
                // Behind: deliver what came after, telling of any part that is lost.
                let missed: Vec<Arc<Entry>> = run
                    .into_iter()
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
                    inner.restart(room, &position.epoch, resumes_at - 1, false, now_ms);
                }
                for entry in &missed {
                    inner.push(room, Arc::clone(entry), &self.settings);
                }
                Reloaded { notice, missed }
            }
            had => {
                // New here (nothing to deliver: nobody here had a position), or the room's
                // history was lost (another epoch, or the same one rolled back): the members
                // are told where it now stands, then given what it holds since.
                let run: Vec<Arc<Entry>> = run
                    .into_iter()
                    .skip_while(|entry| entry.sent_at_ms < cutoff)
                    .map(Arc::new)
                    .collect();
                let start = run.first().map_or(position.offset, |e| e.offset - 1);
                inner.restart(room, &position.epoch, start, true, now_ms);
                if let Some(log) = inner.logs.get_mut(room) {
                    // A copy exists only for a room open here.
                    log.attended = true;
                }
                for entry in &run {
                    inner.push(room, Arc::clone(entry), &self.settings);
                }
                if had.is_none() {
                    return Reloaded::default();
                }
                Reloaded {
                    notice: Some(Discontinuity::Reset(Position {
                        epoch: position.epoch,
                        offset: start,
                    })),
                    missed: run,
                }
            }
        }
    }

    /// Records that `user` has seen the room up to `offset` (in `epoch`, if the reporter
    /// said: a position from an earlier epoch is ignored, not judged against this one).
    pub(crate) fn set_seen(
        &self,
        room: &str,
        user: &Arc<str>,
        offset: u64,
        epoch: Option<&str>,
        now_ms: u64,
    ) -> Seen {
        let mut inner = self.lock();
        let Some(log) = inner.logs.get_mut(room) else {
            return Seen::Unknown;
        };
        if epoch.is_some_and(|epoch| epoch != &*log.epoch) {
            return Seen::Unknown;
        }
        if offset > log.last {
            return Seen::Ahead;
        }
        if log.seen.get(user).is_some_and(|&seen| seen >= offset) {
            return Seen::Unchanged;
        }
        let (generation, room_epoch) = (log.generation, Arc::clone(&log.epoch));
        let charge = SEEN_OVERHEAD + user.len();
        if log.seen.insert(Arc::clone(user), offset).is_some() {
            // The earlier position's item is stale from now on.
            log.charged -= charge;
            log.items -= 1;
            inner.bytes -= charge;
            inner.live -= 1;
        }
        let room = inner.key(room);
        inner.add_item(Item {
            room,
            generation,
            at_ms: now_ms,
            charge,
            what: What::Seen(Arc::clone(user), offset),
        });
        inner.enforce(self.settings.max_bytes);
        Seen::Raised(room_epoch)
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
        inner.compact_if_stale();
    }

    /// Bytes charged and entries held, for the metrics.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.bytes, inner.entries)
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
    fn restart(&mut self, room: &str, epoch: &Arc<str>, last: u64, new_life: bool, now_ms: u64) {
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
        let key: Arc<str> = Arc::from(room);
        self.logs.insert(Arc::clone(&key), log);
        // Read positions of the same epoch stay true across a gap: re-added as items.
        for (user, offset) in seen.into_iter().flatten() {
            let charge = SEEN_OVERHEAD + user.len();
            if let Some(log) = self.logs.get_mut(room) {
                log.seen.insert(Arc::clone(&user), offset);
            }
            self.add_item(Item {
                room: Arc::clone(&key),
                generation,
                at_ms: now_ms,
                charge,
                what: What::Seen(user, offset),
            });
        }
    }

    /// The map's own key for `room` (shared by its queue items), or a new one.
    fn key(&self, room: &str) -> Arc<str> {
        self.logs
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(key, _)| Arc::clone(key))
    }

    /// Appends the next entry to the room's log, trims the room to its size and the store to
    /// its budget. An entry that is not the next one is refused (a copy's runs are checked
    /// before they get here; this keeps a log contiguous whatever happens).
    fn push(&mut self, room: &str, entry: Arc<Entry>, settings: &HistorySettings) {
        let key = self.key(room);
        let Some(log) = self.logs.get_mut(room) else {
            return;
        };
        if entry.offset != log.last + 1 {
            debug_assert!(false, "entry {} after {}", entry.offset, log.last);
            return;
        }
        let charge = entry.charge();
        let item = Item {
            room: key,
            generation: log.generation,
            at_ms: entry.sent_at_ms,
            charge,
            what: What::Message(entry.offset),
        };
        log.last = entry.offset;
        log.entries.push_back(entry);
        self.entries += 1;
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
            self.entries -= 1;
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
        self.compact_if_stale();
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
                self.entries -= 1;
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
            self.entries -= log.entries.len();
            self.compact_if_stale();
        }
    }

    /// Rebuilds the queue without its stale items once they outnumber the live ones (and a
    /// slack), so the queue stays within a small multiple of what is held.
    fn compact_if_stale(&mut self) {
        if self.queue.len() > 2 * self.live + COMPACT_SLACK {
            let queue = std::mem::take(&mut self.queue);
            self.queue = queue
                .into_iter()
                .filter(|item| self.is_live(item))
                .collect();
        }
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
        let set = |offset, epoch| store.set_seen("r", &ann, offset, epoch, 0);
        assert_eq!(set(0, None), Seen::Unknown);
        store.join("r", &Request::default(), 0);
        say(&store, "r", "x", 1);
        say(&store, "r", "x", 1);
        let epoch = store.position("r").unwrap().epoch;
        assert_eq!(set(3, None), Seen::Ahead);
        assert_eq!(set(3, Some("an earlier epoch")), Seen::Unknown);
        assert_eq!(set(1, None), Seen::Raised(Arc::clone(&epoch)));
        assert_eq!(set(1, None), Seen::Unchanged);
        assert_eq!(set(0, None), Seen::Unchanged);
        assert_eq!(set(2, Some(&epoch)), Seen::Raised(Arc::clone(&epoch)));
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
        let record = |epoch, entry| store.record("r", epoch, Arc::new(entry));
        assert_eq!(record("e1", entry(4)), Recorded::Next);
        assert_eq!(record("e1", entry(4)), Recorded::Duplicate);
        let other = Entry {
            body: "another message under offset 4".into(),
            ..entry(4)
        };
        assert_eq!(record("e1", other), Recorded::Behind, "rolled back");
        assert_eq!(record("e1", entry(6)), Recorded::Behind, "out of order");
        assert_eq!(record("e2", entry(5)), Recorded::Behind, "another epoch");
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
        assert_eq!(
            reset.notice,
            Some(Discontinuity::Reset(Position {
                epoch: Arc::from("e2"),
                offset: 0
            })),
            "told where the room now stands"
        );
        assert_eq!(
            offsets(&reset.missed),
            [1],
            "then given the new epoch's messages"
        );
        // Rolled back within one epoch (a failover lost acknowledged writes): a reset too.
        let e2 = |offset| Position {
            epoch: Arc::from("e2"),
            offset,
        };
        store.reload("r", e2(3), vec![entry(2), entry(3)], 5);
        let rolled = store.reload("r", e2(2), vec![entry(2)], 5);
        assert!(matches!(rolled.notice, Some(Discontinuity::Reset(_))));
        // An entry that could not be read leaves no hole: only the run after it is used.
        let holed = store.reload("r", e2(9), vec![entry(5), entry(7), entry(8), entry(9)], 5);
        assert_eq!(holed.notice, Some(Discontinuity::Gap(e2(6))));
        assert_eq!(offsets(&holed.missed), [7, 8, 9]);
        let replay = store.join("r", &since(&e2(6), 6), 5);
        assert_eq!(replay.recovered, Some(true));
        assert_eq!(offsets(&replay.entries), [7, 8, 9]);
        assert_eq!(store.join("r", &since(&e2(5), 5), 5).recovered, Some(false));
        store.closed("r");
        assert_eq!(store.rooms(), 0, "a copy goes with the room's last member");
    }
}
