//! How rooms reach beyond this node.
//!
//! The hub holds a room's members on this node and fans out to them; a
//! [`Broker`] carries the room's events to the other nodes. Two implementations:
//!
//! - [`LocalBroker`]: the default (no `REDIS_URL`). One node, nothing to carry.
//! - [`RedisBroker`]: Redis Pub/Sub, one channel per room, plus a per-room presence hash with
//!   per-node entries so that `totalUsers` counts members on every node.
//!
//! The hub calls [`Broker::publish`] while it holds the room's lock, so the order of a room's
//! events on the wire is the order the hub applied them. `publish` never waits: a broker that
//! cannot keep up drops and counts, and the hub's local members are served either way.

mod control;
pub(crate) mod directory;
mod envelope;
mod keys;
pub(crate) mod ledger;
mod memory;
mod redis;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

pub(crate) use directory::{Cluster, KeyClaim, RoomCount};
pub(crate) use envelope::{Envelope, RemoteEvent, RemoteMember};
pub(crate) use keys::Keys;
pub(crate) use memory::LocalBroker;
pub(crate) use redis::{RedisBroker, RedisSettings};

use crate::auth::revoked::Revoked;
use crate::bans::Offender;
use crate::history::{Entry, Position};
use crate::ids::SessionId;
use crate::protocol::{CloseCode, DirectMessage};

/// Something that happened in a room on this node, for the other nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RoomEvent<'a> {
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
    /// A member is typing (relayed, never stored).
    Typing {
        session: SessionId,
        username: &'a Arc<str>,
        user_id: &'a Arc<str>,
    },
    /// A user's read position rose (stored with Redis, then relayed).
    Seen {
        username: &'a Arc<str>,
        user_id: &'a Arc<str>,
        epoch: &'a Arc<str>,
        offset: u64,
    },
}

impl RoomEvent<'_> {
    /// The event as it travels (cheap: the names are shared, only a message body is copied).
    pub(crate) fn to_remote(self) -> RemoteEvent {
        match self {
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
                position: None,
            },
            RoomEvent::Typing {
                session,
                username,
                user_id,
            } => RemoteEvent::Typing(RemoteMember {
                session,
                username: Arc::clone(username),
                user_id: Arc::clone(user_id),
            }),
            RoomEvent::Seen {
                username,
                user_id,
                epoch,
                offset,
            } => RemoteEvent::Seen {
                username: Arc::clone(username),
                user_id: Arc::clone(user_id),
                epoch: Arc::clone(epoch),
                offset,
            },
        }
    }
}

/// Who numbers a room's chat messages (with history on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageOrder {
    /// This node, on its own.
    Here,
    /// The broker: every message, this node's own included, comes back through
    /// [`LocalRooms::deliver_ordered`] with its offset, in order.
    Broker,
    /// Nobody, for now (Redis is away): messages are delivered on this node only, without
    /// offsets, and not kept.
    Unordered,
}

/// What became of a numbered message handed to the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ordered {
    /// It was the room's next message: delivered and kept.
    Delivered,
    /// Already delivered.
    Duplicate,
    /// The room is behind it (messages in between are missing, or its epoch changed): the
    /// broker must fetch a fresh view first.
    Behind,
    /// This node has no copy of the room's history (the room is not here, or not loaded).
    Absent,
}

pub(crate) type BoxFuture<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whether cross-node delivery works: what the hub tells its members when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Other nodes are out of reach: their members' events are being missed.
    Interrupted,
    /// Other nodes are reachable again.
    Restored,
}

