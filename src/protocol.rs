//! The wire protocol: GarinChat's JSON frames, both directions, and the close-code table.
//!
//! Client frames are decoded by hand-written serde visitors so that keys match
//! case-insensitively (as Go's `encoding/json` did for GarinChat clients), duplicate keys are
//! refused (two parsers must never disagree about which `type` a frame has), and known fields
//! must be strings. Server frames are encoded once per broadcast into shared [`Bytes`], with
//! Go's HTML-safe escaping so a GarinChat client sees the same bytes it saw before.

use std::fmt;
use std::io;

use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Every close code the gateway sends. `docs/PROTOCOL.md` holds the same table; keep them equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the server is shutting down; reconnect elsewhere or later.
    GoingAway,
    /// 1002: a WebSocket framing rule was broken.
    ProtocolError,
    /// 1003: a binary frame; the protocol is JSON text only.
    UnsupportedData,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload,
    /// 1009: a message over `MAX_MESSAGE_BYTES` or `MAX_FRAGMENTS`.
    MessageTooBig,
    /// 4001: no `auth` frame within `AUTH_TIMEOUT_MS`.
    AuthTimeout,
    /// 4002: the token was refused.
    AuthFailed,
    /// 4003: no `join` frame within `JOIN_TIMEOUT_MS` of auth (or of `userleave`).
    JoinTimeout,
    /// 4004: a frame that is not valid JSON, not a known type, or not allowed in this state.
    ProtocolViolation,
    /// 4005: the username or room name breaks the naming rules.
    InvalidName,
    /// 4006: messages or control frames faster than the configured rate.
    RateLimited,
    /// 4007: the socket did not read its frames fast enough; its queue filled.
    SlowConsumer,
    /// 4008: the user already has `MAX_SESSIONS_PER_USER` sessions open.
    TooManySessions,
    /// 4009: the user is banned for repeated abuse.
    Banned,
    /// 4010: no pong within `PONG_TIMEOUT_SECS` of a ping.
    PongTimeout,
    /// 4011: nothing received within `IDLE_TIMEOUT_SECS`.
    IdleTimeout,
    /// 4012: the room already has `MAX_ROOM_MEMBERS` members.
    RoomFull,
    /// 4013: the token's `exp` (plus `JWT_LEEWAY_SECS`) passed while connected.
    TokenExpired,
    /// 4014: the token's `ROOMS_CLAIM` does not list the room.
    RoomNotAllowed,
}

impl CloseCode {
    pub const ALL: [CloseCode; 19] = [
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::AuthTimeout,
        CloseCode::AuthFailed,
        CloseCode::JoinTimeout,
        CloseCode::ProtocolViolation,
        CloseCode::InvalidName,
        CloseCode::RateLimited,
        CloseCode::SlowConsumer,
        CloseCode::TooManySessions,
        CloseCode::Banned,
        CloseCode::PongTimeout,
        CloseCode::IdleTimeout,
        CloseCode::RoomFull,
        CloseCode::TokenExpired,
        CloseCode::RoomNotAllowed,
    ];

    pub const fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::AuthTimeout => 4001,
            CloseCode::AuthFailed => 4002,
            CloseCode::JoinTimeout => 4003,
            CloseCode::ProtocolViolation => 4004,
            CloseCode::InvalidName => 4005,
            CloseCode::RateLimited => 4006,
            CloseCode::SlowConsumer => 4007,
            CloseCode::TooManySessions => 4008,
            CloseCode::Banned => 4009,
            CloseCode::PongTimeout => 4010,
            CloseCode::IdleTimeout => 4011,
            CloseCode::RoomFull => 4012,
            CloseCode::TokenExpired => 4013,
            CloseCode::RoomNotAllowed => 4014,
        }
    }

    /// The default reason sent with this code: short, static, never derived from input.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "server shutting down, reconnect",
            CloseCode::ProtocolError => "websocket protocol error",
            CloseCode::UnsupportedData => "binary frames are not supported",
            CloseCode::InvalidPayload => "invalid utf-8",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::AuthTimeout => "auth timeout",
            CloseCode::AuthFailed => "auth failed",
            CloseCode::JoinTimeout => "join timeout",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::InvalidName => "invalid username or room",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TooManySessions => "too many sessions for this user",
            CloseCode::Banned => "banned",
            CloseCode::PongTimeout => "ping timeout",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::RoomFull => "room full",
            CloseCode::TokenExpired => "token expired",
            CloseCode::RoomNotAllowed => "room not allowed",
        }
    }

    /// Whether this close is the client's fault on purpose rather than by accident or load:
    /// such a close earns a strike towards a ban (see `bans`). Auth failures and bad names
    /// are not counted: an expired token or a typo is not an attack.
    pub const fn is_abuse(self) -> bool {
        matches!(
            self,
            CloseCode::ProtocolError
                | CloseCode::UnsupportedData
                | CloseCode::InvalidPayload
                | CloseCode::MessageTooBig
                | CloseCode::ProtocolViolation
                | CloseCode::RateLimited
        )
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// Whether a close code received from a client is one RFC 6455 lets an endpoint send.
pub fn is_valid_peer_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// A frame from the client, after decoding and basic shape checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Join {
        username: Option<String>,
        room: String,
    },
    Message {
        body: String,
    },
    UserLeave,
}

