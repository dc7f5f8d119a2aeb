//! JWT verification.
//!
//! Every `Validation` is built from config, never from the token: the header's `alg` must be
//! one the operator pinned, the key is the configured one or one from a trusted issuer's key
//! set (a `jku`, `x5u`, `jwk` or `x5c` header is never read), and a public key is never turned
//! into an HMAC secret. jsonwebtoken checks `iss`/`aud` only when the token carries them, so
//! they go into `required_spec_claims` when configured; `exp` and the user id are always
//! required, `nbf` is checked, any `crit` header is refused, and the length is capped before
//! any base64 or JSON work.
//!
//! With several issuers, the token's (unverified) `iss` only chooses whose keys to try; the
//! signature is then checked with that issuer's key and the `iss` validated against it, so a
//! `kid` of one issuer never validates another's token.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::claims::{ClaimRules, Identity, IssuerScope};
use super::error::AuthError;
use super::jwks::{IssuerKeys, MAX_KID_BYTES};
use super::revocation::Revocations;
use super::revoked::RuntimeRevocations;
use super::settings::{AuthSettings, KeySettings};
use crate::clock;
use crate::config::ConfigError;
use crate::metrics::Metrics;

/// Where verification keys come from.
enum KeySource {
    /// One key from config (`JWT_DECODE_SECRET` or `JWT_PUBLIC_KEY_FILE`).
    Static {
        key: DecodingKey,
        validation: Box<Validation>,
        scope: IssuerScope,
    },
    /// Trusted issuers' key sets, each with its own validation and scope.
    Jwks(Vec<TrustedKeys>),
}

/// One trusted issuer: its keys, how its tokens are validated, and its scope.
struct TrustedKeys {
    keys: Arc<IssuerKeys>,
    validation: Validation,
    scope: IssuerScope,
}

/// Verifies tokens against the configured keys and rules.
pub struct TokenVerifier {
    source: KeySource,
    algorithms: Vec<Algorithm>,
    rules: ClaimRules,
    revocations: Option<Revocations>,
    /// Revoked at run time, on any node.
    revoked: Arc<RuntimeRevocations>,
    max_token_bytes: usize,
}

impl TokenVerifier {
    pub(crate) fn new(
        settings: &AuthSettings,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let algorithms = settings.algorithms.clone();
        let rules = settings.claims.clone();
        let base = |issuers: &[String], audience: &[String]| {
            let mut validation = Validation::new(algorithms[0]);
            validation.algorithms = algorithms.clone();
            validation.leeway = settings.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            let mut required = vec!["exp"];
            if rules.requires_sub() {
                required.push("sub");
            }
            if !issuers.is_empty() {
                validation.set_issuer(issuers);
                required.push("iss");
            }
            if audience.is_empty() {
                // No audience configured: an `aud` in the token is not checked.
                validation.validate_aud = false;
            } else {
                validation.set_audience(audience);
                required.push("aud");
            }
            validation.set_required_spec_claims(&required);
            validation
        };
        let source = match &settings.keys {
            KeySettings::Jwks { issuers, timing } => KeySource::Jwks(
                issuers
                    .iter()
                    .map(|issuer| TrustedKeys {
                        validation: base(std::slice::from_ref(&issuer.issuer), &issuer.audience),
                        scope: IssuerScope {
                            allowed_azp: issuer.azp.clone(),
                            user_id_prefix: issuer.user_id_prefix.clone(),
                        },
                        keys: Arc::new(IssuerKeys::new(
                            issuer.clone(),
                            timing,
                            Arc::clone(metrics),
                        )),
                    })
                    .collect(),
            ),
            KeySettings::Static {
                key,
                issuer,
                audience,
                azp,
            } => {
                let issuers: Vec<String> = issuer.iter().cloned().collect();
                KeySource::Static {
                    key: key.clone(),
                    validation: Box::new(base(&issuers, audience)),
                    scope: IssuerScope {
                        allowed_azp: azp.clone(),
                        user_id_prefix: String::new(),
                    },
                }
            }
        };
        let revocations = settings
            .revocation_file
            .as_deref()
            .map(Revocations::load)
            .transpose()?;
        Ok(Self {
            source,
            algorithms,
            rules,
            revocations,
            revoked: Arc::new(RuntimeRevocations::new(settings.max_revocations)),
            max_token_bytes: settings.max_token_bytes,
        })
    }

    /// The issuers whose keys are fetched (empty without JWKS), for the refresh tasks.
    pub fn issuers(&self) -> Vec<Arc<IssuerKeys>> {
        match &self.source {
            KeySource::Static { .. } => Vec::new(),
            KeySource::Jwks(issuers) => issuers
                .iter()
                .map(|trusted| Arc::clone(&trusted.keys))
                .collect(),
        }
    }

    /// Whether every key needed is at hand (a key set fetched for each issuer).
    pub fn keys_loaded(&self) -> bool {
        self.issuers().iter().all(|keys| keys.is_loaded())
    }

    /// Lines of the revocation file that were skipped at its last read.
    pub(crate) fn invalid_revocation_lines(&self) -> usize {
        self.revocations
            .as_ref()
            .map_or(0, Revocations::invalid_lines)
    }

