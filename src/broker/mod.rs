//! How rooms reach beyond this node.
//!
//! The [`Hub`](crate::hub::Hub) holds a room's members on this node and fans out to them; a
//! [`Broker`] carries the room's events to the other nodes. Two implementations:
//!
//! - [`LocalBroker`]: the default (no `REDIS_URL`). One node, nothing to carry.
//! - [`RedisBroker`]: Redis Pub/Sub, one channel per room, plus a per-room presence hash with
//!   per-node entries so that `totalUsers` counts members on every node.
//!
//! The hub calls [`Broker::publish`] while it holds the room's lock, so the order of a room's
//! events on the wire is the order the hub applied them. `publish` never waits: a broker that
//! cannot keep up drops and counts, and the hub's local members are served either way.

mod envelope;
mod keys;
mod memory;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use envelope::{Envelope, EnvelopeError, RemoteEvent, RemoteMember};
pub use keys::Keys;
pub use memory::LocalBroker;
pub use redis::RedisBroker;

use crate::hub::SessionId;

/// Something that happened in a room on this node, for the other nodes.
#[derive(Clone, Copy, Debug)]
pub enum RoomEvent<'a> {
    Join {
        session: SessionId,
        username: &'a Arc<str>,
        user_id: &'a Arc<str>,
    },
    Leave {
        session: SessionId,
    },
    Message {
        session: SessionId,
        username: &'a Arc<str>,
        user_id: &'a Arc<str>,
        body: &'a str,
    },
}

impl RoomEvent<'_> {
    /// The event as it travels (cheap: the names are shared, only a message body is copied).
    pub fn to_remote(&self) -> RemoteEvent {
        match *self {
            RoomEvent::Join {
                session,
                username,
                user_id,
            } => RemoteEvent::Join(RemoteMember {
                session,
                username: Arc::clone(username),
                user_id: Arc::clone(user_id),
            }),
            RoomEvent::Leave { session } => RemoteEvent::Leave { session },
            RoomEvent::Message {
                session,
                username,
                user_id,
                body,
            } => RemoteEvent::Message {
                session,
                username: Arc::clone(username),
                user_id: Arc::clone(user_id),
                body: body.to_owned(),
            },
        }
    }
}

pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The seam between the hub and whatever carries rooms between nodes.
pub trait Broker: Send + Sync + 'static {
    /// Called before the first local member joins `room`: resolves once this node knows the
    /// room's members on other nodes and receives its events, or once that is known to be
    /// impossible for now (the broker is down, or took longer than its timeout).
    fn open_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a>;

    /// The hub created `room` for a join without [`open_room`](Self::open_room) first (it was
    /// skipped, or the room went away in between): open it now, without waiting.
    fn room_created(&self, _room: &str) {}

    /// Hands a local event to the other nodes. Called under the room's lock: never blocks.
    fn publish(&self, room: &str, event: RoomEvent<'_>);

    /// The room has no local members any more.
    fn room_closed(&self, room: &str);

    /// Whether events reach the other nodes right now (always true for one node).
    fn is_connected(&self) -> bool;

    /// Stops after the sessions are gone: the last events are flushed and this node's
    /// presence is withdrawn, so other nodes need not wait for it to expire.
    fn stop(&self) -> BoxFuture<'_>;
}
