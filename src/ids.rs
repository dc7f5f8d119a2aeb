//! Small identifiers shared by the layers that must not import each other (the hub, the
//! broker, the session).

/// Identifies one socket's session for the lifetime of the process.
pub(crate) type SessionId = u64;