/// Why a client frame was refused. All map to [`CloseCode::ProtocolViolation`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON object with string fields")]
    Malformed,
    #[error("missing type")]
    MissingType,
    #[error("unknown type")]
    UnknownType,
    #[error("missing field {0}")]
    MissingField(&'static str),
}

/// The raw shape of a client frame: known keys, matched ignoring ASCII case.
#[derive(Default)]
struct RawClientFrame {
    kind: Option<String>,
    body: Option<String>,
    username: Option<String>,
    room: Option<String>,
}

impl<'de> Deserialize<'de> for RawClientFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawClientFrameVisitor)
    }
}

struct RawClientFrameVisitor;

impl<'de> Visitor<'de> for RawClientFrameVisitor {
    type Value = RawClientFrame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut frame = RawClientFrame::default();
        while let Some(key) = map.next_key::<KeyName>()? {
            let slot = match key {
                KeyName::Type => &mut frame.kind,
                KeyName::Body => &mut frame.body,
                KeyName::Username => &mut frame.username,
                KeyName::Room => &mut frame.room,
                KeyName::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom("duplicate key"));
            }
            *slot = Some(map.next_value::<String>()?);
        }
        Ok(frame)
    }
}

/// A key of a client frame. Borrowed where possible: no allocation for the usual keys.
enum KeyName {
    Type,
    Body,
    Username,
    Room,
    Other,
}

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<KeyName, E> {
                let is = |name: &str| key.eq_ignore_ascii_case(name);
                Ok(if is("type") {
                    KeyName::Type
                } else if is("body") {
                    KeyName::Body
                } else if is("username") {
                    KeyName::Username
                } else if is("room") {
                    KeyName::Room
                } else {
                    KeyName::Other
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl ClientFrame {
    /// Decodes one text message. The caller has already bounded its size, and serde_json bounds
    /// nesting depth (128), so neither memory nor stack depends on the input beyond that.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        let raw: RawClientFrame = serde_json::from_str(text).map_err(|_| DecodeError::Malformed)?;
        // `type` is case-sensitive, as in GarinChat.
        match raw.kind.as_deref() {
            None => Err(DecodeError::MissingType),
            Some("auth") => Ok(ClientFrame::Auth {
                token: raw.body.ok_or(DecodeError::MissingField("body"))?,
            }),
            Some("join") => Ok(ClientFrame::Join {
                username: raw.username,
                room: raw.room.ok_or(DecodeError::MissingField("room"))?,
            }),
            Some("message") => Ok(ClientFrame::Message {
                // A message without a body is an empty message: dropped, not relayed.
                body: raw.body.unwrap_or_default(),
            }),
            Some("userleave") => Ok(ClientFrame::UserLeave),
            Some(_) => Err(DecodeError::UnknownType),
        }
    }

    /// Encodes the frame as a client would send it (tests and fuzzing use this).
    pub fn encode(&self) -> String {
        let value = match self {
            ClientFrame::Auth { token } => serde_json::json!({"type": "auth", "body": token}),
            ClientFrame::Join { username, room } => match username {
                Some(name) => serde_json::json!({"type": "join", "username": name, "room": room}),
                None => serde_json::json!({"type": "join", "room": room}),
            },
            ClientFrame::Message { body } => serde_json::json!({"type": "message", "body": body}),
            ClientFrame::UserLeave => serde_json::json!({"type": "userleave"}),
        };
        value.to_string()
    }
}

/// The `body` of a `{"type":"notice"}` frame (Palisade's addition; clients that do not know
/// the type ignore it).
pub mod notice {
    /// Cross-node delivery stopped (Redis is unreachable): members on this node still reach
    /// each other, but messages from and to other nodes are being missed.
    pub const DELIVERY_INTERRUPTED: &str = "delivery_interrupted";
    /// Cross-node delivery is back. What was sent meanwhile is not replayed; `join` and
    /// `userleave` frames follow for whoever arrived or left on other nodes.
    pub const DELIVERY_RESTORED: &str = "delivery_restored";
}

/// A frame from the server. Field order and names are GarinChat's; `userId` is Palisade's
/// addition (the token's subject) and comes last.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub body: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub username: &'a str,
    #[serde(rename = "totalUsers", skip_serializing_if = "Option::is_none")]
    pub total_users: Option<usize>,
    #[serde(rename = "userId", skip_serializing_if = "str::is_empty")]
    pub user_id: &'a str,
}

impl<'a> ServerFrame<'a> {
    pub fn join(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "join",
            body: "",
            username,
            total_users: Some(total_users),
            user_id,
        }
    }

    pub fn message(body: &'a str, username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "message",
            body,
            username,
            total_users: None,
            user_id,
        }
    }

    pub fn user_leave(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "userleave",
            body: "",
            username,
            total_users: Some(total_users),
            user_id,
        }
    }

    /// A notice from the gateway itself; `code` is one of [`notice`]'s.
    pub fn notice(code: &'a str) -> Self {
        Self {
            kind: "notice",
            body: code,
            username: "",
            total_users: None,
            user_id: "",
        }
    }

    /// The frame's JSON, escaped as Go's `encoding/json` does (`<`, `>`, `&`, U+2028, U+2029).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(64 + self.body.len() + self.username.len());
        let mut ser = serde_json::Serializer::with_formatter(&mut out, HtmlSafeFormatter);
        serde::Serialize::serialize(self, &mut ser).expect("serializing to a Vec cannot fail");
        Bytes::from(out)
    }
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
    fn decodes_garinchat_frames() {
        assert_eq!(
            ClientFrame::decode(r#"{"type":"auth","body":"t.o.k"}"#),
            Ok(ClientFrame::Auth {
                token: "t.o.k".into()
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"join","username":"bob","room":"lobby"}"#),
            Ok(ClientFrame::Join {
                username: Some("bob".into()),
                room: "lobby".into()
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"message","body":"hi","extra":[1,{"a":null}]}"#),
            Ok(ClientFrame::Message { body: "hi".into() })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"userleave"}"#),
            Ok(ClientFrame::UserLeave)
        );
    }

    #[test]
    fn keys_match_ignoring_ascii_case_but_type_values_do_not() {
        assert_eq!(
            ClientFrame::decode(r#"{"TYPE":"auth","Body":"x"}"#),
            Ok(ClientFrame::Auth { token: "x".into() })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"AUTH","body":"x"}"#),
            Err(DecodeError::UnknownType)
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        for bad in [
            "",
            "null",
            "[]",
            "\"auth\"",
            "{",
            r#"{"type":1}"#,
            r#"{"type":"auth","body":5}"#,
            r#"{"type":"auth","type":"join","room":"abc"}"#,
            r#"{"type":"auth","TYPE":"auth","body":"x"}"#,
        ] {
            assert_eq!(
                ClientFrame::decode(bad),
                Err(DecodeError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(ClientFrame::decode("{}"), Err(DecodeError::MissingType));
        assert_eq!(
            ClientFrame::decode(r#"{"type":"join"}"#),
            Err(DecodeError::MissingField("room"))
        );
        // Deep nesting never recurses deeply: serde_json skips unknown values iteratively and
        // limits recursion (128) everywhere else.
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let unknown = format!("{{\"x\":{}}}", deep(100_000));
        assert_eq!(ClientFrame::decode(&unknown), Err(DecodeError::MissingType));
        let known = format!("{{\"type\":{}}}", deep(100_000));
        assert_eq!(ClientFrame::decode(&known), Err(DecodeError::Malformed));
        assert_eq!(
            ClientFrame::decode(&deep(100_000)),
            Err(DecodeError::Malformed)
        );
    }

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
    fn escapes_like_go() {
        let frame = ServerFrame::message("<b>&\u{2028}\u{2029}\"é", "a", "");
        assert_eq!(
            std::str::from_utf8(&frame.encode()).unwrap(),
            r#"{"type":"message","body":"\u003cb\u003e\u0026\u2028\u2029\"é","username":"a"}"#
        );
    }

    #[test]
    fn round_trips_client_frames() {
        for frame in [
            ClientFrame::Auth {
                token: "a.b.c".into(),
            },
            ClientFrame::Join {
                username: None,
                room: "lobby".into(),
            },
            ClientFrame::Message { body: "<x>".into() },
            ClientFrame::UserLeave,
        ] {
            assert_eq!(ClientFrame::decode(&frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn close_codes_are_distinct_and_reasons_fit_a_control_frame() {
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        for code in CloseCode::ALL {
            assert!(code.reason().len() <= 123);
        }
    }
}
