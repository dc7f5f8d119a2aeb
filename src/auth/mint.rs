//! Minting HS tokens for development: `palisade token`, the demo's printed tokens, and tests.
//! Production tokens come from the identity provider; the gateway only verifies them.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::Serialize;

use super::jwt::unix_now;
use crate::config::Secret;

#[derive(Serialize)]
struct DevClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// What to put in a development token.
pub struct TokenRequest<'a> {
    /// The user id (`sub`).
    pub subject: &'a str,
    /// The display name (`name`).
    pub name: Option<&'a str>,
    /// How long from now until `exp`.
    pub ttl: Duration,
    /// `iss`, when set.
    pub issuer: Option<&'a str>,
    /// `aud`, when set.
    pub audience: Option<&'a str>,
    /// An HS algorithm.
    pub algorithm: Algorithm,
}

impl<'a> TokenRequest<'a> {
    /// A token for `subject` for an hour, HS256, no issuer or audience.
    pub fn new(subject: &'a str) -> Self {
        Self {
            subject,
            name: None,
            ttl: Duration::from_secs(3600),
            issuer: None,
            audience: None,
            algorithm: Algorithm::HS256,
        }
    }
}

/// Signs an HS256/384/512 token with `secret`.
pub fn mint_hs_token(
    secret: &Secret,
    request: &TokenRequest<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let claims = DevClaims {
        sub: request.subject,
        name: request.name,
        iat: now,
        exp: now + request.ttl.as_secs(),
        iss: request.issuer,
        aud: request.audience,
    };
    encode(
        &Header::new(request.algorithm),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// A random 256-bit secret, hex-encoded, for `palisade demo`.
pub fn ephemeral_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}
