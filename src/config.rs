//! Settings, read from the environment (after `./.env`) with envy.
//!
//! One flat struct: envy cannot read nested or flattened structs with non-string fields.
//! Names carry their unit (`_MS`, `_SECS`, `_BYTES`) and accessors return `Duration`s, so a
//! unit is never guessed at a call site. [`Config::validate`] names the variable at fault, and
//! secrets are wrapped in [`Secret`] so that neither `Debug` nor `check-config` prints them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest leeway we accept for `exp`/`nbf`; more would let stolen tokens live on.
pub const MAX_LEEWAY_SECS: u64 = 30;
/// Usernames and rooms shorter than this are refused, as GarinChat does.
pub const MIN_NAME_CHARS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("missing required setting {0}")]
    Missing(String),
    #[error("invalid setting {var}: {why}")]
    Invalid { var: &'static str, why: String },
    #[error("invalid settings: {0}")]
    Parse(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(var: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        why: why.into(),
    }
}

/// A string that never shows itself in `Debug` or serialized output.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A comma-separated list: entries trimmed, empty entries ignored (GarinChat compared them raw,
/// so `"a, b"` never matched `b` and a trailing comma admitted a missing Origin).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// `JWT_ALGORITHMS`: the only algorithms a token may use, pinned by the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgorithmList(pub Vec<Algorithm>);

impl AlgorithmList {
    pub fn family(&self) -> Option<AlgorithmFamily> {
        self.0.first().map(|alg| alg.family())
    }
}

impl Default for AlgorithmList {
    fn default() -> Self {
        Self(vec![Algorithm::HS256])
    }
}

impl<'de> Deserialize<'de> for AlgorithmList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let algorithms = CommaList::parse(&raw)
            .iter()
            .map(|name| {
                Algorithm::from_str(name).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "unknown JWT algorithm {name:?} in JWT_ALGORITHMS"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(algorithms))
    }
}

impl Serialize for AlgorithmList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = self.0.iter().map(|alg| format!("{alg:?}")).collect();
        s.serialize_str(&names.join(","))
    }
}

/// `LOG_FORMAT`: human-readable lines, or one JSON object per line for log collectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(serde::de::Error::custom(format!(
                "LOG_FORMAT must be text or json, not {other:?}"
            ))),
        }
    }
}

/// One identity provider whose tokens are accepted, with where its keys are.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    pub jwks_url: String,
    /// Accepted `aud` values; when empty, `aud` is not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Accepted `azp` values (the client a token was issued to); when empty, not checked.
    #[serde(default, deserialize_with = "one_or_many")]
    pub azp: Vec<String>,
    /// Put before this issuer's user ids, so that ids of different issuers never collide.
    #[serde(default)]
    pub user_id_prefix: String,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn trusted_issuers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<TrustedIssuer>>, D::Error> {
    let raw = String::deserialize(d)?;
    serde_json::from_str(&raw).map(Some).map_err(|err| {
        serde::de::Error::custom(format!(
            "TRUSTED_ISSUERS must be a JSON array of {{\"issuer\", \"jwks_url\", \"audience\"}}: {err}"
        ))
    })
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

/// `TRUSTED_PROXIES`: addresses and networks of reverse proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let nets: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        s.serialize_str(&nets.join(","))
    }
}

fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<TrustedProxies, D::Error> {
    let raw = String::deserialize(d)?;
    CommaList::parse(&raw)
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "TRUSTED_PROXIES entry {entry:?} is not an IP address or CIDR network"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedProxies)
}

/// `BIND_ADDR`, with an error that names it (envy's would not).
fn bind_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let raw = String::deserialize(d)?;
    raw.trim()
        .parse()
        .map_err(|_| serde::de::Error::custom(format!("BIND_ADDR is not an IP address: {raw:?}")))
}

