//! Frames from the client: GarinChat's JSON, decoded strictly.
//!
//! Client frames are decoded by hand-written serde visitors so that keys match
//! case-insensitively (as Go's `encoding/json` did for GarinChat clients), duplicate keys are
//! refused (two parsers must never disagree about which `type` a frame has), GarinChat's fields
//! must be strings (and so must `epoch`), and the room extensions' `history`, `since` and
//! `offset` have their own types.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::Version;
use serde::Deserialize;

/// The longest user id a direct message may name, in bytes (a token's `sub` is no longer).
const MAX_RECIPIENT_BYTES: usize = 256;

/// The longest request id a v2 client may choose, in bytes.
pub(crate) const MAX_REQUEST_ID_BYTES: usize = 64;

/// A frame from the client and the id it chose for it (protocol v2: the answer carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    /// `"id"`: 1 to [`MAX_REQUEST_ID_BYTES`] bytes; GarinChat clients send none.
    pub id: Option<String>,
    /// What it asks.
    pub frame: ClientFrame,
}

/// A frame from the client, after decoding and basic shape checks. `room` on a room frame is
/// protocol v2's (which room of the socket's it is for); GarinChat's socket has one room and
/// its frames name none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"auth","body":TOKEN}`: authenticate, or refresh the token.
    Auth {
        /// The JWT.
        token: String,
    },
    /// `{"type":"join","room":ROOM}`, with the name GarinChat clients send, and what the
    /// client wants of the room's history (either turns on the room extensions for a
    /// GarinChat socket: offsets, typing, seen, history notices).
    Join {
        /// The client's display name (used only with `TRUST_CLIENT_USERNAME`).
        username: Option<String>,
        /// The room.
        room: String,
        /// `"history":N`: the last N messages (at most `HISTORY_SIZE`).
        history: Option<u64>,
        /// `"since":{"epoch":E,"offset":N}`: exactly the messages after this position.
        since: Option<Since>,
    },
    /// `{"type":"message","body":TEXT}`: chat to the room.
    Message {
        /// The room (v2).
        room: Option<String>,
        /// The text (empty: dropped).
        body: String,
    },
    /// `{"type":"userleave"}`: leave the room.
    UserLeave {
        /// The room (v2).
        room: Option<String>,
    },
    /// `{"type":"members"}`: who is in the room.
    Members {
        /// The room (v2).
        room: Option<String>,
    },
    /// `{"type":"typing"}`: the member is typing.
    Typing {
        /// The room (v2).
        room: Option<String>,
    },
    /// `{"type":"seen","offset":N}`: the member has seen the room up to offset N (with
    /// `"epoch"`, in that epoch: a position from an earlier one is ignored).
    Seen {
        /// The room (v2).
        room: Option<String>,
        /// The highest offset seen.
        offset: u64,
        /// The epoch the offset belongs to.
        epoch: Option<String>,
    },
    /// `{"type":"direct","to":USER,"body":TEXT}` (protocol v2): a message to one user.
    Direct {
        /// The recipient's user id.
        to: String,
        /// The text (empty: dropped).
        body: String,
    },
}

impl ClientFrame {
    /// The room a room frame names (v2), if any.
    pub fn room(&self) -> Option<&str> {
        match self {
            ClientFrame::Join { room, .. } => Some(room),
            ClientFrame::Message { room, .. }
            | ClientFrame::UserLeave { room }
            | ClientFrame::Members { room }
            | ClientFrame::Typing { room }
            | ClientFrame::Seen { room, .. } => room.as_deref(),
            ClientFrame::Auth { .. } | ClientFrame::Direct { .. } => None,
        }
    }

    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Message { .. } => "message",
            ClientFrame::UserLeave { .. } => "userleave",
            ClientFrame::Members { .. } => "members",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Seen { .. } => "seen",
            ClientFrame::Direct { .. } => "direct",
        }
    }
}

/// A position in a room's history, as a client remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Since {
    /// The room's epoch when the client saw `offset`.
    pub epoch: String,
    /// The last offset the client saw.
    pub offset: u64,
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
    #[error("an id that is empty or longer than 64 bytes")]
    BadId,
    #[error("a recipient that is empty or longer than 256 bytes")]
    BadRecipient,
}

