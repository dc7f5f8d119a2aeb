//! Message rate limits (governor's GCRA): per socket, and per user across all their sockets.
//!
//! Budgets per session: `message` frames (`MSG_RATE_PER_SEC`/`MSG_BURST`; with the
//! defaults two messages back to back close the sender, as in GarinChat), control frames
//! (`CONTROL_RATE_PER_SEC`/`CONTROL_BURST`: `join` and `userleave`, which would otherwise let a
//! client flood a room with join/leave broadcasts, `members`, `seen`, token refreshes, and v2's
//! refused requests, which are answered), and, made at their
//! first use, `typing` and protocol v2's `direct` frames (which spend the message budgets too).
//! A direct (unkeyed) limiter lives and dies with its session, so nothing here grows with the
//! number of clients.
//!
//! One budget per user (`USER_MSG_RATE_PER_SEC`/`USER_MSG_BURST`), shared by all of the user's
//! sockets, so that opening more sockets does not buy more messages. Its keyed map is swept by
//! housekeeping; it only ever holds users who sent recently, who are bounded by open sessions.

use std::sync::{Arc, OnceLock};

use governor::clock::{Clock, QuantaClock, QuantaInstant};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{nonzero_u32, Config, ConfigError};

/// Lets something happen at most once per interval (a sweep of a full map, say), however often
/// it is asked for.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: std::time::Duration,
    /// When it last happened, and how many times it has.
    last: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(interval: std::time::Duration) -> Throttle {
        Throttle {
            interval,
            last: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Whether it may happen now (and then it counts as happened).
    pub(crate) fn ready(&self) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().expect("never poisoned");
        if last
            .0
            .is_some_and(|at| now.duration_since(at) < self.interval)
        {
            return false;
        }
        *last = (Some(now), last.1 + 1);
        true
    }

    /// How many times it has happened.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.last.lock().expect("never poisoned").1
    }
}

/// A rate per second and a burst, from a pair of settings that must both be positive.
pub(crate) fn quota(
    (rate_var, rate): (&'static str, u32),
    (burst_var, burst): (&'static str, u32),
) -> Result<Quota, ConfigError> {
    Ok(Quota::per_second(nonzero_u32(rate_var, rate)?).allow_burst(nonzero_u32(burst_var, burst)?))
}

/// The message budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quotas {
    /// `message` frames per socket.
    pub messages: Quota,
    /// `join`/`userleave`/`members`/`seen` frames, token refreshes and v2's refused requests
    /// per socket.
    pub control: Quota,
    /// `typing` frames per socket.
    pub typing: Quota,
    /// `message` frames per user, all sockets together.
    pub user_messages: Quota,
    /// `direct` frames per socket (protocol v2), besides the message budgets they also spend.
    pub direct: Quota,
}

impl Quotas {
    /// A user's message rate (messages a second) and burst.
    pub(crate) fn user_rate(&self) -> (f64, u32) {
        let per_cell = self.user_messages.replenish_interval().as_secs_f64();
        (
            1.0 / per_cell.max(f64::EPSILON),
            self.user_messages.burst_size().get(),
        )
    }

    pub(crate) fn from_env(env: &Config) -> Result<Quotas, ConfigError> {
        Ok(Quotas {
            messages: quota(
                ("MSG_RATE_PER_SEC", env.msg_rate_per_sec),
                ("MSG_BURST", env.msg_burst),
            )?,
            control: quota(
                ("CONTROL_RATE_PER_SEC", env.control_rate_per_sec),
                ("CONTROL_BURST", env.control_burst),
            )?,
            typing: quota(
                ("TYPING_RATE_PER_SEC", env.typing_rate_per_sec),
                ("TYPING_BURST", env.typing_burst),
            )?,
            user_messages: quota(
                ("USER_MSG_RATE_PER_SEC", env.user_msg_rate_per_sec),
                ("USER_MSG_BURST", env.user_msg_burst),
            )?,
            direct: quota(
                ("DM_RATE_PER_SEC", env.dm_rate_per_sec),
                ("DM_BURST", env.dm_burst),
            )?,
        })
    }
}

/// The clock every session's limiters read: one quanta clock for the process, made once (a new
/// quanta clock calibrates itself, CPUID and all, slow under a hypervisor: per session that
/// cost a quarter of the gateway's CPU at thousands of connects a second). Zero-sized, so a
/// limiter carries no clock of its own (40 bytes each, on every socket).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SharedClock;

impl Clock for SharedClock {
    type Instant = QuantaInstant;

    fn now(&self) -> QuantaInstant {
        static CLOCK: OnceLock<QuantaClock> = OnceLock::new();
        CLOCK.get_or_init(QuantaClock::default).now()
    }
}

/// A session's limiter: unkeyed, on the shared clock.
type SessionLimiter =
    RateLimiter<NotKeyed, InMemoryState, SharedClock, NoOpMiddleware<QuantaInstant>>;

/// The per-socket quotas.
#[derive(Clone, Debug)]
pub(crate) struct SessionQuotas {
    messages: Quota,
    control: Quota,
    typing: Quota,
    direct: Quota,
}

impl SessionQuotas {
    pub(crate) fn new(quotas: &Quotas) -> Self {
        Self {
            messages: quotas.messages,
            control: quotas.control,
            typing: quotas.typing,
            direct: quotas.direct,
        }
    }
}

/// One session's limiters.
pub(crate) struct SessionLimiters {
    messages: SessionLimiter,
    control: SessionLimiter,
    /// Made at the first `typing` frame: most sockets never send one.
    typing: Option<Box<SessionLimiter>>,
    /// Made at the first `direct` frame, for the same reason.
    direct: Option<Box<SessionLimiter>>,
}

impl SessionLimiters {
    pub(crate) fn new(quotas: &SessionQuotas) -> Self {
        Self {
            messages: RateLimiter::direct_with_clock(quotas.messages, SharedClock),
            control: RateLimiter::direct_with_clock(quotas.control, SharedClock),
            typing: None,
            direct: None,
        }
    }

    /// Spends one unit of the typing budget; false when over the limit.
    pub(crate) fn allow_typing(&mut self, quotas: &SessionQuotas) -> bool {
        spend_lazily(&mut self.typing, quotas.typing)
    }

    /// Spends one unit of the direct-message budget; false when over the limit.
    pub(crate) fn allow_direct(&mut self, quotas: &SessionQuotas) -> bool {
        spend_lazily(&mut self.direct, quotas.direct)
    }

    /// Spends one unit of the message budget; false when over the limit.
    pub(crate) fn allow_message(&self) -> bool {
        self.messages.check().is_ok()
    }

    /// Spends one unit of the join/leave budget; false when over the limit.
    pub(crate) fn allow_control(&self) -> bool {
        self.control.check().is_ok()
    }
}

/// Spends one unit of a limiter made at its first use (with `quota`).
fn spend_lazily(limiter: &mut Option<Box<SessionLimiter>>, quota: Quota) -> bool {
    limiter
        .get_or_insert_with(|| Box::new(RateLimiter::direct_with_clock(quota, SharedClock)))
        .check()
        .is_ok()
}

/// The message budget each user shares across their sockets.
pub(crate) struct UserMessageLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
}

