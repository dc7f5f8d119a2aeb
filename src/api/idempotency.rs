//! `Idempotency-Key` for the server API's publishes: a retried request with the same key
//! within `API_IDEMPOTENCY_WINDOW_SECS` gets the first one's response (marked
//! `Idempotent-Replayed: true`) and delivers nothing again — on every node, since with Redis
//! the key is claimed there (`SET NX`) before the message is posted. While the first request
//! is being served, a retry gets 409. A request that failed gives its key up, so it can be
//! retried.
//!
//! A node without Redis remembers its keys itself, at most `API_IDEMPOTENCY_MAX_KEYS`
//! (past that, 429 until some expire).

use std::time::Duration;

use dashmap::DashMap;
use hyper::HeaderMap;
use tokio::time::Instant;

use super::problem::Problem;
use crate::broker::{Broker, Cluster, KeyClaim};

/// The longest key accepted.
pub(crate) const MAX_KEY_CHARS: usize = 255;

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

struct Held {
    /// The response, once the first request was answered.
    response: Option<String>,
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

    /// Claims `key` on every node (Redis) or on this one.
    pub(crate) async fn claim(&self, broker: &dyn Broker, key: &str) -> Result<KeyClaim, Problem> {
        match broker.claim_key(key, self.window).await {
            Cluster::Known(claim) => Ok(claim),
            Cluster::Unreachable => Err(Problem::unavailable(
                "idempotency keys are kept in Redis, which is out of reach",
            )),
            Cluster::Alone => self.claim_here(key),
        }
    }

    /// Records the response of a claimed key, or gives it up (`None`).
    pub(crate) async fn settle(&self, broker: &dyn Broker, key: &str, response: Option<&str>) {
        if !self.held.contains_key(key) {
            broker.settle_key(key, response).await;
            return;
        }
        match response {
            Some(response) => {
                if let Some(mut held) = self.held.get_mut(key) {
                    held.response = Some(response.to_owned());
                }
            }
            None => {
                self.held.remove(key);
            }
        }
    }

    fn claim_here(&self, key: &str) -> Result<KeyClaim, Problem> {
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
        let mut claim = KeyClaim::Claimed;
        self.held
            .entry(key.to_owned())
            .and_modify(|held| {
                if held.expires <= now {
                    *held = Held {
                        response: None,
                        expires: now + self.window,
                    };
                } else {
                    claim = match &held.response {
                        Some(response) => KeyClaim::Done(response.clone()),
                        None => KeyClaim::InFlight,
                    };
                }
            })
            .or_insert_with(|| Held {
                response: None,
                expires: now + self.window,
            });
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
        assert_eq!(keys.claim(&broker, "k1").await.unwrap(), KeyClaim::Claimed);
        assert_eq!(keys.claim(&broker, "k1").await.unwrap(), KeyClaim::InFlight);
        keys.settle(&broker, "k1", Some("{}")).await;
        assert_eq!(
            keys.claim(&broker, "k1").await.unwrap(),
            KeyClaim::Done("{}".into())
        );
        // A failed request gives its key up.
        assert_eq!(keys.claim(&broker, "k2").await.unwrap(), KeyClaim::Claimed);
        keys.settle(&broker, "k2", None).await;
        assert_eq!(keys.claim(&broker, "k2").await.unwrap(), KeyClaim::Claimed);
        // At API_IDEMPOTENCY_MAX_KEYS, a new key waits for one to expire.
        assert!(keys.claim(&broker, "k3").await.is_err());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(keys.claim(&broker, "k3").await.unwrap(), KeyClaim::Claimed);
        assert_eq!(keys.claim(&broker, "k1").await.unwrap(), KeyClaim::Claimed);
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
