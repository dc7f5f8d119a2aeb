//! The `palisade` command line. Settings come from the environment (after `./.env`); see the
//! README's config table.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use palisade::config::LogFormat;
use palisade::demo::{demo_settings, demo_tokens, DemoPages};
use palisade::mint::{mint_hs_token, TokenRequest};
use palisade::Pages;
use palisade::{Logging, Settings};
use tracing_subscriber::EnvFilter;

/// The allocator, unless built for a heap profiler: valgrind's massif sees only the system
/// allocator's calls (`cargo build --profile profiling --features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (as its `malloc_conf` C string): two arenas (the
/// runtime has as many workers as cores, and fewer arenas fragment less), and freed pages
/// returned to the system within a second by jemalloc's background thread, so memory that
/// served a burst of handshakes is not resident under idle sockets.
#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(
    // SAFETY: a C string literal is NUL-terminated and lives for the whole program.
    unsafe { &*c"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A hardened WebSocket chat gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Run on 127.0.0.1 with an ephemeral secret and print ready-to-use tokens.
    Demo,
    /// Mint a development HS token with the configured JWT_DECODE_SECRET.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// The display name (`name` claim).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print the effective configuration (secrets redacted) and exit.
    CheckConfig,
    /// Exit 0 if the gateway on this host answers `/healthz` (or `--path`) with 200: the
    /// container image's HEALTHCHECK, which has no curl.
    Healthcheck {
        /// `/healthz` (alive) or `/readyz` (should get clients).
        #[arg(long, default_value = "/healthz")]
        path: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palisade: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = Settings::load()?;
            init_logging(settings.logging());
            serve(settings, None)
        }
        Command::Demo => {
            let _ = dotenvy::dotenv();
            let (settings, secret) = demo_settings(palisade::config::utf8_environment())?;
            init_logging(settings.logging());
            let tokens = demo_tokens(&secret);
            let pages = DemoPages::new(&settings, secret);
            serve(settings, Some((pages, tokens)))
        }
        Command::Token { sub, name, ttl } => {
            let settings = Settings::load()?;
            let config = settings.env();
            let secret = config
                .jwt_decode_secret
                .as_ref()
                .context("JWT_DECODE_SECRET is not set: `token` mints HS tokens only")?;
            let mut request = TokenRequest::new(&sub);
            request.name = name.as_deref();
            request.ttl = Duration::from_secs(ttl);
            request.issuer = config.jwt_issuer.as_deref();
            request.audience = config
                .jwt_audience
                .as_ref()
                .and_then(|aud| aud.iter().next());
            request.algorithm = settings.token_algorithm();
            println!("{}", mint_hs_token(secret, &request)?);
            Ok(())
        }
        Command::Healthcheck { path } => healthcheck(&path),
        Command::CheckConfig => {
            let settings = Settings::load()?;
            println!("{}", serde_json::to_string_pretty(settings.env())?);
            Ok(())
        }
    }
}

/// The demo's pages and the tokens it prints.
type Demo = (std::sync::Arc<DemoPages>, Vec<(&'static str, String)>);

fn serve(settings: Settings, demo: Option<Demo>) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let listeners = palisade::Listeners::bind(&settings).await?;
        let pages = demo
            .as_ref()
            .map(|(pages, _)| std::sync::Arc::clone(pages) as std::sync::Arc<dyn Pages>);
        let running = palisade::gateway::start_with_pages(&settings, listeners, pages).await?;
        let addr = running.local_addr();
        match running.admin_addr() {
            Some(admin) => tracing::info!(%addr, %admin, "listening"),
            None => tracing::info!(%addr, "listening"),
        }
        if let Some((_, tokens)) = demo {
            print_demo_banner(addr, &tokens);
        }
        palisade::shutdown::signal().await;
        let report = running.shutdown().await;
        if report.abandoned > 0 {
            tracing::warn!(
                abandoned = report.abandoned,
                "grace period over; dropped the rest"
            );
        }
        tracing::info!("stopped");
        Ok(())
    });
    // Blocking work still running (a DNS lookup for a key set) must not hold the exit past the
    // grace period.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Raises the soft limit on open files to the hard limit: every socket is a file, and the
/// usual soft default (1024) would cap the gateway far below `MAX_CONNECTIONS`.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and an initialised struct.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if raised {
        tracing::info!(open_files = limit.rlim_cur, "open-file limit");
    } else {
        tracing::warn!("cannot raise the open-file limit");
    }
}

/// Asks the local gateway (`PORT`, on loopback unless `BIND_ADDR` names one address) for
/// `path`, within two seconds: over TLS when `TLS_CERT_FILE` is set, without checking the
/// certificate (its name is the public one, not this loopback address; this only asks whether
/// the process answers).
fn healthcheck(path: &str) -> anyhow::Result<()> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
    };
    let port = var("PORT").unwrap_or_else(|| "8080".into());
    let host = match var("BIND_ADDR").and_then(|a| a.parse().ok()) {
        Some(std::net::IpAddr::V4(ip)) if !ip.is_unspecified() => ip.to_string(),
        Some(std::net::IpAddr::V6(ip)) if !ip.is_unspecified() => format!("[{ip}]"),
        _ => "127.0.0.1".into(),
    };
    let scheme = if var("TLS_CERT_FILE").is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{host}:{port}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .danger_accept_invalid_certs(true)
            .build()?
            .get(&url)
            .send()
            .await
            .map(|response| response.status())
    });
    let status = status.with_context(|| format!("{url} did not answer"))?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

/// Prints where to connect and the tokens. Write errors are ignored: a gateway must not die
/// because whoever started it closed its standard output.
fn print_demo_banner(addr: std::net::SocketAddr, tokens: &[(&str, String)]) {
    use std::io::Write;
    let mut banner = format!(
        "\nPalisade demo on ws://{addr}/ (loopback only; tokens expire with this process)\n\
         Open http://{addr}/ in two browser tabs to chat, or use these tokens:\n\n"
    );
    for (name, token) in tokens {
        banner.push_str(&format!("{name:>6}: {token}\n"));
    }
    banner.push_str(&format!(
        "\nIn a browser console on http://localhost:{port}/ (or any client without an Origin):\n\
         \x20 const ws = new WebSocket('ws://localhost:{port}/');\n\
         \x20 ws.onmessage = (e) => console.log(e.data);\n\
         \x20 ws.onopen = () => {{ ws.send(JSON.stringify({{type: 'auth', body: TOKEN}}));\n\
         \x20   ws.send(JSON.stringify({{type: 'join', room: 'lobby'}})); }};\n\n",
        port = addr.port()
    ));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
}

fn init_logging(logging: &Logging) {
    // Settings have checked the filter parses.
    let filter = EnvFilter::try_new(&logging.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match logging.format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colours only for a person at a terminal, not for log collectors.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
    }
}
