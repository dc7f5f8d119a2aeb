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
    bind_addr, trusted_issuers, trusted_proxies, AlgorithmList, CommaList, DirectMessages,
    LogFormat, Secret, TrustedIssuer, TrustedProxies,
};

/// Every setting, with its default when the variable is unset or empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// `PORT`: TCP port to listen on.
    pub port: u16,
    /// `BIND_ADDR`: address to listen on.
    #[serde(deserialize_with = "bind_addr")]
    pub bind_addr: IpAddr,
    /// `ALLOWED_ORIGINS`: browser origins allowed to connect (`*` any); required, as in
    /// GarinChat.
    pub allowed_origins: Option<CommaList>,
    /// `ALLOW_MISSING_ORIGIN`: admit upgrades without an `Origin` header.
    pub allow_missing_origin: bool,

    /// `JWT_DECODE_SECRET`: the HMAC secret.
    pub jwt_decode_secret: Option<Secret>,
    /// `JWT_PUBLIC_KEY_FILE`: PEM public key for RS*, PS*, ES* or EdDSA.
    pub jwt_public_key_file: Option<PathBuf>,
    /// `JWT_ALGORITHMS`: comma-separated allowed algorithms.
    pub jwt_algorithms: Option<AlgorithmList>,
    /// `JWKS_URL`: the issuer's key set.
    pub jwks_url: Option<String>,
    /// `TRUSTED_ISSUERS`: several issuers at once, as JSON: `[{"issuer": "...", "jwks_url": "...",
    /// "audience": "...", "azp": "...", "user_id_prefix": "a:"}]`.
    #[serde(deserialize_with = "trusted_issuers")]
    pub trusted_issuers: Option<Vec<TrustedIssuer>>,
    /// `JWKS_REFRESH_SECS`: key set refresh interval without `Cache-Control: max-age`, and the
    /// longest with it.
    pub jwks_refresh_secs: u64,
    /// `JWKS_REFETCH_COOLDOWN_SECS`: fewest seconds between fetches caused by unknown `kid`s.
    pub jwks_refetch_cooldown_secs: u64,
    /// `JWKS_TIMEOUT_MS`: longest a key set fetch may take.
    pub jwks_timeout_ms: u64,
    /// `USER_ID_CLAIM`: token claim with the user id.
    pub user_id_claim: String,
    /// `ROOMS_CLAIM`: token claim listing the rooms it may join.
    pub rooms_claim: Option<String>,
    /// `JWT_REQUIRED_CLAIMS`: comma-separated claims that must be present.
    pub jwt_required_claims: Option<CommaList>,
    /// `JWT_ALLOWED_AZP`: comma-separated accepted `azp` values.
    pub jwt_allowed_azp: Option<CommaList>,
    /// `JWT_ACCEPT_ANY_AUDIENCE`: with JWKS, accept an issuer with neither an audience nor an
    /// `azp` check.
    pub jwt_accept_any_audience: bool,
    /// `REVOCATION_FILE`: file of revoked `jti`s and users, re-read when it changes.
    pub revocation_file: Option<PathBuf>,
    /// `JWT_ISSUER`: required `iss` value when set.
    pub jwt_issuer: Option<String>,
    /// `JWT_AUDIENCE`: comma-separated accepted `aud` values.
    pub jwt_audience: Option<CommaList>,
    /// `JWT_LEEWAY_SECS`: clock-skew allowance for `exp` and `nbf`, at most 30.
    pub jwt_leeway_secs: u64,
    /// `MAX_TOKEN_BYTES`: longest token accepted.
    pub max_token_bytes: usize,
    /// `USERNAME_CLAIM`: token claim with the display name.
    pub username_claim: String,
    /// `TRUST_CLIENT_USERNAME`: show the `username` the client sends in `join`.
    pub trust_client_username: bool,
    /// `USERNAME_MAX_CHARS`: longest display name, in characters.
    pub username_max_chars: usize,
    /// `ROOM_MAX_CHARS`: longest room name.
    pub room_max_chars: usize,

    /// `AUTH_TIMEOUT_MS`: time from the upgrade to the `auth` frame.
    pub auth_timeout_ms: u64,
    /// `JOIN_TIMEOUT_MS`: time from `auth` to the `join` frame.
    pub join_timeout_ms: u64,
    /// `MAX_MESSAGE_BYTES`: largest message, summed over its fragments.
    pub max_message_bytes: usize,
    /// `MAX_FRAGMENTS`: most fragments in one message.
    pub max_fragments: usize,
    /// `MSG_RATE_PER_SEC`: sustained `message` frames per second per socket.
    pub msg_rate_per_sec: u32,
    /// `MSG_BURST`: `message` frames allowed back to back.
    pub msg_burst: u32,
    /// `USER_MSG_RATE_PER_SEC`: sustained `message` frames per second per user, across all their
    /// sockets.
    pub user_msg_rate_per_sec: u32,
    /// `USER_MSG_BURST`: `message` frames per user allowed back to back.
    pub user_msg_burst: u32,
    /// `CONTROL_RATE_PER_SEC`: sustained `join`/`userleave` frames per second per socket.
    pub control_rate_per_sec: u32,
    /// `CONTROL_BURST`: `join`/`userleave` frames allowed back to back.
    pub control_burst: u32,
    /// `MAX_ROOM_MEMBERS`: members per room.
    pub max_room_members: usize,
    /// `MAX_OUTBOUND_BYTES`: payload bytes queued to one socket before it is closed as a slow
    /// consumer (4007).
    pub max_outbound_bytes: usize,
    /// `OUTBOUND_QUEUE_FRAMES`: frames queued to one socket before it is closed as a slow
    /// consumer.
    pub outbound_queue_frames: usize,
    /// `CLOSE_TIMEOUT_MS`: how long the close handshake may take before TCP is dropped.
    pub close_timeout_ms: u64,

    /// `HISTORY_SIZE`: chat messages each room keeps (and numbers with offsets); 0 turns
    /// history, offsets and recovery off.
    pub history_size: usize,
    /// `HISTORY_TTL_SECS`: how long a room keeps a message.
    pub history_ttl_secs: u64,
    /// `HISTORY_ON_JOIN`: past messages sent to a join that does not ask for a number.
    pub history_on_join: usize,
    /// `HISTORY_MAX_BYTES`: history (and read positions) one node keeps in memory in all; the
    /// oldest entries of any room go first.
    pub history_max_bytes: usize,
    /// `MAX_MEMBERS_LISTED`: members in one `members` answer; more are left out and it says
    /// `truncated`.
    pub max_members_listed: usize,
    /// `TYPING_RATE_PER_SEC`: sustained `typing` frames per second per socket.
    pub typing_rate_per_sec: u32,
    /// `TYPING_BURST`: `typing` frames allowed back to back.
    pub typing_burst: u32,
    /// `TYPING_INTERVAL_MS`: at most one `typing` frame is relayed per user per room per this
    /// interval.
    pub typing_interval_ms: u64,
    /// `SEEN_INTERVAL_MS`: a user's read position is relayed to a room at most once per this
    /// interval (the latest one, at its end).
    pub seen_interval_ms: u64,

    /// `MAX_ROOMS_PER_SOCKET`: rooms one protocol v2 socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// `MAX_ROOMS_PER_USER`: rooms one user may be in over its v2 sockets on one node.
    pub max_rooms_per_user: usize,
    /// `DIRECT_MESSAGES`: `off`, `shared-room` or `all` (protocol v2).
    pub direct_messages: DirectMessages,
    /// `DM_RATE_PER_SEC`: sustained direct messages per second per socket.
    pub dm_rate_per_sec: u32,
    /// `DM_BURST`: direct messages allowed back to back.
    pub dm_burst: u32,

    /// `HEADER_READ_TIMEOUT_MS`: time for the HTTP request head to arrive.
    pub header_read_timeout_ms: u64,
    /// `MAX_HEADER_BYTES`: largest HTTP request head.
    pub max_header_bytes: usize,
    /// `MAX_HEADERS`: most HTTP request headers.
    pub max_headers: usize,

    /// `MAX_CONNECTIONS`: open connections before new ones get 503.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_IP`: open sockets per client address before 429.
    pub max_connections_per_ip: u32,
    /// `CONNECT_RATE_PER_SEC`: sustained upgrades per second per client address.
    pub connect_rate_per_sec: u32,
    /// `CONNECT_BURST`: upgrades per client address allowed back to back.
    pub connect_burst: u32,
    /// `MAX_SESSIONS_PER_USER`: open sessions per user.
    pub max_sessions_per_user: u32,
    /// `TRUSTED_PROXIES`: comma-separated IPs/CIDRs whose `X-Forwarded-For`/`Forwarded` give the
    /// client address.
    #[serde(deserialize_with = "trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    /// `FORWARDED_HEADER`: the one header trusted proxies write the client address in:
    /// `x-forwarded-for` or `forwarded`.
    pub forwarded_header: String,
    /// `BAN_STRIKES`: abusive closes that earn a ban.
    pub ban_strikes: u32,
    /// `BAN_WINDOW_SECS`: window in which the strikes must fall.
    pub ban_window_secs: u64,
    /// `BAN_SECS`: ban length: 403 at the upgrade for an address, 4009 at auth for a user.
    pub ban_secs: u64,
    /// `MAX_TRACKED_CLIENTS`: cap on client addresses remembered by the connect-rate limiter and
    /// on strike entries.
    pub max_tracked_clients: usize,
    /// `HOUSEKEEPING_INTERVAL_MS`: how often limiter and ban maps are swept.
    pub housekeeping_interval_ms: u64,

    /// `PING_INTERVAL_SECS`: server ping interval.
    pub ping_interval_secs: u64,
    /// `PONG_TIMEOUT_SECS`: time for the pong.
    pub pong_timeout_secs: u64,
    /// `IDLE_TIMEOUT_SECS`: close 4011 after this long without a message; 0 disables it.
    pub idle_timeout_secs: u64,

    /// `SHUTDOWN_GRACE_SECS`: longest a shutdown may take, counted from SIGTERM.
    pub shutdown_grace_secs: u64,
    /// `DRAIN_DELAY_SECS`: after SIGTERM, how long `/readyz` reports not-ready while sockets are
    /// still served, before every session gets 1001.
    pub drain_delay_secs: u64,
    /// `METRICS_PORT`: the admin listener (`/metrics`, `/healthz`, `/readyz`); 0 disables it.
    pub metrics_port: u16,
    /// `METRICS_BIND_ADDR`: the admin listener's address; loopback unless set.
    #[serde(deserialize_with = "bind_addr")]
    pub metrics_bind_addr: IpAddr,
    /// `ADMIN_MAX_CONNECTIONS`: open connections to the admin listener; more are closed at
    /// once.
    pub admin_max_connections: usize,
    /// `TLS_CERT_FILE`: serve `wss://`: the certificate chain in PEM, leaf first.
    pub tls_cert_file: Option<PathBuf>,
    /// `TLS_KEY_FILE`: the private key of `TLS_CERT_FILE`, in PEM.
    pub tls_key_file: Option<PathBuf>,
    /// `MEMORY_HIGH_WATERMARK`: memory use past which new upgrades get 503: a size, a
    /// percentage of the cgroup's (or the machine's) memory, or 0 for never.
    pub memory_high_watermark: String,
    /// `LOG_FORMAT`: `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// `LOG_LEVEL`: `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as
    /// `palisade=debug`.
    pub log_level: String,

    /// `API_PORT`: the server API's listener; it runs only with a credential (`API_KEYS`,
    /// `API_KEYS_FILE` or `API_JWT_SCOPE`); 0 disables it.
    pub api_port: u16,
    /// `API_BIND_ADDR`: the server API's address; loopback unless set.
    #[serde(deserialize_with = "bind_addr")]
    pub api_bind_addr: IpAddr,
    /// `API_KEYS`: comma-separated API keys (at least 32 characters each), all accepted, for
    /// rotation.
    pub api_keys: Option<Secret>,
    /// `API_KEYS_FILE`: a file of API keys, one per line (`#` starts a comment line), read at
    /// start and re-read when it changes.
    pub api_keys_file: Option<PathBuf>,
    /// `API_JWT_SCOPE`: accept the identity provider's access tokens that carry this scope or
    /// role (in `scope`, `scp` or `roles`); needs `API_JWT_AUDIENCE`.
    pub api_jwt_scope: Option<String>,
    /// `API_JWT_AUDIENCE`: comma-separated audiences an API access token must name.
    pub api_jwt_audience: Option<CommaList>,
    /// `API_RATE_PER_SEC`: server API requests a second per credential.
    pub api_rate_per_sec: u32,
    /// `API_BURST`: server API requests per credential allowed in a burst.
    pub api_burst: u32,
    /// `API_MAX_BODY_BYTES`: largest server API request body.
    pub api_max_body_bytes: usize,
    /// `API_MAX_CONNECTIONS`: open connections to the server API; more are closed at once.
    pub api_max_connections: usize,
    /// `API_MAX_PAGE`: most items one server API page may hold (the `limit` parameter's
    /// ceiling).
    pub api_max_page: usize,
    /// `API_MAX_ROOMS_PER_PUBLISH`: rooms one multi-room publish may name.
    pub api_max_rooms_per_publish: usize,
    /// `API_MAX_BAN_SECS`: longest ban or revocation the server API may set.
    pub api_max_ban_secs: u64,
    /// `API_MAX_REVOCATIONS`: revocations made through the server API held at once.
    pub api_max_revocations: usize,
    /// `API_IDEMPOTENCY_WINDOW_SECS`: how long an `Idempotency-Key` is remembered.
    pub api_idempotency_window_secs: u64,
    /// `API_IDEMPOTENCY_MAX_KEYS`: idempotency keys one node remembers without Redis.
    pub api_idempotency_max_keys: usize,

    /// `WEBHOOK_URL`: POST signed events (users online and offline, rooms occupied and empty,
    /// messages) here; unset sends none.
    pub webhook_url: Option<Secret>,
    /// `WEBHOOK_SECRET`: the HMAC-SHA256 key of `Palisade-Signature` (at least 32 characters).
    pub webhook_secret: Option<Secret>,
    /// `WEBHOOK_EVENTS`: comma-separated event types to send.
    pub webhook_events: String,
    /// `WEBHOOK_OFFLINE_GRACE_SECS`: how long a user's last session must stay gone before
    /// `user.offline` (a reconnect within it cancels both events).
    pub webhook_offline_grace_secs: u64,
    /// `WEBHOOK_QUEUE`: events waiting to be sent; more are dropped and counted.
    pub webhook_queue: usize,
    /// `WEBHOOK_BATCH_MAX`: events per POST at most.
    pub webhook_batch_max: usize,
    /// `WEBHOOK_BATCH_WAIT_MS`: how long a POST waits for more events to batch.
    pub webhook_batch_wait_ms: u64,
    /// `WEBHOOK_TIMEOUT_MS`: longest a POST may take.
    pub webhook_timeout_ms: u64,
    /// `WEBHOOK_MAX_ATTEMPTS`: tries per batch before its events are dropped and counted.
    pub webhook_max_attempts: usize,
    /// `WEBHOOK_RETRY_MAX_SECS`: longest wait between tries (doubling from 250 ms).
    pub webhook_retry_max_secs: u64,

    /// `REDIS_URL`: share rooms with other nodes through Redis; unset or empty runs one node on
    /// its own.
    pub redis_url: Option<Secret>,
    /// `REDIS_PREFIX`: prefix of every Redis key and channel, so deployments can share a Redis.
    pub redis_prefix: String,
    /// `REDIS_KEY_TTL_SECS`: A node's presence outlives its last heartbeat by at most this: a
    /// crashed node's members leave within it.
    pub redis_key_ttl_secs: u64,
    /// `REDIS_TIMEOUT_MS`: longest a Redis connect or command may take, and a join may wait for a
    /// room's members elsewhere.
    pub redis_timeout_ms: u64,
    /// `REDIS_CANARY_INTERVAL_MS`: how often a node sends itself a canary through Redis Pub/Sub;
    /// one that has not come back by the next is a silent subscriber, restarted.
    pub redis_canary_interval_ms: u64,
    /// `REDIS_SENTINELS`: `host:port` of Redis Sentinels, comma-separated; the master is found
    /// through them (exclusive with `REDIS_URL`).
    pub redis_sentinels: Option<CommaList>,
    /// `REDIS_CLUSTER_NODES`: `host:port` of some Redis Cluster nodes, comma-separated; the
    /// rest of the cluster is learned from them.
    pub redis_cluster_nodes: Option<CommaList>,
    /// `REDIS_SENTINEL_MASTER`: the master's name the Sentinels monitor.
    pub redis_sentinel_master: Option<String>,
    /// `REDIS_SENTINEL_USERNAME`: the user the Sentinels want, if they want one.
    pub redis_sentinel_username: Option<String>,
    /// `REDIS_SENTINEL_PASSWORD`: the Sentinels' password, if they want one.
    pub redis_sentinel_password: Option<Secret>,
    /// `REDIS_USERNAME`: with Sentinel, the user on the master (with `REDIS_URL` it is in the URL).
    pub redis_username: Option<String>,
    /// `REDIS_PASSWORD`: with Sentinel, the master's password (with `REDIS_URL` it is in the URL).
    pub redis_password: Option<Secret>,
    /// `REDIS_TLS`: with Sentinel, TLS to the Sentinels and the master (with `REDIS_URL`,
    /// `rediss://` says so).
    pub redis_tls: bool,
    /// `REDIS_TLS_CA_FILE`: PEM certificates trusted for Redis instead of the system's roots.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// `REDIS_TLS_CERT_FILE`: a client certificate chain (PEM) for Redis servers that ask for one.
    pub redis_tls_cert_file: Option<PathBuf>,
    /// `REDIS_TLS_KEY_FILE`: the client certificate's private key (PEM).
    pub redis_tls_key_file: Option<PathBuf>,
    /// `REDIS_RECONNECT_MAX_MS`: longest wait between reconnect attempts.
    pub redis_reconnect_max_ms: u64,
    /// `REDIS_PUBLISH_QUEUE`: events waiting to be written to Redis.
    pub redis_publish_queue: usize,
    /// `REDIS_RATE_SYNC_MS`: how often a node adds its users' messages to the counts every
    /// node shares (the per-user rate's tolerance).
    pub redis_rate_sync_ms: u64,
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
            max_token_bytes: 16 * 1024,
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
            max_outbound_bytes: 256 * 1024,
            close_timeout_ms: 1000,

            history_size: 100,
            history_ttl_secs: 24 * 60 * 60,
            history_on_join: 0,
            history_max_bytes: 64 * 1024 * 1024,
            max_members_listed: 500,
            typing_rate_per_sec: 2,
            typing_burst: 10,
            typing_interval_ms: 2000,
            seen_interval_ms: 1000,

            max_rooms_per_socket: 16,
            max_rooms_per_user: 64,
            direct_messages: DirectMessages::Off,
            dm_rate_per_sec: 1,
            dm_burst: 3,

            header_read_timeout_ms: 5000,
            max_header_bytes: 8192,
            max_headers: 32,

            max_connections: 10_000,
            max_connections_per_ip: 50,
            connect_rate_per_sec: 5,
            connect_burst: 20,
            max_sessions_per_user: 5,
            trusted_proxies: TrustedProxies::default(),
            forwarded_header: "x-forwarded-for".into(),
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
            metrics_bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_max_connections: 16,
            memory_high_watermark: "90%".into(),
            tls_cert_file: None,
            tls_key_file: None,
            log_format: LogFormat::Text,
            log_level: "info".into(),

            api_port: 8081,
            api_bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_keys: None,
            api_keys_file: None,
            api_jwt_scope: None,
            api_jwt_audience: None,
            api_rate_per_sec: 50,
            api_burst: 100,
            api_max_body_bytes: 64 * 1024,
            api_max_connections: 64,
            api_max_page: 1000,
            api_max_rooms_per_publish: 100,
            api_max_ban_secs: 365 * 24 * 60 * 60,
            api_max_revocations: 100_000,
            api_idempotency_window_secs: 24 * 60 * 60,
            api_idempotency_max_keys: 100_000,

            webhook_url: None,
            webhook_secret: None,
            webhook_events: "user.online,user.offline,room.occupied,room.empty".into(),
            webhook_offline_grace_secs: 3,
            webhook_queue: 10_000,
            webhook_batch_max: 100,
            webhook_batch_wait_ms: 50,
            webhook_timeout_ms: 5000,
            webhook_max_attempts: 8,
            webhook_retry_max_secs: 30,

            redis_url: None,
            redis_prefix: "palisade:".into(),
            redis_key_ttl_secs: 15,
            redis_timeout_ms: 2000,
            redis_canary_interval_ms: 1000,
            redis_sentinels: None,
            redis_cluster_nodes: None,
            redis_sentinel_master: None,
            redis_sentinel_username: None,
            redis_sentinel_password: None,
            redis_username: None,
            redis_password: None,
            redis_tls: false,
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
            redis_reconnect_max_ms: 5000,
            redis_publish_queue: 65_536,
            redis_rate_sync_ms: 250,
        }
    }
}
