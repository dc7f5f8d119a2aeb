//! The events a receiver gets, and how a batch of them is signed.
//!
//! ```text
//! POST /hooks HTTP/1.1
//! Content-Type: application/json
//! Palisade-Signature: t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//!
//! {"events":[{"id":"evt_3f9c0c2d9b1e4a77d2a8e61f0b5c9e13","type":"user.online","createdMs":1767225600123,"data":{"userId":"alice"}}]}
//! ```
//!
//! `v1` is HMAC-SHA256 over `{t}.{body}` with `WEBHOOK_SECRET`, in lowercase hex, as Stripe
//! signs: a receiver recomputes it over the raw body, compares in constant time, and refuses a
//! `t` too far from its clock (replays). Every event has a unique `id`, kept across retries, so
//! a receiver that saw it already can skip it.

use std::sync::Arc;

use aws_lc_rs::hmac;
use serde::Serialize;

use super::settings::Kind;
use crate::clock;
use crate::observer::Posted;

/// One event.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the gateway decided it, Unix milliseconds.
    #[serde(rename = "createdMs")]
    pub created_ms: u64,
    pub data: Data,
}

/// What an event is about.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Data {
    User {
        #[serde(rename = "userId")]
        user_id: Arc<str>,
    },
    Room {
        room: Arc<str>,
    },
    Message(MessageData),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageData {
    room: Arc<str>,
    user_id: Arc<str>,
    username: Arc<str>,
    body: Box<str>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

impl Event {
    pub(crate) fn new(kind: Kind, data: Data) -> Event {
        Event {
            id: format!("evt_{:032x}", rand::random::<u128>()),
            kind: kind.into(),
            created_ms: clock::unix_ms(),
            data,
        }
    }

    pub(crate) fn message(posted: &Posted) -> Event {
        let (epoch, offset) = posted.position.clone().unzip();
        Event::new(
            Kind::MessagePublished,
            Data::Message(MessageData {
                room: Arc::clone(&posted.room),
                user_id: Arc::clone(&posted.user_id),
                username: Arc::clone(&posted.username),
                body: posted.body.clone(),
                ts: posted.sent_at_ms,
                epoch,
                offset,
            }),
        )
    }
}

/// The body of a POST: `{"events":[…]}`.
pub(crate) fn batch_body(events: &[Event]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Batch<'a> {
        events: &'a [Event],
    }
    serde_json::to_vec(&Batch { events }).expect("events always serialize")
}

/// The `Palisade-Signature` header for `body` sent at `timestamp` (Unix seconds).
pub(crate) fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    format!("t={timestamp},v1={}", clock::hex(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() {
        // RFC 4231 test case 2 gives the HMAC for key "Jefe"; ours signs "{t}.{body}".
        let signed = signature(b"Jefe", 1, b"what do ya want for nothing?");
        let expected = {
            let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
            let tag = hmac::sign(&key, b"1.what do ya want for nothing?");
            tag.as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        };
        assert_eq!(signed, format!("t=1,v1={expected}"));
        assert_eq!(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
                b"what do ya want for nothing?"
            )
            .as_ref()[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "RFC 4231 test case 2"
        );
    }

    #[test]
    fn events_have_unique_ids_and_their_documented_shape() {
        let event = Event::new(
            Kind::UserOnline,
            Data::User {
                user_id: "alice".into(),
            },
        );
        let other = Event::new(
            Kind::RoomEmpty,
            Data::Room {
                room: "lobby".into(),
            },
        );
        assert_ne!(event.id, other.id);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "user.online");
        assert_eq!(json["data"], serde_json::json!({"userId": "alice"}));
        assert!(json["createdMs"].as_u64().unwrap() > 0);
        let body = String::from_utf8(batch_body(&[other])).unwrap();
        assert!(body.starts_with(r#"{"events":[{"id":"evt_"#), "{body}");
        assert!(body.contains(r#""type":"room.empty","#), "{body}");
    }
}
