//! Per-socket rate limits (governor's GCRA).
//!
//! Two budgets per session: `message` frames (`MSG_RATE_PER_SEC`/`MSG_BURST`; with the
//! defaults two messages back to back close the sender, as in GarinChat) and the frames that
//! change membership, `join` and `userleave` (`CONTROL_RATE_PER_SEC`/`CONTROL_BURST`), which
//! would otherwise let a client flood a room with join/leave broadcasts. A direct (unkeyed)
//! limiter lives and dies with its session, so nothing here grows with the number of clients.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// The quotas, computed once from config.
#[derive(Clone, Copy, Debug)]
pub struct SessionQuotas {
    messages: Quota,
    control: Quota,
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
        }
    }
}

/// One session's limiters.
pub struct SessionLimiters {
    messages: DefaultDirectRateLimiter,
    control: DefaultDirectRateLimiter,
}

impl SessionLimiters {
    pub fn new(quotas: SessionQuotas) -> Self {
        Self {
            messages: RateLimiter::direct(quotas.messages),
            control: RateLimiter::direct(quotas.control),
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
