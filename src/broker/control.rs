//! What travels between nodes besides rooms: bans, unbans, kicks, revocations and direct
//! messages, one JSON object per Pub/Sub message on the `{prefix}control` channel.
//!
//! ```text
//! {"v":1,"node":"3f9c…","notice":"ban","offender":"user:alice","until":1763840000123}
//! {"v":1,"node":"3f9c…","notice":"unban","offender":"ip:203.0.113.7"}
//! {"v":1,"node":"3f9c…","notice":"kick","user":"alice","code":4009}
//! {"v":1,"node":"3f9c…","notice":"revoke","revoked":"jti:5f2b…","until":1763840000123}
//! {"v":1,"node":"3f9c…","notice":"direct","user":"bob","from":"alice","name":"Alice","body":"hi"}
//! ```
//!
//! A node skips its own notices (it enforced them when it decided them). Nothing on the
//! channel is believed unchecked: offenders and codes are parsed, unknown ones refused.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Notice;
use crate::auth::revoked::Revoked;
use crate::bans::Offender;
use crate::protocol::{CloseCode, DirectMessage};

const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    node: String,
    notice: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

/// Encodes a notice of this node's.
pub(crate) fn encode(node: &str, notice: &Notice) -> Vec<u8> {
    let mut wire = Wire {
        v: VERSION,
        node: node.to_owned(),
        notice: String::new(),
        offender: None,
        until: None,
        user: None,
        code: None,
        revoked: None,
        from: None,
        name: None,
        body: None,
    };
    match notice {
        Notice::Ban { offender, until_ms } => {
            wire.notice = "ban".into();
            wire.offender = Some(offender.to_string());
            wire.until = Some(*until_ms);
        }
        Notice::Unban { offender } => {
            wire.notice = "unban".into();
            wire.offender = Some(offender.to_string());
        }
        Notice::Kick { user, code } => {
            wire.notice = "kick".into();
            wire.user = Some(user.to_string());
            wire.code = Some(code.code());
        }
        Notice::Revoke { revoked, until_ms } => {
            wire.notice = "revoke".into();
            wire.revoked = Some(revoked.to_string());
            wire.until = Some(*until_ms);
        }
        Notice::Direct(direct) => {
            wire.notice = "direct".into();
            wire.user = Some(direct.to.to_string());
            wire.from = Some(direct.from.to_string());
            wire.name = Some(direct.username.to_string());
            wire.body = Some(direct.body.to_string());
        }
    }
    serde_json::to_vec(&wire).expect("a notice always serializes")
}

/// Decodes a notice: the publishing node and what it says; `None` for anything malformed.
pub(crate) fn decode(bytes: &[u8]) -> Option<(String, Notice)> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    if wire.v != VERSION {
        return None;
    }
    let offender = || Offender::parse(wire.offender.as_deref()?);
    let notice = match wire.notice.as_str() {
        "ban" => Notice::Ban {
            offender: offender()?,
            until_ms: wire.until?,
        },
        "unban" => Notice::Unban {
            offender: offender()?,
        },
        "kick" => Notice::Kick {
            user: Arc::from(wire.user.as_deref().filter(|user| !user.is_empty())?),
            code: CloseCode::ALL
                .into_iter()
                .find(|code| Some(code.code()) == wire.code)?,
        },
        "revoke" => Notice::Revoke {
            revoked: Revoked::parse(wire.revoked.as_deref()?)?,
            until_ms: wire.until?,
        },
        "direct" => Notice::Direct(DirectMessage {
            to: Arc::from(wire.user.as_deref().filter(|user| !user.is_empty())?),
            from: Arc::from(wire.from.as_deref().filter(|user| !user.is_empty())?),
            username: Arc::from(wire.name.as_deref()?),
            body: Arc::from(wire.body.as_deref()?),
        }),
        _ => return None,
    };
    Some((wire.node, notice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::IpKey;

    #[test]
    fn notices_round_trip_and_garbage_is_refused() {
        for notice in [
            Notice::Ban {
                offender: Offender::User("alice".into()),
                until_ms: 42,
            },
            Notice::Unban {
                offender: Offender::Ip(IpKey::of([203, 0, 113, 7].into())),
            },
            Notice::Kick {
                user: "bob".into(),
                code: CloseCode::Banned,
            },
            Notice::Revoke {
                revoked: Revoked::TokenId("t-1".into()),
                until_ms: 7,
            },
            Notice::Direct(DirectMessage {
                to: "bob".into(),
                from: "alice".into(),
                username: "Alice".into(),
                body: "<hi>".into(),
            }),
        ] {
            assert_eq!(
                decode(&encode("n1", &notice)),
                Some(("n1".to_owned(), notice))
            );
        }
        for bad in [
            &b"{}"[..],
            br#"{"v":1,"node":"n","notice":"ban","offender":"host:x","until":1}"#,
            br#"{"v":1,"node":"n","notice":"kick","user":"a","code":1234}"#,
            br#"{"v":2,"node":"n","notice":"unban","offender":"user:a"}"#,
            br#"{"v":1,"node":"n","notice":"direct","user":"","from":"a","name":"A","body":"x"}"#,
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
