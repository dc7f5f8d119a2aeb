//! The wire protocol: GarinChat's JSON frames and protocol v2's, both directions, and the
//! close-code and error-code tables.
//!
//! - [`client`]: frames from the client, decoded strictly.
//! - [`server`]: frames from the server, encoded as GarinChat's were.
//! - [`close`]: every close code the gateway sends.
//! - [`error`]: every error code protocol v2's `error` frames carry.

pub(crate) mod client;
pub(crate) mod close;
pub(crate) mod error;
pub(crate) mod server;

pub use client::{ClientFrame, ClientRequest, Since};
pub(crate) use close::is_valid_peer_close_code;
pub use close::CloseCode;
pub use error::ErrorCode;
pub(crate) use server::{notice, Dialect, DirectMessage, Listed, MembersFrame, ServerFrame};

/// The subprotocol a client offers (`Sec-WebSocket-Protocol`) to speak protocol v2.
pub const V2_SUBPROTOCOL: &str = "palisade.v2";

/// Which protocol a socket speaks, chosen at the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// GarinChat's: one room per socket, refusals close.
    GarinChat,
    /// `palisade.v2`: many rooms per socket, requests with ids, error frames, direct messages.
    V2,
}
