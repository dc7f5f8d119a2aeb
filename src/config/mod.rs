//! The environment (after `./.env`), read once with envy into one flat [`Config`].
//!
//! This module only parses: each subsystem turns the fields it owns into typed settings beside
//! its own code (`admission::Policy`, `session::Settings`, `auth::AuthSettings`, …), and the
//! settings module holds them all. A conversion that refuses a value names the variable; a
//! validated `Settings` is the only way into a gateway, so nothing is checked twice. The helpers here are those conversions' vocabulary. Secrets are wrapped in
//! [`Secret`], so that neither `Debug` nor `check-config` prints them.

mod env;
mod values;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

pub use env::Config;
pub use values::{
    AlgorithmList, CommaList, DirectMessages, LogFormat, Secret, TrustedIssuer, TrustedProxies,
};

/// Why settings were refused; every variant names its variable (or file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is unset.
    #[error("missing required setting {0}")]
    Missing(String),
    /// A variable has a value its subsystem cannot use.
    #[error("invalid setting {var}: {why}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong with its value.
        why: String,
    },
    /// A value is not of its variable's type.
    #[error("invalid settings: {0}")]
    Parse(String),
    /// A file a variable names cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
}

/// `var` has a value its subsystem cannot use, for the reason given.
pub(crate) fn invalid(var: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        why: why.into(),
    }
}

/// A count that must be at least 1.
pub(crate) fn nonzero_u32(var: &'static str, value: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(value).ok_or_else(|| invalid(var, "must be greater than 0"))
}

/// A size or count that must be at least 1.
pub(crate) fn nonzero_usize(var: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(var, "must be greater than 0"))
}

/// A duration in milliseconds that must be positive.
pub(crate) fn millis(var: &'static str, value: u64) -> Result<Duration, ConfigError> {
    positive(var, Duration::from_millis(value))
}

/// A duration in seconds that must be positive.
pub(crate) fn secs(var: &'static str, value: u64) -> Result<Duration, ConfigError> {
    positive(var, Duration::from_secs(value))
}

fn positive(var: &'static str, duration: Duration) -> Result<Duration, ConfigError> {
    if duration.is_zero() {
        return Err(invalid(var, "must be greater than 0"));
    }
    Ok(duration)
}

/// At least `min`.
pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    var: &'static str,
    value: T,
    min: T,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(invalid(var, format!("at least {min}")));
    }
    Ok(value)
}

impl Config {
    /// Reads `./.env` when present (variables already set win, as with godotenv), then the
    /// environment.
    pub fn load() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the parse below only if it
        // left a required variable unset, which matches GarinChat's tolerance.
        let _ = dotenvy::dotenv();
        Self::from_pairs(utf8_environment())
    }

    /// Parses `(NAME, value)` pairs. Only types are checked here; the subsystems' settings
    /// check the rest.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            // An empty variable (`JWT_ISSUER=`) means "unset", not "the empty string".
            .filter(|(_, v): &(String, String)| !v.trim().is_empty());
        envy::from_iter(pairs).map_err(|err| match err {
            envy::Error::MissingValue(field) => ConfigError::Missing(field.to_uppercase()),
            envy::Error::Custom(msg) => ConfigError::Parse(msg),
        })
    }
}

/// The environment, less variables whose name or value is not UTF-8 (`std::env::vars` would
/// panic on them). None of ours can be such a variable, so it is reported and skipped.
pub fn utf8_environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(
            |(key, value)| match (key.into_string(), value.into_string()) {
                (Ok(key), Ok(value)) => Some((key, value)),
                (Ok(key), Err(_)) => {
                    eprintln!(
                        "palisade: ignoring environment variable {key}: its value is not UTF-8"
                    );
                    None
                }
                _ => None,
            },
        )
        .collect()
}

/// For the conversions' unit tests: a config of the GarinChat settings plus `pairs`, and an
/// assertion that an error names its variable.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn env(pairs: &[(&str, &str)]) -> Config {
        let mut all = vec![
            ("ALLOWED_ORIGINS", "http://chat.test"),
            ("JWT_DECODE_SECRET", "hunter2-secret"),
        ];
        all.retain(|(key, _)| !pairs.iter().any(|(other, _)| other == key));
        all.extend_from_slice(pairs);
        Config::from_pairs(all).expect("parses")
    }

    #[track_caller]
    pub(crate) fn assert_names<T>(result: Result<T, ConfigError>, var: &str) {
        let Err(err) = result.map(drop) else {
            panic!("accepted; {var} should have been refused");
        };
        let err = err.to_string();
        assert!(err.contains(var), "{err} does not name {var}");
    }

    #[test]
    fn types_are_checked_and_named() {
        assert_names(Config::from_pairs([("PORT", "eighty")]), "");
        assert_names(
            Config::from_pairs([("BIND_ADDR", "localhost")]),
            "BIND_ADDR",
        );
        assert_names(
            Config::from_pairs([("TRUSTED_PROXIES", "10.0.0.0/8, proxy.local")]),
            "TRUSTED_PROXIES",
        );
        assert_names(Config::from_pairs([("LOG_FORMAT", "xml")]), "LOG_FORMAT");
        assert_names(
            Config::from_pairs([("DIRECT_MESSAGES", "friends")]),
            "DIRECT_MESSAGES",
        );
        assert_names(
            Config::from_pairs([("JWT_ALGORITHMS", "none")]),
            "JWT_ALGORITHMS",
        );
        assert_names(Config::from_pairs([("MSG_BURST", "-1")]), "");
    }

    #[test]
    fn empty_means_unset_and_defaults_fill_the_rest() {
        let config = Config::from_pairs([("JWT_ISSUER", ""), ("PORT", "9000")]).unwrap();
        assert_eq!(config.jwt_issuer, None);
        assert_eq!(config.port, 9000);
        assert_eq!(config.max_room_members, Config::default().max_room_members);
    }

    #[test]
    fn helpers_refuse_zero_and_name_the_variable() {
        assert_names(nonzero_u32("A_RATE", 0), "A_RATE");
        assert_eq!(nonzero_u32("A_RATE", 1).unwrap().get(), 1);
        assert_names(millis("A_MS", 0), "A_MS");
        assert_eq!(secs("A_SECS", 2).unwrap(), Duration::from_secs(2));
        assert_names(at_least("A_MIN", 2, 3), "A_MIN");
        assert_eq!(at_least("A_MIN", 3, 3).unwrap(), 3);
    }

    #[test]
    fn secrets_never_show() {
        let config = env(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:6379")]);
        for shown in [
            format!("{config:?}"),
            serde_json::to_string(&config).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }
}
