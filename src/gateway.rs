//! The gateway as a whole: its shared state, and starting and stopping it.
//!
//! [`start`] binds the listener and spawns the accept loop; the returned [`RunningGateway`] is
//! what `main` and the integration tests hold. hyper's graceful shutdown forgets a connection
//! once it upgrades, so every connection and session task is spawned on our own
//! [`TaskTracker`], and shutdown is: cancel the token (accept stops, every session closes with
//! 1001), then wait for the tracker within `SHUTDOWN_GRACE_SECS`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::bans::Bans;
use crate::config::{Config, ConfigError};
use crate::hub::{Hub, SessionId};
use crate::limits::{SessionQuotas, UserMessageLimiter};
use crate::server;

/// State shared by every connection.
pub struct Gateway {
    pub config: Arc<Config>,
    pub verifier: TokenVerifier,
    pub admission: Admission,
    pub bans: Bans,
    pub hub: Arc<Hub>,
    pub quotas: SessionQuotas,
    pub user_messages: UserMessageLimiter,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    next_session_id: AtomicU64,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, ConfigError> {
        config.validate()?;
        Ok(Arc::new(Gateway {
            verifier: TokenVerifier::from_config(&config)?,
            admission: Admission::new(&config),
            bans: Bans::new(&config),
            quotas: SessionQuotas::from_config(&config),
            user_messages: UserMessageLimiter::from_config(&config),
            hub: Hub::new(config.max_room_members),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
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

/// A started gateway.
pub struct RunningGateway {
    local_addr: SocketAddr,
    gateway: Arc<Gateway>,
    accept_loop: JoinHandle<()>,
}

/// Binds `BIND_ADDR:PORT` and starts accepting.
pub async fn start(config: Config) -> Result<RunningGateway, StartError> {
    let addr = SocketAddr::new(config.bind_addr, config.port);
    let gateway = Gateway::new(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let accept_loop = tokio::spawn(server::accept_loop(listener, Arc::clone(&gateway)));
    gateway.tasks.spawn(Arc::clone(&gateway).housekeeping());
    Ok(RunningGateway {
        local_addr,
        gateway,
        accept_loop,
    })
}

impl RunningGateway {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, closes every session with 1001 and waits for them, at most
    /// `SHUTDOWN_GRACE_SECS`.
    pub async fn shutdown(self) -> ShutdownReport {
        self.gateway.shutdown.cancel();
        let _ = self.accept_loop.await;
        let tasks = &self.gateway.tasks;
        tasks.close();
        let grace = self.gateway.config.shutdown_grace();
        let abandoned = match tokio::time::timeout(grace, tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => tasks.len(),
        };
        ShutdownReport { abandoned }
    }
}
