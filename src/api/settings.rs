//! The server API's settings (`API_*`): where it listens, which credentials it takes, and its
//! limits. The API runs only when at least one credential is configured.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use governor::Quota;

use crate::config::{at_least, invalid, nonzero_usize, secs, Config, ConfigError};
use crate::limits::quota;

/// The shortest API key accepted: 32 characters, so that a key is never guessable.
pub(crate) const MIN_KEY_CHARS: usize = 32;

/// The smallest `API_MAX_BODY_BYTES`: room for a message and its sender.
const MIN_BODY_BYTES: usize = 1024;

/// The longest `API_MAX_BAN_SECS`: ten years (a longer ban is a deletion, not a ban).
const MAX_BAN_SECS: u64 = 10 * 365 * 24 * 60 * 60;

/// The longest `API_IDEMPOTENCY_WINDOW_SECS`: a week.
const MAX_IDEMPOTENCY_WINDOW_SECS: u64 = 7 * 24 * 60 * 60;

/// No `Debug`: it holds the keys.
#[derive(Clone)]
pub(crate) struct ApiSettings {
    pub addr: SocketAddr,
    /// Keys from `API_KEYS`.
    pub keys: Vec<String>,
    /// `API_KEYS_FILE`, re-read when it changes.
    pub keys_file: Option<PathBuf>,
    /// Access tokens of the identity provider, when `API_JWT_SCOPE` is set.
    pub access_tokens: Option<AccessTokens>,
    /// Requests per credential.
    pub rate: Quota,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    /// The most items in one page.
    pub max_page: usize,
    pub max_rooms_per_publish: usize,
    /// The longest ban or revocation.
    pub max_ban: Duration,
    pub idempotency_window: Duration,
    /// Idempotency keys one node remembers without Redis.
    pub idempotency_max_keys: usize,
}

/// What an access token for the API must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccessTokens {
    pub audience: Vec<String>,
    pub scope: String,
}

impl ApiSettings {
    /// The API's settings, or `None` when it is off (no credential, or `API_PORT` 0).
    pub(crate) fn from_env(env: &Config) -> Result<Option<ApiSettings>, ConfigError> {
        let keys: Vec<String> = env
            .api_keys
            .as_ref()
            .map(|keys| {
                keys.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|key| !key.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if keys.iter().any(|key| key.chars().count() < MIN_KEY_CHARS) {
            return Err(invalid(
                "API_KEYS",
                format!("every key must have at least {MIN_KEY_CHARS} characters"),
            ));
        }
        if let Some(path) = &env.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| invalid("API_KEYS_FILE", format!("cannot read it: {err}")))?;
            if let Err(line) = parse_key_file(&text) {
                return Err(invalid(
                    "API_KEYS_FILE",
                    format!("line {line} is not a key of at least {MIN_KEY_CHARS} characters"),
                ));
            }
        }
        let access_tokens = match (&env.api_jwt_scope, &env.api_jwt_audience) {
            (None, _) => None,
            (Some(scope), _) if scope.trim().is_empty() => None,
            (Some(_), None) => {
                return Err(invalid(
                    "API_JWT_AUDIENCE",
                    "required with API_JWT_SCOPE: an API token must be meant for the API",
                ))
            }
            (Some(_), Some(audience)) if audience.is_empty() => {
                return Err(invalid("API_JWT_AUDIENCE", "no audience listed"))
            }
            (Some(scope), Some(audience)) => Some(AccessTokens {
                audience: audience.iter().map(str::to_owned).collect(),
                scope: scope.trim().to_owned(),
            }),
        };
        if env.api_max_ban_secs > MAX_BAN_SECS {
            return Err(invalid(
                "API_MAX_BAN_SECS",
                format!("at most {MAX_BAN_SECS}"),
            ));
        }
        if env.api_idempotency_window_secs > MAX_IDEMPOTENCY_WINDOW_SECS {
            return Err(invalid(
                "API_IDEMPOTENCY_WINDOW_SECS",
                format!("at most {MAX_IDEMPOTENCY_WINDOW_SECS}"),
            ));
        }
        let settings = ApiSettings {
            addr: SocketAddr::new(env.api_bind_addr, env.api_port),
            keys,
            keys_file: env.api_keys_file.clone(),
            access_tokens,
            rate: quota(
                ("API_RATE_PER_SEC", env.api_rate_per_sec),
                ("API_BURST", env.api_burst),
            )?,
            max_body_bytes: at_least("API_MAX_BODY_BYTES", env.api_max_body_bytes, MIN_BODY_BYTES)?,
            max_connections: nonzero_usize("API_MAX_CONNECTIONS", env.api_max_connections)?.get(),
            max_page: nonzero_usize("API_MAX_PAGE", env.api_max_page)?.get(),
            max_rooms_per_publish: nonzero_usize(
                "API_MAX_ROOMS_PER_PUBLISH",
                env.api_max_rooms_per_publish,
            )?
            .get(),
            max_ban: secs("API_MAX_BAN_SECS", env.api_max_ban_secs)?,
            idempotency_window: secs(
                "API_IDEMPOTENCY_WINDOW_SECS",
                env.api_idempotency_window_secs,
            )?,
            idempotency_max_keys: nonzero_usize(
                "API_IDEMPOTENCY_MAX_KEYS",
                env.api_idempotency_max_keys,
            )?
            .get(),
        };
        let has_credential = !settings.keys.is_empty()
            || settings.keys_file.is_some()
            || settings.access_tokens.is_some();
        Ok((has_credential && env.api_port != 0).then_some(settings))
    }
}

