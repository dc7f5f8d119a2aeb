//! Frames from the server, encoded once per broadcast into shared [`Bytes`], with Go's
//! HTML-safe escaping so a GarinChat client sees the same bytes it saw before.

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::ErrorCode;

/// The `body` of a `{"type":"notice"}` frame (Palisade's addition; clients that do not know
/// the type ignore it).
pub(crate) mod notice {
    /// Cross-node delivery stopped (Redis is unreachable): members on this node still reach
    /// each other, but messages from and to other nodes are being missed.
    pub(crate) const DELIVERY_INTERRUPTED: &str = "delivery_interrupted";
    /// Cross-node delivery is back. `join` and `userleave` frames follow for whoever arrived
    /// or left on other nodes, and, with history on, the messages this node missed.
    pub(crate) const DELIVERY_RESTORED: &str = "delivery_restored";
    /// Messages up to the given position are lost for good (only to sockets with the room
    /// extensions).
    pub(crate) const HISTORY_GAP: &str = "history_gap";
    /// The room's history was lost and its offsets start again in a new epoch (only to
    /// sockets with the room extensions).
    pub(crate) const HISTORY_RESET: &str = "history_reset";
}

/// How the frames of one member of a room look: which of the protocol's additions it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dialect {
    /// GarinChat's frames, byte for byte (plus `userId`).
    GarinChat,
    /// A GarinChat socket that asked for the room extensions: offsets and positions too.
    Extended,
    /// Protocol v2: the room extensions, and every room frame names its room.
    V2,
}

impl Dialect {
    /// This dialect's index in a per-dialect table (`[_; 3]`, in declaration order).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether it gets offsets, positions, `typing`, `seen` and the history notices.
    pub(crate) const fn is_extended(self) -> bool {
        !matches!(self, Dialect::GarinChat)
    }
}

/// A frame from the server. Field order and names are GarinChat's; protocol v2's request id
/// and room come right after `type` (a GarinChat socket never sees them), `userId` is
/// Palisade's addition (the token's subject) and comes after GarinChat's fields, then the room
/// extensions' fields, which only sockets that asked for them see (or, for `history`, that
/// were sent history).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ServerFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request this frame answers (protocol v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// The room a room frame is about (protocol v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub body: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub username: &'a str,
    #[serde(rename = "totalUsers", skip_serializing_if = "Option::is_none")]
    pub total_users: Option<usize>,
    #[serde(rename = "userId", skip_serializing_if = "str::is_empty")]
    pub user_id: &'a str,
    /// The room's epoch (join acknowledgements, history notices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    /// A message's offset, or the room's last offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The joiner's own last seen offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
    /// Whether a join's `since` was honoured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// When a past message was sent, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// A past message, sent on join.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
    /// An `error` frame's code (protocol v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
}

impl<'a> ServerFrame<'a> {
    pub(crate) fn join(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "join",
            username,
            total_users: Some(total_users),
            user_id,
            ..Self::default()
        }
    }

    pub(crate) fn message(body: &'a str, username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "message",
            body,
            username,
            user_id,
            ..Self::default()
        }
    }

    pub(crate) fn user_leave(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "userleave",
            username,
            total_users: Some(total_users),
            user_id,
            ..Self::default()
        }
    }

    /// A notice from the gateway itself; `code` is one of [`notice`]'s.
    pub(crate) fn notice(code: &'a str) -> Self {
        Self {
            kind: "notice",
            body: code,
            ..Self::default()
        }
    }

    /// Someone in the room is typing.
    pub(crate) fn typing(username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "typing",
            username,
            user_id,
            ..Self::default()
        }
    }

    /// Someone in the room has seen it up to `offset`.
    pub(crate) fn seen(username: &'a str, user_id: &'a str, offset: u64) -> Self {
        Self {
            kind: "seen",
            username,
            user_id,
            offset: Some(offset),
            ..Self::default()
        }
    }

    /// A direct message to this user (protocol v2).
    pub(crate) fn direct(body: &'a str, username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "direct",
            body,
            username,
            user_id,
            ..Self::default()
        }
    }

    /// The answer to `auth` (protocol v2): who the socket is now.
    pub(crate) fn authed(username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "authed",
            username,
            user_id,
            ..Self::default()
        }
    }

    /// The answer to a request that has no other (protocol v2).
    pub(crate) fn ok() -> Self {
        Self {
            kind: "ok",
            ..Self::default()
        }
    }

    /// A refused request (protocol v2).
    pub(crate) fn error(code: ErrorCode) -> Self {
        Self {
            kind: "error",
            code: Some(code.as_str()),
            ..Self::default()
        }
    }

    /// The frame as the request `id` (if any) is answered.
    pub(crate) fn answering(mut self, id: Option<&'a str>) -> Self {
        self.id = id;
        self
    }

    /// The frame about `room` (protocol v2 names it).
    pub(crate) fn in_room(mut self, room: Option<&'a str>) -> Self {
        self.room = room;
        self
    }

    /// The frame as a member speaking `dialect` gets it in `room`: without positions for
    /// GarinChat's, naming the room for v2's.
    pub(crate) fn shaped(mut self, dialect: Dialect, room: &'a str) -> Self {
        match dialect {
            Dialect::GarinChat => {
                self.epoch = None;
                self.offset = None;
                self.seen = None;
                self.recovered = None;
            }
            Dialect::Extended => {}
            Dialect::V2 => self.room = Some(room),
        }
        self
    }

    /// The frame with a room position (`epoch` and `offset`).
    pub(crate) fn at(mut self, epoch: &'a str, offset: u64) -> Self {
        self.epoch = Some(epoch);
        self.offset = Some(offset);
        self
    }

    /// The frame's JSON, escaped as Go's `encoding/json` does (`<`, `>`, `&`, U+2028, U+2029).
    pub(crate) fn encode(&self) -> Bytes {
        encode(self, 96 + self.body.len() + self.username.len())
    }
}