/// The raw shape of a client frame: known keys, matched ignoring ASCII case.
#[derive(Default)]
struct RawClientFrame {
    kind: Option<String>,
    body: Option<String>,
    username: Option<String>,
    room: Option<String>,
    history: Option<u64>,
    since: Option<Since>,
    offset: Option<u64>,
    epoch: Option<String>,
    id: Option<String>,
    to: Option<String>,
}

impl RawClientFrame {
    /// Reads a frame's known keys. Protocol v2's `id` and `to` are known only in v2: to a
    /// GarinChat socket they are unknown fields like any other, ignored whatever they hold.
    fn read(text: &str, version: Version) -> Result<RawClientFrame, DecodeError> {
        let mut json = serde_json::Deserializer::from_str(text);
        let raw = json
            .deserialize_map(RawClientFrameVisitor { version })
            .map_err(|_| DecodeError::Malformed)?;
        json.end().map_err(|_| DecodeError::Malformed)?;
        Ok(raw)
    }
}

struct RawClientFrameVisitor {
    version: Version,
}

impl<'de> Visitor<'de> for RawClientFrameVisitor {
    type Value = RawClientFrame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut frame = RawClientFrame::default();
        let v2 = self.version == Version::V2;
        while let Some(key) = map.next_key::<KeyName>()? {
            let slot = match key {
                KeyName::Type => &mut frame.kind,
                KeyName::Body => &mut frame.body,
                KeyName::Username => &mut frame.username,
                KeyName::Room => &mut frame.room,
                KeyName::Epoch => &mut frame.epoch,
                KeyName::Id if v2 => &mut frame.id,
                KeyName::To if v2 => &mut frame.to,
                KeyName::History => {
                    fill(&mut frame.history, &mut map)?;
                    continue;
                }
                KeyName::Since => {
                    fill(&mut frame.since, &mut map)?;
                    continue;
                }
                KeyName::Offset => {
                    fill(&mut frame.offset, &mut map)?;
                    continue;
                }
                KeyName::Other | KeyName::Id | KeyName::To => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            fill(slot, &mut map)?;
        }
        Ok(frame)
    }
}

/// Reads the value of a known key into its slot; a key given twice is refused.
fn fill<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::custom("duplicate key"));
    }
    *slot = Some(map.next_value::<T>()?);
    Ok(())
}

