//! Starting the gateway and stopping it.
//!
//! [`start`] binds the listeners and spawns the accept loops, the housekeeping timer, the key
//! refreshes and the broker; the returned [`RunningGateway`] is what `main` and the integration
//! tests hold. hyper's graceful shutdown forgets a connection once it upgrades, so every
//! connection and session task is spawned on the gateway's own trackers, and shutdown is a
//! drain: not-ready first, then cancel (accept stops, every session closes with 1001), then
//! wait for the trackers within `SHUTDOWN_GRACE_SECS`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, Api};
use crate::broker::{LocalControl, LocalRooms};
use crate::clock;
use crate::config::ConfigError;
use crate::protocol::CloseCode;
use crate::server::Pages;
use crate::settings::Settings;
use crate::state::Gateway;
use crate::{admin, server, webhooks};

/// Why a gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file the settings name cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why it cannot be bound.
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
    /// The public listener (`PORT`).
    pub main: TcpListener,
    /// The admin listener (`METRICS_PORT`), unless disabled.
    pub admin: Option<TcpListener>,
    /// The server API's listener (`API_PORT`); used only when the API is configured.
    pub api: Option<TcpListener>,
}

impl Listeners {
    /// Binds `BIND_ADDR:PORT`, `METRICS_BIND_ADDR:METRICS_PORT` unless the port is 0, and
    /// `API_BIND_ADDR:API_PORT` when the server API is configured.
    pub async fn bind(settings: &Settings) -> Result<Listeners, StartError> {
        let listen = settings.listen;
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let main = bind(SocketAddr::new(listen.bind_addr, listen.port)).await?;
        let admin = match listen.admin {
            None => None,
            Some(addr) => Some(bind(addr).await?),
        };
        let api = match &settings.api {
            None => None,
            Some(api) => Some(bind(api.addr).await?),
        };
        Ok(Listeners { main, admin, api })
    }
}

/// A started gateway.
pub struct RunningGateway {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    api_addr: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    accept_loop: JoinHandle<()>,
}

/// Binds the listeners the settings name and starts serving.
pub async fn start(settings: &Settings) -> Result<RunningGateway, StartError> {
    let listeners = Listeners::bind(settings).await?;
    start_with(settings, listeners).await
}

/// Starts serving on listeners bound by the caller (tests bind `127.0.0.1:0`).
pub async fn start_with(
    settings: &Settings,
    listeners: Listeners,
) -> Result<RunningGateway, StartError> {
    start_with_pages(settings, listeners, None).await
}