/// The keys of an API key file: one per line, blank lines and lines starting with `#` left
/// out; the number of the first line that is not a key.
pub(crate) fn parse_key_file(text: &str) -> Result<Vec<String>, usize> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.chars().count() < MIN_KEY_CHARS || line.contains(char::is_whitespace) {
            return Err(number + 1);
        }
        keys.push(line.to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn off_without_a_credential_or_a_port() {
        assert!(ApiSettings::from_env(&env(&[])).unwrap().is_none());
        let off = env(&[("API_KEYS", KEY), ("API_PORT", "0")]);
        assert!(ApiSettings::from_env(&off).unwrap().is_none());
        let on = ApiSettings::from_env(&env(&[("API_KEYS", KEY)]))
            .unwrap()
            .unwrap();
        assert_eq!(on.keys, [KEY]);
        assert_eq!(on.addr, "127.0.0.1:8081".parse().unwrap());
    }

    #[test]
    fn limits_at_and_past_their_limits() {
        let at = ApiSettings::from_env(&env(&[
            ("API_KEYS", &format!("{KEY}, {KEY}x")),
            ("API_MAX_BODY_BYTES", "1024"),
            ("API_MAX_CONNECTIONS", "1"),
            ("API_MAX_PAGE", "1"),
            ("API_MAX_ROOMS_PER_PUBLISH", "1"),
            ("API_MAX_BAN_SECS", "1"),
            ("API_IDEMPOTENCY_WINDOW_SECS", "1"),
            ("API_IDEMPOTENCY_MAX_KEYS", "1"),
            ("API_RATE_PER_SEC", "1"),
            ("API_BURST", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((at.max_body_bytes, at.max_page), (1024, 1));
        let longest = ApiSettings::from_env(&env(&[
            ("API_KEYS", KEY),
            ("API_MAX_BAN_SECS", "315360000"),
            ("API_IDEMPOTENCY_WINDOW_SECS", "604800"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(longest.max_ban.as_secs(), MAX_BAN_SECS);
        for (var, value) in [
            ("API_KEYS", &KEY[1..]),
            ("API_MAX_BODY_BYTES", "1023"),
            ("API_MAX_CONNECTIONS", "0"),
            ("API_MAX_PAGE", "0"),
            ("API_MAX_ROOMS_PER_PUBLISH", "0"),
            ("API_MAX_BAN_SECS", "0"),
            ("API_IDEMPOTENCY_WINDOW_SECS", "0"),
            ("API_IDEMPOTENCY_MAX_KEYS", "0"),
            ("API_RATE_PER_SEC", "0"),
            ("API_BURST", "0"),
            ("API_MAX_BAN_SECS", "315360001"),
            ("API_IDEMPOTENCY_WINDOW_SECS", "604801"),
        ] {
            let mut pairs = vec![(var, value)];
            if var != "API_KEYS" {
                pairs.push(("API_KEYS", KEY));
            }
            assert_names(ApiSettings::from_env(&env(&pairs)), var);
        }
    }

    #[test]
    fn access_tokens_need_an_audience() {
        assert_names(
            ApiSettings::from_env(&env(&[("API_JWT_SCOPE", "chat:admin")])),
            "API_JWT_AUDIENCE",
        );
        let on = ApiSettings::from_env(&env(&[
            ("API_JWT_SCOPE", "chat:admin"),
            ("API_JWT_AUDIENCE", "palisade-api"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            on.access_tokens,
            Some(AccessTokens {
                audience: vec!["palisade-api".into()],
                scope: "chat:admin".into()
            })
        );
    }

    #[test]
    fn key_files_name_their_bad_line() {
        assert_eq!(
            parse_key_file(&format!("# keys\n\n{KEY}\n")),
            Ok(vec![KEY.to_owned()])
        );
        assert_eq!(parse_key_file(&format!("{KEY}\nshort\n")), Err(2));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "too short\n").unwrap();
        let path = path.to_str().unwrap();
        assert_names(
            ApiSettings::from_env(&env(&[("API_KEYS_FILE", path)])),
            "API_KEYS_FILE",
        );
    }
}
