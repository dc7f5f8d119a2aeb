//! Tokens for the load: HS256 with a shared secret, or ES256 with the repository's test key
//! pair (public, for tests and benchmarks only).

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The test key pair of `tests/fixtures/` (never for production).
pub const ES256_PRIVATE_PEM: &str = include_str!("../../tests/fixtures/ec_private.pem");
pub const ES256_PUBLIC_PEM: &str = include_str!("../../tests/fixtures/ec_public.pem");

#[derive(Clone)]
pub enum Signer {
    Hs256(String),
    Es256,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    iat: u64,
    exp: u64,
}

impl Signer {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Signer::Hs256(_) => "HS256",
            Signer::Es256 => "ES256",
        }
    }

    /// A token for `user`, valid for a day.
    pub fn token(&self, user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let claims = Claims {
            sub: user,
            name: user,
            iat: now,
            exp: now + 86_400,
        };
        let (algorithm, key) = match self {
            Signer::Hs256(secret) => (
                Algorithm::HS256,
                EncodingKey::from_secret(secret.as_bytes()),
            ),
            Signer::Es256 => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(ES256_PRIVATE_PEM.as_bytes())
                    .expect("the test key parses"),
            ),
        };
        encode(&Header::new(algorithm), &claims, &key).expect("signing cannot fail")
    }
}
