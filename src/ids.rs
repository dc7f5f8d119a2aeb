//! Small identifiers shared by the layers that must not import each other (the hub, the
//! broker, the session).

/// Identifies one socket's session for the lifetime of the process.
pub(crate) type SessionId = u64;

/// The session id of messages from no session (the server API's): sessions count from 1.
pub(crate) const SYSTEM_SESSION: SessionId = 0;