/// Every setting. Field `foo_bar` is read from the variable `FOO_BAR`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Config {
    #[serde(default = "defaults::port")]
    pub port: u16,
    #[serde(default = "defaults::bind_addr", deserialize_with = "bind_addr")]
    pub bind_addr: IpAddr,
    /// Browser origins allowed to open a socket (`*` allows any). Required, as in GarinChat.
    pub allowed_origins: Option<CommaList>,
    /// Admit upgrade requests with no `Origin` header (non-browser clients).
    #[serde(default)]
    pub allow_missing_origin: bool,

    pub jwt_decode_secret: Option<Secret>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// HS256 by default; RS256 when keys come from JWKS.
    pub jwt_algorithms: Option<AlgorithmList>,
    /// The identity provider's key set, for `JWT_ISSUER`.
    pub jwks_url: Option<String>,
    /// Several identity providers at once (JSON); replaces `JWKS_URL`/`JWT_ISSUER`/`JWT_AUDIENCE`.
    #[serde(default, deserialize_with = "trusted_issuers")]
    pub trusted_issuers: Option<Vec<TrustedIssuer>>,
    #[serde(default = "defaults::jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    #[serde(default = "defaults::jwks_refetch_cooldown_secs")]
    pub jwks_refetch_cooldown_secs: u64,
    #[serde(default = "defaults::jwks_timeout_ms")]
    pub jwks_timeout_ms: u64,
    #[serde(default = "defaults::user_id_claim")]
    pub user_id_claim: String,
    /// A claim listing the rooms the token may join (exact names or `prefix*`).
    pub rooms_claim: Option<String>,
    /// Claims that must be present, beyond `exp` and the user id.
    pub jwt_required_claims: Option<CommaList>,
    /// When set, the token's `azp` must be one of these (Clerk, Keycloak).
    pub jwt_allowed_azp: Option<CommaList>,
    /// Accept JWKS-verified tokens that name no audience and no `azp` check applies: any
    /// token the issuer signs, for any application. Off unless set.
    #[serde(default)]
    pub jwt_accept_any_audience: bool,
    /// A file of revoked `jti`s and subjects, re-read when it changes.
    pub revocation_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<CommaList>,
    #[serde(default = "defaults::jwt_leeway_secs")]
    pub jwt_leeway_secs: u64,
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The claim that holds the display name; `sub` when the token lacks it.
    #[serde(default = "defaults::username_claim")]
    pub username_claim: String,
    /// GarinChat's behaviour: show the `username` the client sends in `join`.
    #[serde(default)]
    pub trust_client_username: bool,
    #[serde(default = "defaults::username_max_chars")]
    pub username_max_chars: usize,
    #[serde(default = "defaults::room_max_chars")]
    pub room_max_chars: usize,

    #[serde(default = "defaults::auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    #[serde(default = "defaults::join_timeout_ms")]
    pub join_timeout_ms: u64,
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    #[serde(default = "defaults::max_fragments")]
    pub max_fragments: usize,
    #[serde(default = "defaults::msg_rate_per_sec")]
    pub msg_rate_per_sec: u32,
    #[serde(default = "defaults::msg_burst")]
    pub msg_burst: u32,
    #[serde(default = "defaults::user_msg_rate_per_sec")]
    pub user_msg_rate_per_sec: u32,
    #[serde(default = "defaults::user_msg_burst")]
    pub user_msg_burst: u32,
    #[serde(default = "defaults::control_rate_per_sec")]
    pub control_rate_per_sec: u32,
    #[serde(default = "defaults::control_burst")]
    pub control_burst: u32,
    #[serde(default = "defaults::max_room_members")]
    pub max_room_members: usize,
    #[serde(default = "defaults::outbound_queue_frames")]
    pub outbound_queue_frames: usize,
    #[serde(default = "defaults::close_timeout_ms")]
    pub close_timeout_ms: u64,

    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,

    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    #[serde(default = "defaults::connect_rate_per_sec")]
    pub connect_rate_per_sec: u32,
    #[serde(default = "defaults::connect_burst")]
    pub connect_burst: u32,
    #[serde(default = "defaults::max_sessions_per_user")]
    pub max_sessions_per_user: u32,
    /// Peers whose `X-Forwarded-For`/`Forwarded` headers are believed (IPs or CIDRs).
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    #[serde(default = "defaults::ban_strikes")]
    pub ban_strikes: u32,
    #[serde(default = "defaults::ban_window_secs")]
    pub ban_window_secs: u64,
    #[serde(default = "defaults::ban_secs")]
    pub ban_secs: u64,
    #[serde(default = "defaults::max_tracked_clients")]
    pub max_tracked_clients: usize,
    #[serde(default = "defaults::housekeeping_interval_ms")]
    pub housekeeping_interval_ms: u64,

    #[serde(default = "defaults::ping_interval_secs")]
    pub ping_interval_secs: u64,
    #[serde(default = "defaults::pong_timeout_secs")]
    pub pong_timeout_secs: u64,
    /// 0 disables the idle timeout.
    #[serde(default)]
    pub idle_timeout_secs: u64,

    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    #[serde(default = "defaults::drain_delay_secs")]
    pub drain_delay_secs: u64,
    /// The admin listener (`/metrics`); 0 disables it.
    #[serde(default = "defaults::metrics_port")]
    pub metrics_port: u16,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// Redis for sharing rooms between nodes (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS); unset or empty runs one node on its in-process hub.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    #[serde(default = "defaults::redis_prefix")]
    pub redis_prefix: String,
    #[serde(default = "defaults::redis_key_ttl_secs")]
    pub redis_key_ttl_secs: u64,
    #[serde(default = "defaults::redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    #[serde(default = "defaults::redis_probe_interval_ms")]
    pub redis_probe_interval_ms: u64,
    #[serde(default = "defaults::redis_reconnect_max_ms")]
    pub redis_reconnect_max_ms: u64,
    #[serde(default = "defaults::redis_publish_queue")]
    pub redis_publish_queue: usize,
}

