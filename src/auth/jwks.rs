//! Key sets published by identity providers (JWKS), fetched, cached and refreshed.
//!
//! Keys come only from the configured URL of each trusted issuer, never from a token (`jku`,
//! `x5u`, `jwk` and `x5c` headers are ignored). Each issuer's keys are cached by `kid` and:
//! - fetched at start-up (readiness waits for the first good set);
//! - refreshed on a timer: the response's `Cache-Control: max-age`, kept between
//!   `JWKS_REFETCH_COOLDOWN_SECS` and `JWKS_REFRESH_SECS` (the latter when there is none);
//! - fetched again when a token names a `kid` not in the cache — at most once per
//!   `JWKS_REFETCH_COOLDOWN_SECS`, whoever asks, with concurrent askers waiting for the one
//!   fetch (single flight) rather than starting their own;
//! - kept when a fetch fails, times out (`JWKS_TIMEOUT_MS`) or returns garbage: the last good
//!   set stays in force.
//!
//! Keys that cannot verify a signature are skipped (no `kid`, symmetric `oct` keys, encryption
//! keys, unknown types); a document with no usable key at all is garbage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::settings::JwksTiming;
use crate::config::TrustedIssuer;
use crate::metrics::labels::FetchResult;
use crate::metrics::Metrics;

/// The largest JWKS document read; real ones are a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;
/// The longest `kid` looked up; anything longer is refused without a fetch.
pub(crate) const MAX_KID_BYTES: usize = 256;

/// A public key from a key set, with what it may verify.
pub struct VerifyingKey {
    /// The key's `alg`, when the set names one: the token's `alg` must then be exactly it.
    pub algorithm: Option<Algorithm>,
    /// The key type's family: the token's `alg` must be of it.
    pub family: AlgorithmFamily,
    pub key: DecodingKey,
}

impl VerifyingKey {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        alg.family() == self.family && self.algorithm.is_none_or(|own| own == alg)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document")]
    NotJwks,
    #[error("no usable signing key")]
    NoUsableKey,
    #[error("timed out")]
    Timeout,
}

/// One fetched key set, by `kid`.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
}

impl KeySet {
    /// Parses a JWKS document, skipping keys that cannot verify signatures.
    pub(crate) fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
        let keys: HashMap<_, _> = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = verifying_key(&jwk)?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn get(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.get(kid).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        // A shared secret has no business in a public key set; unknown types are skipped.
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(alg) => Some(
            Algorithm::try_from(alg)
                .ok()
                .filter(|alg| alg.family() == family)?,
        ),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyingKey {
        algorithm,
        family,
        key,
    })
}

/// One trusted issuer and its cached keys.
pub struct IssuerKeys {
    pub issuer: TrustedIssuer,
    client: reqwest::Client,
    /// The newest key set, with the number of the fetch that brought it.
    current: RwLock<(u64, Arc<KeySet>)>,
    /// Numbers fetches in the order they start, so a slow old fetch never overwrites the
    /// result of a newer one.
    fetches_started: AtomicU64,
    loaded: AtomicBool,
    /// When the last on-demand refetch started; the lock makes refetches single-flight.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    cooldown: Duration,
    refresh: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl IssuerKeys {
    pub(crate) fn new(
        issuer: TrustedIssuer,
        timing: &JwksTiming,
        metrics: Arc<Metrics>,
    ) -> IssuerKeys {
        let client = reqwest::Client::builder()
            .timeout(timing.timeout)
            .connect_timeout(timing.timeout)
            // Key sets are never behind redirects we should follow to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS client can be built");
        IssuerKeys {
            issuer,
            client,
            current: RwLock::new((0, Arc::new(KeySet::default()))),
            fetches_started: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            last_refetch: tokio::sync::Mutex::new(None),
            cooldown: timing.cooldown,
            refresh: timing.refresh,
            timeout: timing.timeout,
            metrics,
        }
    }

    /// Whether a good key set has been fetched at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    pub fn get(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.current.read().expect("key set lock").1.get(kid)
    }

