//! Who may call the server API: a bearer credential from the `Authorization` header only
//! (never the URL, which ends up in logs), either an API key or the identity provider's
//! access token carrying `API_JWT_SCOPE`; and each credential's rate.
//!
//! An address whose requests keep being refused (more than `API_BURST` refusals, refilled at
//! `API_RATE_PER_SEC`) gets 429 without its credential being looked at until it slows down,
//! so guessing keys or sending forged tokens costs the gateway nothing.
//!
//! Keys are held as SHA-256 digests and compared in constant time, every key every time, so
//! neither the comparison nor its early exit says how much of a guess was right. A caller is
//! named in logs by its key's fingerprint (the digest's first 8 hex digits) or its token's
//! subject, never by the secret.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{digest, SHA256};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::DefaultKeyedRateLimiter;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::HeaderMap;
use std::time::Instant;
use tracing::warn;

use super::settings::{parse_key_file, AccessTokens, ApiSettings};
use crate::auth::TokenVerifier;
use crate::clock;

/// A key, as it is kept.
#[derive(Clone)]
struct Key {
    digest: [u8; 32],
    fingerprint: String,
}

impl Key {
    fn new(secret: &str) -> Key {
        let digest = sha256(secret);
        Key {
            fingerprint: format!("key:{}", clock::hex(&digest[..4])),
            digest,
        }
    }
}

fn sha256(text: &str) -> [u8; 32] {
    digest(&SHA256, text.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No bearer credential (401).
    Missing,
    /// A credential that is not one (401).
    Invalid,
    /// A valid access token without the scope (403).
    NoScope,
    /// Over the credential's rate; retry after this long (429).
    OverRate(Duration),
    /// This address's requests were refused too often; retry after this long (429).
    HeldBack(Duration),
}

/// The credentials the API takes.
pub(crate) struct Credentials {
    /// `API_KEYS`.
    inline: Vec<Key>,
    /// `API_KEYS_FILE`'s keys, its path and when it was read.
    file: Option<KeyFile>,
    access_tokens: Option<AccessTokens>,
    rate: DefaultKeyedRateLimiter<String>,
    /// Refused requests per client address.
    refusals: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their refusals, until when.
    held_back: DashMap<IpAddr, Instant>,
}

struct KeyFile {
    path: PathBuf,
    keys: RwLock<Vec<Key>>,
    modified: Mutex<Option<SystemTime>>,
}

impl Credentials {
    /// Credentials from the settings; the key file was read and checked with them.
    pub(crate) fn new(settings: &ApiSettings) -> Credentials {
        let file = settings.keys_file.as_ref().map(|path| {
            let file = KeyFile {
                path: path.clone(),
                keys: RwLock::new(Vec::new()),
                modified: Mutex::new(None),
            };
            file.reload_if_changed();
            file
        });
        Credentials {
            inline: settings.keys.iter().map(|key| Key::new(key)).collect(),
            file,
            access_tokens: settings.access_tokens.clone(),
            rate: DefaultKeyedRateLimiter::keyed(settings.rate),
            refusals: DefaultKeyedRateLimiter::keyed(settings.rate),
            held_back: DashMap::new(),
        }
    }

    /// The caller's name, once its credential is checked and within its rate.
    pub(crate) async fn admit(
        &self,
        headers: &HeaderMap,
        verifier: &TokenVerifier,
        peer: IpAddr,
    ) -> Result<String, Refusal> {
        let now = Instant::now();
        if let Some(until) = self.held_back.get(&peer).map(|until| *until) {
            if now < until {
                return Err(Refusal::HeldBack(until - now));
            }
            self.held_back.remove(&peer);
        }
        let identified = match headers.get(AUTHORIZATION).and_then(bearer) {
            Some(bearer) => self.identify(bearer, verifier).await,
            None => Err(Refusal::Missing),
        };
        let caller = match identified {
            Ok(caller) => caller,
            Err(refusal) => {
                if let Err(not_until) = self.refusals.check_key(&peer) {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    self.held_back.insert(peer, now + wait);
                    return Err(Refusal::HeldBack(wait));
                }
                return Err(refusal);
            }
        };
        match self.rate.check_key(&caller) {
            Ok(()) => Ok(caller),
            Err(not_until) => Err(Refusal::OverRate(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
        }
    }

    async fn identify(&self, bearer: &str, verifier: &TokenVerifier) -> Result<String, Refusal> {
        if let Some(key) = self.key(bearer) {
            return Ok(key.fingerprint);
        }
        let Some(access) = &self.access_tokens else {
            return Err(Refusal::Invalid);
        };
        match verifier
            .verify_access(bearer, &access.audience, &access.scope)
            .await
        {
            Ok(subject) => Ok(format!("token:{subject}")),
            Err(crate::auth::AuthError::MissingScope) => Err(Refusal::NoScope),
            Err(_) => Err(Refusal::Invalid),
        }
    }

    /// The key `presented` is, comparing with every key in constant time.
    fn key(&self, presented: &str) -> Option<Key> {
        let presented = sha256(presented);
        let from_file = self
            .file
            .as_ref()
            .map(|file| file.keys.read().expect("never poisoned").clone())
            .unwrap_or_default();
        let mut found = None;
        for key in self.inline.iter().chain(from_file.iter()) {
            if verify_slices_are_equal(&key.digest, &presented).is_ok() {
                found = Some(key.clone());
            }
        }
        found
    }

    /// Re-reads `API_KEYS_FILE` if it changed, and forgets idle callers' rate state.
    pub(crate) fn housekeep(&self) {
        if let Some(file) = &self.file {
            file.reload_if_changed();
        }
        self.rate.retain_recent();
        self.rate.shrink_to_fit();
        self.refusals.retain_recent();
        self.refusals.shrink_to_fit();
        let now = Instant::now();
        self.held_back.retain(|_, until| *until > now);
    }
}

impl KeyFile {
    /// Reads the file again if its modification time moved; a file that cannot be read or
    /// holds a bad line keeps the keys read before (and says so in the log).
    fn reload_if_changed(&self) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .ok();
        let mut seen = self.modified.lock().expect("never poisoned");
        if modified.is_some() && *seen == modified {
            return;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) => {
                warn!(%err, "API_KEYS_FILE cannot be read; keeping its previous keys");
                return;
            }
        };
        match parse_key_file(&text) {
            Ok(keys) => {
                *self.keys.write().expect("never poisoned") =
                    keys.iter().map(|key| Key::new(key)).collect();
                *seen = modified;
            }
            Err(line) => warn!(
                line,
                "API_KEYS_FILE has a bad line; keeping its previous keys"
            ),
        }
    }
}

/// The credential of `Authorization: Bearer …` (the scheme in any case, RFC 9110).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_from_the_header_only() {
        assert_eq!(bearer(&HeaderValue::from_static("Bearer abc")), Some("abc"));
        assert_eq!(
            bearer(&HeaderValue::from_static("bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer ")), None);
    }

    #[test]
    fn fingerprints_name_keys_without_showing_them() {
        let key = Key::new("0123456789abcdef0123456789abcdef");
        assert_eq!(key.fingerprint.len(), "key:".len() + 8);
        assert!(!key.fingerprint.contains("0123456789"));
    }
}
