//! A session's clocks besides the auth/join deadline: server pings and their pongs, the idle
//! timeout, and the token's expiry.
//!
//! Each ping carries 8 random bytes, and only a pong that echoes them answers it: a client
//! that never reads cannot know them, so unsolicited pongs (which RFC 6455 allows, as a
//! heartbeat) cannot keep a socket alive that does not read what it is sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::settings::Keepalive;
use crate::outbox::SharedPayload;
use crate::protocol::CloseCode;

/// What a timer asks of the session.
#[derive(Debug)]
pub(super) enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a keepalive ping with this payload.
    Ping(Arc<SharedPayload>),
}

/// The clocks' state. The durations stay in the gateway's settings and are passed in: each
/// field here is carried by every idle socket.
pub(super) struct Timers {
    /// When the next ping is due.
    next_ping: Instant,
    /// Set while a ping is unanswered: the pong must arrive by then.
    pong_due: Option<Instant>,
    /// The payload the pong must echo.
    ping_payload: [u8; 8],
    /// Reset by every message from the client.
    idle_deadline: Option<Instant>,
    /// When the token stops being good, once authenticated.
    token_expiry: Option<Instant>,
}

impl Timers {
    pub(super) fn new(keepalive: &Keepalive, now: Instant) -> Self {
        Self {
            next_ping: now + keepalive.ping_interval,
            pong_due: None,
            ping_payload: [0; 8],
            idle_deadline: keepalive.idle_timeout.map(|idle| now + idle),
            token_expiry: None,
        }
    }

    /// The earliest moment something must happen.
    pub(super) fn next_event(&self) -> Instant {
        [
            Some(self.next_ping),
            self.pong_due,
            self.idle_deadline,
            self.token_expiry,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("next_ping is always set")
    }

    pub(super) fn on_client_message(&mut self, keepalive: &Keepalive, now: Instant) {
        self.idle_deadline = keepalive.idle_timeout.map(|idle| now + idle);
    }

    /// A pong: it answers the ping only if it echoes its payload.
    pub(super) fn on_pong(&mut self, payload: &[u8]) {
        if payload == self.ping_payload {
            self.pong_due = None;
        }
    }

    /// The session ends when its token does: `valid_until` is the token's `exp` plus the
    /// leeway it was accepted with, in seconds since the Unix epoch.
    pub(super) fn set_token_expiry(&mut self, valid_until: u64, unix_now: u64) {
        let left = Duration::from_secs(valid_until.saturating_sub(unix_now));
        self.token_expiry = Some(Instant::now() + left.min(MAX_TOKEN_LIFETIME));
    }

    /// What is due at `now`: a ping, or a close for a missed pong, idleness or an expired
    /// token.
    pub(super) fn due(&mut self, keepalive: &Keepalive, now: Instant) -> Result<Due, CloseCode> {
        if self.token_expiry.is_some_and(|due| due <= now) {
            return Err(CloseCode::TokenExpired);
        }
        if self.pong_due.is_some_and(|due| due <= now) {
            // A half-open TCP peer, or one stalled in the middle of a frame, lands here.
            return Err(CloseCode::PongTimeout);
        }
        if self.idle_deadline.is_some_and(|due| due <= now) {
            return Err(CloseCode::IdleTimeout);
        }
        if self.next_ping <= now {
            self.next_ping = now + keepalive.ping_interval;
            if self.pong_due.is_none() {
                self.pong_due = Some(now + keepalive.pong_timeout);
                self.ping_payload = rand::random();
                return Ok(Due::Ping(SharedPayload::new(self.ping_payload.to_vec())));
            }
        }
        Ok(Due::Nothing)
    }
}

/// The longest a token may keep a session open, whatever its `exp` says (ten years): an
/// absurd `exp` must not overflow the clock.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A deadline for a `select!` branch that is disabled anyway.
pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keepalive(idle_timeout: Option<Duration>) -> Keepalive {
        Keepalive {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_then_closes_without_a_pong() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let settings = keepalive(None);
        let mut timers = Timers::new(&settings, start);
        assert_eq!(timers.next_event(), start + second * 30);
        assert!(matches!(
            timers.due(&settings, start + second * 29),
            Ok(Due::Nothing)
        ));
        let Ok(Due::Ping(ping)) = timers.due(&settings, start + second * 30) else {
            panic!("a ping is due");
        };
        assert_eq!(
            timers.next_event(),
            start + second * 40,
            "the pong's deadline"
        );
        timers.on_pong(b"unsolicited");
        assert!(
            matches!(
                timers.due(&settings, start + second * 40),
                Err(CloseCode::PongTimeout)
            ),
            "a pong that does not echo the ping answers nothing"
        );
        timers.on_pong(&ping.bytes);
        assert!(matches!(
            timers.due(&settings, start + second * 60),
            Ok(Due::Ping(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_and_expiry_close() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let settings = keepalive(Some(second * 5));
        let mut timers = Timers::new(&settings, start);
        assert!(matches!(
            timers.due(&settings, start + second * 5),
            Err(CloseCode::IdleTimeout)
        ));
        timers.on_client_message(&settings, start + second * 4);
        assert!(matches!(
            timers.due(&settings, start + second * 5),
            Ok(Due::Nothing)
        ));
        timers.set_token_expiry(1_000, 998);
        assert!(matches!(
            timers.due(&settings, start + second * 2),
            Err(CloseCode::TokenExpired)
        ));
        // An absurd expiry is capped, not overflowed.
        timers.set_token_expiry(u64::MAX, 0);
        assert!(timers.next_event() > start);
    }
}
