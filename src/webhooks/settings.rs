//! The webhooks' settings (`WEBHOOK_*`): where events go, how they are signed, which are
//! sent, and the bounds on waiting, batching and retrying.

use std::time::Duration;

use crate::config::{invalid, millis, nonzero_usize, secs, CommaList, Config, ConfigError};

/// The shortest secret accepted: an HMAC key must not be guessable.
const MIN_SECRET_CHARS: usize = 32;

/// An event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
pub(crate) enum Kind {
    #[strum(serialize = "user.online")]
    UserOnline,
    #[strum(serialize = "user.offline")]
    UserOffline,
    #[strum(serialize = "room.occupied")]
    RoomOccupied,
    #[strum(serialize = "room.empty")]
    RoomEmpty,
    #[strum(serialize = "message.published")]
    MessagePublished,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        use strum::IntoEnumIterator;
        Kind::iter().find(|kind| <&str>::from(*kind) == name)
    }
}

/// No `Debug`: it holds the secret (and the URL may hold credentials).
#[derive(Clone)]
pub(crate) struct WebhookSettings {
    /// Where events are POSTed.
    pub url: reqwest::Url,
    /// The HMAC-SHA256 key of the signature.
    pub secret: Vec<u8>,
    /// The event types sent.
    pub kinds: Vec<Kind>,
    /// A user's last session must stay gone this long before `user.offline`.
    pub offline_grace: Duration,
    /// Events waiting to be sent; past it new ones are dropped and counted.
    pub queue: usize,
    /// Events per POST at most.
    pub batch_max: usize,
    /// How long a POST waits for more events to batch.
    pub batch_wait: Duration,
    pub timeout: Duration,
    /// Tries per batch before it is dropped (and counted).
    pub max_attempts: usize,
    /// The longest wait between tries (doubling from 250 ms).
    pub retry_max: Duration,
}

impl WebhookSettings {
    /// The webhooks' settings, or `None` without `WEBHOOK_URL`.
    pub(crate) fn from_env(env: &Config) -> Result<Option<WebhookSettings>, ConfigError> {
        let Some(url) = env
            .webhook_url
            .as_ref()
            .map(|url| url.expose())
            .filter(|url| !url.is_empty())
        else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| invalid("WEBHOOK_URL", "an http:// or https:// URL"))?;
        let secret = env
            .webhook_secret
            .as_ref()
            .map(|secret| secret.expose().as_bytes().to_vec())
            .filter(|secret| secret.len() >= MIN_SECRET_CHARS)
            .ok_or_else(|| {
                invalid(
                    "WEBHOOK_SECRET",
                    format!("required with WEBHOOK_URL, at least {MIN_SECRET_CHARS} characters"),
                )
            })?;
        let mut kinds = Vec::new();
        for name in CommaList::parse(&env.webhook_events).iter() {
            let kind = Kind::parse(name).ok_or_else(|| {
                invalid(
                    "WEBHOOK_EVENTS",
                    format!(
                        "unknown event {name:?} (user.online, user.offline, room.occupied, \
                         room.empty, message.published)"
                    ),
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(invalid("WEBHOOK_EVENTS", "no event listed"));
        }
        Ok(Some(WebhookSettings {
            url,
            secret,
            kinds,
            offline_grace: Duration::from_secs(env.webhook_offline_grace_secs),
            queue: nonzero_usize("WEBHOOK_QUEUE", env.webhook_queue)?.get(),
            batch_max: nonzero_usize("WEBHOOK_BATCH_MAX", env.webhook_batch_max)?.get(),
            batch_wait: Duration::from_millis(env.webhook_batch_wait_ms),
            timeout: millis("WEBHOOK_TIMEOUT_MS", env.webhook_timeout_ms)?,
            max_attempts: nonzero_usize("WEBHOOK_MAX_ATTEMPTS", env.webhook_max_attempts)?.get(),
            retry_max: secs("WEBHOOK_RETRY_MAX_SECS", env.webhook_retry_max_secs)?,
        }))
    }

    pub(crate) fn wants(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether chat messages are sent (so the hub reports them).
    pub(crate) fn wants_messages(&self) -> bool {
        self.wants(Kind::MessagePublished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    const SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";

    fn with(pairs: &[(&str, &str)]) -> Result<Option<WebhookSettings>, ConfigError> {
        let mut all = vec![
            ("WEBHOOK_URL", "http://127.0.0.1:9/hooks"),
            ("WEBHOOK_SECRET", SECRET),
        ];
        all.retain(|(key, _)| !pairs.iter().any(|(other, _)| other == key));
        all.extend_from_slice(pairs);
        WebhookSettings::from_env(&env(&all))
    }

    #[test]
    fn off_without_a_url_and_presence_events_by_default() {
        assert!(WebhookSettings::from_env(&env(&[])).unwrap().is_none());
        let on = with(&[]).unwrap().unwrap();
        assert_eq!(
            on.kinds,
            [
                Kind::UserOnline,
                Kind::UserOffline,
                Kind::RoomOccupied,
                Kind::RoomEmpty
            ]
        );
        assert!(!on.wants_messages());
        let messages = with(&[("WEBHOOK_EVENTS", "message.published")])
            .unwrap()
            .unwrap();
        assert!(messages.wants_messages() && !messages.wants(Kind::UserOnline));
    }

    #[test]
    fn limits_at_and_past_their_limits() {
        let at = with(&[
            ("WEBHOOK_QUEUE", "1"),
            ("WEBHOOK_BATCH_MAX", "1"),
            ("WEBHOOK_TIMEOUT_MS", "1"),
            ("WEBHOOK_MAX_ATTEMPTS", "1"),
            ("WEBHOOK_RETRY_MAX_SECS", "1"),
            ("WEBHOOK_OFFLINE_GRACE_SECS", "0"),
            ("WEBHOOK_BATCH_WAIT_MS", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((at.queue, at.batch_max, at.max_attempts), (1, 1, 1));
        for (var, value) in [
            ("WEBHOOK_QUEUE", "0"),
            ("WEBHOOK_BATCH_MAX", "0"),
            ("WEBHOOK_TIMEOUT_MS", "0"),
            ("WEBHOOK_MAX_ATTEMPTS", "0"),
            ("WEBHOOK_RETRY_MAX_SECS", "0"),
            ("WEBHOOK_URL", "ftp://example.com/"),
            ("WEBHOOK_URL", "not a url"),
            ("WEBHOOK_SECRET", "short"),
            ("WEBHOOK_EVENTS", "user.online,user.exploded"),
        ] {
            assert_names(with(&[(var, value)]), var);
        }
    }
}
