//! Strikes and bans for clients that abuse the gateway.
//!
//! A socket closed for abuse (see [`CloseCode::is_abuse`]) earns a strike for its client IP
//! and, once authenticated, for its user. `BAN_STRIKES` strikes within `BAN_WINDOW_SECS` ban
//! the offender for `BAN_SECS`: a banned IP is refused at accept and at the upgrade, a banned
//! user at auth and at every token refresh (close 4009). Bans from elsewhere (another node, the
//! server API) are recorded here too, with their end as a wall-clock time so that every node
//! agrees on it.
//!
//! Both maps are swept by [`Bans::housekeep`] and capped at `MAX_TRACKED_CLIENTS` entries each;
//! past the cap a new offender's strike is not recorded (memory stays bounded; the offender is
//! still closed, just not banned). A full strike map is swept at most once a second, so that a
//! flood of abusive closes cannot buy a sweep each.
//!
//! [`CloseCode::is_abuse`]: crate::protocol::CloseCode::is_abuse

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use crate::client_ip::IpKey;
use crate::clock;
use crate::config::{nonzero_u32, nonzero_usize, secs, Config, ConfigError};
use crate::limits::Throttle;

/// How often a full strike map may be swept to make room.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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

impl Offender {
    /// `ip:ADDRESS` or `user:ID`: how an offender is named between nodes.
    pub(crate) fn parse(text: &str) -> Option<Offender> {
        match text.split_once(':')? {
            ("ip", key) => IpKey::parse(key).map(Offender::Ip),
            ("user", id) if !id.is_empty() => Some(Offender::User(Arc::from(id))),
            _ => None,
        }
    }
}

impl fmt::Display for Offender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offender::Ip(key) => write!(f, "ip:{key}"),
            Offender::User(id) => write!(f, "user:{id}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Strikes {
    count: u32,
    window_started: Instant,
}

pub(crate) struct Bans {
    strikes: DashMap<Offender, Strikes>,
    banned_until: DashMap<Offender, Instant>,
    policy: Policy,
    /// A full strike map is swept to make room at most once a second.
    full_sweep: Throttle,
}

/// What a strike led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrikeOutcome {
    Counted,
    /// Banned for `BAN_SECS` from now, until this Unix time in milliseconds.
    Banned {
        until_ms: u64,
    },
    /// The strike map is full of other offenders; this one was not recorded.
    NotTracked,
}

impl Bans {
    pub(crate) fn new(policy: &Policy) -> Bans {
        Bans {
            strikes: DashMap::new(),
            banned_until: DashMap::new(),
            policy: *policy,
            full_sweep: Throttle::new(FULL_SWEEP_INTERVAL),
        }
    }

    /// Records a strike; bans the offender when it reaches `BAN_STRIKES` within the window.
    pub(crate) fn strike(&self, offender: &Offender) -> StrikeOutcome {
        let now = Instant::now();
        if self.strikes.len() >= self.policy.max_tracked
            && !self.strikes.contains_key(offender)
            && !self.sweep_full_map(now)
        {
            return StrikeOutcome::NotTracked;
        }
        let mut entry = self.strikes.entry(offender.clone()).or_insert(Strikes {
            count: 0,
            window_started: now,
        });
        if now.duration_since(entry.window_started) > self.policy.window {
            *entry = Strikes {
                count: 0,
                window_started: now,
            };
        }
        entry.count += 1;
        if entry.count < self.policy.strikes {
            return StrikeOutcome::Counted;
        }
        drop(entry);
        self.strikes.remove(offender);
        let until_ms = self.ban(offender.clone(), self.policy.duration);
        StrikeOutcome::Banned { until_ms }
    }

    /// Sweeps a full strike map unless one was swept within the last second; whether there is
    /// room now.
    fn sweep_full_map(&self, now: Instant) -> bool {
        if self.full_sweep.ready() {
            self.sweep(now);
        }
        self.strikes.len() < self.policy.max_tracked
    }

    /// Bans `offender` for `duration` from now (longer bans already in force are kept).
    /// Returns when it ends, as a Unix time in milliseconds, for the other nodes.
    pub(crate) fn ban(&self, offender: Offender, duration: Duration) -> u64 {
        let now = Instant::now();
        let until = *self
            .banned_until
            .entry(offender)
            .and_modify(|current| *current = (*current).max(now + duration))
            .or_insert(now + duration);
        clock::unix_ms_at(SystemTime::now() + (until - now))
    }

