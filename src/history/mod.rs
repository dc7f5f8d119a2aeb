//! Rooms that remember: each room's recent chat messages, numbered, and how far each user has
//! read.
//!
//! Every chat message in a room gets an **offset**, one more than the room's previous message,
//! within the room's **epoch**: an opaque id that changes whenever the room's history could
//! have been lost (the single node restarted, Redis lost its data, the room's history expired
//! entirely). A client that remembers `(epoch, offset)` can ask for exactly what came after;
//! if the epoch differs or the window no longer reaches back that far, it is told so instead
//! of being handed a history with a hole in it.
//!
//! Who assigns offsets depends on the broker:
//!
//! - one node on its own: this node, in its [`Store`], which is then the history itself
//!   (*authoritative*): it outlives the room's members until `HISTORY_TTL_SECS`, and nothing
//!   survives a restart;
//! - nodes sharing Redis: Redis, atomically with storing and publishing the message (see the
//!   broker); each node's [`Store`] is then its copy of the rooms it serves (read from Redis
//!   when a room opens here, extended by every message delivered here, dropped when the room's
//!   last member here leaves), so joins and recoveries are served from memory.
//!
//! Either way the store is bounded: `HISTORY_SIZE` messages per room, none older than
//! `HISTORY_TTL_SECS`, and `HISTORY_MAX_BYTES` in all, evicting the oldest entries of any room
//! first.

mod log;
mod store;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{at_least, invalid, secs, Config, ConfigError};
use crate::ids::SessionId;

pub(crate) use store::{Discontinuity, Recorded, Replay, Request, Seen, Store};

/// The most messages a room may keep (`HISTORY_SIZE`).
const MAX_HISTORY_SIZE: usize = 10_000;
/// The smallest total a store may be given (`HISTORY_MAX_BYTES`): room for a few rooms'
/// worth of messages.
const MIN_MAX_BYTES: usize = 64 * 1024;

/// What rooms remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistorySettings {
    /// Messages kept per room; 0 turns history and offsets off.
    pub size: usize,
    /// How long a message is kept.
    pub ttl: Duration,
    /// Past messages sent to a join that does not ask for any.
    pub on_join: usize,
    /// Bytes of history (and read positions) this node keeps in all.
    pub max_bytes: usize,
}

impl HistorySettings {
    pub(crate) fn from_env(env: &Config) -> Result<HistorySettings, ConfigError> {
        if env.history_size > MAX_HISTORY_SIZE {
            return Err(invalid(
                "HISTORY_SIZE",
                format!("at most {MAX_HISTORY_SIZE}"),
            ));
        }
        if env.history_on_join > env.history_size {
            return Err(invalid(
                "HISTORY_ON_JOIN",
                "at most HISTORY_SIZE (a room cannot send more than it keeps)",
            ));
        }
        Ok(HistorySettings {
            size: env.history_size,
            ttl: secs("HISTORY_TTL_SECS", env.history_ttl_secs)?,
            on_join: env.history_on_join,
            max_bytes: at_least("HISTORY_MAX_BYTES", env.history_max_bytes, MIN_MAX_BYTES)?,
        })
    }

    /// Whether messages get offsets and rooms keep history.
    pub(crate) fn enabled(&self) -> bool {
        self.size > 0
    }
}

/// Where a room's history stands, or where a client last was in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub epoch: Arc<str>,
    /// The last message's offset (0 before the first).
    pub offset: u64,
}

/// One chat message as a room remembers it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub offset: u64,
    /// When it was sent, Unix milliseconds (the sending node's clock).
    pub sent_at_ms: u64,
    pub username: Arc<str>,
    pub user_id: Arc<str>,
    pub body: Box<str>,
    /// The session on this node that sent it, so that it is never echoed back to it.
    pub from: Option<SessionId>,
}

impl Entry {
    /// Whether `other` is the same message (what a replay of it would carry).
    fn same_message(&self, other: &Entry) -> bool {
        self.offset == other.offset
            && self.sent_at_ms == other.sent_at_ms
            && self.user_id == other.user_id
            && self.body == other.body
    }

    /// What the entry counts against `HISTORY_MAX_BYTES`: its text and a fixed overhead for
    /// the entry itself, its place in the eviction queue and the allocator's rounding.
    fn charge(&self) -> usize {
        ENTRY_OVERHEAD + self.body.len() + self.username.len() + self.user_id.len()
    }
}

/// Bytes an entry costs besides its text: the `Arc<Entry>`, its deque slot and its queue item,
/// rounded up. Stale queue items (an entry trimmed or dropped before its item reached the
/// front) are not charged; compaction keeps them fewer than the live ones plus 1024, so the
/// memory held stays within a small fraction above `HISTORY_MAX_BYTES`.
const ENTRY_OVERHEAD: usize = 160;

/// A fresh epoch: random, so that no two lives of a room (or of a node) share one.
pub(crate) fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn settings_at_and_past_their_limits() {
        let settings = HistorySettings::from_env(&env(&[
            ("HISTORY_SIZE", "10000"),
            ("HISTORY_ON_JOIN", "10000"),
            ("HISTORY_TTL_SECS", "1"),
            ("HISTORY_MAX_BYTES", "65536"),
        ]))
        .unwrap();
        assert_eq!(
            settings,
            HistorySettings {
                size: 10_000,
                ttl: Duration::from_secs(1),
                on_join: 10_000,
                max_bytes: 65_536,
            }
        );
        let off = HistorySettings::from_env(&env(&[("HISTORY_SIZE", "0")])).unwrap();
        assert!(!off.enabled());
        for (pairs, var) in [
            (&[("HISTORY_SIZE", "10001")][..], "HISTORY_SIZE"),
            (
                &[("HISTORY_SIZE", "5"), ("HISTORY_ON_JOIN", "6")][..],
                "HISTORY_ON_JOIN",
            ),
            (&[("HISTORY_TTL_SECS", "0")][..], "HISTORY_TTL_SECS"),
            (&[("HISTORY_MAX_BYTES", "65535")][..], "HISTORY_MAX_BYTES"),
        ] {
            assert_names(HistorySettings::from_env(&env(pairs)), var);
        }
    }
}
