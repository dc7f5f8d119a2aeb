//! From a verified token's claims to an [`Identity`]: which claims name the user, which must be
//! present, which clients (`azp`) may present the token, and which rooms it may join.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::error::AuthError;
use crate::config::{invalid, Config, ConfigError};
use crate::names::sanitize_display_name;
use crate::names::NameRules;

/// The longest user id accepted; an id is an id, not a payload.
pub(crate) const MAX_SUBJECT_BYTES: usize = 256;
/// The most room patterns a token may carry.
pub(crate) const MAX_ROOM_PATTERNS: usize = 256;

/// Who a verified token says the client is, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `USER_ID_CLAIM` (default `sub`): the stable user id shown to others as `userId`.
    pub user_id: Arc<str>,
    /// `USERNAME_CLAIM`, cleaned; the user id when the token has none.
    pub display_name: Arc<str>,
    /// When the token stops being good: its `exp` plus `JWT_LEEWAY_SECS`, in seconds since
    /// the Unix epoch.
    pub valid_until: u64,
    /// The token's `jti`, if any.
    pub token_id: Option<String>,
    /// With `ROOMS_CLAIM`: the rooms this token may join.
    pub rooms: Option<RoomPatterns>,
}

/// Room names and `prefix*` patterns from a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomPatterns(Vec<String>);

impl RoomPatterns {
    pub fn allows(&self, room: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => pattern == room,
            })
    }
}

/// How claims are read (`USER_ID_CLAIM`, `USERNAME_CLAIM`, `ROOMS_CLAIM`,
/// `JWT_REQUIRED_CLAIMS`).
#[derive(Clone, Debug)]
pub(crate) struct ClaimRules {
    user_id_claim: String,
    username_claim: String,
    username_max_chars: usize,
    rooms_claim: Option<String>,
    required: Vec<String>,
    /// `JWT_LEEWAY_SECS` (validated by `AuthSettings`).
    leeway_secs: u64,
}

/// What depends on the issuer: the clients its tokens may be for, and its user id prefix.
#[derive(Clone, Debug, Default)]
pub(crate) struct IssuerScope {
    /// Accepted `azp` values; empty means not checked.
    pub allowed_azp: Vec<String>,
    pub user_id_prefix: String,
}

impl ClaimRules {
    pub(crate) fn from_env(env: &Config, names: &NameRules) -> Result<ClaimRules, ConfigError> {
        let claim = |var, name: &String| {
            if name.trim().is_empty() {
                return Err(invalid(var, "empty"));
            }
            Ok(name.clone())
        };
        Ok(ClaimRules {
            user_id_claim: claim("USER_ID_CLAIM", &env.user_id_claim)?,
            username_claim: claim("USERNAME_CLAIM", &env.username_claim)?,
            username_max_chars: names.username_max_chars,
            rooms_claim: env.rooms_claim.clone(),
            required: env
                .jwt_required_claims
                .as_ref()
                .map(|list| list.0.clone())
                .unwrap_or_default(),
            leeway_secs: env.jwt_leeway_secs,
        })
    }

    /// The claim jsonwebtoken must find, besides `exp`: `sub` unless the id is elsewhere.
    pub(crate) fn requires_sub(&self) -> bool {
        self.user_id_claim == "sub"
    }

    pub(crate) fn identity(
        &self,
        claims: &Map<String, Value>,
        scope: &IssuerScope,
    ) -> Result<Identity, AuthError> {
        if let Some(missing) = self
            .required
            .iter()
            .find(|name| claims.get(name.as_str()).is_none_or(Value::is_null))
        {
            tracing::debug!(claim = %missing, "required claim missing");
            return Err(AuthError::MissingClaim);
        }
        if !scope.allowed_azp.is_empty() {
            let azp = claims.get("azp").and_then(Value::as_str);
            if !azp.is_some_and(|azp| scope.allowed_azp.iter().any(|allowed| allowed == azp)) {
                return Err(AuthError::WrongAzp);
            }
        }
        let id = match claims.get(&self.user_id_claim) {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_SUBJECT_BYTES => {
                id.as_str()
            }
            _ => return Err(AuthError::BadSubject),
        };
        let user_id = format!("{}{id}", scope.user_id_prefix);
        let valid_until = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|exp| (exp.max(0.0) as u64).saturating_add(self.leeway_secs))
            .ok_or(AuthError::BadClaimFormat)?;
        let display_name = claims
            .get(&self.username_claim)
            .and_then(Value::as_str)
            .and_then(|name| sanitize_display_name(name, self.username_max_chars))
            .or_else(|| sanitize_display_name(id, self.username_max_chars))
            .ok_or(AuthError::BadSubject)?;
        let rooms = match &self.rooms_claim {
            None => None,
            Some(claim) => Some(room_patterns(claims.get(claim))?),
        };
        Ok(Identity {
            user_id: Arc::from(user_id.as_str()),
            display_name: Arc::from(display_name),
            valid_until,
            token_id: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            rooms,
        })
    }
}

/// A rooms claim: an array of strings, or one string of names separated by spaces or commas
/// (as OAuth scopes are). Missing means no room at all.
fn room_patterns(value: Option<&Value>) -> Result<RoomPatterns, AuthError> {
    let patterns: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or(AuthError::BadClaimFormat)?,
        Some(_) => return Err(AuthError::BadClaimFormat),
    };
    if patterns.len() > MAX_ROOM_PATTERNS {
        return Err(AuthError::BadClaimFormat);
    }
    Ok(RoomPatterns(patterns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn room_patterns_match_exactly_or_by_prefix() {
        let patterns = room_patterns(Some(&json!(["lobby", "team-*"]))).unwrap();
        assert!(patterns.allows("lobby"));
        assert!(patterns.allows("team-red"));
        assert!(!patterns.allows("lobby2"));
        assert!(!patterns.allows("tea"));
        let scoped = room_patterns(Some(&json!("lobby  news,ops*"))).unwrap();
        assert!(scoped.allows("news") && scoped.allows("ops-1") && !scoped.allows("other"));
        assert!(!room_patterns(None).unwrap().allows("lobby"));
        assert!(room_patterns(Some(&json!([1]))).is_err());
        assert!(room_patterns(Some(&json!({"a": 1}))).is_err());
    }
}
