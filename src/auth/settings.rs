//! How tokens are verified, from `JWT_*`, `JWKS_*`, `TRUSTED_ISSUERS` and the claim settings:
//! the algorithms pinned, where the keys come from (one static key, or identity providers' key
//! sets), and the rules a token's claims must meet.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::claims::ClaimRules;
use crate::config::{
    invalid, millis, nonzero_usize, secs, AlgorithmList, Config, ConfigError, TrustedIssuer,
};
use crate::names::NameRules;

/// The largest leeway accepted for `exp`/`nbf`; more would let stolen tokens live on.
pub(crate) const MAX_LEEWAY_SECS: u64 = 30;

#[derive(Clone)]
pub(crate) struct AuthSettings {
    /// The only algorithms a token may use (never empty).
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySettings,
    pub claims: ClaimRules,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Longer tokens are refused before any decoding.
    pub max_token_bytes: usize,
    pub revocation_file: Option<PathBuf>,
    /// Revocations made at run time held at most.
    pub max_revocations: usize,
}

/// Where verification keys come from.
#[derive(Clone)]
pub(crate) enum KeySettings {
    /// One key from `JWT_DECODE_SECRET` or `JWT_PUBLIC_KEY_FILE`, with the optional issuer,
    /// audiences and `azp`s its tokens must name.
    Static {
        key: DecodingKey,
        issuer: Option<String>,
        audience: Vec<String>,
        azp: Vec<String>,
    },
    /// Identity providers' key sets (`JWKS_URL` with `JWT_ISSUER`, or `TRUSTED_ISSUERS`).
    Jwks {
        issuers: Vec<TrustedIssuer>,
        timing: JwksTiming,
    },
}

/// When key sets are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JwksTiming {
    /// Refresh interval without `Cache-Control: max-age`, and the longest with it.
    pub refresh: Duration,
    /// Fewest seconds between fetches caused by unknown `kid`s.
    pub cooldown: Duration,
    /// Longest a fetch may take.
    pub timeout: Duration,
}

impl AuthSettings {
    pub(crate) fn from_env(env: &Config, names: &NameRules) -> Result<AuthSettings, ConfigError> {
        let uses_jwks = env.jwks_url.is_some() || env.trusted_issuers.is_some();
        let algorithms = match &env.jwt_algorithms {
            Some(AlgorithmList(list)) => list.clone(),
            None if uses_jwks => vec![Algorithm::RS256],
            None => vec![Algorithm::HS256],
        };
        let Some(family) = algorithms.first().map(|alg| alg.family()) else {
            return Err(invalid("JWT_ALGORITHMS", "no algorithm listed"));
        };
        let keys = if uses_jwks {
            jwks_keys(env, &algorithms)?
        } else {
            if algorithms.iter().any(|alg| alg.family() != family) {
                // One key verifies one family; mixing HS and RS is how algorithm confusion
                // starts.
                return Err(invalid(
                    "JWT_ALGORITHMS",
                    "all algorithms must be of one family (HS*, RS*/PS*, ES*, or EdDSA)",
                ));
            }
            KeySettings::Static {
                key: static_key(env, family)?,
                issuer: env.jwt_issuer.clone(),
                audience: list(&env.jwt_audience),
                azp: list(&env.jwt_allowed_azp),
            }
        };
        if env.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(invalid(
                "JWT_LEEWAY_SECS",
                format!("at most {MAX_LEEWAY_SECS}"),
            ));
        }
        Ok(AuthSettings {
            algorithms,
            keys,
            claims: ClaimRules::from_env(env, names)?,
            leeway_secs: env.jwt_leeway_secs,
            max_token_bytes: nonzero_usize("MAX_TOKEN_BYTES", env.max_token_bytes)?.get(),
            revocation_file: env.revocation_file.clone(),
            max_revocations: nonzero_usize("API_MAX_REVOCATIONS", env.api_max_revocations)?.get(),
        })
    }
}

