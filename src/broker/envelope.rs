//! What travels between nodes: one JSON object per Pub/Sub message.
//!
//! ```text
//! {"v":1,"node":"3f9c…","seq":17,"ts":1763840000123,"event":"join","session":7,"username":"Bob","userId":"bob"}
//! {"v":1,"node":"3f9c…","seq":18,"ts":…,"event":"message","session":7,"username":"Bob","userId":"bob","body":"hi"}
//! {"v":1,"node":"3f9c…","seq":19,"ts":…,"event":"leave","session":7}
//! {"v":1,"node":"3f9c…","seq":20,"ts":…,"event":"sync","members":[{"session":7,"username":"Bob","userId":"bob"}]}
//! {"v":1,"node":"3f9c…","seq":21,"ts":…,"event":"message",…,"body":"hi","offset":42,"epoch":"9b1d…"}
//! {"v":1,"node":"3f9c…","seq":22,"ts":…,"event":"typing","session":7,"username":"Bob","userId":"bob"}
//! {"v":1,"node":"3f9c…","seq":23,"ts":…,"event":"seen","username":"Bob","userId":"bob","offset":41,"epoch":"9b1d…"}
//! ```
//!
//! With history on, a message's `offset` and `epoch` are added by Redis itself, in the script
//! that numbers, stores and publishes it: the node hands the script the envelope without its
//! closing brace ([`encode_open`]) and the script appends `,"offset":N,"epoch":"E"}`. The same
//! bytes are kept in the room's stream, so a message read back from history decodes like one
//! received live.
//!
//! `node` is the publishing node's id (a node ignores its own envelopes, as its members were
//! served locally, except numbered messages, which every node delivers as they come back), `seq` grows by one per envelope a node publishes (a receiver drops any
//! `seq` it has already seen from that node in that room, so a client never sees a
//! duplicate), and `ts` is the publisher's wall clock in milliseconds, for the cross-node delay
//! metric. `sync` says "these are all of my members in this room", sent when a node rebuilds
//! its presence after a Redis outage. Chat messages carry their fields, not a pre-encoded
//! frame: each node encodes the client frame itself, so nothing on the channel reaches a
//! client unchecked.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::history::Position;
use crate::ids::SessionId;

const VERSION: u8 = 1;
/// Node ids and epochs are ours (hex), but anything on the channel is checked before it is
/// believed.
const MAX_NODE_ID_BYTES: usize = 64;

/// A member on another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteMember {
    pub session: SessionId,
    pub username: Arc<str>,
    #[serde(rename = "userId")]
    pub user_id: Arc<str>,
}

/// An event from another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RemoteEvent {
    Join(RemoteMember),
    Leave {
        session: SessionId,
    },
    Message {
        session: SessionId,
        username: Arc<str>,
        user_id: Arc<str>,
        body: String,
        /// The message's place in the room's history, given by Redis.
        position: Option<Position>,
    },
    /// The publishing node's complete membership of the room.
    Sync(Vec<RemoteMember>),
    /// A member is typing.
    Typing(RemoteMember),
    /// A user's read position rose (within `epoch`).
    Seen {
        username: Arc<str>,
        user_id: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
    },
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub node: String,
    pub seq: u64,
    pub sent_at_ms: u64,
    pub event: RemoteEvent,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    #[error("not an envelope: {0}")]
    Json(String),
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("bad node id")]
    NodeId,
    #[error("event {0:?} lacks a field it needs")]
    Incomplete(&'static str),
    #[error("unknown event")]
    UnknownEvent,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    v: u8,
    #[serde(borrow)]
    node: Cow<'a, str>,
    seq: u64,
    ts: u64,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<SessionId>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    username: Option<Cow<'a, str>>,
    #[serde(
        rename = "userId",
        default,
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    user_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    body: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    members: Option<Vec<RemoteMember>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    epoch: Option<Cow<'a, str>>,
}

