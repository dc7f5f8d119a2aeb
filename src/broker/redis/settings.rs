//! The Redis broker's settings (`REDIS_*`).

use std::num::NonZeroUsize;
use std::time::Duration;

use super::endpoint::Endpoint;
use crate::config::{at_least, invalid, nonzero_usize, Config, ConfigError};
use crate::history::HistorySettings;

/// The longest canary interval: a silent subscriber is found within two of them.
const CANARY_INTERVAL_MAX_MS: u64 = 60_000;

/// Where Redis is and how the broker treats it; `None` (one node on its own) when none of
/// `REDIS_URL`, `REDIS_SENTINELS` and `REDIS_CLUSTER_NODES` is set.
#[derive(Clone, Debug)]
pub(crate) struct RedisSettings {
    /// How to reach Redis (parsed, not connected).
    pub endpoint: Endpoint,
    pub prefix: String,
    /// How long a node's presence outlives its last heartbeat.
    pub key_ttl: Duration,
    /// The longest a connect or command may take.
    pub timeout: Duration,
    /// How often a canary goes through Pub/Sub and must come back.
    pub canary_interval: Duration,
    pub reconnect_max: Duration,
    pub publish_queue: NonZeroUsize,
    /// How often a node adds its users' messages to the counts every node shares.
    pub rate_sync: Duration,
    /// What rooms keep in Redis.
    pub history: HistorySettings,
}

impl RedisSettings {
    pub(crate) fn from_env(env: &Config) -> Result<Option<RedisSettings>, ConfigError> {
        let Some(endpoint) = Endpoint::from_env(env)? else {
            return Ok(None);
        };
        let prefix = &env.redis_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "REDIS_PREFIX",
                "1 to 64 characters, no spaces or control characters",
            ));
        }
        if matches!(endpoint, Endpoint::Cluster(_)) && prefix.contains(['{', '}']) {
            // A brace would make the prefix every key's hash tag: one slot for everything.
            return Err(invalid(
                "REDIS_PREFIX",
                "no { or } with REDIS_CLUSTER_NODES (rooms are hash tags in braces)",
            ));
        }
        if env.redis_key_ttl_secs < 3 {
            return Err(invalid(
                "REDIS_KEY_TTL_SECS",
                "at least 3 (nodes refresh their keys three times per period)",
            ));
        }
        if env.redis_timeout_ms == 0 || env.redis_timeout_ms >= env.redis_key_ttl_secs * 1000 / 3 {
            return Err(invalid(
                "REDIS_TIMEOUT_MS",
                "greater than 0 and shorter than a third of REDIS_KEY_TTL_SECS",
            ));
        }
        if !(100..=CANARY_INTERVAL_MAX_MS).contains(&env.redis_canary_interval_ms) {
            return Err(invalid(
                "REDIS_CANARY_INTERVAL_MS",
                format!("100 to {CANARY_INTERVAL_MAX_MS}"),
            ));
        }
        if env.redis_reconnect_max_ms < 100 {
            return Err(invalid("REDIS_RECONNECT_MAX_MS", "at least 100"));
        }
        Ok(Some(RedisSettings {
            endpoint,
            prefix: prefix.clone(),
            key_ttl: Duration::from_secs(env.redis_key_ttl_secs),
            timeout: Duration::from_millis(env.redis_timeout_ms),
            canary_interval: Duration::from_millis(env.redis_canary_interval_ms),
            reconnect_max: Duration::from_millis(env.redis_reconnect_max_ms),
            publish_queue: nonzero_usize("REDIS_PUBLISH_QUEUE", env.redis_publish_queue)?,
            rate_sync: Duration::from_millis(at_least(
                "REDIS_RATE_SYNC_MS",
                env.redis_rate_sync_ms,
                50,
            )?),
            history: HistorySettings::from_env(env)?,
        }))
    }

    /// Whether Redis is a cluster: rooms are hash tags, and their channels are sharded.
    pub(crate) fn cluster(&self) -> bool {
        matches!(self.endpoint, Endpoint::Cluster(_))
    }

    /// How often a node refreshes its keys: three times per TTL.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.key_ttl / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn settings_at_their_limits_are_accepted() {
        let settings = RedisSettings::from_env(&env(&[
            ("REDIS_URL", "redis://:pass@127.0.0.1:6379/2"),
            ("REDIS_KEY_TTL_SECS", "3"),
            ("REDIS_TIMEOUT_MS", "999"),
            ("REDIS_CANARY_INTERVAL_MS", "100"),
            ("REDIS_RECONNECT_MAX_MS", "100"),
            ("REDIS_PUBLISH_QUEUE", "1"),
            ("REDIS_RATE_SYNC_MS", "50"),
        ]))
        .unwrap()
        .expect("Redis is configured");
        assert_eq!(settings.heartbeat(), Duration::from_secs(1));
        assert_eq!(settings.canary_interval, Duration::from_millis(100));
        let slowest = RedisSettings::from_env(&env(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_CANARY_INTERVAL_MS", "60000"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(slowest.canary_interval, Duration::from_secs(60));
        assert!(RedisSettings::from_env(&env(&[("REDIS_URL", "")]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn settings_past_their_limits_are_named() {
        for (var, value) in [
            ("REDIS_URL", "http://not-redis"),
            ("REDIS_PREFIX", "has space:"),
            ("REDIS_KEY_TTL_SECS", "2"),
            ("REDIS_TIMEOUT_MS", "0"),
            ("REDIS_TIMEOUT_MS", "5000"),
            ("REDIS_CANARY_INTERVAL_MS", "99"),
            ("REDIS_CANARY_INTERVAL_MS", "60001"),
            ("REDIS_RECONNECT_MAX_MS", "99"),
            ("REDIS_PUBLISH_QUEUE", "0"),
            ("REDIS_RATE_SYNC_MS", "49"),
        ] {
            let mut pairs = vec![("REDIS_URL", "redis://127.0.0.1:6379")];
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, value));
            assert_names(RedisSettings::from_env(&env(&pairs)), var);
        }
        // On a cluster a brace in the prefix would make it every key's hash tag.
        let braced = [
            ("REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
            ("REDIS_PREFIX", "{chat}:"),
        ];
        assert_names(RedisSettings::from_env(&env(&braced)), "REDIS_PREFIX");
        let plain = [
            ("REDIS_CLUSTER_NODES", "127.0.0.1:7000"),
            ("REDIS_PREFIX", "chat:"),
        ];
        assert!(RedisSettings::from_env(&env(&plain))
            .unwrap()
            .unwrap()
            .cluster());
    }
}
