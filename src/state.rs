//! The state every connection stands on: configuration, verifier, limits, bans, the hub, the
//! metrics, and the trackers of the tasks that serve clients.
//!
//! It is built once per gateway and shared as an `Arc<Gateway>`. Starting and stopping the
//! process (listeners, housekeeping, the drain) is the business of the gateway module above; this
//! module knows nothing of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::bans::Bans;
use crate::broker::{Broker, LocalBroker, RedisBroker};
use crate::config::ConfigError;
use crate::http::HeadLimits;
use crate::hub::Hub;
use crate::ids::SessionId;
use crate::limits::{SessionQuotas, UserMessageLimiter};
use crate::metrics::Metrics;
use crate::session::settings::Settings as SessionSettings;
use crate::settings::{Lifecycle, Settings};
use crate::upgrade::UpgradePolicy;

/// State shared by every connection.
pub struct Gateway {
    pub(crate) session: SessionSettings,
    pub(crate) head: HeadLimits,
    pub(crate) upgrade: UpgradePolicy,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) verifier: TokenVerifier,
    pub(crate) admission: Admission,
    pub(crate) bans: Bans,
    pub(crate) hub: Arc<Hub>,
    pub(crate) quotas: SessionQuotas,
    pub(crate) user_messages: UserMessageLimiter,
    /// Cancelled when the gateway stops: accept loops end, every session closes with 1001.
    pub(crate) stopping: CancellationToken,
    /// Every session task, so the drain can wait for them and count those left.
    pub(crate) sessions: TaskTracker,
    /// Every other task (HTTP connections, admin, housekeeping, key refresh, the broker).
    pub(crate) tasks: TaskTracker,
    pub(crate) metrics: Arc<Metrics>,
    /// Set when the drain starts: `/readyz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
    next_session_id: AtomicU64,
}

impl Gateway {
    /// The state for `settings`; fails only if a file they name cannot be read.
    pub fn new(settings: &Settings) -> Result<Arc<Gateway>, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let broker: Arc<dyn Broker> = match &settings.redis {
            Some(redis) => RedisBroker::new(redis, Arc::clone(&metrics)),
            None => Arc::new(LocalBroker),
        };
        Ok(Arc::new(Gateway {
            verifier: TokenVerifier::new(&settings.auth, &metrics)?,
            admission: Admission::new(&settings.admission),
            bans: Bans::new(&settings.bans),
            quotas: SessionQuotas::new(&settings.quotas),
            user_messages: UserMessageLimiter::new(settings.quotas.user_messages),
            hub: Hub::new(&settings.rooms, Arc::clone(&metrics), broker),
            metrics,
            draining: AtomicBool::new(false),
            session: settings.session,
            head: settings.head,
            upgrade: settings.upgrade.clone(),
            lifecycle: settings.lifecycle,
            stopping: CancellationToken::new(),
            sessions: TaskTracker::new(),
            tasks: TaskTracker::new(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this node should get new clients: not draining, every identity provider's
    /// keys loaded, and the broker (when there is one) connected.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && !self.stopping.is_cancelled()
            && self.verifier.keys_loaded()
            && self.hub.broker().is_connected()
    }
}
