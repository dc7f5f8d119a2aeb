//! Authentication: who a socket is, proven by a JWT from the configured identity provider.
//!
//! - [`jwt`]: the verifier, with `Validation` built from config only.
//! - [`mint`]: tokens for development (`palisade token`, `palisade demo`) and tests.

pub mod jwt;
pub mod mint;

pub use jwt::{AuthError, Identity, TokenVerifier};
