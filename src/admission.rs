//! Admission control: how many may connect, from where, how fast.
//!
//! - a global cap on open connections (`MAX_CONNECTIONS`, 503), taken at accept, before any
//!   HTTP parsing;
//! - per client IP (see [`IpKey`]): a connect rate (`CONNECT_RATE_PER_SEC`/`CONNECT_BURST`,
//!   governor keyed GCRA, 429 with `Retry-After`) and a cap on open sockets
//!   (`MAX_CONNECTIONS_PER_IP`, 429), both checked before the upgrade;
//! - per user: a cap on open sessions (`MAX_SESSIONS_PER_USER`), checked at auth.
//!
//! Every map here is bounded: the open-socket counters hold only live sockets (an entry goes
//! with its last slot), and the rate limiter's map is swept by [`Admission::housekeep`] and
//! capped at `MAX_TRACKED_CLIENTS` keys (past that, new clients are refused as busy rather than
//! tracked: fail closed, memory bounded).

use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use hyper::{Response, StatusCode};

use crate::client_ip::IpKey;
use crate::config::{nonzero_u32, nonzero_usize, Config, ConfigError};
use crate::http::{plain, retry_after_secs, with_retry_after, Body};
use crate::limits::{quota, Throttle};
use crate::metrics::labels::Outcome;

/// The caps and the connect rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub max_connections: NonZeroUsize,
    pub max_connections_per_ip: NonZeroU32,
    pub connect_rate: Quota,
    pub max_sessions_per_user: NonZeroU32,
    /// Client addresses the connect-rate limiter may remember.
    pub max_tracked_clients: NonZeroUsize,
}

impl Policy {
    pub(crate) fn from_env(env: &Config) -> Result<Policy, ConfigError> {
        Ok(Policy {
            max_connections: nonzero_usize("MAX_CONNECTIONS", env.max_connections)?,
            max_connections_per_ip: nonzero_u32(
                "MAX_CONNECTIONS_PER_IP",
                env.max_connections_per_ip,
            )?,
            connect_rate: quota(
                ("CONNECT_RATE_PER_SEC", env.connect_rate_per_sec),
                ("CONNECT_BURST", env.connect_burst),
            )?,
            max_sessions_per_user: nonzero_u32("MAX_SESSIONS_PER_USER", env.max_sessions_per_user)?,
            max_tracked_clients: nonzero_usize("MAX_TRACKED_CLIENTS", env.max_tracked_clients)?,
        })
    }
}

/// Why a connection was refused before the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The gateway is at `MAX_CONNECTIONS` (or cannot track another client).
    Busy,
    /// This address already has `MAX_CONNECTIONS_PER_IP` connections open.
    TooManyFromIp,
    /// This address connects faster than `CONNECT_RATE_PER_SEC`.
    TooFast { retry_after: Duration },
    /// This address is banned.
    Banned { retry_after: Duration },
    /// The process is above `MEMORY_HIGH_WATERMARK`: new sockets are shed.
    Memory,
}

/// How often a full connect-rate map may be swept: often enough that a burst of new clients
/// finds room as soon as others' budgets are full again, never once per request.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// What a client over a global limit is told to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Refusal::Busy | Refusal::Memory => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooManyFromIp | Refusal::TooFast { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Banned { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::Busy | Refusal::Memory => "server is busy\n",
            Refusal::TooManyFromIp => "too many connections\n",
            Refusal::TooFast { .. } => "connecting too fast\n",
            Refusal::Banned { .. } => "banned\n",
        }
    }

    fn retry_after(self) -> Option<Duration> {
        match self {
            Refusal::Busy | Refusal::Memory => Some(BUSY_RETRY_AFTER),
            Refusal::TooFast { retry_after } | Refusal::Banned { retry_after } => Some(retry_after),
            Refusal::TooManyFromIp => None,
        }
    }

    /// The metric label of this refusal.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Refusal::Busy => Outcome::Busy,
            Refusal::TooManyFromIp => Outcome::TooManyFromIp,
            Refusal::TooFast { .. } => Outcome::TooFast,
            Refusal::Banned { .. } => Outcome::Banned,
            Refusal::Memory => Outcome::Memory,
        }
    }

    /// The answer to an upgrade request.
    pub(crate) fn into_response(self) -> Response<Body> {
        let response = plain(self.status(), self.text());
        match self.retry_after() {
            Some(wait) => with_retry_after(response, wait),
            None => response,
        }
    }

    /// The whole answer as raw HTTP/1.1, for a connection refused at accept (before hyper).
    pub(crate) fn head(self) -> String {
        let status = self.status();
        let retry_after = self
            .retry_after()
            .map(|wait| format!("Retry-After: {}\r\n", retry_after_secs(wait)))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\n{retry_after}Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.text().len(),
            self.text()
        )
    }
}

/// Counts of live things per key, with a cap.
struct Counter<K: Eq + Hash + Clone> {
    counts: DashMap<K, u32>,
    max: u32,
}

/// One counted thing; dropping it gives the count back.
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    counter: Arc<Counter<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            counts: DashMap::new(),
            max,
        })
    }

    fn try_acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut count = self.counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(Slot {
            counter: Arc::clone(self),
            key,
        })
    }
}