fn list(values: &Option<crate::config::CommaList>) -> Vec<String> {
    values
        .as_ref()
        .map(|list| list.0.clone())
        .unwrap_or_default()
}

/// The one key that verifies every token: the HMAC secret, or the public key in PEM.
fn static_key(env: &Config, family: AlgorithmFamily) -> Result<DecodingKey, ConfigError> {
    if family == AlgorithmFamily::Hmac {
        let Some(secret) = &env.jwt_decode_secret else {
            return Err(ConfigError::Missing("JWT_DECODE_SECRET".into()));
        };
        if secret.expose().is_empty() {
            return Err(invalid("JWT_DECODE_SECRET", "empty"));
        }
        return Ok(DecodingKey::from_secret(secret.expose().as_bytes()));
    }
    let Some(path) = &env.jwt_public_key_file else {
        return Err(ConfigError::Missing("JWT_PUBLIC_KEY_FILE".into()));
    };
    let pem = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.clone(),
        source,
    })?;
    let parsed = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
        _ => DecodingKey::from_ed_pem(&pem),
    };
    parsed.map_err(|err| {
        invalid(
            "JWT_PUBLIC_KEY_FILE",
            format!("not a {family:?} public key in PEM form: {err}"),
        )
    })
}

/// The identity providers whose key sets are trusted, and when to fetch them.
fn jwks_keys(env: &Config, algorithms: &[Algorithm]) -> Result<KeySettings, ConfigError> {
    if algorithms
        .iter()
        .any(|alg| alg.family() == AlgorithmFamily::Hmac)
    {
        return Err(invalid(
            "JWT_ALGORITHMS",
            "HS* cannot be used with JWKS: identity providers publish public keys",
        ));
    }
    let multi = env.trusted_issuers.is_some();
    let issuers = match (&env.trusted_issuers, &env.jwt_issuer, &env.jwks_url) {
        (Some(issuers), _, _) => {
            if env.jwks_url.is_some()
                || env.jwt_issuer.is_some()
                || env.jwt_audience.is_some()
                || env.jwt_allowed_azp.is_some()
            {
                return Err(invalid(
                    "TRUSTED_ISSUERS",
                    "replaces JWKS_URL, JWT_ISSUER, JWT_AUDIENCE and JWT_ALLOWED_AZP: set one or the other",
                ));
            }
            issuers.clone()
        }
        // Keys from a URL are bound to the issuer that publishes them.
        (None, None, _) => return Err(ConfigError::Missing("JWT_ISSUER".into())),
        (None, Some(issuer), Some(url)) => vec![TrustedIssuer {
            issuer: issuer.clone(),
            jwks_url: url.clone(),
            audience: list(&env.jwt_audience),
            azp: list(&env.jwt_allowed_azp),
            user_id_prefix: String::new(),
        }],
        (None, Some(_), None) => unreachable!("JWKS without a URL or issuers"),
    };
    if issuers.is_empty() {
        return Err(invalid("TRUSTED_ISSUERS", "no issuer listed"));
    }
    let var = |multi_var, single_var| if multi { multi_var } else { single_var };
    for issuer in &issuers {
        check_key_url(var("TRUSTED_ISSUERS", "JWKS_URL"), &issuer.jwks_url)?;
        // An identity provider signs tokens for all its applications: without an audience or
        // azp check, a token meant for any of them would open a session here.
        if issuer.audience.is_empty() && issuer.azp.is_empty() && !env.jwt_accept_any_audience {
            return Err(invalid(
                var("TRUSTED_ISSUERS", "JWT_AUDIENCE"),
                format!(
                    "issuer {} needs an audience or an allowed azp (or JWT_ACCEPT_ANY_AUDIENCE=true)",
                    issuer.issuer
                ),
            ));
        }
    }
    if issuers.len() > 1 {
        let mut prefixes: Vec<&str> = issuers.iter().map(|i| i.user_id_prefix.as_str()).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        if prefixes.len() != issuers.len() || prefixes.contains(&"") {
            return Err(invalid(
                "TRUSTED_ISSUERS",
                "with several issuers, each needs its own non-empty user_id_prefix",
            ));
        }
    }
    let timing = JwksTiming {
        refresh: secs("JWKS_REFRESH_SECS", env.jwks_refresh_secs)?,
        cooldown: secs("JWKS_REFETCH_COOLDOWN_SECS", env.jwks_refetch_cooldown_secs)?,
        timeout: millis("JWKS_TIMEOUT_MS", env.jwks_timeout_ms)?,
    };
    if timing.timeout >= Duration::from_millis(env.auth_timeout_ms)
        || timing.timeout >= timing.cooldown
    {
        return Err(invalid(
            "JWKS_TIMEOUT_MS",
            "must be shorter than AUTH_TIMEOUT_MS and JWKS_REFETCH_COOLDOWN_SECS",
        ));
    }
    Ok(KeySettings::Jwks { issuers, timing })
}

