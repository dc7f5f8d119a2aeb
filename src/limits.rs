//! Message rate limits (governor's GCRA): per socket, and per user across all their sockets.
//!
//! Two budgets per session: `message` frames (`MSG_RATE_PER_SEC`/`MSG_BURST`; with the
//! defaults two messages back to back close the sender, as in GarinChat) and the frames that
//! change membership, `join` and `userleave` (`CONTROL_RATE_PER_SEC`/`CONTROL_BURST`), which
//! would otherwise let a client flood a room with join/leave broadcasts. A direct (unkeyed)
//! limiter lives and dies with its session, so nothing here grows with the number of clients.
//!
//! One budget per user (`USER_MSG_RATE_PER_SEC`/`USER_MSG_BURST`), shared by all of the user's
//! sockets, so that opening more sockets does not buy more messages. Its keyed map is swept by
//! housekeeping; it only ever holds users who sent recently, who are bounded by open sessions.

use std::num::NonZeroU32;

use std::sync::Arc;

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// The quotas, computed once from config, and the clock every session's limiters share.
#[derive(Clone, Debug)]
pub struct SessionQuotas {
    messages: Quota,
    control: Quota,
    /// Made once: a new quanta clock calibrates itself (CPUID, slow under a hypervisor), which
    /// per session cost a quarter of the gateway's CPU at thousands of connects a second.
    clock: DefaultClock,
}

impl SessionQuotas {
    /// Builds the quotas; `Config::validate` has checked that every number is positive.
    pub fn from_config(config: &Config) -> Self {
        let quota = |rate: u32, burst: u32| {
            let positive = |n| NonZeroU32::new(n).expect("validated as positive");
            Quota::per_second(positive(rate)).allow_burst(positive(burst))
        };
        Self {
            messages: quota(config.msg_rate_per_sec, config.msg_burst),
            control: quota(config.control_rate_per_sec, config.control_burst),
            clock: DefaultClock::default(),
        }
    }
}

/// One session's limiters.
pub struct SessionLimiters {
    messages: DefaultDirectRateLimiter,
    control: DefaultDirectRateLimiter,
}

impl SessionLimiters {
    pub fn new(quotas: &SessionQuotas) -> Self {
        Self {
            messages: RateLimiter::direct_with_clock(quotas.messages, quotas.clock.clone()),
            control: RateLimiter::direct_with_clock(quotas.control, quotas.clock.clone()),
        }
    }

    /// Spends one unit of the message budget; false when over the limit.
    pub fn allow_message(&self) -> bool {
        self.messages.check().is_ok()
    }

    /// Spends one unit of the join/leave budget; false when over the limit.
    pub fn allow_control(&self) -> bool {
        self.control.check().is_ok()
    }
}

/// The message budget each user shares across their sockets.
pub struct UserMessageLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
}

impl UserMessageLimiter {
    pub fn from_config(config: &Config) -> Self {
        let positive = |n| NonZeroU32::new(n).expect("validated as positive");
        let quota = Quota::per_second(positive(config.user_msg_rate_per_sec))
            .allow_burst(positive(config.user_msg_burst));
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Spends one unit of `user`'s budget; false when over the limit.
    pub fn allow(&self, user: &Arc<str>) -> bool {
        self.limiter.check_key(user).is_ok()
    }

    /// Forgets users whose budget is full again.
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