    /// Records a ban decided elsewhere, ending at `until_ms` (Unix milliseconds); one that has
    /// already ended is ignored.
    pub(crate) fn ban_until(&self, offender: Offender, until_ms: u64) {
        let left = until_ms.saturating_sub(clock::unix_ms());
        if left > 0 {
            self.ban(offender, Duration::from_millis(left));
        }
    }

    /// Lifts a ban; whether there was one.
    pub(crate) fn unban(&self, offender: &Offender) -> bool {
        self.strikes.remove(offender);
        self.banned_until.remove(offender).is_some()
    }

    /// How much longer `offender` is banned, if it is.
    pub(crate) fn remaining(&self, offender: &Offender) -> Option<Duration> {
        let until = *self.banned_until.get(offender)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Every ban in force, with how much of it is left.
    pub(crate) fn in_force(&self) -> Vec<(Offender, Duration)> {
        let now = Instant::now();
        self.banned_until
            .iter()
            .filter(|ban| *ban.value() > now)
            .map(|ban| (ban.key().clone(), ban.value().duration_since(now)))
            .collect()
    }

    /// Drops expired bans and strike windows, and gives their memory back.
    pub(crate) fn housekeep(&self) {
        self.sweep(Instant::now());
        self.banned_until.shrink_to_fit();
        self.strikes.shrink_to_fit();
    }

    fn sweep(&self, now: Instant) {
        self.banned_until.retain(|_, until| *until > now);
        self.strikes
            .retain(|_, strikes| now.duration_since(strikes.window_started) <= self.policy.window);
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
        assert_eq!(bans.strike(&ip(1)), StrikeOutcome::Counted);
        assert_eq!(bans.strike(&ip(1)), StrikeOutcome::Counted);
        assert_eq!(bans.remaining(&ip(1)), None, "two strikes are not a ban");
        assert!(matches!(bans.strike(&ip(1)), StrikeOutcome::Banned { .. }));
        assert!(bans.remaining(&ip(1)).unwrap() > Duration::from_secs(290));
        assert_eq!(bans.remaining(&ip(2)), None);
        assert_eq!(bans.remaining(&Offender::User("u".into())), None);
        assert!(bans.unban(&ip(1)));
        assert_eq!(bans.remaining(&ip(1)), None);
    }

    #[test]
    fn maps_stay_bounded() {
        let bans = bans(&[("MAX_TRACKED_CLIENTS", "10"), ("BAN_STRIKES", "2")]);
        for n in 0..50 {
            bans.strike(&ip(n));
        }
        assert_eq!(bans.tracked().0, 10);
        assert_eq!(bans.strike(&ip(200)), StrikeOutcome::NotTracked);
        assert!(
            matches!(bans.strike(&ip(3)), StrikeOutcome::Banned { .. }),
            "known offenders still count"
        );
    }

    #[test]
    fn a_full_strike_map_is_swept_at_most_once_a_second() {
        let bans = bans(&[("MAX_TRACKED_CLIENTS", "100"), ("BAN_STRIKES", "1000")]);
        for n in 0..100 {
            bans.strike(&Offender::User(format!("u{n}").into()));
        }
        for n in 0..10_000 {
            assert_eq!(
                bans.strike(&Offender::User(format!("new{n}").into())),
                StrikeOutcome::NotTracked
            );
        }
        assert_eq!(bans.tracked().0, 100);
        // One sweep of 100 entries, not 10 000 of them.
        assert_eq!(bans.full_sweep.count(), 1);
    }

    #[test]
    fn offenders_are_named_between_nodes_and_bans_end_on_the_wall_clock() {
        for offender in [
            ip(7),
            Offender::Ip(IpKey::of("2001:db8::1".parse().unwrap())),
            Offender::User("auth0|x:y".into()),
        ] {
            assert_eq!(Offender::parse(&offender.to_string()), Some(offender));
        }
        assert_eq!(Offender::parse("user:"), None);
        assert_eq!(Offender::parse("host:x"), None);
        let bans = bans(&[]);
        let in_a_minute = clock::unix_ms() + 60_000;
        bans.ban_until(ip(9), in_a_minute);
        assert!(bans.remaining(&ip(9)).unwrap() > Duration::from_secs(55));
        bans.ban_until(ip(10), clock::unix_ms() - 1);
        assert_eq!(bans.remaining(&ip(10)), None, "an ended ban is ignored");
    }
}
