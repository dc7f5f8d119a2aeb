//! Why a token or an authentication was refused: one closed set, logged as a reason and
//! counted as the `reason` label of `palisade_auth_failures_total`; never sent to the client
//! (every refusal is the same close code).

use crate::metrics::labels::LabelValue;

/// An authentication refused.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumIter, strum::Display,
)]
#[strum(serialize_all = "snake_case")]
pub enum AuthError {
    /// Not three base64url segments of JSON.
    Malformed,
    BadSignature,
    /// An `alg` outside `JWT_ALGORITHMS`, or not the key's.
    AlgorithmNotAllowed,
    /// A claim `exp`, the user id, `iss`, `aud` or `JWT_REQUIRED_CLAIMS` need is missing.
    MissingClaim,
    BadClaimFormat,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// Refused by jsonwebtoken for a reason without a kind of its own.
    Invalid,
    /// Longer than `MAX_TOKEN_BYTES`.
    TooLong,
    /// A `crit` header: no JWS extension is implemented, so any is refused.
    CritHeader,
    /// The user id is missing, empty or too long.
    BadSubject,
    /// No key with the token's `kid`, even after a refetch.
    UnknownKey,
    WrongAzp,
    /// In the revocation list.
    Revoked,
    /// A refresh with another user's token.
    WrongSubject,
    /// The user is banned.
    BannedUser,
    /// The user already has `MAX_SESSIONS_PER_USER` sessions.
    TooManySessions,
    /// A server API access token without `API_JWT_SCOPE`.
    MissingScope,
}

impl std::error::Error for AuthError {}

impl LabelValue for AuthError {
    const KEY: &'static str = "reason";
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match err.kind() {
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
            ErrorKind::InvalidClaimFormat(_) => AuthError::BadClaimFormat,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            _ => AuthError::Invalid,
        }
    }
}
