//! Authentication: who a socket is, proven by a JWT from the configured identity provider.
//!
//! - [`jwt`]: the verifier, with `Validation` built from config only.
//! - [`jwks`]: trusted issuers' key sets, fetched, cached and refreshed.
//! - [`error`]: why a token was refused.
//! - [`claims`]: from claims to an [`Identity`] (user id, name, rooms, `azp`, required claims).
//! - [`revocation`]: the denylist of token ids and subjects.
//! - [`mint`]: tokens for development (`palisade token`, `palisade demo`) and tests.

pub mod claims;
pub mod error;
pub mod jwks;
pub mod jwt;
pub mod mint;
pub mod revocation;
pub mod settings;

pub use claims::Identity;
pub use error::AuthError;
pub use jwt::TokenVerifier;
pub(crate) use settings::AuthSettings;
