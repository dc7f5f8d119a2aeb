//! The gateway as a whole: its shared state, and starting and stopping it.
//!
//! [`start`] binds the listeners and spawns the accept loops; the returned [`RunningGateway`]
//! is what `main` and the integration tests hold. hyper's graceful shutdown forgets a
//! connection once it upgrades, so every connection and session task is spawned on our own
//! [`TaskTracker`], and shutdown is a drain: not-ready first, then cancel the token (accept
//! stops, every session closes with 1001), then wait for the tracker within
//! `SHUTDOWN_GRACE_SECS`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::bans::Bans;
use crate::broker::{Broker, LocalBroker, RedisBroker};
use crate::config::{Config, ConfigError};
use crate::hub::{Hub, SessionId};
use crate::limits::{SessionQuotas, UserMessageLimiter};
use crate::metrics::Metrics;
use crate::{admin, server};

/// State shared by every connection.
pub struct Gateway {
    pub config: Arc<Config>,
    pub verifier: TokenVerifier,
    pub admission: Admission,
    pub bans: Bans,
    pub hub: Arc<Hub>,
    /// The Redis broker, when `REDIS_URL` is set (the hub holds it too, as its [`Broker`]).
    pub redis: Option<Arc<RedisBroker>>,
    pub quotas: SessionQuotas,
    pub user_messages: UserMessageLimiter,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them and count those left.
    pub sessions: TaskTracker,
    /// Every other task (HTTP connections, admin, housekeeping, key refresh).
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Set when the drain starts: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    next_session_id: AtomicU64,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, ConfigError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let redis = match config.redis_url() {
            Some(url) => Some(
                RedisBroker::new(&config, url, Arc::clone(&metrics)).map_err(|err| {
                    ConfigError::Invalid {
                        var: "REDIS_URL",
                        why: format!("not a Redis URL ({:?})", err.kind()),
                    }
                })?,
            ),
            None => None,
        };
        let broker: Arc<dyn Broker> = match &redis {
            Some(redis) => Arc::clone(redis) as Arc<dyn Broker>,
            None => Arc::new(LocalBroker),
        };
        Ok(Arc::new(Gateway {
            verifier: TokenVerifier::from_config(&config, &metrics)?,
            admission: Admission::new(&config),
            bans: Bans::new(&config),
            quotas: SessionQuotas::from_config(&config),
            user_messages: UserMessageLimiter::from_config(&config),
            hub: Hub::new(config.max_room_members, Arc::clone(&metrics), broker),
            redis,
            metrics,
            draining: AtomicBool::new(false),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            tasks: TaskTracker::new(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this node should get new clients: not draining, every identity provider's
    /// keys loaded, and the broker (when there is one) connected.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && !self.shutdown.is_cancelled()
            && self.verifier.keys_loaded()
            && self.hub.broker().is_connected()
    }

    /// Sweeps the limiter and ban maps every `HOUSEKEEPING_INTERVAL_MS` until shutdown, so
    /// clients that come and go do not grow them for ever.
    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.housekeeping_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.admission.housekeep();
                    self.user_messages.housekeep();
                    self.bans.housekeep();
                    self.verifier.reload_revocations();
                    crate::memory::release_free_memory();
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What shutdown achieved.
#[derive(Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections and sessions still running at the end of the grace period (then dropped).
    pub abandoned: usize,
}

/// The sockets a gateway serves on: the public one, and the admin one for `/metrics`.
pub struct Listeners {
    pub main: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `BIND_ADDR:PORT`, and `BIND_ADDR:METRICS_PORT` unless it is 0.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |port| async move {
            let addr = SocketAddr::new(config.bind_addr, port);
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let main = bind(config.port).await?;
        let admin = match config.metrics_port {
            0 => None,
            port => Some(bind(port).await?),
        };
        Ok(Listeners { main, admin })
    }
}

/// A started gateway.
pub struct RunningGateway {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    accept_loop: JoinHandle<()>,
}

/// Binds the listeners the config names and starts serving.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let listeners = Listeners::bind(&config).await?;
    start_with(config, listeners).await
}

/// Starts serving on listeners bound by the caller (tests bind `127.0.0.1:0`).
pub async fn start_with(
    config: Config,
    listeners: Listeners,
) -> Result<RunningGateway, StartError> {
    let gateway = Gateway::new(config)?;
    let local_addr = bound_addr(&listeners.main)?;
    let admin_addr = listeners.admin.as_ref().map(bound_addr).transpose()?;
    let accept_loop = tokio::spawn(server::accept_loop(listeners.main, Arc::clone(&gateway)));
    if let Some(admin) = listeners.admin {
        gateway
            .tasks
            .spawn(admin::accept_loop(admin, Arc::clone(&gateway)));
    }
    gateway.tasks.spawn(Arc::clone(&gateway).housekeeping());
    if let Some(redis) = &gateway.redis {
        redis.spawn(Arc::clone(&gateway.hub), &gateway.tasks);
    }
    for issuer in gateway.verifier.issuers() {
        gateway
            .tasks
            .spawn(issuer.refresh_loop(gateway.shutdown.clone()));
    }
    Ok(RunningGateway {
        local_addr,
        admin_addr,
        gateway,
        accept_loop,
    })
}

fn bound_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

impl RunningGateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, unless `METRICS_PORT` is 0.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The drain: `/readyz` turns not-ready at once (so load balancers stop sending), new
    /// sockets are still served for `DRAIN_DELAY_SECS`, then accepting stops and every session
    /// is closed with 1001. Returns when all are gone or `SHUTDOWN_GRACE_SECS` (counted from
    /// the start of the drain) is over; what is left then is dropped and counted.
    pub async fn shutdown(self) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        let config = &self.gateway.config;
        self.gateway.draining.store(true, Ordering::SeqCst);
        tracing::info!(delay_secs = config.drain_delay_secs, "draining: not ready");
        tokio::time::sleep(config.drain_delay()).await;

        tracing::info!("closing every session");
        self.gateway.shutdown.cancel();
        let _ = self.accept_loop.await;
        let (sessions, tasks) = (&self.gateway.sessions, &self.gateway.tasks);
        sessions.close();
        tasks.close();
        let deadline = started + config.shutdown_grace();
        let everything = async {
            sessions.wait().await;
            // Only now: the sessions' last leaves must reach the other nodes.
            self.gateway.hub.broker().stop().await;
            tasks.wait().await;
        };
        let abandoned = match tokio::time::timeout_at(deadline, everything).await {
            Ok(()) => 0,
            Err(_) => sessions.len(),
        };
        self.gateway
            .metrics
            .sessions_abandoned
            .inc_by(abandoned as u64);
        ShutdownReport { abandoned }
    }
}
