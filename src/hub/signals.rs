//! Typing and read positions, relayed at most once per user per room per interval.
//!
//! Typing is relayed on the leading edge (the first `typing` of an interval goes at once, the
//! rest of that interval are dropped: the indicator is already showing). A read position is
//! relayed at once if none was in the interval, else held and the latest one relayed when the
//! interval ends, so the room always learns the final position. Both maps hold only users
//! active in the last interval: [`Signals::due`] prunes the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

type Key = (Arc<str>, Arc<str>);

struct SeenState {
    relayed_at: Instant,
    /// The latest position reported since.
    pending: Option<DueSeen>,
}

#[derive(Default)]
struct Inner {
    typing: HashMap<Key, Instant>,
    seen: HashMap<Key, SeenState>,
}

/// A read position to relay.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DueSeen {
    pub room: Arc<str>,
    pub user_id: Arc<str>,
    pub username: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
}

pub(super) struct Signals {
    typing_interval: Duration,
    seen_interval: Duration,
    inner: Mutex<Inner>,
}

impl Signals {
    pub(super) fn new(typing_interval: Duration, seen_interval: Duration) -> Signals {
        Signals {
            typing_interval,
            seen_interval,
            inner: Mutex::default(),
        }
    }

    /// Whether `user`'s typing in `room` is relayed now.
    pub(super) fn typing(&self, room: &str, user: &Arc<str>) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("never poisoned");
        let key = (Arc::from(room), Arc::clone(user));
        match inner.typing.get(&key) {
            Some(at) if now.duration_since(*at) < self.typing_interval => false,
            _ => {
                inner.typing.insert(key, now);
                true
            }
        }
    }

    /// `seen` if it is to be relayed now; else it is held for [`due`](Self::due).
    pub(super) fn seen(&self, seen: DueSeen) -> Option<DueSeen> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("never poisoned");
        let key = (Arc::clone(&seen.room), Arc::clone(&seen.user_id));
        match inner.seen.get_mut(&key) {
            Some(state) if now.duration_since(state.relayed_at) < self.seen_interval => {
                state.pending = Some(seen);
                None
            }
            _ => {
                inner.seen.insert(
                    key,
                    SeenState {
                        relayed_at: now,
                        pending: None,
                    },
                );
                Some(seen)
            }
        }
    }

    /// The held read positions whose interval has ended (now counted as relayed), forgetting
    /// users quiet for a whole interval.
    pub(super) fn due(&self) -> Vec<DueSeen> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("never poisoned");
        let typing_interval = self.typing_interval;
        inner
            .typing
            .retain(|_, at| now.duration_since(*at) < typing_interval);
        let mut due = Vec::new();
        inner.seen.retain(|_, state| {
            if now.duration_since(state.relayed_at) < self.seen_interval {
                return true;
            }
            match state.pending.take() {
                Some(seen) => {
                    due.push(seen);
                    state.relayed_at = now;
                    true
                }
                None => false,
            }
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn typing_goes_once_per_interval() {
        let signals = Signals::new(Duration::from_secs(2), Duration::from_secs(1));
        let ann: Arc<str> = Arc::from("ann");
        assert!(signals.typing("r", &ann));
        assert!(!signals.typing("r", &ann));
        assert!(signals.typing("other", &ann), "per room");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!signals.typing("r", &ann));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(signals.typing("r", &ann));
    }

    fn at(offset: u64) -> DueSeen {
        let ann: Arc<str> = Arc::from("ann");
        DueSeen {
            room: Arc::from("r"),
            user_id: Arc::clone(&ann),
            username: ann,
            epoch: Arc::from("e"),
            offset,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_read_position_of_an_interval_is_relayed_at_its_end() {
        let signals = Signals::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(signals.seen(at(1)).is_some(), "the first goes at once");
        assert!(signals.seen(at(2)).is_none());
        assert!(signals.seen(at(3)).is_none());
        assert!(signals.due().is_empty(), "the interval has not ended");
        tokio::time::advance(Duration::from_secs(1)).await;
        let due = signals.due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].offset, 3, "only the latest");
        assert!(signals.seen(at(4)).is_none(), "a relay just happened");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(signals.due()[0].offset, 4);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(signals.due().is_empty());
        assert!(
            signals.inner.lock().unwrap().seen.is_empty(),
            "quiet users are forgotten"
        );
        assert!(signals.seen(at(5)).is_some());
    }
}
