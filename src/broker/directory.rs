//! What the server API asks of the whole cluster: rooms and their member counts, a room's
//! members, a page of its history, a user's sessions, and idempotency keys.
//!
//! With Redis the broker answers from Redis, which every node writes to; a node on its own has
//! no broker to ask ([`Cluster::Alone`]), and the API answers from the hub.

use std::sync::Arc;

use super::RemoteMember;
use crate::history::{Entry, Position};

/// An answer about every node.
#[derive(Debug)]
pub(crate) enum Cluster<T> {
    /// This node is the whole cluster: ask it.
    Alone,
    Known(T),
    /// The cluster's state is out of reach (Redis is away, or too slow).
    Unreachable,
}

impl<T> Cluster<T> {
    /// The answer with what is known turned into something else.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Cluster<U> {
        match self {
            Cluster::Alone => Cluster::Alone,
            Cluster::Known(value) => Cluster::Known(f(value)),
            Cluster::Unreachable => Cluster::Unreachable,
        }
    }
}

/// A room and its members (sockets) on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomCount {
    pub room: String,
    pub members: usize,
}

/// A page of rooms, and where the next starts (`None` at the end).
pub(crate) type RoomsPage = (Vec<RoomCount>, Option<String>);

/// A room's position and a run of its messages, oldest first.
pub(crate) type HistoryPage = (Position, Vec<Arc<Entry>>);

/// A room's members on every node: `(node, member)`.
pub(crate) type Members = Vec<(Arc<str>, RemoteMember)>;

/// A user's sessions: `(node, sessions there)`.
pub(crate) type UserSessions = Vec<(Arc<str>, usize)>;

/// Who holds an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyClaim {
    /// Nobody did: the caller now holds it and must settle or release it.
    Claimed,
    /// The same request with this key is being served right now.
    InFlight,
    /// The same request with this key was served; its response.
    Done(String),
    /// The key was used for another request (another path or body).
    Reused,
}

impl KeyClaim {
    /// What holding `held` (a key's value: the request's fingerprint, then a space and the
    /// response once answered) means for a request with `fingerprint`.
    pub(crate) fn of(held: &str, fingerprint: &str) -> KeyClaim {
        let (held_fingerprint, response) = match held.split_once(' ') {
            Some((held_fingerprint, response)) => (held_fingerprint, Some(response)),
            None => (held, None),
        };
        match response {
            _ if held_fingerprint != fingerprint => KeyClaim::Reused,
            None => KeyClaim::InFlight,
            Some(response) => KeyClaim::Done(response.to_owned()),
        }
    }
}