impl<K: Eq + Hash + Clone> Slot<K> {
    pub(crate) fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some(mut count) = self.counter.counts.get_mut(&self.key) {
            *count -= 1;
        }
        // Under the shard lock: a concurrent acquire either sees the entry or makes a new one.
        self.counter
            .counts
            .remove_if(&self.key, |_, count| *count == 0);
    }
}

pub(crate) type IpSlot = Slot<IpKey>;

/// What a connection holds while it is open: its share of every cap.
pub(crate) struct Admitted {
    /// Shared between the HTTP connection and the session it upgrades to; held, never read.
    pub _connection: Arc<OwnedSemaphorePermit>,
    pub ip: IpSlot,
}

pub(crate) struct Admission {
    connections: Arc<Semaphore>,
    max_connections: usize,
    per_ip: Arc<Counter<IpKey>>,
    connect_rate: DefaultKeyedRateLimiter<IpKey>,
    max_tracked: usize,
    /// A full connect-rate map is swept at most every [`FULL_SWEEP_INTERVAL`], so that a
    /// flood of new addresses cannot buy a sweep each.
    full_sweep: Throttle,
}

impl Admission {
    pub(crate) fn new(policy: &Policy) -> Admission {
        Admission {
            connections: Arc::new(Semaphore::new(policy.max_connections.get())),
            max_connections: policy.max_connections.get(),
            per_ip: Counter::new(policy.max_connections_per_ip.get()),
            connect_rate: RateLimiter::keyed(policy.connect_rate),
            max_tracked: policy.max_tracked_clients.get(),
            full_sweep: Throttle::new(FULL_SWEEP_INTERVAL),
        }
    }

    /// A place under `MAX_CONNECTIONS`, or `None` when full.
    pub(crate) fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.connections).try_acquire_owned().ok()
    }

    /// A place for a connection from `peer` under `MAX_CONNECTIONS_PER_IP`, taken at accept,
    /// before any byte is read: however an address behaves before the upgrade, it holds no
    /// more than its share.
    pub(crate) fn admit_peer(&self, peer: IpKey) -> Option<IpSlot> {
        self.per_ip.try_acquire(peer)
    }

    /// Checks a client address's connect rate for an upgrade, and its place under
    /// `MAX_CONNECTIONS_PER_IP` unless the connection already holds one (taken at accept for a
    /// client that connected directly; behind a trusted proxy the client's address is known
    /// only now).
    pub(crate) fn admit_upgrade(
        &self,
        key: IpKey,
        held: Option<IpSlot>,
    ) -> Result<IpSlot, Refusal> {
        if self.connect_rate.len() >= self.max_tracked {
            if self.full_sweep.ready() {
                self.connect_rate.retain_recent();
            }
            if self.connect_rate.len() >= self.max_tracked {
                return Err(Refusal::Busy);
            }
        }
        if let Err(not_until) = self.connect_rate.check_key(&key) {
            let retry_after = not_until.wait_time_from(self.connect_rate.clock().now());
            return Err(Refusal::TooFast { retry_after });
        }
        match held {
            Some(slot) if *slot.key() == key => Ok(slot),
            _ => self.per_ip.try_acquire(key).ok_or(Refusal::TooManyFromIp),
        }
    }

    /// Forgets clients whose rate budget is full again, and gives the memory back.
    pub(crate) fn housekeep(&self) {
        self.connect_rate.retain_recent();
        self.connect_rate.shrink_to_fit();
    }

    /// Client keys the connect-rate limiter currently remembers.
    pub(crate) fn tracked_clients(&self) -> usize {
        self.connect_rate.len()
    }

    /// Open connections (HTTP or WebSocket).
    pub(crate) fn open_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn policy_at_and_past_its_limits() {
        let policy = Policy::from_env(&env(&[
            ("MAX_CONNECTIONS", "1"),
            ("MAX_CONNECTIONS_PER_IP", "1"),
            ("MAX_SESSIONS_PER_USER", "1"),
        ]))
        .unwrap();
        let admission = Admission::new(&policy);
        let first = admission.try_connection();
        assert!(first.is_some() && admission.try_connection().is_none());
        for var in [
            "MAX_CONNECTIONS",
            "MAX_CONNECTIONS_PER_IP",
            "CONNECT_RATE_PER_SEC",
            "CONNECT_BURST",
            "MAX_SESSIONS_PER_USER",
            "MAX_TRACKED_CLIENTS",
        ] {
            assert_names(Policy::from_env(&env(&[(var, "0")])), var);
        }
    }

    #[test]
    fn counters_cap_and_forget() {
        let counter = Counter::new(2);
        let a = counter.try_acquire("x");
        let b = counter.try_acquire("x");
        assert!(a.is_some() && b.is_some());
        assert!(counter.try_acquire("x").is_none(), "at the cap");
        assert!(counter.try_acquire("y").is_some(), "other keys unaffected");
        drop(a);
        let c = counter.try_acquire("x");
        assert!(c.is_some());
        drop((b, c));
        assert!(
            counter.counts.get("x").is_none(),
            "an unused key is forgotten"
        );
    }
}
