//! The wire protocol: GarinChat's JSON frames, both directions, and the close-code table.
//!
//! - [`client`]: frames from the client, decoded strictly.
//! - [`server`]: frames from the server, encoded as GarinChat's were.
//! - [`close`]: every close code the gateway sends.

pub mod client;
pub mod close;
pub mod server;

pub use client::ClientFrame;
pub use close::{is_valid_peer_close_code, CloseCode};
pub use server::{notice, ServerFrame};
