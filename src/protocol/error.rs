//! The error-code table of protocol v2: refusals that concern one room or one frame, answered
//! with an `error` frame while the socket stays open. A GarinChat socket has no error frames:
//! it gets the close code beside each (none where the refusal cannot happen in v1).
//! `docs/PROTOCOL.md` holds the same table (`tests/docs.rs` keeps them equal).

use super::CloseCode;

/// Declares [`ErrorCode`] from one table: variant, wire name, GarinChat's close.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $wire:literal, v1: $v1:expr;)+) => {
        /// Every error code a v2 `error` frame carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)+
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: [ErrorCode; [$(stringify!($name)),+].len()] = [$(ErrorCode::$name),+];

            /// The code on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $wire,)+
                }
            }

            /// What a GarinChat socket gets instead: a close, where the refusal can happen in v1.
            pub const fn garinchat_close(self) -> Option<CloseCode> {
                match self {
                    $(ErrorCode::$name => $v1,)+
                }
            }
        }
    };
}

error_codes! {
    /// The token's `ROOMS_CLAIM` does not list the room.
    RoomNotAllowed = "room_not_allowed", v1: Some(CloseCode::RoomNotAllowed);
    /// The room or the client-chosen username breaks the naming rules.
    InvalidName = "invalid_name", v1: Some(CloseCode::InvalidName);
    /// The room has `MAX_ROOM_MEMBERS` members.
    RoomFull = "room_full", v1: Some(CloseCode::RoomFull);
    /// A `join` for a room the socket is in.
    AlreadyJoined = "already_joined", v1: Some(CloseCode::ProtocolViolation);
    /// A room frame for a room the socket is not in.
    NotJoined = "not_joined", v1: Some(CloseCode::ProtocolViolation);
    /// A `seen` offset past the room's last message.
    SeenAhead = "seen_ahead", v1: Some(CloseCode::ProtocolViolation);
    /// The socket is in `MAX_ROOMS_PER_SOCKET` rooms.
    TooManyRooms = "too_many_rooms", v1: None;
    /// The user is in `MAX_ROOMS_PER_USER` rooms over its sockets on this node.
    TooManyRoomsForUser = "too_many_rooms_for_user", v1: None;
    /// `DIRECT_MESSAGES=off`.
    DirectOff = "direct_off", v1: None;
    /// `DIRECT_MESSAGES=shared-room` and the recipient shares no room with the sender.
    DirectNotAllowed = "direct_not_allowed", v1: None;
    /// The recipient has no session on any node.
    RecipientOffline = "recipient_offline", v1: None;
    /// Whether the recipient is online cannot be known now (Redis is unreachable).
    Unavailable = "unavailable", v1: None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_distinct_snake_case_words() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert!(names
            .iter()
            .all(|name| name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