/// What a broker may ask of this node's rooms: the hub implements it, and the broker knows the
/// hub only through it. Every method is quick and never waits for a socket.
pub(crate) trait LocalRooms: Send + Sync + 'static {
    /// Applies an event another node published in `room` (ignored if this node lacks the room);
    /// `seq` is the publisher's sequence number, for dropping duplicates.
    fn apply_remote(&self, room: &str, node: &Arc<str>, seq: u64, event: RemoteEvent);

    /// Replaces what this node knows of `room`'s members on other nodes with a fresh snapshot
    /// (keeping the room even if this node has no members of its own in it yet).
    fn replace_remote(&self, room: &str, members: Vec<(Arc<str>, RemoteMember)>);

    /// Forgets every member of a node that stopped.
    fn forget_node(&self, node: &str);

    /// The other nodes this node knows members of.
    fn remote_nodes(&self) -> HashSet<Arc<str>>;

    /// The rooms this node has (members in them, or a join on its way).
    fn room_names(&self) -> Vec<String>;

    fn has_room(&self, room: &str) -> bool;

    /// Calls `f` with the room's members on this node (none if it lacks the room), under the
    /// room's lock, so that what `f` hands on is ordered with the room's own events.
    fn with_local_members(&self, room: &str, f: &mut dyn FnMut(Vec<RemoteMember>));

    /// Drops rooms opened for a join that never came, once older than `grace`.
    fn sweep_unjoined(&self, grace: Duration);

    /// Tells every member on this node that cross-node delivery stopped or is back.
    fn delivery_changed(&self, delivery: Delivery);

    /// Delivers a numbered chat message if it is the room's next one.
    fn deliver_ordered(&self, room: &str, epoch: &Arc<str>, entry: Entry) -> Ordered;

    /// Delivers a chat message of this node's members to the others here, without an offset:
    /// one the broker took for numbering but could not write.
    fn deliver_here(&self, room: &str, from: SessionId, username: &str, user_id: &str, body: &str);

    /// Where this node's copy of the room's history stands, if it has one.
    fn history_position(&self, room: &str) -> Option<Position>;

    /// Takes a fresh view of the room's history (its position and newest entries, ascending):
    /// delivers what this node's members missed, or tells them what is lost.
    fn reload_history(&self, room: &str, position: Position, entries: Vec<Entry>);
}

/// A decision every node must enforce (a ban, its end, a kick, a revocation), or a direct
/// message every node must hand to the recipient's sessions there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `offender` is banned until `until_ms` (Unix milliseconds).
    Ban { offender: Offender, until_ms: u64 },
    /// `offender`'s ban is lifted.
    Unban { offender: Offender },
    /// Every session of `user` is closed with `code`.
    Kick { user: Arc<str>, code: CloseCode },
    /// `revoked` is refused until `until_ms` (Unix milliseconds); its sessions close.
    Revoke { revoked: Revoked, until_ms: u64 },
    /// A direct message for every v2 session of its recipient (protocol v2). Like a kick, it
    /// matters only now: never kept for later.
    Direct(DirectMessage),
}

/// What a broker may ask of this node's enforcement of bans, kicks and revocations (and of its
/// delivery of direct messages): implemented by the moderation, known to the broker only
/// through this.
pub(crate) trait LocalControl: Send + Sync + 'static {
    /// Enforces a notice from another node (or one found in Redis after a reconnect).
    fn on_notice(&self, notice: Notice);

    /// The bans this node knows of, with their ends (Unix milliseconds), to write back to a
    /// Redis that was away when some of them were decided.
    fn bans_in_force(&self) -> Vec<(Offender, u64)>;

    /// The revocations this node knows of, with their ends (Unix milliseconds), to write
    /// back like the bans.
    fn revocations_in_force(&self) -> Vec<(Revoked, u64)>;

    /// The users with sessions on this node, with how many each has.
    fn local_sessions(&self) -> Vec<(Arc<str>, usize)>;
}