impl<'a> Wire<'a> {
    fn new(node: &'a str, seq: u64, ts: u64, event: &'static str) -> Self {
        Wire {
            v: VERSION,
            node: Cow::Borrowed(node),
            seq,
            ts,
            event: Cow::Borrowed(event),
            session: None,
            username: None,
            user_id: None,
            body: None,
            members: None,
            offset: None,
            epoch: None,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }
}

/// Encodes an event of this node's.
pub(super) fn encode(node: &str, seq: u64, sent_at_ms: u64, event: &RemoteEvent) -> Vec<u8> {
    let mut wire;
    match event {
        RemoteEvent::Join(member) => {
            wire = Wire::new(node, seq, sent_at_ms, "join");
            wire.session = Some(member.session);
            wire.username = Some(Cow::Borrowed(&member.username));
            wire.user_id = Some(Cow::Borrowed(&member.user_id));
        }
        RemoteEvent::Leave { session } => {
            wire = Wire::new(node, seq, sent_at_ms, "leave");
            wire.session = Some(*session);
        }
        RemoteEvent::Message {
            session,
            username,
            user_id,
            body,
            position,
        } => {
            wire = Wire::new(node, seq, sent_at_ms, "message");
            wire.session = Some(*session);
            wire.username = Some(Cow::Borrowed(username));
            wire.user_id = Some(Cow::Borrowed(user_id));
            wire.body = Some(Cow::Borrowed(body));
            if let Some(position) = position {
                wire.offset = Some(position.offset);
                wire.epoch = Some(Cow::Borrowed(&position.epoch));
            }
        }
        RemoteEvent::Sync(members) => {
            wire = Wire::new(node, seq, sent_at_ms, "sync");
            wire.members = Some(members.clone());
        }
        RemoteEvent::Typing(member) => {
            wire = Wire::new(node, seq, sent_at_ms, "typing");
            wire.session = Some(member.session);
            wire.username = Some(Cow::Borrowed(&member.username));
            wire.user_id = Some(Cow::Borrowed(&member.user_id));
        }
        RemoteEvent::Seen {
            username,
            user_id,
            epoch,
            offset,
        } => {
            wire = Wire::new(node, seq, sent_at_ms, "seen");
            wire.username = Some(Cow::Borrowed(username));
            wire.user_id = Some(Cow::Borrowed(user_id));
            wire.epoch = Some(Cow::Borrowed(epoch));
            wire.offset = Some(*offset);
        }
    }
    wire.to_bytes()
}

/// Encodes a message to be numbered by Redis: the envelope without its closing brace, for
/// the script to complete with the offset and epoch it gives.
pub(super) fn encode_open(node: &str, seq: u64, sent_at_ms: u64, event: &RemoteEvent) -> Vec<u8> {
    let mut bytes = encode(node, seq, sent_at_ms, event);
    debug_assert_eq!(bytes.last(), Some(&b'}'));
    bytes.pop();
    bytes
}

impl Envelope {
    pub(crate) fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let wire: Wire<'_> =
            serde_json::from_slice(bytes).map_err(|err| EnvelopeError::Json(err.to_string()))?;
        if wire.v != VERSION {
            return Err(EnvelopeError::Version(wire.v));
        }
        if wire.node.is_empty() || wire.node.len() > MAX_NODE_ID_BYTES {
            return Err(EnvelopeError::NodeId);
        }
        let member = |kind| -> Result<RemoteMember, EnvelopeError> {
            Ok(RemoteMember {
                session: wire.session.ok_or(EnvelopeError::Incomplete(kind))?,
                username: Arc::from(
                    wire.username
                        .as_deref()
                        .ok_or(EnvelopeError::Incomplete(kind))?,
                ),
                user_id: Arc::from(
                    wire.user_id
                        .as_deref()
                        .ok_or(EnvelopeError::Incomplete(kind))?,
                ),
            })
        };
        let event = match &*wire.event {
            "join" => RemoteEvent::Join(member("join")?),
            "leave" => RemoteEvent::Leave {
                session: wire.session.ok_or(EnvelopeError::Incomplete("leave"))?,
            },
            "message" => {
                let RemoteMember {
                    session,
                    username,
                    user_id,
                } = member("message")?;
                let position = match (wire.offset, wire.epoch.as_deref()) {
                    (None, None) => None,
                    (Some(offset), Some(epoch))
                        if !epoch.is_empty() && epoch.len() <= MAX_NODE_ID_BYTES =>
                    {
                        Some(Position {
                            epoch: Arc::from(epoch),
                            offset,
                        })
                    }
                    _ => return Err(EnvelopeError::Incomplete("message")),
                };
                RemoteEvent::Message {
                    session,
                    username,
                    user_id,
                    body: wire
                        .body
                        .as_deref()
                        .ok_or(EnvelopeError::Incomplete("message"))?
                        .to_owned(),
                    position,
                }
            }
            "typing" => RemoteEvent::Typing(member("typing")?),
            "seen" => RemoteEvent::Seen {
                username: Arc::from(
                    wire.username
                        .as_deref()
                        .ok_or(EnvelopeError::Incomplete("seen"))?,
                ),
                user_id: Arc::from(
                    wire.user_id
                        .as_deref()
                        .ok_or(EnvelopeError::Incomplete("seen"))?,
                ),
                epoch: Arc::from(
                    wire.epoch
                        .as_deref()
                        .filter(|epoch| !epoch.is_empty() && epoch.len() <= MAX_NODE_ID_BYTES)
                        .ok_or(EnvelopeError::Incomplete("seen"))?,
                ),
                offset: wire.offset.ok_or(EnvelopeError::Incomplete("seen"))?,
            },
            "sync" => RemoteEvent::Sync(
                wire.members
                    .clone()
                    .ok_or(EnvelopeError::Incomplete("sync"))?,
            ),
            _ => return Err(EnvelopeError::UnknownEvent),
        };
        Ok(Envelope {
            node: wire.node.into_owned(),
            seq: wire.seq,
            sent_at_ms: wire.ts,
            event,
        })
    }
}

