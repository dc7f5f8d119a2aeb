//! The close-code table: every code the gateway sends, its reason, and whether it counts as
//! abuse. `docs/PROTOCOL.md` holds the same table (`tests/docs.rs` keeps them equal), and
//! everything else (the metrics' pre-created series, the JS client's table) is derived from
//! this one.

use std::fmt;

/// Declares [`CloseCode`] from one table: variant, number, reason, abuse.
macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal, abuse: $abuse:literal;)+) => {
        /// Every close code the gateway sends.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum CloseCode {
            $($(#[$doc])* $name,)+
        }

        impl CloseCode {
            /// Every code, in the table's order.
            pub const ALL: [CloseCode; [$(stringify!($name)),+].len()] = [$(CloseCode::$name),+];

            /// The number on the wire.
            pub const fn code(self) -> u16 {
                match self {
                    $(CloseCode::$name => $code,)+
                }
            }

            /// The reason sent with this code: short, static, never derived from input.
            pub const fn reason(self) -> &'static str {
                match self {
                    $(CloseCode::$name => $reason,)+
                }
            }

            /// Whether this close is the client's fault on purpose rather than by accident or
            /// load: such a close earns a strike towards a ban (see `bans`). Auth failures and
            /// bad names are not counted: an expired token or a typo is not an attack.
            pub const fn is_abuse(self) -> bool {
                match self {
                    $(CloseCode::$name => $abuse,)+
                }
            }
        }
    };
}

close_codes! {
    /// The server is shutting down; reconnect elsewhere or later.
    GoingAway = 1001, "server shutting down, reconnect", abuse: false;
    /// A WebSocket framing rule was broken.
    ProtocolError = 1002, "websocket protocol error", abuse: true;
    /// A binary frame; the protocol is JSON text only.
    UnsupportedData = 1003, "binary frames are not supported", abuse: true;
    /// A text message that is not valid UTF-8.
    InvalidPayload = 1007, "invalid utf-8", abuse: true;
    /// A message over `MAX_MESSAGE_BYTES` or `MAX_FRAGMENTS`.
    MessageTooBig = 1009, "message too big", abuse: true;
    /// No `auth` frame within `AUTH_TIMEOUT_MS`.
    AuthTimeout = 4001, "auth timeout", abuse: false;
    /// The token was refused.
    AuthFailed = 4002, "auth failed", abuse: false;
    /// No `join` frame within `JOIN_TIMEOUT_MS` of auth (or of `userleave`).
    JoinTimeout = 4003, "join timeout", abuse: false;
    /// A frame that is not valid JSON, not a known type, or not allowed in this state.
    ProtocolViolation = 4004, "protocol violation", abuse: true;
    /// The username or room name breaks the naming rules.
    InvalidName = 4005, "invalid username or room", abuse: false;
    /// Messages or control frames faster than the configured rate.
    RateLimited = 4006, "rate limited", abuse: true;
    /// The socket did not read its frames fast enough; its queue filled.
    SlowConsumer = 4007, "slow consumer", abuse: false;
    /// The user already has `MAX_SESSIONS_PER_USER` sessions open.
    TooManySessions = 4008, "too many sessions for this user", abuse: false;
    /// The user is banned for repeated abuse.
    Banned = 4009, "banned", abuse: false;
    /// No pong within `PONG_TIMEOUT_SECS` of a ping.
    PongTimeout = 4010, "ping timeout", abuse: false;
    /// Nothing received within `IDLE_TIMEOUT_SECS`.
    IdleTimeout = 4011, "idle timeout", abuse: false;
    /// The room already has `MAX_ROOM_MEMBERS` members.
    RoomFull = 4012, "room full", abuse: false;
    /// The token's `exp` (plus `JWT_LEEWAY_SECS`) passed while connected.
    TokenExpired = 4013, "token expired", abuse: false;
    /// The token's `ROOMS_CLAIM` does not list the room.
    RoomNotAllowed = 4014, "room not allowed", abuse: false;
    /// The product's backend disconnected the user through the server API.
    Disconnected = 4015, "disconnected by the server", abuse: false;
    /// The session's token, or every token of its user, was revoked through the server API.
    TokenRevoked = 4016, "token revoked", abuse: false;
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// Whether a close code received from a client is one RFC 6455 lets an endpoint send.
pub(crate) fn is_valid_peer_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn abuse_is_what_a_client_does_on_purpose() {
        let abuse: Vec<u16> = CloseCode::ALL
            .iter()
            .filter(|c| c.is_abuse())
            .map(|c| c.code())
            .collect();
        assert_eq!(abuse, [1002, 1003, 1007, 1009, 4004, 4006]);
    }
}
