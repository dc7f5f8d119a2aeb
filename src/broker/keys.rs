//! Redis names, all under `REDIS_PREFIX` (default `palisade:`) so that several deployments
//! (or other applications) can share one Redis.
//!
//! | name | type | holds | expires |
//! |---|---|---|---|
//! | `{prefix}room:{room}` | Pub/Sub channel (a shard channel on a cluster) | the room's events, one [`Envelope`](super::Envelope) per message | — |
//! | `{prefix}members:{room}` | hash | field `{node}:{session}` → `{"username":…,"userId":…}` for every member on every node | `REDIS_KEY_TTL_SECS` after the last node with members in the room stopped refreshing it |
//! | `{prefix}node:{node}` | string | `1` while the node is alive | `REDIS_KEY_TTL_SECS` after its last heartbeat |
//! | `{prefix}canary:{node}` | Pub/Sub channel | the node's canaries, which it publishes and must receive back (see `redis::canary`); on a cluster one shard channel per shard, `{prefix}canary:{node}:{tag}` | — |
//! | `{prefix}control` | Pub/Sub channel | bans, unbans and kicks (see `control`) | — |
//! | `{prefix}ban:{offender}` | string | the ban's end, Unix milliseconds; `offender` is `user:ID` or `ip:ADDRESS` | when the ban ends |
//! | `{prefix}sessions:{user}` | hash | field `{node}` → the user's sessions on that node | `REDIS_KEY_TTL_SECS` after the last node with sessions of the user stopped refreshing it |
//! | `{prefix}rate:{user}:{window}` | string | the user's chat messages in that 5-second window (Unix time / 5 s), on every node | 10 s |
//! | `{prefix}position:{room}` | hash | `epoch` (made when missing) and `offset`, the room's last message | 7 × `HISTORY_TTL_SECS` after its last message; before the first, `REDIS_KEY_TTL_SECS` after the last node with members there stopped refreshing it |
//! | `{prefix}history:{room}` | stream | the last `HISTORY_SIZE` message envelopes, entry id `0-{offset}`, field `e` | `HISTORY_TTL_SECS` after its last message |
//! | `{prefix}idempotency:{key}` | string | empty while a server API request with this `Idempotency-Key` is served, then its response | `API_IDEMPOTENCY_WINDOW_SECS` after the first request |
//! | `{prefix}revoked:{kind}:{value}` | string | a revocation's end, Unix milliseconds; `kind` is `jti` or `sub` | when it ends |
//! | `{prefix}held:{item}` | hash | field `{node}` → `1` while the node has the item (`user:ID`: a session of the user; `room:NAME`: a member of the room) | with the item (deleted when no node holds it; a dead node's hold is dropped when another node sweeps it) |
//! | `{prefix}on:{item}` | string | `1` while the cluster has reported the item online or occupied (its webhook event was sent) | when it is reported offline or empty |
//! | `{prefix}flips:{item}` | sorted set | `{asker}:{stamp}:on` / `:off` → the flip's number: the changes that flipped the item lately (the last 64; `asker` is a node, or `{node}/sweep` for its sweeps of dead nodes), so that one asked again after its answer was lost is told it flipped it | 15 minutes after the last flip |
//! | `{prefix}grace:{item}` | string | `1` while a departure's `WEBHOOK_OFFLINE_GRACE_SECS` runs for a user | when the grace ends |
//! | `{prefix}node-held:{node}` | set | the items a node has, so that another node can report them when the node dies | when the node dies (read by the node that reports them, and deleted once it has dropped each) |
//! | `{prefix}nodes` | set | the nodes that report presence | a dead node is removed by the node that reports its items |
//! | `{prefix}seen:{room}` | hash | user id → the highest offset the user has seen | 7 × `HISTORY_TTL_SECS` after the last rise |
//!
//! Room names are validated before they get here (a small charset, bounded length), so they
//! are used unescaped.
//!
//! **On a Redis Cluster** every name of a room carries the room as a hash tag:
//! `{prefix}room:{lobby}` with the braces, `{prefix}members:{lobby}`, and so on. Redis Cluster
//! hashes only the part between braces, so all of a room's keys and its shard channel are in
//! one slot, on one shard: the scripts that number a message, store it and publish it stay
//! atomic, and rooms spread over the shards. Every other name holds one key per command (a
//! user's, a node's, a ban's) and lands wherever its own hash puts it. Outside a cluster the
//! names keep no braces, as they always had, so a deployment's keys do not change.

use std::borrow::Cow;

use crate::auth::revoked::Revoked;
use crate::bans::Offender;

/// Builds the names for one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// Rooms are hash tags (on a Redis Cluster).
    tagged: bool,
}