/// A direct message (protocol v2) on its way to a user's sessions, on this node or through the
/// broker to the others. `Debug` shows the body's size, never the body: it may reach a log.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DirectMessage {
    /// The recipient's user id.
    pub to: Arc<str>,
    /// The sender's user id and display name.
    pub from: Arc<str>,
    pub username: Arc<str>,
    pub body: Arc<str>,
}

impl DirectMessage {
    /// The frame the recipient's sessions get.
    pub(crate) fn encode(&self) -> Bytes {
        ServerFrame::direct(&self.body, &self.username, &self.from).encode()
    }
}

impl fmt::Debug for DirectMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectMessage")
            .field("to", &self.to)
            .field("from", &self.from)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A member as a `members` answer lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Listed<'a> {
    #[serde(rename = "userId")]
    pub user_id: &'a str,
    pub username: &'a str,
}

/// The answer to `{"type":"members"}`: the room's members on every node, one per user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MembersFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request it answers (protocol v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// The room (protocol v2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    pub members: Vec<Listed<'a>>,
    /// Users in the room, listed or not.
    pub total: usize,
    /// Whether some were left out (`MAX_MEMBERS_LISTED`).
    pub truncated: bool,
}

impl MembersFrame<'_> {
    pub(crate) fn encode(&self) -> Bytes {
        encode(self, 64 + 48 * self.members.len())
    }
}

fn encode(frame: &impl serde::Serialize, capacity: usize) -> Bytes {
    let mut out = Vec::with_capacity(capacity);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, HtmlSafeFormatter);
    serde::Serialize::serialize(frame, &mut ser).expect("serializing to a Vec cannot fail");
    Bytes::from(out)
}

/// serde_json's compact formatter plus Go's HTML-safe escapes.
struct HtmlSafeFormatter;

impl serde_json::ser::Formatter for HtmlSafeFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, ch) in fragment.char_indices() {
            let escape = match ch {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..index])?;
            writer.write_all(escape.as_bytes())?;
            start = index + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_garinchat_bytes() {
        assert_eq!(
            &ServerFrame::join("bob", "", 2).encode()[..],
            br#"{"type":"join","username":"bob","totalUsers":2}"#
        );
        assert_eq!(
            &ServerFrame::message("hi", "alice", "").encode()[..],
            br#"{"type":"message","body":"hi","username":"alice"}"#
        );
        assert_eq!(
            &ServerFrame::user_leave("bob", "u1", 1).encode()[..],
            br#"{"type":"userleave","username":"bob","totalUsers":1,"userId":"u1"}"#
        );
    }

    #[test]
    fn extensions_come_after_garinchat_fields() {
        let mut frame = ServerFrame::message("hi", "a", "u");
        frame.offset = Some(7);
        frame.ts = Some(1);
        frame.history = true;
        assert_eq!(
            &frame.encode()[..],
            br#"{"type":"message","body":"hi","username":"a","userId":"u","offset":7,"ts":1,"history":true}"#
        );
        let mut ack = ServerFrame::join("a", "u", 1).at("e1", 3);
        ack.seen = Some(2);
        ack.recovered = Some(false);
        assert_eq!(
            &ack.encode()[..],
            br#"{"type":"join","username":"a","totalUsers":1,"userId":"u","epoch":"e1","offset":3,"seen":2,"recovered":false}"#
        );
        let list = MembersFrame {
            kind: "members",
            id: None,
            room: None,
            members: vec![Listed {
                user_id: "u",
                username: "<a>",
            }],
            total: 3,
            truncated: true,
        };
        assert_eq!(
            &list.encode()[..],
            br#"{"type":"members","members":[{"userId":"u","username":"\u003ca\u003e"}],"total":3,"truncated":true}"#
        );
    }

    #[test]
    fn v2_names_the_request_and_the_room_right_after_the_type() {
        let live = ServerFrame::message("hi", "a", "u").at("e", 3);
        assert_eq!(
            &live.clone().shaped(Dialect::GarinChat, "r").encode()[..],
            br#"{"type":"message","body":"hi","username":"a","userId":"u"}"#
        );
        assert_eq!(
            &live.shaped(Dialect::V2, "r").encode()[..],
            br#"{"type":"message","room":"r","body":"hi","username":"a","userId":"u","epoch":"e","offset":3}"#
        );
        assert_eq!(
            &ServerFrame::error(ErrorCode::RoomFull)
                .answering(Some("j1"))
                .in_room(Some("vip"))
                .encode()[..],
            br#"{"type":"error","id":"j1","room":"vip","code":"room_full"}"#
        );
        assert_eq!(
            &ServerFrame::ok().answering(Some("m1")).encode()[..],
            br#"{"type":"ok","id":"m1"}"#
        );
    }

    #[test]
    fn escapes_like_go() {
        let frame = ServerFrame::message("<b>&\u{2028}\u{2029}\"é", "a", "");
        assert_eq!(
            std::str::from_utf8(&frame.encode()).unwrap(),
            r#"{"type":"message","body":"\u003cb\u003e\u0026\u2028\u2029\"é","username":"a"}"#
        );
    }
}