/// A key of a client frame. Borrowed where possible: no allocation for the usual keys.
enum KeyName {
    Type,
    Body,
    Username,
    Room,
    Epoch,
    Id,
    To,
    History,
    Since,
    Offset,
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
                } else if is("epoch") {
                    KeyName::Epoch
                } else if is("id") {
                    KeyName::Id
                } else if is("to") {
                    KeyName::To
                } else if is("history") {
                    KeyName::History
                } else if is("since") {
                    KeyName::Since
                } else if is("offset") {
                    KeyName::Offset
                } else {
                    KeyName::Other
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl ClientRequest {
    /// Decodes one text message from a socket speaking `version`. The caller has already
    /// bounded its size, and serde_json bounds nesting depth (128), so neither memory nor stack
    /// depends on the input beyond that.
    pub fn decode(text: &str, version: Version) -> Result<ClientRequest, DecodeError> {
        let raw = RawClientFrame::read(text, version)?;
        if raw
            .id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES)
        {
            return Err(DecodeError::BadId);
        }
        // `type` is case-sensitive, as in GarinChat.
        let frame = match raw.kind.as_deref() {
            None => return Err(DecodeError::MissingType),
            Some("auth") => ClientFrame::Auth {
                token: raw.body.ok_or(DecodeError::MissingField("body"))?,
            },
            Some("join") => ClientFrame::Join {
                username: raw.username,
                room: raw.room.ok_or(DecodeError::MissingField("room"))?,
                history: raw.history,
                since: raw.since,
            },
            Some("message") => ClientFrame::Message {
                room: raw.room,
                // A message without a body is an empty message: dropped, not relayed.
                body: raw.body.unwrap_or_default(),
            },
            Some("userleave") => ClientFrame::UserLeave { room: raw.room },
            Some("members") => ClientFrame::Members { room: raw.room },
            Some("typing") => ClientFrame::Typing { room: raw.room },
            Some("seen") => ClientFrame::Seen {
                room: raw.room,
                offset: raw.offset.ok_or(DecodeError::MissingField("offset"))?,
                epoch: raw.epoch,
            },
            Some("direct") if version == Version::V2 => ClientFrame::Direct {
                to: raw
                    .to
                    .ok_or(DecodeError::MissingField("to"))
                    .and_then(|to| match to.len() {
                        1..=MAX_RECIPIENT_BYTES => Ok(to),
                        _ => Err(DecodeError::BadRecipient),
                    })?,
                body: raw.body.unwrap_or_default(),
            },
            Some(_) => return Err(DecodeError::UnknownType),
        };
        Ok(ClientRequest { id: raw.id, frame })
    }

    /// Encodes the request as a client would send it (tests and fuzzing use this).
    pub fn encode(&self) -> String {
        let mut value = match &self.frame {
            ClientFrame::Auth { token } => serde_json::json!({"type": "auth", "body": token}),
            ClientFrame::Join {
                username,
                room,
                history,
                since,
            } => {
                let mut join = serde_json::json!({"type": "join", "room": room});
                if let Some(name) = username {
                    join["username"] = name.as_str().into();
                }
                if let Some(history) = history {
                    join["history"] = (*history).into();
                }
                if let Some(since) = since {
                    join["since"] =
                        serde_json::json!({"epoch": since.epoch, "offset": since.offset});
                }
                join
            }
            ClientFrame::Message { body, .. } => {
                serde_json::json!({"type": "message", "body": body})
            }
            ClientFrame::Seen { offset, epoch, .. } => {
                let mut seen = serde_json::json!({"type": "seen", "offset": offset});
                if let Some(epoch) = epoch {
                    seen["epoch"] = epoch.as_str().into();
                }
                seen
            }
            ClientFrame::Direct { to, body } => {
                serde_json::json!({"type": "direct", "to": to, "body": body})
            }
            other => serde_json::json!({"type": other.kind()}),
        };
        if let Some(room) = self.frame.room() {
            value["room"] = room.into();
        }
        if let Some(id) = &self.id {
            value["id"] = id.as_str().into();
        }
        value.to_string()
    }
}