    /// The revocations made at run time.
    pub(crate) fn revoked(&self) -> &Arc<RuntimeRevocations> {
        &self.revoked
    }

    /// Re-reads the revocation list if its file changed.
    pub fn reload_revocations(&self) {
        if let Some(revocations) = &self.revocations {
            revocations.reload_if_changed();
        }
    }

    /// The identity a token proves, or why it proves none.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (claims, scope) = self.verified_claims(token, None).await?;
        let identity = self.rules.identity(&claims, scope)?;
        self.check_revoked(identity.token_id.as_deref(), &identity.user_id)?;
        Ok(identity)
    }

    /// Refuses a token whose id or subject is revoked (by `REVOCATION_FILE` or at run time).
    fn check_revoked(&self, token_id: Option<&str>, subject: &str) -> Result<(), AuthError> {
        let in_file = self
            .revocations
            .as_ref()
            .is_some_and(|file| file.is_revoked(token_id, subject, unix_now()));
        let at_run_time = self.revoked.is_revoked(token_id, subject, clock::unix_ms());
        if in_file || at_run_time {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }

    /// The claims of an access token for the server API: signed by a trusted key like a user's
    /// token, but it must name one of `audience` (the API's, never the chat's) and carry
    /// `scope` (in `scope`, `scp` or `roles`). The caller's name is its `sub` (or `azp`,
    /// `client_id`).
    pub(crate) async fn verify_access(
        &self,
        token: &str,
        audience: &[String],
        scope: &str,
    ) -> Result<String, AuthError> {
        let (claims, _) = self.verified_claims(token, Some(audience)).await?;
        if !grants(&claims, scope) {
            return Err(AuthError::MissingScope);
        }
        let caller = ["sub", "azp", "client_id"]
            .iter()
            .find_map(|claim| claims.get(*claim).and_then(Value::as_str))
            .unwrap_or("unnamed");
        let token_id = claims.get("jti").and_then(Value::as_str);
        self.check_revoked(token_id, caller)?;
        Ok(caller.to_owned())
    }

    /// A token's claims once its size, header, key, signature and registered claims are
    /// checked; with `audience`, that audience replaces the configured one.
    async fn verified_claims(
        &self,
        token: &str,
        audience: Option<&[String]>,
    ) -> Result<(Map<String, Value>, &IssuerScope), AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong);
        }
        let header = decode_header(token)?;
        // We implement no JWS extensions, so any `crit` header must be refused (RFC 7515 4.1.11).
        if header.crit.is_some() {
            return Err(AuthError::CritHeader);
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let with_audience = |validation: &Validation| {
            let mut validation = validation.clone();
            if let Some(audience) = audience {
                validation.validate_aud = true;
                validation.set_audience(audience);
                let mut required: Vec<String> =
                    validation.required_spec_claims.iter().cloned().collect();
                required.push("aud".into());
                validation.set_required_spec_claims(&required);
            }
            validation
        };
        match &self.source {
            KeySource::Static {
                key,
                validation,
                scope,
            } => Ok((
                decode::<Map<String, Value>>(token, key, &with_audience(validation))?.claims,
                scope,
            )),
            KeySource::Jwks(issuers) => {
                let TrustedKeys {
                    keys,
                    validation,
                    scope,
                } = choose_issuer(issuers, token)?;
                let kid = header
                    .kid
                    .as_deref()
                    .filter(|kid| kid.len() <= MAX_KID_BYTES)
                    .ok_or(AuthError::UnknownKey)?;
                let key = match keys.get(kid) {
                    Some(key) => key,
                    None => keys.refetch_for(kid).await.ok_or(AuthError::UnknownKey)?,
                };
                if !key.accepts(header.alg) {
                    return Err(AuthError::AlgorithmNotAllowed);
                }
                let mut validation = with_audience(validation);
                validation.algorithms = vec![header.alg];
                Ok((
                    decode::<Map<String, Value>>(token, &key.key, &validation)?.claims,
                    scope,
                ))
            }
        }
    }
}

/// Whether the claims grant `scope`: listed in `scope` (space-separated, OAuth 2.0) or `scp`
/// (a string or an array, as Okta and Azure AD write it), or in `roles`.
fn grants(claims: &Map<String, Value>, scope: &str) -> bool {
    let listed = |claim: &str| match claims.get(claim) {
        Some(Value::String(text)) => text.split_whitespace().any(|entry| entry == scope),
        Some(Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(scope)),
        _ => false,
    };
    listed("scope") || listed("scp") || listed("roles")
}

/// The issuer whose keys may verify `token`: the only one, or the one its `iss` names.
fn choose_issuer<'a>(
    issuers: &'a [TrustedKeys],
    token: &str,
) -> Result<&'a TrustedKeys, AuthError> {
    if let [only] = issuers {
        return Ok(only);
    }
    #[derive(serde::Deserialize)]
    struct Unverified {
        iss: Option<String>,
    }
    let iss = jsonwebtoken::dangerous::insecure_decode::<Unverified>(token)
        .map_err(AuthError::from)?
        .claims
        .iss
        .ok_or(AuthError::MissingClaim)?;
    issuers
        .iter()
        .find(|trusted| trusted.keys.issuer.issuer == iss)
        .ok_or(AuthError::WrongIssuer)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
