//! What a scenario measures: a Palisade child process (release build, limits raised for the
//! run), the bare ceiling server as a child process, or any server already running that speaks
//! the protocol (`--url`, `--secret`, `--origin`, `--pid`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::{Dialer, Protocol};
use crate::procfs::{self, ProcSample};
use crate::tokens::{Signer, ES256_PUBLIC_PEM};

/// The Origin the bench's own gateways allow.
const ORIGIN: &str = "http://bench.palisade.test";

/// A server under load.
pub struct Target {
    /// `palisade`, `ceiling`, or `external`.
    pub name: &'static str,
    pub dialer: Arc<Dialer>,
    pub signer: Signer,
    /// The process to measure, when known.
    pub pid: Option<u32>,
    /// The server API (`http://…/api/v1`) and its key, when started with it.
    pub api: Option<(String, String)>,
    /// The admin listener's `/metrics` URL, when started with it.
    pub metrics: Option<String>,
    child: Option<Child>,
    key_file: Option<PathBuf>,
}

/// Where to find an already running server (`--url` and friends).
#[derive(Clone, Debug, Default)]
pub struct External {
    pub url: String,
    pub secret: String,
    pub origin: Option<String>,
    pub pid: Option<u32>,
}

/// Settings of the bench's own gateways besides the lifted limits: the defaults are for the
/// open internet, not for 19 000 sockets from one host.
const QUIET: &[(&str, &str)] = &[
    ("METRICS_PORT", "0"),
    ("LOG_LEVEL", "warn"),
    ("DRAIN_DELAY_SECS", "0"),
];

/// How the bench starts a Palisade.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// The name the results carry.
    pub name: &'static str,
    /// Sign with ES256 (a public key file) rather than HS256.
    pub es256: bool,
    /// Join this Redis (`REDIS_URL`).
    pub redis: Option<&'a str>,
    /// Settings besides the lifted limits.
    pub env: Vec<(&'static str, &'static str)>,
    /// Clients join with the room extensions.
    pub room_extensions: bool,
    /// Start the server API (on a free port, with a random key).
    pub api: bool,
    /// Start the admin listener (`/metrics`) on a free port.
    pub metrics: bool,
    /// The HS256 secret to verify tokens with (several nodes share one); random if `None`.
    pub secret: Option<&'a str>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            name: "palisade",
            es256: false,
            redis: None,
            env: Vec::new(),
            room_extensions: false,
            api: false,
            metrics: false,
            secret: None,
        }
    }
}

impl Target {
    /// Starts `binary` (a `palisade` release build) on a free loopback port as `launch` says.
    pub async fn palisade(binary: &Path, launch: &Launch<'_>) -> anyhow::Result<Target> {
        let Launch {
            es256, ref redis, ..
        } = *launch;
        let port = free_port()?;
        let secret = launch.secret.map_or_else(random_secret, str::to_owned);
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env_clear()
            .env("PORT", port.to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("ALLOWED_ORIGINS", ORIGIN)
            .envs(palisade::testing::NO_LIMITS.iter().copied())
            .envs(QUIET.iter().copied())
            .envs(launch.env.iter().copied());
        if let Some(url) = redis {
            // A prefix of its own, so runs never meet each other's rooms, bans or counters.
            command
                .env("REDIS_URL", url)
                .env("REDIS_PREFIX", format!("bench{}:", std::process::id()));
        }
        let api = if launch.api {
            let api_port = free_port()?;
            let key = random_secret();
            command
                .env("API_PORT", api_port.to_string())
                .env("API_KEYS", &key);
            Some((format!("http://127.0.0.1:{api_port}/api/v1"), key))
        } else {
            None
        };
        let metrics = if launch.metrics {
            let metrics_port = free_port()?;
            command.env("METRICS_PORT", metrics_port.to_string());
            Some(format!("http://127.0.0.1:{metrics_port}/metrics"))
        } else {
            None
        };
        let mut key_file = None;
        let signer = if es256 {
            let path =
                std::env::temp_dir().join(format!("palisade-bench-{}.pem", std::process::id()));
            std::fs::write(&path, ES256_PUBLIC_PEM)?;
            command
                .env("JWT_ALGORITHMS", "ES256")
                .env("JWT_PUBLIC_KEY_FILE", &path);
            key_file = Some(path);
            Signer::Es256
        } else {
            command.env("JWT_DECODE_SECRET", &secret);
            Signer::Hs256(secret)
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut dialer = Dialer::new(addr, Protocol::Palisade, Some(ORIGIN.into()));
        dialer.room_extensions = launch.room_extensions;
        let target = Target {
            name: launch.name,
            dialer: Arc::new(dialer),
            signer,
            pid: Some(child.id()),
            api,
            metrics,
            child: Some(child),
            key_file,
        };
        target.wait_listening().await?;
        Ok(target)
    }

    /// Starts the bare broadcast server (this binary's `ceiling-server` subcommand).
    pub async fn ceiling() -> anyhow::Result<Target> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .args(["ceiling-server", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let target = Target {
            name: "ceiling",
            dialer: Arc::new(Dialer::new(addr, Protocol::Bare, None)),
            signer: Signer::Hs256(String::new()),
            pid: Some(child.id()),
            api: None,
            metrics: None,
            child: Some(child),
            key_file: None,
        };
        target.wait_listening().await?;
        Ok(target)
    }

    /// A server someone else started.
    pub fn external(external: &External) -> anyhow::Result<Target> {
        let url = url_addr(&external.url)?;
        Ok(Target {
            name: "external",
            dialer: Arc::new(Dialer::new(
                url,
                Protocol::Palisade,
                external.origin.clone(),
            )),
            signer: Signer::Hs256(external.secret.clone()),
            pid: external.pid,
            api: None,
            metrics: None,
            child: None,
            key_file: None,
        })
    }

    async fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(self.dialer.addr)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "{} did not start listening on {}",
                    self.name,
                    self.dialer.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The measured process's memory and CPU time now, if there is one to measure.
    pub fn sample(&self) -> Option<ProcSample> {
        self.pid.and_then(|pid| procfs::sample(pid).ok())
    }

    /// Whether the measured process still runs (true when there is none to check): a server
    /// that died mid-run is reported as dead, not measured as a zombie with no memory.
    pub fn alive(&self) -> bool {
        self.pid.is_none_or(procfs::alive)
    }

    /// The measured process's CPU time in seconds; NaN (shown as such, `null` in JSON) when
    /// there is no process to measure, so that no figure is made up.
    pub fn cpu_secs(&self) -> f64 {
        self.sample().map_or(f64::NAN, |sample| sample.cpu_secs)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(path) = self.key_file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The gateway binary: `--gateway`, or `palisade` beside this binary (both come from
/// `cargo build --release --workspace`).
pub fn gateway_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("palisade"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --workspace`, or pass --gateway",
            path.display()
        );
    }
    Ok(path)
}

fn url_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must be ws://host:port/ (no TLS)")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{authority} does not resolve"))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
