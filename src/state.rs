//! The state every connection stands on: configuration, verifier, limits, bans, the hub, the
//! metrics, and the trackers of the tasks that serve clients.
//!
//! It is built once per gateway and shared as an `Arc<Gateway>`. Starting and stopping the
//! process (listeners, housekeeping, the drain) is the business of the gateway module above; this
//! module knows nothing of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::bans::Bans;
use crate::broker::{Broker, LocalBroker, RedisBroker};
use crate::client_ip::ProxyPolicy;
use crate::config::ConfigError;
use crate::http::HeadLimits;
use crate::hub::Hub;
use crate::ids::SessionId;
use crate::limits::{SessionQuotas, UserMessageLimiter};
use crate::memory::MemoryGuard;
use crate::metrics::Metrics;
use crate::moderation::Moderation;
use crate::observer::{Observations, Observer};
use crate::session::settings::Settings as SessionSettings;
use crate::sessions::Sessions;
use crate::settings::{Lifecycle, Settings};
use crate::tls::Tls;
use crate::upgrade::UpgradePolicy;

/// State shared by every connection.
pub struct Gateway {
    pub(crate) session: SessionSettings,
    pub(crate) head: HeadLimits,
    pub(crate) upgrade: UpgradePolicy,
    pub(crate) proxies: ProxyPolicy,
    pub(crate) lifecycle: Lifecycle,
    /// Whether new sockets are being shed for memory.
    pub(crate) memory: MemoryGuard,
    /// TLS on the public port, with `TLS_CERT_FILE`.
    pub(crate) tls: Option<Tls>,
    /// Connections the admin listener holds at most.
    pub(crate) admin_connections: Arc<Semaphore>,
    pub(crate) verifier: TokenVerifier,
    pub(crate) admission: Admission,
    pub(crate) moderation: Arc<Moderation>,
    /// The sessions open on this node, by user and address.
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) quotas: SessionQuotas,
    pub(crate) user_messages: UserMessageLimiter,
    /// Cancelled when the gateway stops: accept loops end, every session closes with 1001.
    pub(crate) stopping: CancellationToken,
    /// Every session task, so the drain can wait for them and count those left.
    pub(crate) session_tasks: TaskTracker,
    /// Every other task (HTTP connections, admin, housekeeping, key refresh, the broker).
    pub(crate) tasks: TaskTracker,
    pub(crate) metrics: Arc<Metrics>,
    /// What the hub and the sessions observe, until the webhooks take it at start.
    pub(crate) observed: std::sync::Mutex<Option<Observations>>,
    /// Set when the drain starts: `/readyz` answers 503 from then on.
    pub(crate) draining: AtomicBool,
    next_session_id: AtomicU64,
}

impl Gateway {
    /// The state for `settings`; fails only if a file they name cannot be read.
    pub fn new(settings: &Settings) -> Result<Arc<Gateway>, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let broker: Arc<dyn Broker> = match &settings.redis {
            Some(redis) => {
                RedisBroker::new(redis, Arc::clone(&metrics), settings.quotas.user_rate())
            }
            None => Arc::new(LocalBroker),
        };
        let (observer, observed) = match &settings.webhooks {
            Some(webhooks) => {
                let messages = webhooks.wants_messages().then_some(webhooks.queue);
                let (observer, observed) = Observer::new(messages);
                (observer, Some(observed))
            }
            None => (Observer::off(), None),
        };
        let sessions = Sessions::new(
            settings.admission.max_sessions_per_user.get() as usize,
            observer.clone(),
        );
        let verifier = TokenVerifier::new(&settings.auth, &metrics)?;
        Ok(Arc::new(Gateway {
            admission: Admission::new(&settings.admission),
            moderation: Arc::new(Moderation::new(
                Bans::new(&settings.bans),
                Arc::clone(verifier.revoked()),
                Arc::clone(&sessions),
                Arc::clone(&broker),
                Arc::clone(&metrics),
            )),
            verifier,
            sessions,
            quotas: SessionQuotas::new(&settings.quotas),
            user_messages: UserMessageLimiter::new(settings.quotas.user_messages),
            hub: Hub::new(
                &settings.rooms,
                Arc::clone(&metrics),
                Arc::clone(&broker),
                observer,
            ),
            observed: std::sync::Mutex::new(observed),
            metrics,
            draining: AtomicBool::new(false),
            session: settings.session,
            head: settings.head,
            upgrade: settings.upgrade.clone(),
            proxies: settings.proxies.clone(),
            lifecycle: settings.lifecycle,
            memory: MemoryGuard::new(settings.memory),
            tls: settings.tls.as_ref().map(Tls::new).transpose()?,
            admin_connections: Arc::new(Semaphore::new(settings.listen.admin_max_connections)),
            stopping: CancellationToken::new(),
            session_tasks: TaskTracker::new(),
            tasks: TaskTracker::new(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether this node should get new clients: not draining, every identity provider's
    /// keys loaded, and the broker (when there is one) connected with the bans in force
    /// learned.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
            && !self.stopping.is_cancelled()
            && self.verifier.keys_loaded()
            && self.hub.broker().is_ready()
    }
}