/// Whether `url` may serve keys: https, or http to this machine only (tests, sidecars).
fn check_key_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|err| invalid(var, format!("not a URL: {err}")))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(host)) => host == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(invalid(
            var,
            "must be https (http only to a loopback address)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    fn settings(pairs: &[(&str, &str)]) -> Result<AuthSettings, ConfigError> {
        let env = env(pairs);
        AuthSettings::from_env(&env, &NameRules::from_env(&env).unwrap())
    }

    #[test]
    fn garinchat_settings_verify_hs256() {
        let auth = settings(&[]).unwrap();
        assert_eq!(auth.algorithms, [Algorithm::HS256]);
        assert!(matches!(auth.keys, KeySettings::Static { .. }));
    }

    #[test]
    fn limits_and_rules_are_named() {
        assert_eq!(
            settings(&[("JWT_LEEWAY_SECS", "30")]).unwrap().leeway_secs,
            30
        );
        for (var, value) in [
            ("JWT_LEEWAY_SECS", "31"),
            ("JWT_ALGORITHMS", "HS256,RS256"),
            ("MAX_TOKEN_BYTES", "0"),
        ] {
            assert_names(settings(&[(var, value)]), var);
        }
        // Blank values are unset in the environment; in a config built otherwise they are
        // still refused.
        let mut blank = env(&[]);
        blank.user_id_claim = " ".into();
        let names = NameRules::from_env(&blank).unwrap();
        assert_names(AuthSettings::from_env(&blank, &names), "USER_ID_CLAIM");
    }

    #[test]
    fn public_key_algorithms_need_a_key_file() {
        assert_names(
            settings(&[("JWT_ALGORITHMS", "RS256")]),
            "JWT_PUBLIC_KEY_FILE",
        );
    }

    #[test]
    fn jwks_needs_an_issuer_an_audience_and_a_short_timeout() {
        let jwks = [
            ("JWT_DECODE_SECRET", ""),
            ("JWKS_URL", "https://idp.example/jwks.json"),
            ("JWT_ISSUER", "https://idp.example/"),
            ("JWT_AUDIENCE", "chat"),
        ];
        assert!(settings(&jwks).is_ok());
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs = jwks.to_vec();
            pairs.retain(|(k, _)| *k != extra.0);
            pairs.push(extra);
            settings(&pairs)
        };
        assert_names(with(("JWT_ISSUER", "")), "JWT_ISSUER");
        assert_names(with(("JWT_AUDIENCE", "")), "JWT_AUDIENCE");
        assert!(with(("JWT_AUDIENCE", "")).is_err());
        assert_names(with(("JWKS_URL", "http://idp.example/jwks")), "JWKS_URL");
        assert_names(with(("JWT_ALGORITHMS", "HS256")), "JWT_ALGORITHMS");
        assert_names(with(("JWKS_TIMEOUT_MS", "2000")), "JWKS_TIMEOUT_MS");
        assert!(with(("JWKS_TIMEOUT_MS", "1999")).is_ok());
        assert_names(with(("JWKS_REFRESH_SECS", "0")), "JWKS_REFRESH_SECS");
    }
}
