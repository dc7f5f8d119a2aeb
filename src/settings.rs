//! Every subsystem's settings, converted once from the environment and validated: the only way
//! into a gateway.
//!
//! Each subsystem owns its settings type and the conversion from [`Config`] beside its code,
//! naming the variable at fault; this module holds them together, with the few that belong to
//! the process as a whole (where it listens, how it stops, how it logs).

use std::net::IpAddr;
use std::time::Duration;

use crate::admission;
use crate::api::settings::ApiSettings;
use crate::auth::AuthSettings;
use crate::bans;
use crate::broker::RedisSettings;
use crate::client_ip::ProxyPolicy;
use crate::config::{invalid, millis, nonzero_usize, secs, Config, ConfigError, LogFormat};
use crate::http::HeadLimits;
use crate::hub::RoomSettings;
use crate::limits::Quotas;
use crate::memory::Watermark;
use crate::session::settings::Settings as SessionSettings;
use crate::tls::TlsSettings;
use crate::upgrade::UpgradePolicy;
use crate::webhooks::settings::WebhookSettings;

/// A validated configuration.
pub struct Settings {
    env: Config,
    pub(crate) listen: Listen,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) logging: Logging,
    pub(crate) head: HeadLimits,
    pub(crate) upgrade: UpgradePolicy,
    pub(crate) proxies: ProxyPolicy,
    pub(crate) admission: admission::Policy,
    pub(crate) bans: bans::Policy,
    pub(crate) quotas: Quotas,
    pub(crate) session: SessionSettings,
    pub(crate) auth: AuthSettings,
    pub(crate) rooms: RoomSettings,
    pub(crate) memory: Watermark,
    pub(crate) tls: Option<TlsSettings>,
    pub(crate) redis: Option<RedisSettings>,
    /// The server API, when a credential is configured.
    pub(crate) api: Option<ApiSettings>,
    /// The webhooks, with `WEBHOOK_URL`.
    pub(crate) webhooks: Option<WebhookSettings>,
}

/// Shows the environment they came from, secrets redacted (keys are not printable).
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Validates `env`, subsystem by subsystem; the error names the variable at fault.
    pub fn from_env(env: Config) -> Result<Settings, ConfigError> {
        let session = SessionSettings::from_env(&env)?;
        Ok(Settings {
            listen: Listen::from_env(&env)?,
            lifecycle: Lifecycle::from_env(&env)?,
            logging: Logging::from_env(&env)?,
            head: HeadLimits::from_env(&env)?,
            upgrade: UpgradePolicy::from_env(&env)?,
            proxies: ProxyPolicy::from_env(&env)?,
            admission: admission::Policy::from_env(&env)?,
            bans: bans::Policy::from_env(&env)?,
            quotas: Quotas::from_env(&env)?,
            auth: AuthSettings::from_env(&env, &session.names)?,
            session,
            rooms: RoomSettings::from_env(&env)?,
            memory: Watermark::from_env(&env)?,
            tls: TlsSettings::from_env(&env)?,
            redis: RedisSettings::from_env(&env)?,
            api: ApiSettings::from_env(&env)?,
            webhooks: WebhookSettings::from_env(&env)?,
            env,
        })
    }

    /// Parses and validates `(NAME, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_env(Config::from_pairs(pairs)?)
    }

    /// Reads `./.env` and the environment, and validates them.
    pub fn load() -> Result<Settings, ConfigError> {
        Self::from_env(Config::load()?)
    }

    /// The environment these settings came from (secrets redacted when printed).
    pub fn env(&self) -> &Config {
        &self.env
    }

    /// How the process logs.
    pub fn logging(&self) -> &Logging {
        &self.logging
    }

    /// The public port (`PORT`).
    pub fn port(&self) -> u16 {
        self.listen.port
    }

    /// The algorithm development tokens are signed with: the first one accepted.
    pub fn token_algorithm(&self) -> jsonwebtoken::Algorithm {
        self.auth.algorithms[0]
    }
}

/// Where the gateway listens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listen {
    pub bind_addr: IpAddr,
    pub port: u16,
    /// The admin listener's address; `None` when `METRICS_PORT` is 0.
    pub admin: Option<std::net::SocketAddr>,
    /// Connections the admin listener holds at most.
    pub admin_max_connections: usize,
}

impl Listen {
    fn from_env(env: &Config) -> Result<Listen, ConfigError> {
        Ok(Listen {
            bind_addr: env.bind_addr,
            port: env.port,
            admin: (env.metrics_port != 0)
                .then(|| std::net::SocketAddr::new(env.metrics_bind_addr, env.metrics_port)),
            admin_max_connections: nonzero_usize(
                "ADMIN_MAX_CONNECTIONS",
                env.admin_max_connections,
            )?
            .get(),
        })
    }
}

