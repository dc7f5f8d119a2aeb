//! The state every connection stands on: configuration, verifier, limits, bans, the hub, the
//! metrics, and the trackers of the tasks that serve clients.
//!
//! It is built once per gateway and shared as an `Arc<Gateway>`. Starting and stopping the
//! process (listeners, housekeeping, the drain) is [`gateway`](crate::gateway)'s business; this
//! module knows nothing of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::bans::Bans;
use crate::broker::{Broker, LocalBroker, RedisBroker};
use crate::config::{Config, ConfigError};
use crate::http::HeadLimits;
use crate::hub::Hub;
use crate::ids::SessionId;
use crate::limits::{SessionQuotas, UserMessageLimiter};
use crate::metrics::Metrics;

/// State shared by every connection.
pub struct Gateway {
    pub(crate) config: Arc<Config>,
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
    pub fn new(config: Config) -> Result<Arc<Gateway>, ConfigError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let broker: Arc<dyn Broker> = match config.redis_url() {
            Some(url) => RedisBroker::new(&config, url, Arc::clone(&metrics)).map_err(|err| {
                ConfigError::Invalid {
                    var: "REDIS_URL",
                    why: format!("not a Redis URL ({:?})", err.kind()),
                }
            })?,
            None => Arc::new(LocalBroker),
        };
        Ok(Arc::new(Gateway {
            verifier: TokenVerifier::from_config(&config, &metrics)?,
            admission: Admission::new(&config),
            bans: Bans::new(&config),
            quotas: SessionQuotas::from_config(&config),
            user_messages: UserMessageLimiter::from_config(&config),
            hub: Hub::new(config.max_room_members, Arc::clone(&metrics), broker),
            metrics,
            draining: AtomicBool::new(false),
            config: Arc::new(config),
            stopping: CancellationToken::new(),
            sessions: TaskTracker::new(),
            tasks: TaskTracker::new(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    /// The limits of every HTTP listener.
    pub(crate) fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            header_read_timeout: self.config.header_read_timeout(),
            max_header_bytes: self.config.max_header_bytes,
            max_headers: self.config.max_headers,
        }
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