mod defaults {
    use std::net::{IpAddr, Ipv4Addr};

    pub fn redis_prefix() -> String {
        "palisade:".into()
    }
    pub const fn redis_key_ttl_secs() -> u64 {
        15
    }
    pub const fn redis_timeout_ms() -> u64 {
        2000
    }
    pub const fn redis_probe_interval_ms() -> u64 {
        1000
    }
    pub const fn redis_reconnect_max_ms() -> u64 {
        5000
    }
    pub const fn redis_publish_queue() -> usize {
        65_536
    }
    pub const fn port() -> u16 {
        8080
    }
    pub const fn bind_addr() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    pub const fn jwks_refresh_secs() -> u64 {
        300
    }
    pub const fn jwks_refetch_cooldown_secs() -> u64 {
        30
    }
    pub const fn jwks_timeout_ms() -> u64 {
        1500
    }
    pub fn user_id_claim() -> String {
        "sub".to_owned()
    }
    pub const fn jwt_leeway_secs() -> u64 {
        5
    }
    pub const fn max_token_bytes() -> usize {
        4096
    }
    pub fn username_claim() -> String {
        "name".to_owned()
    }
    pub const fn username_max_chars() -> usize {
        32
    }
    pub const fn room_max_chars() -> usize {
        64
    }
    pub const fn auth_timeout_ms() -> u64 {
        2000
    }
    pub const fn join_timeout_ms() -> u64 {
        2000
    }
    pub const fn max_message_bytes() -> usize {
        4096
    }
    pub const fn max_fragments() -> usize {
        64
    }
    pub const fn msg_rate_per_sec() -> u32 {
        1
    }
    pub const fn msg_burst() -> u32 {
        1
    }
    pub const fn user_msg_rate_per_sec() -> u32 {
        3
    }
    pub const fn user_msg_burst() -> u32 {
        5
    }
    pub const fn control_rate_per_sec() -> u32 {
        2
    }
    pub const fn control_burst() -> u32 {
        5
    }
    pub const fn max_room_members() -> usize {
        1000
    }
    pub const fn outbound_queue_frames() -> usize {
        256
    }
    pub const fn close_timeout_ms() -> u64 {
        1000
    }
    pub const fn header_read_timeout_ms() -> u64 {
        5000
    }
    pub const fn max_header_bytes() -> usize {
        8192
    }
    pub const fn max_headers() -> usize {
        32
    }
    pub const fn max_connections() -> usize {
        10_000
    }
    pub const fn max_connections_per_ip() -> u32 {
        50
    }
    pub const fn connect_rate_per_sec() -> u32 {
        5
    }
    pub const fn connect_burst() -> u32 {
        20
    }
    pub const fn max_sessions_per_user() -> u32 {
        5
    }
    pub const fn ban_strikes() -> u32 {
        3
    }
    pub const fn ban_window_secs() -> u64 {
        60
    }
    pub const fn ban_secs() -> u64 {
        300
    }
    pub const fn max_tracked_clients() -> usize {
        100_000
    }
    pub const fn housekeeping_interval_ms() -> u64 {
        10_000
    }
    pub const fn ping_interval_secs() -> u64 {
        30
    }
    pub const fn pong_timeout_secs() -> u64 {
        10
    }
    pub const fn shutdown_grace_secs() -> u64 {
        10
    }
    pub const fn drain_delay_secs() -> u64 {
        2
    }
    pub const fn metrics_port() -> u16 {
        9090
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
}

impl Config {
    /// Reads `./.env` when present (variables already set win, as with godotenv), then the
    /// environment, then validates.
    pub fn load() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the parse below only if it
        // left a required variable unset, which matches GarinChat's tolerance.
        let _ = dotenvy::dotenv();
        Self::from_pairs(utf8_environment())
    }