/// How the gateway keeps house and stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifecycle {
    /// How often limiter and ban maps are swept and freed memory returned.
    pub housekeeping_interval: Duration,
    /// How long `/readyz` says not-ready before sessions are closed.
    pub drain_delay: Duration,
    /// The longest a shutdown may take, counted from the start of the drain.
    pub shutdown_grace: Duration,
}

impl Lifecycle {
    fn from_env(env: &Config) -> Result<Lifecycle, ConfigError> {
        let lifecycle = Lifecycle {
            housekeeping_interval: millis(
                "HOUSEKEEPING_INTERVAL_MS",
                env.housekeeping_interval_ms,
            )?,
            drain_delay: Duration::from_secs(env.drain_delay_secs),
            shutdown_grace: secs("SHUTDOWN_GRACE_SECS", env.shutdown_grace_secs)?,
        };
        if lifecycle.drain_delay >= lifecycle.shutdown_grace {
            return Err(invalid(
                "DRAIN_DELAY_SECS",
                "must be shorter than SHUTDOWN_GRACE_SECS, which counts from the start of the drain",
            ));
        }
        Ok(lifecycle)
    }
}

/// How the process logs: `LOG_FORMAT` and a tracing filter from `LOG_LEVEL`.
#[derive(Clone, Debug)]
pub struct Logging {
    /// `LOG_FORMAT`.
    pub format: LogFormat,
    /// `LOG_LEVEL`, a tracing filter.
    pub filter: String,
}

impl Logging {
    fn from_env(env: &Config) -> Result<Logging, ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&env.log_level).is_err() {
            return Err(invalid(
                "LOG_LEVEL",
                "not a level (error, warn, info, debug, trace) or a tracing filter",
            ));
        }
        Ok(Logging {
            format: env.log_format,
            filter: env.log_level.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn garinchat_env_is_enough() {
        let settings = Settings::from_pairs([
            ("PORT", "9000"),
            ("ALLOWED_ORIGINS", "http://a.example, http://b.example,"),
            ("JWT_DECODE_SECRET", "garin-secret"),
        ])
        .unwrap();
        assert_eq!(settings.port(), 9000);
        assert_eq!(settings.session.deadlines.auth, Duration::from_secs(2));
    }

    #[test]
    fn missing_required_settings_are_named() {
        for var in ["ALLOWED_ORIGINS", "JWT_DECODE_SECRET"] {
            let pairs = [
                ("ALLOWED_ORIGINS", "http://a.example"),
                ("JWT_DECODE_SECRET", "garin-secret"),
            ]
            .into_iter()
            .filter(|(k, _)| *k != var);
            assert_names(Settings::from_pairs(pairs), var);
        }
    }

    #[test]
    fn lifecycle_at_and_past_its_limits() {
        let lifecycle = Lifecycle::from_env(&env(&[
            ("DRAIN_DELAY_SECS", "9"),
            ("SHUTDOWN_GRACE_SECS", "10"),
        ]))
        .unwrap();
        assert_eq!(lifecycle.drain_delay, Duration::from_secs(9));
        assert_names(
            Lifecycle::from_env(&env(&[("DRAIN_DELAY_SECS", "10")])),
            "DRAIN_DELAY_SECS",
        );
        assert_names(
            Lifecycle::from_env(&env(&[("SHUTDOWN_GRACE_SECS", "0")])),
            "SHUTDOWN_GRACE_SECS",
        );
        assert_names(
            Lifecycle::from_env(&env(&[("HOUSEKEEPING_INTERVAL_MS", "0")])),
            "HOUSEKEEPING_INTERVAL_MS",
        );
    }

    #[test]
    fn log_level_is_a_filter() {
        assert!(Logging::from_env(&env(&[("LOG_LEVEL", "palisade=debug,warn")])).is_ok());
        assert_names(
            Logging::from_env(&env(&[("LOG_LEVEL", "palisade=loud")])),
            "LOG_LEVEL",
        );
    }

    #[test]
    fn the_admin_listener_is_on_loopback_unless_configured() {
        let listen = |pairs: &[(&str, &str)]| Listen::from_env(&env(pairs)).unwrap();
        assert_eq!(listen(&[("METRICS_PORT", "0")]).admin, None);
        assert_eq!(
            listen(&[]).admin,
            Some("127.0.0.1:9090".parse().unwrap()),
            "loopback by default, whatever BIND_ADDR says"
        );
        assert_eq!(
            listen(&[("METRICS_BIND_ADDR", "0.0.0.0")]).admin,
            Some("0.0.0.0:9090".parse().unwrap())
        );
        assert_eq!(
            listen(&[("ADMIN_MAX_CONNECTIONS", "1")]).admin_max_connections,
            1
        );
        assert_names(
            Listen::from_env(&env(&[("ADMIN_MAX_CONNECTIONS", "0")])),
            "ADMIN_MAX_CONNECTIONS",
        );
    }
}
