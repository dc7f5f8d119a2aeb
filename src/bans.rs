//! Strikes and bans for clients that abuse the gateway.
//!
//! A socket closed for abuse (see [`CloseCode::is_abuse`]) earns a strike for its client IP
//! and, once authenticated, for its user. `BAN_STRIKES` strikes within `BAN_WINDOW_SECS` ban
//! the offender for `BAN_SECS`: a banned IP is refused at the upgrade (403), a banned user at
//! auth (close 4009). Both maps are swept by [`Bans::housekeep`] and capped at
//! `MAX_TRACKED_CLIENTS` entries each; past the cap a new offender's strike is not recorded
//! (memory stays bounded; the offender is still closed, just not banned).
//!
//! [`CloseCode::is_abuse`]: crate::protocol::CloseCode::is_abuse

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::client_ip::IpKey;
use crate::config::{nonzero_u32, nonzero_usize, secs, Config, ConfigError};

/// When strikes become a ban, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub strikes: u32,
    pub window: Duration,
    pub duration: Duration,
    /// Offenders remembered at most, in each of the strike and ban maps.
    pub max_tracked: usize,
}

impl Policy {
    pub(crate) fn from_env(env: &Config) -> Result<Policy, ConfigError> {
        Ok(Policy {
            strikes: nonzero_u32("BAN_STRIKES", env.ban_strikes)?.get(),
            window: secs("BAN_WINDOW_SECS", env.ban_window_secs)?,
            duration: secs("BAN_SECS", env.ban_secs)?,
            max_tracked: nonzero_usize("MAX_TRACKED_CLIENTS", env.max_tracked_clients)?.get(),
        })
    }
}

/// Who a strike or ban applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Offender {
    Ip(IpKey),
    User(Arc<str>),
}

#[derive(Clone, Copy, Debug)]
struct Strikes {
    count: u32,
    window_started: Instant,
}

pub(crate) struct Bans {
    strikes: DashMap<Offender, Strikes>,
    banned_until: DashMap<Offender, Instant>,
    strikes_to_ban: u32,
    window: Duration,
    duration: Duration,
    max_tracked: usize,
}

/// What a strike led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrikeOutcome {
    Counted,
    Banned,
    /// The strike map is full of other offenders; this one was not recorded.
    NotTracked,
}

impl Bans {
    pub(crate) fn new(policy: &Policy) -> Bans {
        Bans {
            strikes: DashMap::new(),
            banned_until: DashMap::new(),
            strikes_to_ban: policy.strikes,
            window: policy.window,
            duration: policy.duration,
            max_tracked: policy.max_tracked,
        }
    }

    /// Records a strike; bans the offender when it reaches `BAN_STRIKES` within the window.
    pub(crate) fn strike(&self, offender: Offender) -> StrikeOutcome {
        let now = Instant::now();
        if self.strikes.len() >= self.max_tracked && !self.strikes.contains_key(&offender) {
            self.housekeep();
            if self.strikes.len() >= self.max_tracked {
                return StrikeOutcome::NotTracked;
            }
        }
        let mut entry = self.strikes.entry(offender.clone()).or_insert(Strikes {
            count: 0,
            window_started: now,
        });
        if now.duration_since(entry.window_started) > self.window {
            *entry = Strikes {
                count: 0,
                window_started: now,
            };
        }
        entry.count += 1;
        if entry.count < self.strikes_to_ban {
            return StrikeOutcome::Counted;
        }
        drop(entry);
        self.strikes.remove(&offender);
        self.banned_until.insert(offender, now + self.duration);
        StrikeOutcome::Banned
    }

    /// How much longer `offender` is banned, if it is.
    pub(crate) fn remaining(&self, offender: &Offender) -> Option<Duration> {
        let until = *self.banned_until.get(offender)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Drops expired bans and strike windows.
    pub(crate) fn housekeep(&self) {
        let now = Instant::now();
        self.banned_until.retain(|_, until| *until > now);
        self.strikes
            .retain(|_, strikes| now.duration_since(strikes.window_started) <= self.window);
        self.banned_until.shrink_to_fit();
        self.strikes.shrink_to_fit();
    }

    /// Entries held: (offenders with strikes, offenders banned).
    pub(crate) fn tracked(&self) -> (usize, usize) {
        (self.strikes.len(), self.banned_until.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::{assert_names, env};

    fn bans(pairs: &[(&str, &str)]) -> Bans {
        Bans::new(&Policy::from_env(&env(pairs)).unwrap())
    }

    #[test]
    fn policy_at_and_past_its_limits() {
        let policy = Policy::from_env(&env(&[("BAN_STRIKES", "1"), ("BAN_SECS", "1")])).unwrap();
        assert_eq!(
            (policy.strikes, policy.duration),
            (1, Duration::from_secs(1))
        );
        for var in [
            "BAN_STRIKES",
            "BAN_WINDOW_SECS",
            "BAN_SECS",
            "MAX_TRACKED_CLIENTS",
        ] {
            assert_names(Policy::from_env(&env(&[(var, "0")])), var);
        }
    }

    fn ip(n: u8) -> Offender {
        Offender::Ip(IpKey::of([10, 0, 0, n].into()))
    }

    #[test]
    fn strikes_within_the_window_ban() {
        let bans = bans(&[("BAN_STRIKES", "3")]);
        assert_eq!(bans.strike(ip(1)), StrikeOutcome::Counted);
        assert_eq!(bans.strike(ip(1)), StrikeOutcome::Counted);
        assert_eq!(bans.remaining(&ip(1)), None, "two strikes are not a ban");
        assert_eq!(bans.strike(ip(1)), StrikeOutcome::Banned);
        assert!(bans.remaining(&ip(1)).unwrap() > Duration::from_secs(290));
        assert_eq!(bans.remaining(&ip(2)), None);
        assert_eq!(bans.remaining(&Offender::User("u".into())), None);
    }

    #[test]
    fn maps_stay_bounded() {
        let bans = bans(&[("MAX_TRACKED_CLIENTS", "10"), ("BAN_STRIKES", "2")]);
        for n in 0..50 {
            bans.strike(ip(n));
        }
        assert_eq!(bans.tracked().0, 10);
        assert_eq!(bans.strike(ip(200)), StrikeOutcome::NotTracked);
        assert_eq!(
            bans.strike(ip(3)),
            StrikeOutcome::Banned,
            "known offenders still count"
        );
    }
}
