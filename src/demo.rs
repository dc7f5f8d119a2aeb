//! `palisade demo`: a gateway that runs on a fresh machine with nothing configured, with a
//! chat page to try it in a browser.
//!
//! Loopback only, an ephemeral random HS256 secret (printed tokens die with the process), no
//! Redis, and origins relaxed to this machine's own pages. Every other setting still comes
//! from the environment, so the demo shows the same limits production would.
//!
//! In demo mode only, plain GETs serve the page (`/`), its script (`/demo.js`) and the client
//! module (`/palisade.js`, the reference client in `clients/js/`), and `POST /demo/token`
//! mints a token for a chosen display name — from loopback peers only. `palisade serve` never
//! serves any of these.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use rand::RngCore;

use crate::auth::mint::{ephemeral_secret, mint_hs_token, TokenRequest};
use crate::config::{ConfigError, Secret};
use crate::http::{with_type, ResponseFuture};
use crate::names::sanitize_display_name;
use crate::names::MIN_NAME_CHARS;
use crate::server::Pages;
use crate::settings::Settings;

const PAGE: &str = include_str!("../clients/demo/index.html");
const PAGE_SCRIPT: &str = include_str!("../clients/demo/demo.js");
const CLIENT_MODULE: &str = include_str!("../clients/js/palisade.js");

/// The largest token request body read.
const MAX_TOKEN_REQUEST_BYTES: usize = 1024;

/// Scripts only from this server, sockets only to it, no inline script.
const PAGE_POLICY: &str =
    "default-src 'self'; connect-src 'self' ws://localhost:* ws://127.0.0.1:*; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// Users the demo prints tokens for.