    /// Builds and validates a config from `(NAME, value)` pairs; tests use this.
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
        let config: Config = envy::from_iter(pairs).map_err(|err| match err {
            envy::Error::MissingValue(field) => ConfigError::Missing(field.to_uppercase()),
            envy::Error::Custom(msg) => ConfigError::Parse(msg),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; each error names its variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.allowed_origins {
            None => return Err(ConfigError::Missing("ALLOWED_ORIGINS".into())),
            Some(list) if list.is_empty() => {
                return Err(invalid("ALLOWED_ORIGINS", "no origin listed"))
            }
            Some(_) => {}
        }
        let algorithms = self.algorithms();
        let Some(family) = algorithms.family() else {
            return Err(invalid("JWT_ALGORITHMS", "no algorithm listed"));
        };
        if self.uses_jwks() {
            self.validate_jwks(&algorithms)?;
        } else if algorithms.0.iter().any(|alg| alg.family() != family) {
            // One key verifies one family; mixing HS and RS is how algorithm confusion starts.
            return Err(invalid(
                "JWT_ALGORITHMS",
                "all algorithms must be of one family (HS*, RS*/PS*, ES*, or EdDSA)",
            ));
        }
        match family {
            _ if self.uses_jwks() => {}
            AlgorithmFamily::Hmac => {
                let Some(secret) = &self.jwt_decode_secret else {
                    return Err(ConfigError::Missing("JWT_DECODE_SECRET".into()));
                };
                if secret.expose().is_empty() {
                    return Err(invalid("JWT_DECODE_SECRET", "empty"));
                }
            }
            _ => {
                if self.jwt_public_key_file.is_none() {
                    return Err(ConfigError::Missing("JWT_PUBLIC_KEY_FILE".into()));
                }
            }
        }
        if self.jwt_leeway_secs > MAX_LEEWAY_SECS {
            return Err(invalid(
                "JWT_LEEWAY_SECS",
                format!("at most {MAX_LEEWAY_SECS}"),
            ));
        }
        if self.user_id_claim.trim().is_empty() {
            return Err(invalid("USER_ID_CLAIM", "empty"));
        }
        if self.drain_delay_secs >= self.shutdown_grace_secs {
            return Err(invalid(
                "DRAIN_DELAY_SECS",
                "must be shorter than SHUTDOWN_GRACE_SECS, which counts from the start of the drain",
            ));
        }
        self.validate_redis()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid(
                "LOG_LEVEL",
                "not a level (error, warn, info, debug, trace) or a tracing filter",
            ));
        }
        if self.username_claim.trim().is_empty() {
            return Err(invalid("USERNAME_CLAIM", "empty"));
        }
        let positive: [(&'static str, u64); 28] = [
            ("USER_MSG_RATE_PER_SEC", self.user_msg_rate_per_sec.into()),
            ("USER_MSG_BURST", self.user_msg_burst.into()),
            ("MAX_ROOM_MEMBERS", self.max_room_members as u64),
            ("BAN_SECS", self.ban_secs),
            ("MAX_CONNECTIONS", self.max_connections as u64),
            ("MAX_CONNECTIONS_PER_IP", self.max_connections_per_ip.into()),
            ("CONNECT_RATE_PER_SEC", self.connect_rate_per_sec.into()),
            ("CONNECT_BURST", self.connect_burst.into()),
            ("MAX_SESSIONS_PER_USER", self.max_sessions_per_user.into()),
            ("BAN_STRIKES", self.ban_strikes.into()),
            ("BAN_WINDOW_SECS", self.ban_window_secs),
            ("MAX_TRACKED_CLIENTS", self.max_tracked_clients as u64),
            ("HOUSEKEEPING_INTERVAL_MS", self.housekeeping_interval_ms),
            ("PING_INTERVAL_SECS", self.ping_interval_secs),
            ("PONG_TIMEOUT_SECS", self.pong_timeout_secs),
            ("MSG_RATE_PER_SEC", self.msg_rate_per_sec.into()),
            ("MSG_BURST", self.msg_burst.into()),
            ("CONTROL_RATE_PER_SEC", self.control_rate_per_sec.into()),
            ("CONTROL_BURST", self.control_burst.into()),
            ("AUTH_TIMEOUT_MS", self.auth_timeout_ms),
            ("JOIN_TIMEOUT_MS", self.join_timeout_ms),
            ("MAX_MESSAGE_BYTES", self.max_message_bytes as u64),
            ("MAX_FRAGMENTS", self.max_fragments as u64),
            ("MAX_TOKEN_BYTES", self.max_token_bytes as u64),
            ("OUTBOUND_QUEUE_FRAMES", self.outbound_queue_frames as u64),
            ("CLOSE_TIMEOUT_MS", self.close_timeout_ms),
            ("HEADER_READ_TIMEOUT_MS", self.header_read_timeout_ms),
            ("MAX_HEADERS", self.max_headers as u64),
        ];
        if let Some((var, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(var, "must be greater than 0"));
        }
        if self.username_max_chars < MIN_NAME_CHARS {
            return Err(invalid(
                "USERNAME_MAX_CHARS",
                format!("at least {MIN_NAME_CHARS}"),
            ));
        }
        if self.room_max_chars < MIN_NAME_CHARS {
            return Err(invalid(
                "ROOM_MAX_CHARS",
                format!("at least {MIN_NAME_CHARS}"),
            ));
        }
        if self.max_header_bytes < 1024 {
            // A browser's upgrade request alone is several hundred bytes.
            return Err(invalid("MAX_HEADER_BYTES", "at least 1024"));
        }
        Ok(())
    }