impl Keys {
    /// Names under `prefix`; with `tagged`, a room's names carry it as a hash tag.
    pub(crate) fn new(prefix: &str, tagged: bool) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            tagged,
        }
    }

    /// A room (or a presence item) as it appears in its names.
    fn room<'a>(&self, room: &'a str) -> Cow<'a, str> {
        if self.tagged {
            Cow::Owned(format!("{{{room}}}"))
        } else {
            Cow::Borrowed(room)
        }
    }

    /// The room in a name's tail, if it is one of ours.
    fn room_in<'a>(&self, tail: &'a str) -> Option<&'a str> {
        if self.tagged {
            tail.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(tail)
        }
    }

    pub(crate) fn channel(&self, room: &str) -> String {
        format!("{}room:{}", self.prefix, self.room(room))
    }

    /// The room a channel name belongs to, if it is one of ours.
    pub(crate) fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        self.room_in(
            channel
                .strip_prefix(self.prefix.as_str())?
                .strip_prefix("room:")?,
        )
    }

    /// Where a node sends its canaries to itself; on a cluster, one per shard, each named
    /// into the shard's slots by a hash tag the node picks (`{prefix}canary:{node}:{tag}`).
    pub(crate) fn canary(&self, node: &str, tag: Option<&str>) -> String {
        match tag {
            Some(tag) => format!("{}canary:{node}:{{{tag}}}", self.prefix),
            None => format!("{}canary:{node}", self.prefix),
        }
    }

    pub(crate) fn members(&self, room: &str) -> String {
        format!("{}members:{}", self.prefix, self.room(room))
    }

    /// A pattern that matches every room's presence hash.
    pub(crate) fn members_pattern(&self) -> String {
        format!("{}members:*", self.prefix)
    }

    /// The room a presence hash belongs to, if it is one of ours.
    pub(crate) fn room_of_members<'a>(&self, key: &'a str) -> Option<&'a str> {
        self.room_in(
            key.strip_prefix(self.prefix.as_str())?
                .strip_prefix("members:")?,
        )
    }

    /// A server API idempotency key.
    pub(crate) fn idempotency(&self, key: &str) -> String {
        format!("{}idempotency:{key}", self.prefix)
    }

    /// The nodes that report presence.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// An item's presence keys for the webhooks: the nodes that hold it, whether it is
    /// reported on, a departure's grace, and the changes that flipped it lately. On a cluster
    /// the item is their hash tag, so one script settles it.
    pub(crate) fn item(&self, item: &str) -> [String; 4] {
        let item = self.room(item);
        ["held", "on", "grace", "flips"].map(|name| format!("{}{name}:{item}", self.prefix))
    }

    /// The items a node holds.
    pub(crate) fn node_held(&self, node: &str) -> String {
        format!("{}node-held:{node}", self.prefix)
    }

    /// A room's epoch and last offset.
    pub(crate) fn position(&self, room: &str) -> String {
        format!("{}position:{}", self.prefix, self.room(room))
    }

    /// A room's recent messages.
    pub(crate) fn history(&self, room: &str) -> String {
        format!("{}history:{}", self.prefix, self.room(room))
    }

    /// A room's read positions.
    pub(crate) fn seen(&self, room: &str) -> String {
        format!("{}seen:{}", self.prefix, self.room(room))
    }

    /// The channel of bans, unbans and kicks.
    pub(crate) fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// A ban, kept until it ends: `{prefix}ban:user:ID` or `{prefix}ban:ip:ADDRESS`.
    pub(crate) fn ban(&self, offender: &Offender) -> String {
        format!("{}ban:{offender}", self.prefix)
    }

    /// The offender a ban key names, if it is one of ours.
    pub(crate) fn banned(&self, key: &str) -> Option<Offender> {
        Offender::parse(
            key.strip_prefix(self.prefix.as_str())?
                .strip_prefix("ban:")?,
        )
    }

    /// A revocation, kept until it ends: `{prefix}revoked:jti:ID` or `{prefix}revoked:sub:USER`.
    pub(crate) fn revoked(&self, revoked: &Revoked) -> String {
        format!("{}revoked:{revoked}", self.prefix)
    }

    /// The revocation a key names, if it is one of ours.
    pub(crate) fn revoked_of(&self, key: &str) -> Option<Revoked> {
        Revoked::parse(
            key.strip_prefix(self.prefix.as_str())?
                .strip_prefix("revoked:")?,
        )
    }

    /// A pattern that matches every revocation key.
    pub(crate) fn revoked_pattern(&self) -> String {
        format!("{}revoked:*", self.prefix)
    }

    /// A user's sessions on every node.
    pub(crate) fn sessions(&self, user: &str) -> String {
        format!("{}sessions:{user}", self.prefix)
    }

    /// A user's message count for one rate window.
    pub(crate) fn rate(&self, user: &str, window: u64) -> String {
        format!("{}rate:{user}:{window}", self.prefix)
    }

    /// A pattern that matches every ban key.
    pub(crate) fn bans_pattern(&self) -> String {
        format!("{}ban:*", self.prefix)
    }

    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    /// A member's field in the room's presence hash.
    pub(crate) fn member_field(node: &str, session: u64) -> String {
        format!("{node}:{session}")
    }

    /// Splits a presence field into node and session.
    pub(crate) fn parse_member_field(field: &str) -> Option<(&str, u64)> {
        let (node, session) = field.rsplit_once(':')?;
        Some((node, session.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let keys = Keys::new("palisade:", false);
        assert_eq!(keys.channel("lobby"), "palisade:room:lobby");
        assert_eq!(keys.room_of_channel("palisade:room:lobby"), Some("lobby"));
        assert_eq!(keys.room_of_channel("other:room:lobby"), None);
        assert_eq!(keys.members("lobby"), "palisade:members:lobby");
        assert_eq!(keys.node("n1"), "palisade:node:n1");
        let field = Keys::member_field("n1", 42);
        assert_eq!(Keys::parse_member_field(&field), Some(("n1", 42)));
        assert_eq!(Keys::parse_member_field("n1:x"), None);
    }

    #[test]
    fn on_a_cluster_a_rooms_names_share_its_tag() {
        let keys = Keys::new("palisade:", true);
        assert_eq!(keys.channel("lobby"), "palisade:room:{lobby}");
        assert_eq!(keys.room_of_channel("palisade:room:{lobby}"), Some("lobby"));
        assert_eq!(keys.room_of_channel("palisade:room:lobby"), None);
        assert_eq!(keys.history("lobby"), "palisade:history:{lobby}");
        assert_eq!(keys.room_of_members(&keys.members("lobby")), Some("lobby"));
        assert_eq!(keys.canary("n1", Some("7")), "palisade:canary:n1:{7}");
        assert_eq!(keys.node("n1"), "palisade:node:n1");
    }
}
