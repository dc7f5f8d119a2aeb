//! The wire protocol: GarinChat's JSON frames, both directions, and the close-code table.
//!
//! - [`client`]: frames from the client, decoded strictly.
//! - [`server`]: frames from the server, encoded as GarinChat's were.
//! - [`close`]: every close code the gateway sends.

pub(crate) mod client;
pub(crate) mod close;
pub(crate) mod server;

pub use client::{ClientFrame, Since};
pub(crate) use close::is_valid_peer_close_code;
pub use close::CloseCode;
pub(crate) use server::{notice, Listed, MembersFrame, ServerFrame};