/// The seam between the hub and whatever carries rooms between nodes.
pub(crate) trait Broker: Send + Sync + 'static {
    /// Starts the broker's tasks on `tasks`, serving `rooms` and `control`; they run until
    /// [`stop`](Self::stop).
    fn start(
        self: Arc<Self>,
        rooms: Arc<dyn LocalRooms>,
        control: Arc<dyn LocalControl>,
        tasks: &TaskTracker,
    );

    /// Tells the other nodes of a ban, an unban or a kick decided here (already enforced
    /// here). Never blocks; bans are also kept in Redis until they end, so a node that
    /// starts or reconnects later learns them.
    fn announce(&self, notice: Notice);

    /// Called before the first local member joins `room`: resolves once this node knows the
    /// room's members on other nodes and receives its events, or once that is known to be
    /// impossible for now (the broker is down, or took longer than its timeout).
    fn open_room<'a>(&'a self, room: &'a str) -> BoxFuture<'a>;

    /// The hub created `room` for a join without [`open_room`](Self::open_room) first (it was
    /// skipped, or the room went away in between): open it now, without waiting.
    fn room_created(&self, _room: &str) {}

    /// Hands a local event to the other nodes. Called under the room's lock: never blocks.
    /// False if it will not reach them (Redis away, the queue full).
    fn publish(&self, room: &str, event: RoomEvent<'_>) -> bool;

    /// Who numbers chat messages right now.
    fn message_order(&self) -> MessageOrder;

    /// `user`'s read position in `room` as every node knows it.
    fn last_seen<'a>(&'a self, _room: &'a str, _user: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(std::future::ready(None))
    }

    /// The room has no local members any more.
    fn room_closed(&self, room: &str);

    /// Whether events reach the other nodes right now (always true for one node).
    fn is_connected(&self) -> bool;

    /// Whether this node may take clients as far as the broker goes: connected, and the bans
    /// and revocations in force learned since it connected (a node that has just started must
    /// not admit a user every other node refuses).
    fn is_ready(&self) -> bool {
        self.is_connected()
    }

    /// Stops after the sessions are gone: the last events are flushed and this node's
    /// presence is withdrawn, so other nodes need not wait for it to expire.
    fn stop(&self) -> BoxFuture<'_>;

    /// Claims a place for one more session of `user` under `max` sessions counted on every
    /// node: false when the user already has that many. One node alone (and a node whose
    /// Redis is away) says yes: the cap on this node holds all the same.
    fn claim_session<'a>(&'a self, _user: &'a Arc<str>, _max: usize) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(true))
    }

    /// A session of `user` whose place was claimed ended.
    fn release_session(&self, _user: &Arc<str>) {}

    /// Counts a chat message of `user` towards the rate all nodes share. Never blocks.
    fn count_message(&self, _user: &Arc<str>) {}

    /// Whether `user` is over the message rate counted on every node.
    fn over_rate(&self, _user: &Arc<str>) -> bool {
        false
    }

    /// Rooms with members on any node, a page at a time from `cursor` (`None` first; an
    /// unknown cursor gives an empty last page).
    fn rooms_page<'a>(
        &'a self,
        _cursor: Option<&'a str>,
        _limit: usize,
    ) -> BoxFuture<'a, Cluster<directory::RoomsPage>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// The room's members on every node.
    fn room_members<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Cluster<directory::Members>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// The room's position and at most `limit` messages after `after`.
    fn history_page<'a>(
        &'a self,
        _room: &'a str,
        _after: u64,
        _limit: usize,
    ) -> BoxFuture<'a, Cluster<Option<directory::HistoryPage>>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// The user's sessions on every node.
    fn user_sessions<'a>(
        &'a self,
        _user: &'a str,
    ) -> BoxFuture<'a, Cluster<directory::UserSessions>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// Claims an idempotency key on every node for the request `fingerprint` names, for
    /// `lease` (a request that never settles frees its key then).
    fn claim_key<'a>(
        &'a self,
        _key: &'a str,
        _fingerprint: &'a str,
        _lease: Duration,
    ) -> BoxFuture<'a, Cluster<KeyClaim>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// Records changes of this node's presence in order (see [`ledger`]), each under its
    /// stamp, a departure holding its item `grace` before any node may report it off; per
    /// change, what became of it.
    fn record_presence<'a>(
        &'a self,
        _changes: &'a [(ledger::Stamp, ledger::PresenceChange)],
        _grace: Duration,
    ) -> BoxFuture<'a, Cluster<Vec<ledger::Recorded>>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// Rewrites this node's presence as exactly `here`, under `stamp`.
    fn sync_presence<'a>(
        &'a self,
        _here: &'a [Arc<str>],
        _stamp: ledger::Stamp,
    ) -> BoxFuture<'a, Cluster<ledger::Synced>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// A node that died with presence left to report, if any.
    fn find_dead_presence(&self) -> BoxFuture<'_, Cluster<Option<ledger::DeadNode>>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// Takes over a dead node's presence, under `stamp`: the items this node reports off.
    fn sweep_presence<'a>(
        &'a self,
        _dead: &'a ledger::DeadNode,
        _stamp: ledger::Stamp,
    ) -> BoxFuture<'a, Cluster<Vec<String>>> {
        Box::pin(std::future::ready(Cluster::Alone))
    }

    /// Changes whenever this node's presence in the shared state may have been lost or
    /// changed behind its back (a reconnect, its key expired).
    fn presence_epoch(&self) -> u64 {
        0
    }

    /// Settles a claimed key with what it now holds (the request's fingerprint, a space, the
    /// response) for `window`, or gives it up (`None`).
    fn settle_key<'a>(
        &'a self,
        _key: &'a str,
        _held: Option<&'a str>,
        _window: Duration,
    ) -> BoxFuture<'a> {
        Box::pin(std::future::ready(()))
    }
}

/// A session's claimed place under the per-user cap of the cluster; dropping it gives it back.
pub(crate) struct SessionClaim {
    broker: Arc<dyn Broker>,
    user: Arc<str>,
}

impl SessionClaim {
    /// Claims a place for a session of `user` (see [`Broker::claim_session`]).
    pub(crate) async fn claim(
        broker: &Arc<dyn Broker>,
        user: &Arc<str>,
        max: usize,
    ) -> Option<SessionClaim> {
        broker.claim_session(user, max).await.then(|| SessionClaim {
            broker: Arc::clone(broker),
            user: Arc::clone(user),
        })
    }
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        self.broker.release_session(&self.user);
    }
}