    /// The pinned algorithms: `JWT_ALGORITHMS`, or HS256 (RS256 when keys come from JWKS).
    pub fn algorithms(&self) -> AlgorithmList {
        self.jwt_algorithms.clone().unwrap_or_else(|| {
            AlgorithmList(vec![if self.uses_jwks() {
                Algorithm::RS256
            } else {
                Algorithm::HS256
            }])
        })
    }

    /// Whether keys come from identity providers' JWKS endpoints.
    pub fn uses_jwks(&self) -> bool {
        self.jwks_url.is_some() || self.trusted_issuers.is_some()
    }

    /// Every trusted issuer with its key set: `TRUSTED_ISSUERS`, or the one named by
    /// `JWT_ISSUER`, `JWKS_URL` and `JWT_AUDIENCE`.
    pub fn issuers(&self) -> Vec<TrustedIssuer> {
        if let Some(issuers) = &self.trusted_issuers {
            return issuers.clone();
        }
        match (&self.jwt_issuer, &self.jwks_url) {
            (Some(issuer), Some(url)) => vec![TrustedIssuer {
                issuer: issuer.clone(),
                jwks_url: url.clone(),
                audience: self
                    .jwt_audience
                    .clone()
                    .map(|aud| aud.0)
                    .unwrap_or_default(),
                azp: self
                    .jwt_allowed_azp
                    .clone()
                    .map(|azp| azp.0)
                    .unwrap_or_default(),
                user_id_prefix: String::new(),
            }],
            _ => Vec::new(),
        }
    }

