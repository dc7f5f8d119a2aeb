//! Palisade: a hardened WebSocket chat gateway, wire-compatible with GarinChat-Server.
//!
//! A socket upgrades, authenticates with a JWT within a deadline, joins a room within a
//! deadline, then chats; every rule it breaks closes it with a code from one table
//! ([`protocol::CloseCode`], mirrored in `docs/PROTOCOL.md`).
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | settings from the environment (envy), defaults, validation, redacted secrets |
//! | [`gateway`] | shared state; starting the gateway and shutting it down within a grace period |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz` |
//! | [`metrics`] | Prometheus metrics with bounded labels |
//! | [`admission`] | connection caps (global, per IP, per user) and the per-IP connect rate |
//! | [`bans`] | strikes for abusive closes, temporary bans of IPs and users |
//! | [`client_ip`] | the client address behind trusted proxies; the /64 key for IPv6 |
//! | [`server`] | accept loop, hyper HTTP/1.1, routes, Origin and handshake checks, upgrade |
//! | [`session`] | one socket's state machine, with its [`session::reader`] and [`session::writer`] tasks |
//! | [`protocol`] | client and server JSON frames, the close-code table |
//! | [`auth`] | JWT verification (static keys or identity providers' JWKS), claims, revocation; development token minting |
//! | [`names`] | username and room naming rules |
//! | [`memory`] | returning freed heap pages to the system after load |
//! | [`limits`] | per-socket rate limits (governor) |
//! | [`hub`] | rooms, membership that leaves on drop, non-blocking fan-out, the view of other nodes' members |
//! | [`broker`] | carrying rooms between nodes: in-process for one node, Redis Pub/Sub and presence for many |
//! | [`outbox`] | a socket's bounded outbound queue and slow-consumer eviction |
//! | [`shutdown`] | SIGTERM/SIGINT |
//! | [`demo`] | the standalone `palisade demo` config and its printed tokens |
//!
//! The binary (`src/main.rs`) is the CLI: `serve`, `demo`, `token`, `check-config`.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod bans;
pub mod broker;
pub mod client_ip;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod hub;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;

pub use config::Config;
pub use gateway::{start, start_with, Gateway, Listeners, RunningGateway, ShutdownReport};
pub use protocol::CloseCode;