    /// The key for a `kid` the cache lacks: one fetch per cooldown at most, shared by everyone
    /// asking meanwhile.
    pub async fn refetch_for(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        if kid.len() > MAX_KID_BYTES {
            return None;
        }
        let mut last = self.last_refetch.lock().await;
        if let Some(key) = self.get(kid) {
            return Some(key); // fetched by someone else while we waited
        }
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return None;
        }
        debug!(issuer = %self.issuer.issuer, kid_bytes = kid.len(), "unknown kid: refetching keys");
        let _ = self.fetch().await;
        // The cooldown runs from the end of the fetch: those who queued meanwhile find it
        // fresh and give up at once instead of each fetching in turn.
        *last = Some(Instant::now());
        self.get(kid)
    }

    /// Fetches the key set once; on success replaces the cache and returns the `max-age`.
    pub async fn fetch(&self) -> Result<Option<Duration>, JwksError> {
        let number = self.fetches_started.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = match tokio::time::timeout(self.timeout, self.download()).await {
            Ok(result) => result,
            Err(_) => Err(JwksError::Timeout),
        };
        match outcome {
            Ok((keys, max_age)) => {
                self.metrics.jwks_fetch(FetchResult::Ok);
                info!(issuer = %self.issuer.issuer, keys = keys.len(), "key set loaded");
                let mut current = self.current.write().expect("key set lock");
                if number > current.0 {
                    *current = (number, Arc::new(keys));
                }
                drop(current);
                self.loaded.store(true, Ordering::SeqCst);
                Ok(max_age)
            }
            Err(err) => {
                self.metrics.jwks_fetch(FetchResult::Error);
                warn!(issuer = %self.issuer.issuer, %err, "key set fetch failed; keeping the last good keys");
                Err(err)
            }
        }
    }

    async fn download(&self) -> Result<(KeySet, Option<Duration>), JwksError> {
        let mut response = self
            .client
            .get(&self.issuer.jwks_url)
            .send()
            .await
            .map_err(|err| JwksError::Fetch(err.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| JwksError::Fetch(err.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((KeySet::parse(&body)?, max_age))
    }

    /// Keeps the keys fresh until shutdown: fetch now, then as `max-age` says (within
    /// bounds), retrying failures after the cooldown.
    pub async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => return,
                fetched = self.fetch() => fetched,
            };
            let wait = match fetched {
                Ok(Some(max_age)) => max_age.clamp(self.cooldown, self.refresh.max(self.cooldown)),
                Ok(None) => self.refresh,
                Err(_) => self.cooldown,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `max-age` from a `Cache-Control` value; `no-cache`/`no-store` count as 0.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .map(str::trim)
        .find_map(|directive| {
            if directive.eq_ignore_ascii_case("no-cache")
                || directive.eq_ignore_ascii_case("no-store")
            {
                return Some(Duration::ZERO);
            }
            let (name, value) = directive.split_once('=')?;
            name.trim().eq_ignore_ascii_case("max-age").then(|| {
                value
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn parses_usable_keys_and_skips_the_rest() {
        let body = format!(
            r#"{{"keys":[{RSA},
              {{"kty":"oct","kid":"secret","k":"c2VjcmV0"}},
              {{"kty":"RSA","use":"sig","n":"AQAB","e":"AQAB"}},
              {{"kty":"XYZ","kid":"odd"}},
              {{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}}]}}"#
        );
        let set = KeySet::parse(body.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        let key = set.get("r1").unwrap();
        assert!(key.accepts(Algorithm::RS256));
        assert!(!key.accepts(Algorithm::RS512), "the key's alg is binding");
        assert!(!key.accepts(Algorithm::HS256));
        assert!(!key.accepts(Algorithm::ES256));
    }

    #[test]
    fn garbage_is_refused() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"keys":[]}"#,
            br#"{"keys":[{"kty":"oct","kid":"a","k":"AA"}]}"#,
        ] {
            assert!(
                KeySet::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn reads_max_age() {
        assert_eq!(
            max_age("public, max-age=3600, must-revalidate"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