pub const DEMO_USERS: [(&str, &str); 3] = [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")];

/// Demo tokens live this long.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The demo's settings: the environment, with the settings that make it safe and standalone
/// forced. Returns the secret too, to mint tokens with.
pub fn demo_settings(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Settings, Secret), ConfigError> {
    // Whatever a production .env says about identity and origins, the demo's own tokens and
    // page must work: these are set by the demo alone.
    const FORCED: [&str; 17] = [
        "BIND_ADDR",
        "ALLOWED_ORIGINS",
        "JWT_DECODE_SECRET",
        "JWT_ALGORITHMS",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "JWKS_URL",
        "TRUSTED_ISSUERS",
        "JWT_ALLOWED_AZP",
        "JWT_REQUIRED_CLAIMS",
        "USER_ID_CLAIM",
        "USERNAME_CLAIM",
        "ROOMS_CLAIM",
        "REVOCATION_FILE",
        "BAN_STRIKES",
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
    if port.trim() == "0" {
        // The page's origin names the port, so it must be known before binding.
        return Err(ConfigError::Invalid {
            var: "PORT",
            why: "palisade demo needs a fixed port".into(),
        });
    }
    pairs.push((
        "ALLOWED_ORIGINS".into(),
        format!("http://localhost:{port},http://127.0.0.1:{port}"),
    ));
    // Everyone on a demo is on loopback: one visitor's rate-limit kicks must not ban the
    // page for all the others.
    pairs.push(("BAN_STRIKES".into(), "1000000".into()));
    let secret = ephemeral_secret();
    pairs.extend([
        ("BIND_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("JWT_DECODE_SECRET".to_owned(), secret.expose().to_owned()),
        ("JWT_ALGORITHMS".to_owned(), "HS256".to_owned()),
        // Command-line clients (websocat, wscat) send no Origin.
        ("ALLOW_MISSING_ORIGIN".to_owned(), "true".to_owned()),
    ]);
    let settings = Settings::from_pairs(pairs)?;
    Ok((settings, secret))
}

/// The demo's pages, plugged into the public port: `/` and its scripts, and the token endpoint.
pub struct DemoPages {
    secret: Secret,
    port: u16,
    origins: Vec<String>,
    username_max_chars: usize,
}

impl DemoPages {
    /// The pages for a gateway started with `settings`, minting tokens with `secret`.
    pub fn new(settings: &Settings, secret: Secret) -> Arc<DemoPages> {
        Arc::new(DemoPages {
            secret,
            port: settings.port(),
            origins: settings
                .env()
                .allowed_origins
                .as_ref()
                .map(|list| list.0.clone())
                .unwrap_or_default(),
            username_max_chars: settings.session.names.username_max_chars,
        })
    }
}

impl Pages for DemoPages {
    fn serve(&self, peer: SocketAddr, request: Request<Incoming>) -> ResponseFuture<'_> {
        Box::pin(serve(self, peer, request))
    }
}

/// Answers the demo's plain HTTP requests; `None` for paths it does not serve.
async fn serve(
    demo: &DemoPages,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/" | "/demo") => asset(PAGE, "text/html; charset=utf-8"),
        (&Method::GET, "/demo.js") => asset(PAGE_SCRIPT, "text/javascript; charset=utf-8"),
        (&Method::GET, "/palisade.js") => asset(CLIENT_MODULE, "text/javascript; charset=utf-8"),
        (&Method::POST, "/demo/token") => token(demo, peer, request).await,
        _ => return None,
    };
    Some(response)
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn reply(status: StatusCode, json: serde_json::Value) -> Response<Full<Bytes>> {
    with_type(status, json.to_string(), "application/json")
}

/// `POST /demo/token` with `{"name": "Ada"}`: a token for a fresh guest id with that display
/// name. Loopback peers only: the demo's secret must not mint tokens for the network.
async fn token(
    demo: &DemoPages,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !peer.ip().is_loopback() {
        return reply(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "loopback only"}),
        );
    }
    // A page elsewhere must not mint tokens through the visitor's browser: the request must
    // name this server (no DNS rebinding) and come from its own page, if from a page at all.
    let port = demo.port;
    let own_host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| {
            host == format!("localhost:{port}") || host == format!("127.0.0.1:{port}")
        });
    let own_origin = request
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|origin| origin.to_str().ok())
        .is_none_or(|origin| demo.origins.iter().any(|allowed| allowed == origin));
    if !own_host || !own_origin {
        return reply(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "not from this server"}),
        );
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_TOKEN_REQUEST_BYTES)
        .collect()
        .await
    else {
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({"error": "too large"}),
        );
    };
    #[derive(serde::Deserialize)]
    struct TokenRequestBody {
        name: String,
    }
    let name = serde_json::from_slice::<TokenRequestBody>(&body.to_bytes())
        .ok()
        .and_then(|body| sanitize_display_name(&body.name, demo.username_max_chars))
        .filter(|name| name.chars().count() >= MIN_NAME_CHARS);
    let Some(name) = name else {
        return reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "send {\"name\": \"...\"} with at least 3 characters"}),
        );
    };
    let mut id = [0u8; 4];
    rand::rng().fill_bytes(&mut id);
    let user_id = format!(
        "guest-{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut request = TokenRequest::new(&user_id);
    request.name = Some(&name);
    request.ttl = DEMO_TOKEN_TTL;
    match mint_hs_token(&demo.secret, &request) {
        Ok(token) => reply(
            StatusCode::OK,
            serde_json::json!({"token": token, "userId": user_id, "name": name}),
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "mint failed"}),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_production_env_does_not_break_the_demo() {
        let production = env(&[
            ("PORT", "9100"),
            ("ALLOWED_ORIGINS", "https://chat.example.com"),
            ("JWKS_URL", "https://idp.example.com/jwks.json"),
            ("JWT_ISSUER", "https://idp.example.com/"),
            ("ROOMS_CLAIM", "rooms"),
            ("USER_ID_CLAIM", "uid"),
            ("JWT_REQUIRED_CLAIMS", "email"),
            ("BAN_STRIKES", "3"),
        ]);
        let (settings, _) = demo_settings(production).unwrap();
        let env = settings.env();
        assert!(env.jwks_url.is_none() && env.trusted_issuers.is_none());
        assert_eq!(env.rooms_claim, None);
        assert_eq!(env.user_id_claim, "sub");
        assert_eq!(
            env.allowed_origins.as_ref().unwrap().0,
            ["http://localhost:9100", "http://127.0.0.1:9100"]
        );
        assert!(settings.bans.strikes > 1000);
    }

    #[test]
    fn the_demo_needs_a_fixed_port() {
        let err = demo_settings(env(&[("PORT", "0")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("PORT"), "{err}");
    }
}