impl UserMessageLimiter {
    pub(crate) fn new(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Spends one unit of `user`'s budget; false when over the limit.
    pub(crate) fn allow(&self, user: &Arc<str>) -> bool {
        self.limiter.check_key(user).is_ok()
    }

    /// Forgets users whose budget is full again.
    pub(crate) fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn quotas_at_and_past_their_limits() {
        let quotas =
            Quotas::from_env(&env(&[("MSG_RATE_PER_SEC", "1"), ("MSG_BURST", "1")])).unwrap();
        assert_eq!(
            quotas.messages,
            Quota::per_second(nonzero_u32("x", 1).unwrap())
        );
        for var in [
            "MSG_RATE_PER_SEC",
            "MSG_BURST",
            "CONTROL_RATE_PER_SEC",
            "CONTROL_BURST",
            "TYPING_RATE_PER_SEC",
            "TYPING_BURST",
            "USER_MSG_RATE_PER_SEC",
            "USER_MSG_BURST",
            "DM_RATE_PER_SEC",
            "DM_BURST",
        ] {
            assert_names(Quotas::from_env(&env(&[(var, "0")])), var);
        }
    }

    #[test]
    fn a_session_over_its_message_budget_is_refused_until_it_refills() {
        let quotas =
            Quotas::from_env(&env(&[("MSG_RATE_PER_SEC", "1"), ("MSG_BURST", "2")])).unwrap();
        let limiters = SessionLimiters::new(&SessionQuotas::new(&quotas));
        assert!(
            limiters.allow_message() && limiters.allow_message(),
            "the burst"
        );
        assert!(!limiters.allow_message(), "past the burst");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(limiters.allow_message(), "refilled at the rate");
    }

    #[test]
    fn users_share_one_budget_across_sockets() {
        let limiter = UserMessageLimiter::new(quota(("R", 1), ("B", 3)).unwrap());
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert!((0..3).all(|_| limiter.allow(&alice)));
        assert!(!limiter.allow(&alice));
        assert!(limiter.allow(&bob), "another user is not affected");
    }
}
