//! JWT verification.
//!
//! The `Validation` is built once from config and never from the token: the header's `alg` must
//! be one the operator pinned, the key is the configured one (a `jku`, `x5u`, `jwk` or `x5c`
//! header is never read), and a public key is never turned into an HMAC secret. jsonwebtoken
//! checks `iss`/`aud` only when the token carries them, so they go into `required_spec_claims`
//! when configured; `exp` and `sub` are always required, `nbf` is checked, and the length is
//! capped before any base64 or JSON work.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{Config, ConfigError};
use crate::names::sanitize_display_name;

/// The longest `sub` accepted; a user id is an id, not a payload.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Who a verified token says the client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: the stable user id shown to other members as `userId`.
    pub user_id: Arc<str>,
    /// The display name from `USERNAME_CLAIM`, or the `sub` when the token has none.
    pub display_name: Arc<str>,
    /// The token's `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused. Logged as a reason; never sent to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token longer than MAX_TOKEN_BYTES")]
    TooLong,
    #[error("token has a crit header")]
    CriticalHeader,
    #[error("token subject missing, empty or too long")]
    BadSubject,
    #[error("token refused: {0}")]
    Rejected(&'static str),
}

impl AuthError {
    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::TooLong => "too_long",
            AuthError::CriticalHeader => "crit_header",
            AuthError::BadSubject => "bad_subject",
            AuthError::Rejected(reason) => reason,
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        AuthError::Rejected(match err.kind() {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => "malformed",
            ErrorKind::InvalidSignature => "bad_signature",
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => "algorithm_not_allowed",
            ErrorKind::MissingRequiredClaim(_) => "missing_claim",
            ErrorKind::InvalidClaimFormat(_) => "bad_claim_format",
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::ImmatureSignature => "not_yet_valid",
            ErrorKind::InvalidIssuer => "wrong_issuer",
            ErrorKind::InvalidAudience => "wrong_audience",
            _ => "invalid",
        })
    }
}

/// Verifies tokens against the configured key and rules.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    max_token_bytes: usize,
    username_claim: String,
    username_max_chars: usize,
}

impl TokenVerifier {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let algorithms = config.jwt_algorithms.0.clone();
        let family = config
            .jwt_algorithms
            .family()
            .ok_or_else(|| ConfigError::Missing("JWT_ALGORITHMS".into()))?;
        let key = match family {
            AlgorithmFamily::Hmac => {
                let secret = config
                    .jwt_decode_secret
                    .as_ref()
                    .ok_or_else(|| ConfigError::Missing("JWT_DECODE_SECRET".into()))?;
                DecodingKey::from_secret(secret.expose().as_bytes())
            }
            public => {
                let pem = config
                    .read_public_key()?
                    .ok_or_else(|| ConfigError::Missing("JWT_PUBLIC_KEY_FILE".into()))?;
                let parsed = match public {
                    AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
                    AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                };
                parsed.map_err(|err| ConfigError::Invalid {
                    var: "JWT_PUBLIC_KEY_FILE",
                    why: format!("not a {public:?} public key in PEM form: {err}"),
                })?
            }
        };

        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.jwt_leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(audience) if !audience.is_empty() => {
                validation.set_audience(&audience.0);
                required.push("aud");
            }
            // No audience configured: an `aud` in the token is not checked.
            _ => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            key,
            validation,
            max_token_bytes: config.max_token_bytes,
            username_claim: config.username_claim.clone(),
            username_max_chars: config.username_max_chars,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong);
        }
        // We implement no JWS extensions, so any `crit` header must be refused (RFC 7515 4.1.11).
        if decode_header(token)?.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        let claims = decode::<Map<String, Value>>(token, &self.key, &self.validation)?.claims;

        let user_id = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= MAX_SUBJECT_BYTES => {
                sub.as_str()
            }
            _ => return Err(AuthError::BadSubject),
        };
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|exp| exp.max(0.0) as u64)
            .ok_or(AuthError::Rejected("bad_claim_format"))?;
        let display_name = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .and_then(|name| sanitize_display_name(name, self.username_max_chars))
            .or_else(|| sanitize_display_name(user_id, self.username_max_chars))
            .ok_or(AuthError::BadSubject)?;

        Ok(Identity {
            user_id: Arc::from(user_id),
            display_name: Arc::from(display_name),
            expires_at,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AUTH_FAILURE_REASONS;

    #[test]
    fn every_failure_label_is_a_known_metric_reason() {
        let kinds = [
            ErrorKind::InvalidToken,
            ErrorKind::InvalidSignature,
            ErrorKind::InvalidAlgorithm,
            ErrorKind::MissingRequiredClaim("exp".into()),
            ErrorKind::InvalidClaimFormat("exp".into()),
            ErrorKind::ExpiredSignature,
            ErrorKind::ImmatureSignature,
            ErrorKind::InvalidIssuer,
            ErrorKind::InvalidAudience,
            ErrorKind::InvalidSubject,
        ];
        let errors = kinds
            .into_iter()
            .map(|kind| AuthError::from(jsonwebtoken::errors::Error::from(kind)))
            .chain([
                AuthError::TooLong,
                AuthError::CriticalHeader,
                AuthError::BadSubject,
            ]);
        for error in errors {
            assert!(
                AUTH_FAILURE_REASONS.contains(&error.label()),
                "{}",
                error.label()
            );
        }
    }
}