/// A presence hash value: who a member is.
#[derive(Serialize, Deserialize)]
pub(super) struct PresenceValue<'a> {
    #[serde(borrow)]
    pub username: Cow<'a, str>,
    #[serde(rename = "userId", borrow)]
    pub user_id: Cow<'a, str>,
}

impl PresenceValue<'_> {
    pub(super) fn encode(username: &str, user_id: &str) -> Vec<u8> {
        serde_json::to_vec(&PresenceValue {
            username: Cow::Borrowed(username),
            user_id: Cow::Borrowed(user_id),
        })
        .expect("a presence value always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let bob = RemoteMember {
            session: 7,
            username: "Bob <b>".into(),
            user_id: "bob".into(),
        };
        let events = [
            RemoteEvent::Join(bob.clone()),
            RemoteEvent::Leave { session: 7 },
            RemoteEvent::Message {
                session: 7,
                username: "Bob".into(),
                user_id: "bob".into(),
                body: "hi \"there\" \u{2028}".into(),
                position: None,
            },
            RemoteEvent::Message {
                session: 7,
                username: "Bob".into(),
                user_id: "bob".into(),
                body: "numbered".into(),
                position: Some(Position {
                    epoch: "e1".into(),
                    offset: 42,
                }),
            },
            RemoteEvent::Sync(vec![bob.clone()]),
            RemoteEvent::Sync(vec![]),
            RemoteEvent::Typing(bob),
            RemoteEvent::Seen {
                username: "Bob".into(),
                user_id: "bob".into(),
                epoch: "e1".into(),
                offset: 41,
            },
        ];
        for (seq, event) in events.into_iter().enumerate() {
            let decoded = Envelope::decode(&encode("n1", seq as u64, 5, &event)).unwrap();
            assert_eq!(
                decoded,
                Envelope {
                    node: "n1".into(),
                    seq: seq as u64,
                    sent_at_ms: 5,
                    event
                }
            );
        }
    }

    #[test]
    fn an_open_envelope_completed_as_the_script_does_decodes_with_its_position() {
        let event = RemoteEvent::Message {
            session: 7,
            username: "Bob".into(),
            user_id: "bob".into(),
            body: "}".into(),
            position: None,
        };
        let mut bytes = encode_open("n1", 3, 5, &event);
        bytes.extend_from_slice(br#","offset":9,"epoch":"e2"}"#);
        let decoded = Envelope::decode(&bytes).unwrap();
        let RemoteEvent::Message { position, body, .. } = decoded.event else {
            panic!("a message")
        };
        assert_eq!(body, "}");
        assert_eq!(
            position,
            Some(Position {
                epoch: "e2".into(),
                offset: 9
            })
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"node":"n","seq":1,"ts":0,"event":"leave","session":1}"#,
            br#"{"v":1,"node":"","seq":1,"ts":0,"event":"leave","session":1}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"leave"}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"message","session":1,"username":"a","userId":"a"}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"explode"}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"message","session":1,"username":"a","userId":"a","body":"x","offset":1}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"message","session":1,"username":"a","userId":"a","body":"x","offset":1,"epoch":""}"#,
            br#"{"v":1,"node":"n","seq":1,"ts":0,"event":"seen","username":"a","userId":"a"}"#,
        ] {
            assert!(Envelope::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
