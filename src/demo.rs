//! `palisade demo`: a gateway that runs on a fresh machine with nothing configured.
//!
//! Loopback only, an ephemeral random HS256 secret (printed tokens die with the process), no
//! Redis, and origins relaxed to this machine's own pages. Every other setting still comes
//! from the environment, so the demo shows the same limits production would.

use std::time::Duration;

use crate::auth::mint::{ephemeral_secret, mint_hs_token, TokenRequest};
use crate::config::{Config, ConfigError, Secret};

/// Users the demo prints tokens for.
pub const DEMO_USERS: [(&str, &str); 3] = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")];

/// Demo tokens live this long.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The demo's config: the environment, with the settings that make it safe and standalone
/// forced. Returns the secret too, to mint tokens with.
pub fn demo_config(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Config, Secret), ConfigError> {
    const FORCED: [&str; 7] = [
        "BIND_ADDR",
        "JWT_DECODE_SECRET",
        "JWT_ALGORITHMS",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "ALLOW_MISSING_ORIGIN",
    ];
    let mut pairs: Vec<(String, String)> = env
        .into_iter()
        .filter(|(key, _)| !FORCED.contains(&key.as_str()))
        .collect();
    let port = pairs
        .iter()
        .find(|(key, _)| key == "PORT")
        .map_or_else(|| "8080".to_owned(), |(_, value)| value.clone());
    if !pairs.iter().any(|(key, _)| key == "METRICS_PORT") {
        // The demo needs no admin listener, and must not fail because 9090 is taken.
        pairs.push(("METRICS_PORT".into(), "0".into()));
    }
    if !pairs.iter().any(|(key, _)| key == "ALLOWED_ORIGINS") {
        pairs.push((
            "ALLOWED_ORIGINS".into(),
            format!("http://localhost:{port},http://127.0.0.1:{port}"),
        ));
    }
    let secret = ephemeral_secret();
    pairs.extend([
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("JWT_DECODE_SECRET".to_owned(), secret.expose().to_owned()),
        ("JWT_ALGORITHMS".to_owned(), "HS256".to_owned()),
        // Command-line clients (websocat, wscat) send no Origin.
        ("ALLOW_MISSING_ORIGIN".to_owned(), "true".to_owned()),
    ]);
    Ok((Config::from_pairs(pairs)?, secret))
}

/// Tokens for [`DEMO_USERS`], signed with the demo secret.
pub fn demo_tokens(secret: &Secret) -> Vec<(&'static str, String)> {
    DEMO_USERS
        .iter()
        .map(|(sub, name)| {
            let mut request = TokenRequest::new(sub);
            request.name = Some(name);
            request.ttl = DEMO_TOKEN_TTL;
            let token = mint_hs_token(secret, &request).expect("HS256 signing cannot fail");
            (*name, token)
        })
        .collect()
}
