//! Frames from the client: GarinChat's JSON, decoded strictly.
//!
//! Client frames are decoded by hand-written serde visitors so that keys match
//! case-insensitively (as Go's `encoding/json` did for GarinChat clients), duplicate keys are
//! refused (two parsers must never disagree about which `type` a frame has), GarinChat's fields
//! must be strings (and so must `epoch`), and the room extensions' `history`, `since` and
//! `offset` have their own types.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// A frame from the client, after decoding and basic shape checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"auth","body":TOKEN}`: authenticate, or refresh the token.
    Auth {
        /// The JWT.
        token: String,
    },
    /// `{"type":"join","room":ROOM}`, with the name GarinChat clients send, and what the
    /// client wants of the room's history (either turns on the room extensions for the
    /// socket: offsets, typing, seen, history notices).
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
        /// The text (empty: dropped).
        body: String,
    },
    /// `{"type":"userleave"}`: leave the room.
    UserLeave,
    /// `{"type":"members"}`: who is in the room.
    Members,
    /// `{"type":"typing"}`: the member is typing.
    Typing,
    /// `{"type":"seen","offset":N}`: the member has seen the room up to offset N (with
    /// `"epoch"`, in that epoch: a position from an earlier one is ignored).
    Seen {
        /// The highest offset seen.
        offset: u64,
        /// The epoch the offset belongs to.
        epoch: Option<String>,
    },
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
                KeyName::Epoch => &mut frame.epoch,
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
                KeyName::Other => {
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
                history: raw.history,
                since: raw.since,
            }),
            Some("message") => Ok(ClientFrame::Message {
                // A message without a body is an empty message: dropped, not relayed.
                body: raw.body.unwrap_or_default(),
            }),
            Some("userleave") => Ok(ClientFrame::UserLeave),
            Some("members") => Ok(ClientFrame::Members),
            Some("typing") => Ok(ClientFrame::Typing),
            Some("seen") => Ok(ClientFrame::Seen {
                offset: raw.offset.ok_or(DecodeError::MissingField("offset"))?,
                epoch: raw.epoch,
            }),
            Some(_) => Err(DecodeError::UnknownType),
        }
    }

    /// Encodes the frame as a client would send it (tests and fuzzing use this).
    pub fn encode(&self) -> String {
        let value = match self {
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
            ClientFrame::Message { body } => serde_json::json!({"type": "message", "body": body}),
            ClientFrame::UserLeave => serde_json::json!({"type": "userleave"}),
            ClientFrame::Members => serde_json::json!({"type": "members"}),
            ClientFrame::Typing => serde_json::json!({"type": "typing"}),
            ClientFrame::Seen { offset, epoch } => match epoch {
                Some(epoch) => {
                    serde_json::json!({"type": "seen", "offset": offset, "epoch": epoch})
                }
                None => serde_json::json!({"type": "seen", "offset": offset}),
            },
        };
        value.to_string()
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
            Ok(ClientFrame::Message { body: "hi".into() })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"userleave"}"#),
            Ok(ClientFrame::UserLeave)
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
                offset: 3,
                epoch: None
            })
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"typing"}"#),
            Ok(ClientFrame::Typing)
        );
        assert_eq!(
            ClientFrame::decode(r#"{"type":"members"}"#),
            Ok(ClientFrame::Members)
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
            ClientFrame::Message { body: "<x>".into() },
            ClientFrame::UserLeave,
            ClientFrame::Members,
            ClientFrame::Typing,
            ClientFrame::Seen {
                offset: 4,
                epoch: None,
            },
            ClientFrame::Seen {
                offset: 4,
                epoch: Some("e1".into()),
            },
        ] {
            assert_eq!(ClientFrame::decode(&frame.encode()), Ok(frame));
        }
    }
}
