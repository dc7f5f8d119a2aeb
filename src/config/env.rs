//! The environment as one flat struct: field `foo_bar` is read from the variable `FOO_BAR`.
//!
//! Flat because envy reads nothing else (`#[serde(flatten)]` breaks non-string fields). Each
//! subsystem turns the fields it owns into its own typed settings (the settings module);
//! the README's configuration table documents every field, and `tests/docs.rs` keeps the two
//! equal. Names carry their unit (`_MS`, `_SECS`, `_BYTES`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::{
    bind_addr, trusted_issuers, trusted_proxies, AlgorithmList, CommaList, LogFormat, Secret,
    TrustedIssuer, TrustedProxies,
};

/// Every setting, with its default when the variable is unset or empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub port: u16,
    #[serde(deserialize_with = "bind_addr")]
    pub bind_addr: IpAddr,
    /// Required, as in GarinChat.
    pub allowed_origins: Option<CommaList>,
    pub allow_missing_origin: bool,

    pub jwt_decode_secret: Option<Secret>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwt_algorithms: Option<AlgorithmList>,
    pub jwks_url: Option<String>,
    #[serde(deserialize_with = "trusted_issuers")]
    pub trusted_issuers: Option<Vec<TrustedIssuer>>,
    pub jwks_refresh_secs: u64,
    pub jwks_refetch_cooldown_secs: u64,
    pub jwks_timeout_ms: u64,
    pub user_id_claim: String,
    pub rooms_claim: Option<String>,
    pub jwt_required_claims: Option<CommaList>,
    pub jwt_allowed_azp: Option<CommaList>,
    pub jwt_accept_any_audience: bool,
    pub revocation_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<CommaList>,
    pub jwt_leeway_secs: u64,
    pub max_token_bytes: usize,
    pub username_claim: String,
    pub trust_client_username: bool,
    pub username_max_chars: usize,
    pub room_max_chars: usize,

    pub auth_timeout_ms: u64,
    pub join_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub max_fragments: usize,
    pub msg_rate_per_sec: u32,
    pub msg_burst: u32,
    pub user_msg_rate_per_sec: u32,
    pub user_msg_burst: u32,
    pub control_rate_per_sec: u32,
    pub control_burst: u32,
    pub max_room_members: usize,
    pub outbound_queue_frames: usize,
    pub close_timeout_ms: u64,

    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,

    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    pub connect_rate_per_sec: u32,
    pub connect_burst: u32,
    pub max_sessions_per_user: u32,
    #[serde(deserialize_with = "trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    pub ban_strikes: u32,
    pub ban_window_secs: u64,
    pub ban_secs: u64,
    pub max_tracked_clients: usize,
    pub housekeeping_interval_ms: u64,

    pub ping_interval_secs: u64,
    pub pong_timeout_secs: u64,
    /// 0 disables the idle timeout.
    pub idle_timeout_secs: u64,

    pub shutdown_grace_secs: u64,
    pub drain_delay_secs: u64,
    /// 0 disables the admin listener.
    pub metrics_port: u16,
    pub log_format: LogFormat,
    pub log_level: String,

    /// Unset or empty runs one node on its own.
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    pub redis_key_ttl_secs: u64,
    pub redis_timeout_ms: u64,
    pub redis_probe_interval_ms: u64,
    pub redis_reconnect_max_ms: u64,
    pub redis_publish_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            bind_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            allowed_origins: None,
            allow_missing_origin: false,

            jwt_decode_secret: None,
            jwt_public_key_file: None,
            jwt_algorithms: None,
            jwks_url: None,
            trusted_issuers: None,
            jwks_refresh_secs: 300,
            jwks_refetch_cooldown_secs: 30,
            jwks_timeout_ms: 1500,
            user_id_claim: "sub".into(),
            rooms_claim: None,
            jwt_required_claims: None,
            jwt_allowed_azp: None,
            jwt_accept_any_audience: false,
            revocation_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            max_token_bytes: 4096,
            username_claim: "name".into(),
            trust_client_username: false,
            username_max_chars: 32,
            room_max_chars: 64,

            auth_timeout_ms: 2000,
            join_timeout_ms: 2000,
            max_message_bytes: 4096,
            max_fragments: 64,
            msg_rate_per_sec: 1,
            msg_burst: 1,
            user_msg_rate_per_sec: 3,
            user_msg_burst: 5,
            control_rate_per_sec: 2,
            control_burst: 5,
            max_room_members: 1000,
            outbound_queue_frames: 256,
            close_timeout_ms: 1000,

            header_read_timeout_ms: 5000,
            max_header_bytes: 8192,
            max_headers: 32,

            max_connections: 10_000,
            max_connections_per_ip: 50,
            connect_rate_per_sec: 5,
            connect_burst: 20,
            max_sessions_per_user: 5,
            trusted_proxies: TrustedProxies::default(),
            ban_strikes: 3,
            ban_window_secs: 60,
            ban_secs: 300,
            max_tracked_clients: 100_000,
            housekeeping_interval_ms: 10_000,

            ping_interval_secs: 30,
            pong_timeout_secs: 10,
            idle_timeout_secs: 0,

            shutdown_grace_secs: 10,
            drain_delay_secs: 2,
            metrics_port: 9090,
            log_format: LogFormat::Text,
            log_level: "info".into(),

            redis_url: None,
            redis_prefix: "palisade:".into(),
            redis_key_ttl_secs: 15,
            redis_timeout_ms: 2000,
            redis_probe_interval_ms: 1000,
            redis_reconnect_max_ms: 5000,
            redis_publish_queue: 65_536,
        }
    }
}
