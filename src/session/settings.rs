//! A session's settings: its deadlines, its keepalive, what it reads and queues, and the
//! naming rules it applies.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::config::{at_least, millis, nonzero_usize, secs, Config, ConfigError, DirectMessages};
use crate::names::NameRules;
use crate::socket::reader::ReadLimits;

/// What an `auth` frame may hold besides its token: `{"type":"auth","body":"…"}` and room for
/// JSON escapes.
const AUTH_FRAME_OVERHEAD: usize = 1024;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub deadlines: Deadlines,
    pub keepalive: Keepalive,
    /// What the reader accepts: messages up to `MAX_MESSAGE_BYTES`, and `auth` frames with a
    /// token up to `MAX_TOKEN_BYTES` (identity providers' tokens outgrow chat messages).
    pub read: ReadLimits,
    /// `MAX_MESSAGE_BYTES`: the largest frame other than `auth`.
    pub max_message_bytes: usize,
    /// Frames queued to a socket before it is a slow consumer.
    pub outbound_queue_frames: NonZeroUsize,
    /// Payload bytes queued to a socket before it is a slow consumer.
    pub max_outbound_bytes: usize,
    pub names: NameRules,
    /// `MAX_ROOMS_PER_SOCKET`: rooms a v2 socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// `MAX_ROOMS_PER_USER`: rooms a user may be in over its v2 sockets on this node.
    pub max_rooms_per_user: usize,
    /// `DIRECT_MESSAGES`: who may send direct messages to whom.
    pub direct_messages: DirectMessages,
}

/// How long each step of a session may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// From the upgrade to the `auth` frame.
    pub auth: Duration,
    /// From `auth` (or `userleave`) to the `join` frame.
    pub join: Duration,
    /// For the close handshake.
    pub close: Duration,
}

/// Server pings, and the optional idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Keepalive {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// `None` when `IDLE_TIMEOUT_SECS` is 0.
    pub idle_timeout: Option<Duration>,
}

impl Settings {
    pub(crate) fn from_env(env: &Config) -> Result<Settings, ConfigError> {
        let max_message_bytes = nonzero_usize("MAX_MESSAGE_BYTES", env.max_message_bytes)?.get();
        Ok(Settings {
            deadlines: Deadlines {
                auth: millis("AUTH_TIMEOUT_MS", env.auth_timeout_ms)?,
                join: millis("JOIN_TIMEOUT_MS", env.join_timeout_ms)?,
                close: millis("CLOSE_TIMEOUT_MS", env.close_timeout_ms)?,
            },
            keepalive: Keepalive {
                ping_interval: secs("PING_INTERVAL_SECS", env.ping_interval_secs)?,
                pong_timeout: secs("PONG_TIMEOUT_SECS", env.pong_timeout_secs)?,
                idle_timeout: (env.idle_timeout_secs > 0)
                    .then(|| Duration::from_secs(env.idle_timeout_secs)),
            },
            read: ReadLimits {
                max_message_bytes: max_message_bytes
                    .max(env.max_token_bytes.saturating_add(AUTH_FRAME_OVERHEAD)),
                max_fragments: nonzero_usize("MAX_FRAGMENTS", env.max_fragments)?.get(),
            },
            max_message_bytes,
            outbound_queue_frames: nonzero_usize(
                "OUTBOUND_QUEUE_FRAMES",
                env.outbound_queue_frames,
            )?,
            // The largest frame the gateway sends must fit: a message escaped six-fold.
            max_outbound_bytes: at_least(
                "MAX_OUTBOUND_BYTES",
                env.max_outbound_bytes,
                max_message_bytes * 6 + 1024,
            )?,
            names: NameRules::from_env(env)?,
            max_rooms_per_socket: nonzero_usize("MAX_ROOMS_PER_SOCKET", env.max_rooms_per_socket)?
                .get(),
            max_rooms_per_user: nonzero_usize("MAX_ROOMS_PER_USER", env.max_rooms_per_user)?.get(),
            direct_messages: env.direct_messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn settings_at_and_past_their_limits() {
        let settings = Settings::from_env(&env(&[
            ("AUTH_TIMEOUT_MS", "1"),
            ("IDLE_TIMEOUT_SECS", "0"),
            ("MAX_MESSAGE_BYTES", "1"),
        ]))
        .unwrap();
        assert_eq!(settings.deadlines.auth, Duration::from_millis(1));
        assert_eq!(settings.keepalive.idle_timeout, None);
        assert_eq!(settings.max_message_bytes, 1);
        assert_eq!(settings.max_rooms_per_socket, 16);
        let one = Settings::from_env(&env(&[
            ("MAX_ROOMS_PER_SOCKET", "1"),
            ("MAX_ROOMS_PER_USER", "1"),
        ]))
        .unwrap();
        assert_eq!((one.max_rooms_per_socket, one.max_rooms_per_user), (1, 1));
        assert_eq!(
            settings.read.max_message_bytes,
            16384 + AUTH_FRAME_OVERHEAD,
            "the reader takes identity providers' tokens"
        );
        let fits = (4096 * 6 + 1024).to_string();
        let fits = Settings::from_env(&env(&[("MAX_OUTBOUND_BYTES", &fits)])).unwrap();
        assert_eq!(fits.max_outbound_bytes, 4096 * 6 + 1024);
        let short = (4096 * 6 + 1023).to_string();
        assert_names(
            Settings::from_env(&env(&[("MAX_OUTBOUND_BYTES", &short)])),
            "MAX_OUTBOUND_BYTES",
        );
        for var in [
            "AUTH_TIMEOUT_MS",
            "JOIN_TIMEOUT_MS",
            "CLOSE_TIMEOUT_MS",
            "PING_INTERVAL_SECS",
            "PONG_TIMEOUT_SECS",
            "MAX_MESSAGE_BYTES",
            "MAX_FRAGMENTS",
            "OUTBOUND_QUEUE_FRAMES",
            "MAX_ROOMS_PER_SOCKET",
            "MAX_ROOMS_PER_USER",
        ] {
            assert_names(Settings::from_env(&env(&[(var, "0")])), var);
        }
    }
}