    fn validate_jwks(&self, algorithms: &AlgorithmList) -> Result<(), ConfigError> {
        if algorithms.family() == Some(AlgorithmFamily::Hmac)
            || algorithms
                .0
                .iter()
                .any(|alg| alg.family() == AlgorithmFamily::Hmac)
        {
            return Err(invalid(
                "JWT_ALGORITHMS",
                "HS* cannot be used with JWKS: identity providers publish public keys",
            ));
        }
        if self.trusted_issuers.is_some() {
            if self.jwks_url.is_some()
                || self.jwt_issuer.is_some()
                || self.jwt_audience.is_some()
                || self.jwt_allowed_azp.is_some()
            {
                return Err(invalid(
                    "TRUSTED_ISSUERS",
                    "replaces JWKS_URL, JWT_ISSUER, JWT_AUDIENCE and JWT_ALLOWED_AZP: set one or the other",
                ));
            }
        } else if self.jwt_issuer.is_none() {
            // Keys from a URL are bound to the issuer that publishes them.
            return Err(ConfigError::Missing("JWT_ISSUER".into()));
        }
        let issuers = self.issuers();
        if issuers.is_empty() {
            return Err(invalid("TRUSTED_ISSUERS", "no issuer listed"));
        }
        let multi = self.trusted_issuers.is_some();
        for issuer in &issuers {
            check_key_url(
                if multi { "TRUSTED_ISSUERS" } else { "JWKS_URL" },
                &issuer.jwks_url,
            )?;
            // An identity provider signs tokens for all its applications: without an audience
            // or azp check, a token meant for any of them would open a session here.
            if issuer.audience.is_empty() && issuer.azp.is_empty() && !self.jwt_accept_any_audience
            {
                return Err(invalid(
                    if multi { "TRUSTED_ISSUERS" } else { "JWT_AUDIENCE" },
                    format!(
                        "issuer {} needs an audience or an allowed azp (or JWT_ACCEPT_ANY_AUDIENCE=true)",
                        issuer.issuer
                    ),
                ));
            }
        }
        if issuers.len() > 1 {
            let mut prefixes: Vec<&str> =
                issuers.iter().map(|i| i.user_id_prefix.as_str()).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            if prefixes.len() != issuers.len() || prefixes.contains(&"") {
                return Err(invalid(
                    "TRUSTED_ISSUERS",
                    "with several issuers, each needs its own non-empty user_id_prefix",
                ));
            }
        }
        if self.jwks_timeout_ms >= self.auth_timeout_ms
            || self.jwks_timeout_ms >= self.jwks_refetch_cooldown_secs.saturating_mul(1000)
        {
            return Err(invalid(
                "JWKS_TIMEOUT_MS",
                "must be shorter than AUTH_TIMEOUT_MS and JWKS_REFETCH_COOLDOWN_SECS",
            ));
        }
        let positive = [
            ("JWKS_REFRESH_SECS", self.jwks_refresh_secs),
            (
                "JWKS_REFETCH_COOLDOWN_SECS",
                self.jwks_refetch_cooldown_secs,
            ),
            ("JWKS_TIMEOUT_MS", self.jwks_timeout_ms),
        ];
        if let Some((var, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(var, "must be greater than 0"));
        }
        Ok(())
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        if let Some(url) = self.redis_url() {
            redis::Client::open(url).map_err(|err| {
                // The parser's message may quote the URL, password included: keep only its kind.
                invalid("REDIS_URL", format!("not a Redis URL ({:?})", err.kind()))
            })?;
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self
                .redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "REDIS_PREFIX",
                "1 to 64 characters, no spaces or control characters",
            ));
        }
        if self.redis_key_ttl_secs < 3 {
            return Err(invalid(
                "REDIS_KEY_TTL_SECS",
                "at least 3 (nodes refresh their keys three times per period)",
            ));
        }
        if self.redis_timeout_ms == 0 || self.redis_timeout_ms >= self.redis_key_ttl_secs * 1000 / 3
        {
            return Err(invalid(
                "REDIS_TIMEOUT_MS",
                "greater than 0 and shorter than a third of REDIS_KEY_TTL_SECS",
            ));
        }
        if self.redis_probe_interval_ms < 100 {
            return Err(invalid("REDIS_PROBE_INTERVAL_MS", "at least 100"));
        }
        if self.redis_reconnect_max_ms < 100 {
            return Err(invalid("REDIS_RECONNECT_MAX_MS", "at least 100"));
        }
        if self.redis_publish_queue == 0 {
            return Err(invalid("REDIS_PUBLISH_QUEUE", "must be greater than 0"));
        }
        Ok(())
    }

    /// `REDIS_URL`, unless unset or empty.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url
            .as_ref()
            .map(Secret::expose)
            .filter(|url| !url.is_empty())
    }
    /// How long a node's presence outlives its last heartbeat.
    pub fn redis_key_ttl(&self) -> Duration {
        Duration::from_secs(self.redis_key_ttl_secs)
    }
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
    pub fn redis_probe_interval(&self) -> Duration {
        Duration::from_millis(self.redis_probe_interval_ms)
    }
    pub fn redis_reconnect_max(&self) -> Duration {
        Duration::from_millis(self.redis_reconnect_max_ms)
    }

    pub fn jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwks_refresh_secs)
    }
    pub fn jwks_refetch_cooldown(&self) -> Duration {
        Duration::from_secs(self.jwks_refetch_cooldown_secs)
    }
    pub fn jwks_timeout(&self) -> Duration {
        Duration::from_millis(self.jwks_timeout_ms)
    }

    /// Reads the PEM public key named by `JWT_PUBLIC_KEY_FILE`, if any.
    pub fn read_public_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.jwt_public_key_file else {
            return Ok(None);
        };
        std::fs::read(path)
            .map(Some)
            .map_err(|source| ConfigError::Io {
                path: path.clone(),
                source,
            })
    }

    pub fn origins(&self) -> &CommaList {
        static EMPTY: CommaList = CommaList(Vec::new());
        self.allowed_origins.as_ref().unwrap_or(&EMPTY)
    }
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn ban_window(&self) -> Duration {
        Duration::from_secs(self.ban_window_secs)
    }
    pub fn ban_duration(&self) -> Duration {
        Duration::from_secs(self.ban_secs)
    }
    pub fn housekeeping_interval(&self) -> Duration {
        Duration::from_millis(self.housekeeping_interval_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs)
    }
    /// `None` when `IDLE_TIMEOUT_SECS` is 0.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }
    pub fn drain_delay(&self) -> Duration {
        Duration::from_secs(self.drain_delay_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("PORT", "9000"),
            ("ALLOWED_ORIGINS", "http://a.example, http://b.example,"),
            ("JWT_DECODE_SECRET", "garin-secret"),
        ]
    }

    #[test]
    fn garinchat_env_is_enough() {
        let config = Config::from_pairs(base()).unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(
            config.origins().0,
            vec!["http://a.example".to_owned(), "http://b.example".to_owned()]
        );
        assert_eq!(config.algorithms().0, vec![Algorithm::HS256]);
        assert_eq!(config.auth_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn missing_required_settings_are_named() {
        for var in ["ALLOWED_ORIGINS", "JWT_DECODE_SECRET"] {
            let pairs = base().into_iter().filter(|(k, _)| *k != var);
            let err = Config::from_pairs(pairs).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn redis_settings_at_their_limits_are_accepted() {
        let mut pairs = base();
        pairs.extend([
            ("REDIS_URL", "redis://:pass@127.0.0.1:6379/2"),
            ("REDIS_KEY_TTL_SECS", "3"),
            ("REDIS_TIMEOUT_MS", "999"),
            ("REDIS_PROBE_INTERVAL_MS", "100"),
            ("REDIS_RECONNECT_MAX_MS", "100"),
            ("REDIS_PUBLISH_QUEUE", "1"),
        ]);
        let config = Config::from_pairs(pairs).unwrap();
        assert_eq!(config.redis_url(), Some("redis://:pass@127.0.0.1:6379/2"));
        assert!(
            !format!("{config:?}").contains("pass@"),
            "the URL is redacted"
        );
        let mut empty = base();
        empty.push(("REDIS_URL", ""));
        assert_eq!(Config::from_pairs(empty).unwrap().redis_url(), None);
    }

    #[test]
    fn invalid_settings_are_named() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("JWT_LEEWAY_SECS", "31"),
            ("JWT_ALGORITHMS", "HS256,RS256"),
            ("JWT_ALGORITHMS", "none"),
            ("AUTH_TIMEOUT_MS", "0"),
            ("MSG_RATE_PER_SEC", "0"),
            ("MSG_BURST", "-1"),
            ("BIND_ADDR", "localhost"),
            ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.local"),
            ("MAX_CONNECTIONS", "0"),
            ("PING_INTERVAL_SECS", "0"),
            ("LOG_LEVEL", "palisade=loud"),
            ("MAX_ROOM_MEMBERS", "0"),
            ("DRAIN_DELAY_SECS", "10"),
            ("LOG_FORMAT", "xml"),
            ("TRUST_CLIENT_USERNAME", "yes please"),
            ("ALLOWED_ORIGINS", " , "),
            ("REDIS_URL", "http://not-redis"),
            ("REDIS_PREFIX", "has space:"),
            ("REDIS_KEY_TTL_SECS", "2"),
            ("REDIS_TIMEOUT_MS", "0"),
            ("REDIS_TIMEOUT_MS", "5000"),
            ("REDIS_PROBE_INTERVAL_MS", "99"),
            ("REDIS_RECONNECT_MAX_MS", "99"),
            ("REDIS_PUBLISH_QUEUE", "0"),
        ] {
            let mut pairs = base();
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, value));
            let err = Config::from_pairs(pairs).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn public_key_algorithms_need_a_key_file() {
        let mut pairs = base();
        pairs.push(("JWT_ALGORITHMS", "RS256"));
        let err = Config::from_pairs(pairs).unwrap_err().to_string();
        assert!(err.contains("JWT_PUBLIC_KEY_FILE"), "{err}");
    }

    #[test]
    fn secrets_never_show() {
        let config = Config::from_pairs(base()).unwrap();
        assert!(!format!("{config:?}").contains("garin-secret"));
        assert!(!serde_json::to_string(&config)
            .unwrap()
            .contains("garin-secret"));
    }
}