impl ClientFrame {
    /// Decodes one text message from a GarinChat socket.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        ClientRequest::decode(text, Version::GarinChat).map(|request| request.frame)
    }

    /// Encodes the frame as a client would send it, without a request id.
    pub fn encode(&self) -> String {
        ClientRequest {
            id: None,
            frame: self.clone(),
        }
        .encode()
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
                room: "lobby".into(),
                history: None,
                since: None,
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"message","body":"hi","extra":[1,{"a":null}]}"#),
            Ok(ClientFrame::Message {
                room: None,
                body: "hi".into()
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"userleave"}"#),
            Ok(ClientFrame::UserLeave { room: None })
        );
    }

    #[test]
    fn decodes_the_room_extensions() {
        assert_eq!(
            ClientFrame::decode(
                r#"{"type":"join","room":"r","history":20,"since":{"epoch":"e1","offset":7}}"#
            ),
            Ok(ClientFrame::Join {
                username: None,
                room: "r".into(),
                history: Some(20),
                since: Some(Since {
                    epoch: "e1".into(),
                    offset: 7
                }),
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"seen","offset":3}"#),
            Ok(ClientFrame::Seen {
                room: None,
                offset: 3,
                epoch: None
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"typing"}"#),
            Ok(ClientFrame::Typing { room: None })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"members"}"#),
            Ok(ClientFrame::Members { room: None })
        );
        for bad in [
            r#"{"type":"join","room":"r","history":-1}"#,
            r#"{"type":"join","room":"r","history":"5"}"#,
            r#"{"type":"join","room":"r","history":1.5}"#,
            r#"{"type":"join","room":"r","history":1,"HISTORY":2}"#,
            r#"{"type":"join","room":"r","since":{"epoch":"e"}}"#,
            r#"{"type":"join","room":"r","since":{"epoch":1,"offset":1}}"#,
            r#"{"type":"join","room":"r","since":[]}"#,
            r#"{"type":"seen","offset":"3"}"#,
            r#"{"type":"seen","offset":18446744073709551616}"#,
        ] {
            assert_eq!(
                ClientFrame::decode(bad),
                Err(DecodeError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            ClientFrame::decode(r#"{"type":"seen"}"#),
            Err(DecodeError::MissingField("offset"))
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
    fn round_trips_client_frames() {
        for frame in [
            ClientFrame::Auth {
                token: "a.b.c".into(),
            },
            ClientFrame::Join {
                username: None,
                room: "lobby".into(),
                history: None,
                since: None,
            },
            ClientFrame::Join {
                username: Some("b".into()),
                room: "lobby".into(),
                history: Some(3),
                since: Some(Since {
                    epoch: "e".into(),
                    offset: 9,
                }),
            },
            ClientFrame::Message {
                room: None,
                body: "<x>".into(),
            },
            ClientFrame::UserLeave { room: None },
            ClientFrame::Members { room: None },
            ClientFrame::Typing { room: None },
            ClientFrame::Seen {
                room: None,
                offset: 4,
                epoch: None,
            },
            ClientFrame::Seen {
                room: Some("r".into()),
                offset: 4,
                epoch: Some("e1".into()),
            },
            ClientFrame::Message {
                room: Some("r".into()),
                body: "hi".into(),
            },
            ClientFrame::Direct {
                to: "bob".into(),
                body: "hi".into(),
            },
        ] {
            let request = ClientRequest {
                id: Some("r-1".into()),
                frame,
            };
            assert_eq!(
                ClientRequest::decode(&request.encode(), Version::V2),
                Ok(request)
            );
        }
    }

    #[test]
    fn decodes_protocol_v2_requests() {
        let v2 = |text: &str| ClientRequest::decode(text, Version::V2);
        assert_eq!(
            v2(r#"{"type":"message","id":"m1","room":"r","body":"hi"}"#),
            Ok(ClientRequest {
                id: Some("m1".into()),
                frame: ClientFrame::Message {
                    room: Some("r".into()),
                    body: "hi".into()
                }
            })
        );
        assert_eq!(
            v2(r#"{"type":"direct","body":"hi"}"#),
            Err(DecodeError::MissingField("to"))
        );
        let longest = format!(r#"{{"type":"typing","id":"{}"}}"#, "i".repeat(64));
        assert!(v2(&longest).is_ok());
        let longer = format!(r#"{{"type":"typing","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(v2(&longer), Err(DecodeError::BadId));
        assert_eq!(v2(r#"{"type":"typing","id":""}"#), Err(DecodeError::BadId));
        let longest = format!(r#"{{"type":"direct","to":"{}"}}"#, "u".repeat(256));
        assert!(v2(&longest).is_ok());
        let longer = format!(r#"{{"type":"direct","to":"{}"}}"#, "u".repeat(257));
        assert_eq!(v2(&longer), Err(DecodeError::BadRecipient));
        assert_eq!(
            v2(r#"{"type":"direct","to":""}"#),
            Err(DecodeError::BadRecipient)
        );
        for bad in [
            r#"{"type":"typing","id":7}"#,
            r#"{"type":"direct","to":["bob"],"body":"x"}"#,
            r#"{"type":"typing","id":"a","ID":"b"}"#,
        ] {
            assert_eq!(v2(bad), Err(DecodeError::Malformed), "{bad}");
        }
    }

    #[test]
    fn garinchat_sockets_ignore_v2_keys_and_know_no_direct_frame() {
        // Unknown fields of any shape were always ignored; `id` and `to` stay unknown there.
        for text in [
            r#"{"type":"members","id":7,"ID":[],"to":{"a":1}}"#,
            r#"{"type":"members","id":"","to":null}"#,
        ] {
            assert_eq!(
                ClientRequest::decode(text, Version::GarinChat),
                Ok(ClientRequest {
                    id: None,
                    frame: ClientFrame::Members { room: None }
                }),
                "{text}"
            );
        }
        assert_eq!(
            ClientFrame::decode(r#"{"type":"direct","to":"bob","body":"hi"}"#),
            Err(DecodeError::UnknownType)
        );
    }
}