/// Starts serving, with `pages` answering plain HTTP requests on the public port (the demo).
pub async fn start_with_pages(
    settings: &Settings,
    listeners: Listeners,
    pages: Option<Arc<dyn Pages>>,
) -> Result<RunningGateway, StartError> {
    let gateway = Gateway::new(settings)?;
    let local_addr = bound_addr(&listeners.main)?;
    let admin_addr = listeners.admin.as_ref().map(bound_addr).transpose()?;
    let accept_loop = tokio::spawn(server::accept_loop(
        listeners.main,
        Arc::clone(&gateway),
        pages,
    ));
    if let Some(admin) = listeners.admin {
        gateway
            .tasks
            .spawn(admin::accept_loop(admin, Arc::clone(&gateway)));
    }
    let api_addr = match (&settings.api, listeners.api) {
        (Some(api_settings), Some(listener)) => {
            let addr = bound_addr(&listener)?;
            let api = Api::new(api_settings);
            gateway.tasks.spawn(api::accept_loop(
                listener,
                Arc::clone(&gateway),
                Arc::clone(&api),
            ));
            gateway
                .tasks
                .spawn(api_housekeeping(Arc::clone(&gateway), api));
            Some(addr)
        }
        _ => None,
    };
    let observed = gateway.observed.lock().expect("never poisoned").take();
    if let (Some(webhooks), Some(observed)) = (&settings.webhooks, observed) {
        webhooks::start(&gateway, webhooks, observed);
    }
    gateway.tasks.spawn(housekeeping(Arc::clone(&gateway)));
    gateway.tasks.spawn(watch_memory(Arc::clone(&gateway)));
    gateway.tasks.spawn(tick_rooms(Arc::clone(&gateway)));
    let rooms: Arc<dyn LocalRooms> = Arc::clone(&gateway.hub) as Arc<dyn LocalRooms>;
    let control: Arc<dyn LocalControl> = Arc::clone(&gateway.moderation) as Arc<dyn LocalControl>;
    Arc::clone(gateway.hub.broker()).start(rooms, control, &gateway.tasks);
    for issuer in gateway.verifier.issuers() {
        gateway
            .tasks
            .spawn(issuer.refresh_loop(gateway.stopping.clone()));
    }
    Ok(RunningGateway {
        local_addr,
        admin_addr,
        api_addr,
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

/// Sweeps the limiter and ban maps every `HOUSEKEEPING_INTERVAL_MS` until the gateway stops,
/// so clients that come and go do not grow them for ever.
async fn housekeeping(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gateway.lifecycle.housekeeping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gateway.stopping.cancelled() => return,
            _ = tick.tick() => {
                gateway.admission.housekeep();
                gateway.user_messages.housekeep();
                gateway.moderation.bans().housekeep();
                gateway
                    .verifier
                    .revoked()
                    .housekeep(clock::unix_ms());
                gateway.verifier.reload_revocations();
                if let Some(tls) = &gateway.tls {
                    tls.reload_if_changed();
                }
                gateway
                    .metrics
                    .revocation_invalid_lines
                    .set(gateway.verifier.invalid_revocation_lines() as i64);
                crate::memory::release_free_memory();
            }
        }
    }
}

/// Keeps the server API's house every `HOUSEKEEPING_INTERVAL_MS` until the gateway stops.
async fn api_housekeeping(gateway: Arc<Gateway>, api: Arc<Api>) {
    let mut tick = tokio::time::interval(gateway.lifecycle.housekeeping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gateway.stopping.cancelled() => return,
            _ = tick.tick() => api.housekeep(),
        }
    }
}

/// Runs the rooms' clock until the gateway stops: held read positions relayed, expired history
/// dropped.
async fn tick_rooms(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gateway.hub.tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gateway.stopping.cancelled() => return,
            _ = tick.tick() => gateway.hub.tick(),
        }
    }
}

/// Reads memory use every `memory::SAMPLE_INTERVAL` until the gateway stops: past
/// `MEMORY_HIGH_WATERMARK` new upgrades are shed.
async fn watch_memory(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(crate::memory::SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gateway.stopping.cancelled() => return,
            _ = tick.tick() => {
                let used = gateway.memory.sample();
                gateway.metrics.memory_used.set(used as i64);
                gateway
                    .metrics
                    .memory_shedding
                    .set(i64::from(gateway.memory.is_shedding()));
            }
        }
    }
}

impl RunningGateway {
    /// Where the public listener listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, unless `METRICS_PORT` is 0.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the server API is served, when it is configured.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The shared state, for tests.
    #[doc(hidden)]
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The drain: `/readyz` turns not-ready at once (so load balancers stop sending), new
    /// sockets are still served for `DRAIN_DELAY_SECS`, then accepting stops and every session
    /// is closed with 1001. Returns when all are gone or `SHUTDOWN_GRACE_SECS` (counted from
    /// the start of the drain) is over; what is left then is dropped and counted.
    pub async fn shutdown(self) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        let lifecycle = self.gateway.lifecycle;
        self.gateway.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            delay_secs = lifecycle.drain_delay.as_secs(),
            "draining: not ready"
        );
        tokio::time::sleep(lifecycle.drain_delay).await;

        tracing::info!("closing every session");
        // Cancelled first: a session registering from now on closes itself.
        self.gateway.stopping.cancel();
        self.gateway.sessions.close_all(CloseCode::GoingAway);
        let _ = self.accept_loop.await;
        let (sessions, tasks) = (&self.gateway.session_tasks, &self.gateway.tasks);
        sessions.close();
        tasks.close();
        let deadline = started + lifecycle.shutdown_grace;
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
