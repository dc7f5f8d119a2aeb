//! Palisade: a hardened WebSocket chat gateway, wire-compatible with GarinChat-Server.
//!
//! A socket upgrades, authenticates with a JWT within a deadline, joins a room within a
//! deadline, then chats; every rule it breaks closes it with a code from one table
//! ([`CloseCode`], mirrored in `docs/PROTOCOL.md`).
//!
//! The API is small: settings ([`Settings`], from [`config`]), starting and stopping a gateway
//! ([`gateway`]), the `palisade demo` pages ([`demo`]), development tokens ([`mint`]) and the
//! stop signal ([`shutdown`]). Everything else is internal.
//!
//! # Layout
//!
//! Layers, from the bottom up; a module imports only from layers below its own.
//!
//! | layer | module | concept |
//! |---|---|---|
//! | foundation | `config` | the environment (envy), parsed once into one flat [`Config`]; [`ConfigError`] names the variable |
//! | | `protocol` | client and server JSON frames, the close-code table |
//! | | `clock` | wall-clock time in Unix milliseconds, hex |
//! | | `ids`, `names`, `client_ip` | session ids; username and room rules; the client address behind trusted proxies |
//! | | `metrics` | Prometheus metrics, label values from closed enums |
//! | | `memory` | returning freed heap pages to the system after load |
//! | | `observer` | what the hub and the sessions report for the webhooks (presence changes, messages) |
//! | | `http` | the accept loop and connection serving every listener shares; plain responses |
//! | policies | `auth` | JWT verification (static keys or identity providers' JWKS), claims, revocation, errors, minting |
//! | | `admission` | connection caps (global, per IP, per user) and the per-IP connect rate |
//! | | `bans` | strikes for abusive closes, temporary bans of IPs and users |
//! | | `limits` | message and control rate limits (governor) |
//! | | `outbox` | a socket's bounded outbound queue and slow-consumer eviction |
//! | | `socket` | an upgraded connection: RFC 6455 frames read and written as the socket is ready, with no buffer while idle; the close handshake |
//! | | `upgrade` | who may upgrade: the handshake checks fastwebsockets leaves open (method, Origin, version, key) |
//! | | `sessions` | the sessions open on this node by user, address and token id; closing them from outside |
//! | | `history` | rooms' numbered messages and read positions, in memory under one budget |
//! | rooms | `broker` | carrying rooms between nodes (in-process, or Redis Pub/Sub and presence); knows the hub only as `LocalRooms` |
//! | | `hub` | rooms, membership that leaves on drop, non-blocking fan-out, every room frame |
//! | | `moderation` | bans, kicks and revocations enforced on every node |
//! | session | `session` | one socket's state machine, in one task: its timers, its frames, its close |
//! | settings | `settings` | every subsystem's typed settings, validated once: [`Settings`] is the only way in |
//! | state | `state` | the [`Gateway`]: what every connection stands on |
//! | serving | `server` | the public listener: routes, admission, upgrade; pluggable [`Pages`] |
//! | | `admin` | the admin listener: `/metrics`, `/healthz`, `/readyz` |
//! | | `api` | the server API listener: publish, disconnect, bans, revocations, presence, history |
//! | | `webhooks` | signed events to the backend: presence decided cluster-wide, messages |
//! | start-up | [`gateway`] | listeners, start, housekeeping, the drain |
//! | | [`demo`], [`shutdown`] | the standalone demo's settings and pages; SIGTERM/SIGINT |
//!
//! The binary (`src/main.rs`) is the CLI: `serve`, `demo`, `token`, `check-config`,
//! `healthcheck`.

mod admin;
mod admission;
mod api;
mod auth;
mod bans;
mod broker;
mod client_ip;
mod clock;
pub mod config;
pub mod demo;
pub mod gateway;
mod history;
mod http;
mod hub;
mod ids;
mod limits;
mod memory;
mod metrics;
mod moderation;
mod names;
mod observer;
mod outbox;
mod protocol;
mod server;
mod session;
mod sessions;
mod settings;
pub mod shutdown;
mod socket;
mod state;
#[doc(hidden)]
pub mod testing;
mod tls;
mod upgrade;
mod webhooks;

pub use auth::mint;
pub use config::{Config, ConfigError};
pub use gateway::{start, start_with, Listeners, RunningGateway, ShutdownReport, StartError};
pub use protocol::{CloseCode, ErrorCode, V2_SUBPROTOCOL};
pub use server::Pages;
pub use settings::{Logging, Settings};
pub use state::Gateway;
