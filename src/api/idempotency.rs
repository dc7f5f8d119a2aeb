//! `Idempotency-Key` for the server API's publishes: a retried request with the same key
//! within `API_IDEMPOTENCY_WINDOW_SECS` gets the first one's response (marked
//! `Idempotent-Replayed: true`) and delivers nothing again — on every node, since with Redis
//! the key is claimed there (`SET NX`) before the message is posted. While the first request
//! is being served, a retry gets 409; the key sent with another request (another path or
//! body) gets 422. A request that failed gives its key up, so it can be retried.
//!
//! A node without Redis remembers its keys itself, at most `API_IDEMPOTENCY_MAX_KEYS`
//! (past that, 429 until some expire).

use std::time::Duration;

use dashmap::DashMap;
use hyper::HeaderMap;
use tokio::time::Instant;

use super::problem::Problem;
use crate::broker::{Broker, Cluster, KeyClaim};
use crate::clock;

/// The longest key accepted.
pub(crate) const MAX_KEY_CHARS: usize = 255;

/// How long a key is held for a request still being served: a request cut off before it was
/// answered (its node crashed, its connection dropped) frees its key then, rather than leave
/// retries refused for the whole window.
const IN_FLIGHT_LEASE: Duration = Duration::from_secs(30);

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
pub(crate) fn key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("");
    let visible = |c: char| c.is_ascii_graphic();
    if key.is_empty() || key.len() > MAX_KEY_CHARS || !key.chars().all(visible) {
        return Err(Problem::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// A request's fingerprint: a digest of its method, path and body, so a key reused for
/// another request is told apart from a retry.
pub(crate) fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [method.as_bytes(), b" ", path.as_bytes(), b"\n", body] {
        context.update(part);
    }
    clock::hex(context.finish().as_ref())
}

struct Held {
    /// The request's fingerprint, then a space and the response once it was answered.
    value: String,
    expires: Instant,
}

/// The keys of a node without Redis.
pub(crate) struct Keys {
    held: DashMap<String, Held>,
    window: Duration,
    max: usize,
}

impl Keys {
    pub(crate) fn new(window: Duration, max: usize) -> Keys {
        Keys {
            held: DashMap::new(),
            window,
            max,
        }
    }

    /// Claims `key` for the request `fingerprint` names, on every node (Redis) or on this one.
    pub(crate) async fn claim(
        &self,
        broker: &dyn Broker,
        key: &str,
        fingerprint: &str,
    ) -> Result<KeyClaim, Problem> {
        match broker.claim_key(key, fingerprint, IN_FLIGHT_LEASE).await {
            Cluster::Known(claim) => Ok(claim),
            Cluster::Unreachable => Err(Problem::unavailable(
                "idempotency keys are kept in Redis, which is out of reach",
            )),
            Cluster::Alone => self.claim_here(key, fingerprint),
        }
    }

    /// Records the response of a claimed key, or gives it up (`None`: the request failed and
    /// may be retried).
    pub(crate) async fn settle(
        &self,
        broker: &dyn Broker,
        key: &str,
        fingerprint: &str,
        response: Option<&str>,
    ) {
        let value = response.map(|response| format!("{fingerprint} {response}"));
        // A key held here was claimed here (no Redis); any other, in Redis.
        if !self.held.contains_key(key) {
            broker.settle_key(key, value.as_deref(), self.window).await;
            return;
        }
        match value {
            Some(value) => {
                if let Some(mut held) = self.held.get_mut(key) {
                    held.value = value;
                    held.expires = Instant::now() + self.window;
                }
            }
            None => {
                self.held.remove(key);
            }
        }
    }

    fn claim_here(&self, key: &str, fingerprint: &str) -> Result<KeyClaim, Problem> {
        let now = Instant::now();
        if self.held.len() >= self.max && !self.held.contains_key(key) {
            self.housekeep();
            if self.held.len() >= self.max {
                return Err(Problem::too_many(
                    "too many idempotency keys remembered (API_IDEMPOTENCY_MAX_KEYS)",
                    Duration::from_secs(1),
                ));
            }
        }
        let fresh = || Held {
            value: fingerprint.to_owned(),
            expires: now + IN_FLIGHT_LEASE,
        };
        let mut claim = KeyClaim::Claimed;
        self.held
            .entry(key.to_owned())
            .and_modify(|held| {
                if held.expires <= now {
                    *held = fresh();
                } else {
                    claim = KeyClaim::of(&held.value, fingerprint);
                }
            })
            .or_insert_with(fresh);
        Ok(claim)
    }

    /// Forgets expired keys.
    pub(crate) fn housekeep(&self) {
        let now = Instant::now();
        self.held.retain(|_, held| held.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::LocalBroker;

    #[tokio::test(start_paused = true)]
    async fn a_key_is_claimed_once_answered_again_and_forgotten_after_its_window() {
        let keys = Keys::new(Duration::from_secs(10), 2);
        let broker = LocalBroker;
        let claim = |key: &'static str, fingerprint: &'static str| {
            let keys = &keys;
            async move { keys.claim(&LocalBroker, key, fingerprint).await }
        };
        assert_eq!(claim("k1", "f1").await.unwrap(), KeyClaim::Claimed);
        assert_eq!(claim("k1", "f1").await.unwrap(), KeyClaim::InFlight);
        // A request never answered frees its key after the lease.
        tokio::time::advance(IN_FLIGHT_LEASE).await;
        assert_eq!(claim("k1", "f1").await.unwrap(), KeyClaim::Claimed);
        keys.settle(&broker, "k1", "f1", Some("{}")).await;
        assert_eq!(
            claim("k1", "f1").await.unwrap(),
            KeyClaim::Done("{}".into())
        );
        // The same key for another request is refused, not answered with the first's reply.
        assert_eq!(claim("k1", "f2").await.unwrap(), KeyClaim::Reused);
        // A failed request gives its key up.
        assert_eq!(claim("k2", "f2").await.unwrap(), KeyClaim::Claimed);
        keys.settle(&broker, "k2", "f2", None).await;
        assert_eq!(claim("k2", "f2").await.unwrap(), KeyClaim::Claimed);
        // At API_IDEMPOTENCY_MAX_KEYS, a new key waits for one to expire.
        keys.settle(&broker, "k2", "f2", Some("{}")).await;
        assert!(claim("k3", "f3").await.is_err());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(claim("k3", "f3").await.unwrap(), KeyClaim::Claimed);
        assert_eq!(claim("k1", "f2").await.unwrap(), KeyClaim::Claimed);
    }

    #[test]
    fn keys_are_visible_ascii_within_their_length() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", value.parse().unwrap());
            headers
        };
        assert_eq!(key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(key(&headers("abc-1")).unwrap(), Some("abc-1".into()));
        assert!(key(&headers(&"x".repeat(MAX_KEY_CHARS))).is_ok());
        assert!(key(&headers(&"x".repeat(MAX_KEY_CHARS + 1))).is_err());
        assert!(key(&headers("a b")).is_err());
    }
}
