//! Frames from the server, encoded once per broadcast into shared [`Bytes`], with Go's
//! HTML-safe escaping so a GarinChat client sees the same bytes it saw before.

use std::io;

use bytes::Bytes;

/// The `body` of a `{"type":"notice"}` frame (Palisade's addition; clients that do not know
/// the type ignore it).
pub(crate) mod notice {
    /// Cross-node delivery stopped (Redis is unreachable): members on this node still reach
    /// each other, but messages from and to other nodes are being missed.
    pub(crate) const DELIVERY_INTERRUPTED: &str = "delivery_interrupted";
    /// Cross-node delivery is back. What was sent meanwhile is not replayed; `join` and
    /// `userleave` frames follow for whoever arrived or left on other nodes.
    pub(crate) const DELIVERY_RESTORED: &str = "delivery_restored";
}

/// A frame from the server. Field order and names are GarinChat's; `userId` is Palisade's
/// addition (the token's subject) and comes last.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ServerFrame<'a> {
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
    pub(crate) fn join(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "join",
            body: "",
            username,
            total_users: Some(total_users),
            user_id,
        }
    }

    pub(crate) fn message(body: &'a str, username: &'a str, user_id: &'a str) -> Self {
        Self {
            kind: "message",
            body,
            username,
            total_users: None,
            user_id,
        }
    }

    pub(crate) fn user_leave(username: &'a str, user_id: &'a str, total_users: usize) -> Self {
        Self {
            kind: "userleave",
            body: "",
            username,
            total_users: Some(total_users),
            user_id,
        }
    }

    /// A notice from the gateway itself; `code` is one of [`notice`]'s.
    pub(crate) fn notice(code: &'a str) -> Self {
        Self {
            kind: "notice",
            body: code,
            username: "",
            total_users: None,
            user_id: "",
        }
    }

    /// The frame's JSON, escaped as Go's `encoding/json` does (`<`, `>`, `&`, U+2028, U+2029).
    pub(crate) fn encode(&self) -> Bytes {
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
}
