//! Authentication: who a socket is, proven by a JWT from the configured identity provider.
//!
//! - [`jwt`]: the verifier, with `Validation` built from config only.
//! - [`jwks`]: trusted issuers' key sets, fetched, cached and refreshed.
//! - [`error`]: why a token was refused.
//! - [`claims`]: from claims to an [`Identity`] (user id, name, rooms, `azp`, required claims).
//! - [`revocation`]: the denylist of token ids and subjects (`REVOCATION_FILE`).
//! - [`revoked`]: revocations made at run time (the server API), shared by every node.
//! - [`mint`]: tokens for development (`palisade token`, `palisade demo`) and tests.

pub(crate) mod claims;
pub(crate) mod error;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub mod mint;
pub(crate) mod revocation;
pub(crate) mod revoked;
pub(crate) mod settings;

pub(crate) use claims::Identity;
pub(crate) use error::AuthError;
pub use jwt::TokenVerifier;
pub(crate) use settings::AuthSettings;
