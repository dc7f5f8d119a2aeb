//! `palisade-bench`: the benchmark harness. It starts the server under test as a child process
//! (a Palisade release build with its limits lifted, or the bare ceiling server, or neither when
//! pointed at a running server with `--url`), loads it over real sockets from 127.0.0.x source
//! addresses, measures the server process from outside through /proc, and writes JSON, a
//! markdown summary and SVG charts.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/palisade-bench all            # everything, into bench/results/latest/
//! target/release/palisade-bench all --quick    # the smoke test CI runs
//! ```

mod api;
mod capacity;
mod ceiling;
mod churn;
mod client;
mod fanout;
mod procfs;
mod progress;
mod report;
mod rooms;
mod target;
mod tokens;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::ApiConfig;
use crate::capacity::CapacityConfig;
use crate::churn::ChurnConfig;
use crate::fanout::FanoutConfig;
use crate::progress::Progress;
use crate::report::Run;
use crate::rooms::RoomsConfig;
use crate::target::{External, Launch, Target};

#[derive(Parser)]
#[command(
    name = "palisade-bench",
    about = "Benchmarks Palisade against a bare WebSocket ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capacity, fan-out (rooms of 10 and 100), history and churn (HS256, ES256), with the
    /// ceiling.
    All(Common),
    /// Idle joined sockets: RSS per socket, kernel socket memory, idle CPU.
    Capacity {
        #[command(flatten)]
        common: Common,
        /// Sockets to hold (default 19 000; 300 with --quick).
        #[arg(long)]
        sockets: Option<usize>,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
    },
    /// Delivered rate and delay percentiles as offered load steps up.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Room sizes to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        room_sizes: Vec<usize>,
    },
    /// Fan-out with history off, then on (clients with the room extensions), in one run.
    History {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
    },
    /// Users in many rooms each: server memory per user with one protocol v2 socket for all
    /// its rooms, against one GarinChat socket per room.
    Rooms {
        #[command(flatten)]
        common: Common,
        /// Users (default 1000; 32 with --quick).
        #[arg(long)]
        users: Option<usize>,
        #[arg(long, default_value_t = 16)]
        rooms_per_user: usize,
    },
    /// Publishes through the server API into one room: publishes per second and the delay
    /// from the API call to delivery.
    Api {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        room_size: usize,
    },
    /// Connect, auth, join, close, in a loop: sessions per second and time to joined.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Token algorithms to run, comma-separated (ES256 needs a Palisade the bench starts).
        #[arg(long, value_delimiter = ',', default_value = "HS256,ES256")]
        algorithms: Vec<String>,
        #[arg(long)]
        concurrency: Option<usize>,
        #[arg(long)]
        secs: Option<f64>,
    },
    /// The bare broadcast server (started by the other subcommands).
    #[command(hide = true)]
    CeilingServer {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// A short smoke run (well under a minute): checks that everything works, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Where results go (default bench/results/latest, or target/bench-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The palisade binary to start (default: the one beside this binary).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Measure a running server at this ws:// URL instead of starting Palisade.
    #[arg(long)]
    url: Option<String>,
    /// The HS256 secret the server at --url verifies tokens with.
    #[arg(long, default_value = "")]
    secret: String,
    /// The Origin header to send to the server at --url.
    #[arg(long)]
    origin: Option<String>,
    /// The process to measure for the server at --url.
    #[arg(long)]
    pid: Option<u32>,
    /// Skip the bare ceiling server.
    #[arg(long)]
    no_ceiling: bool,
    /// Start Palisade with this REDIS_URL: Pub/Sub between nodes and the limits shared through
    /// Redis (bans, the per-user session cap and message rate) are then part of what is measured.
    #[arg(long)]
    redis: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::CeilingServer { port } => ceiling::serve(port).await,
            command => bench(command).await,
        }
    })
}

async fn bench(command: Command) -> anyhow::Result<()> {
    let nofile = procfs::raise_nofile_limit();
    let common = match &command {
        Command::All(common)
        | Command::Capacity { common, .. }
        | Command::Fanout { common, .. }
        | Command::History { common, .. }
        | Command::Api { common, .. }
        | Command::Rooms { common, .. }
        | Command::Churn { common, .. } => common.clone(),
        Command::CeilingServer { .. } => unreachable!("served above"),
    };
    let quick = common.quick;
    let mut run = Run {
        started_utc: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: commit(),
        machine: procfs::machine(nofile),
        quick,
        capacity_config: None,
        capacity: Vec::new(),
        fanout_configs: Vec::new(),
        fanout: Vec::new(),
        history_config: None,
        history: Vec::new(),
        churn_config: None,
        churn: Vec::new(),
        api_config: None,
        api: Vec::new(),
        rooms_config: None,
        rooms: Vec::new(),
    };
    let progress = Progress::new();
    let all = matches!(command, Command::All(_));
    if let Command::Capacity {
        sockets, room_size, ..
    } = &command
    {
        capacity(&common, &mut run, &progress, *sockets, *room_size).await?;
    } else if all {
        capacity(&common, &mut run, &progress, None, 10).await?;
    }
    if let Command::Fanout { room_sizes, .. } = &command {
        fanout(&common, &mut run, &progress, room_sizes).await?;
    } else if all {
        fanout(&common, &mut run, &progress, &[10, 100]).await?;
    }
    if let Command::History { room_size, .. } = &command {
        history(&common, &mut run, &progress, *room_size).await?;
    } else if all {
        history(&common, &mut run, &progress, 10).await?;
    }
    if let Command::Api { room_size, .. } = &command {
        api(&common, &mut run, &progress, *room_size).await?;
    } else if all {
        api(&common, &mut run, &progress, 100).await?;
    }
    if let Command::Rooms {
        users,
        rooms_per_user,
        ..
    } = &command
    {
        rooms(&common, &mut run, &progress, *users, *rooms_per_user).await?;
    } else if all {
        rooms(&common, &mut run, &progress, None, 16).await?;
    }
    if let Command::Churn {
        algorithms,
        concurrency,
        secs,
        ..
    } = &command
    {
        churn(
            &common,
            &mut run,
            &progress,
            algorithms,
            *concurrency,
            *secs,
        )
        .await?;
    } else if all {
        churn(
            &common,
            &mut run,
            &progress,
            &["HS256".into(), "ES256".into()],
            None,
            None,
        )
        .await?;
    }
    progress.finish();
    let out = common.out.clone().unwrap_or_else(|| {
        if quick {
            "target/bench-quick".into()
        } else {
            "bench/results/latest".into()
        }
    });
    run.write(&out)?;
    // A full run into the default place is also kept by time; with --out, everything the run
    // writes goes there.
    if !quick && common.out.is_none() {
        // Every full run is also kept, by time.
        let stamp = run.started_utc.replace(':', "");
        std::fs::write(
            PathBuf::from("bench/results").join(format!("{stamp}.json")),
            serde_json::to_string_pretty(&run)? + "\n",
        )?;
    }
    println!("{}", run.summary());
    println!("Results, summary and charts: {}", out.display());
    Ok(())
}

/// The server under test: the one at `--url`, or a fresh Palisade.
async fn under_test(common: &Common, es256: bool) -> anyhow::Result<Target> {
    match &common.url {
        Some(url) => Target::external(&External {
            url: url.clone(),
            secret: common.secret.clone(),
            origin: common.origin.clone(),
            pid: common.pid,
        }),
        None => {
            let binary = target::gateway_binary(common.gateway.clone())?;
            let launch = Launch {
                es256,
                redis: common.redis.as_deref(),
                ..Launch::default()
            };
            Target::palisade(&binary, &launch).await
        }
    }
}

async fn capacity(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    sockets: Option<usize>,
    room_size: usize,
) -> anyhow::Result<()> {
    let config = CapacityConfig {
        sockets: sockets.unwrap_or(if common.quick { 300 } else { 19_000 }),
        room_size,
        steps: if common.quick { 3 } else { 10 },
        concurrency: 256,
        settle_secs: if common.quick { 0.2 } else { 2.0 },
        idle_secs: if common.quick { 0.5 } else { 10.0 },
    };
    if !common.no_ceiling {
        let ceiling = Target::ceiling().await?;
        run.capacity
            .push(capacity::run(&ceiling, &config, progress).await?);
    }
    let target = under_test(common, false).await?;
    run.capacity
        .push(capacity::run(&target, &config, progress).await?);
    for result in &run.capacity {
        progress.println(format!(
            "  capacity {:>8}: {} sockets, {:.2} KiB RSS per socket, idle CPU {:.2} %",
            result.target, result.sockets_held, result.rss_per_socket_kib, result.idle_cpu_percent
        ));
    }
    run.capacity_config = Some(config);
    Ok(())
}

async fn fanout(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    room_sizes: &[usize],
) -> anyhow::Result<()> {
    for &room_size in room_sizes {
        let config = fanout_config(common, room_size);
        if !common.no_ceiling {
            let ceiling = Target::ceiling().await?;
            run.fanout
                .push(fanout::run(&ceiling, &config, progress).await?);
        }
        let target = under_test(common, false).await?;
        run.fanout
            .push(fanout::run(&target, &config, progress).await?);
        run.fanout_configs.push(config);
    }
    Ok(())
}

/// The fan-out ladder for rooms of `room_size`.
fn fanout_config(common: &Common, room_size: usize) -> FanoutConfig {
    FanoutConfig {
        room_size,
        rooms: if common.quick {
            3
        } else {
            (1000 / room_size).max(1)
        },
        delivered_steps: if common.quick {
            vec![1_000, 3_000]
        } else {
            // Finer where servers on a small machine saturate.
            vec![
                2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000,
                90_000, 100_000, 120_000, 140_000, 160_000, 200_000, 240_000, 320_000, 480_000,
                640_000,
            ]
        },
        warmup_secs: if common.quick { 0.2 } else { 1.0 },
        window_secs: if common.quick { 0.5 } else { 3.0 },
        body_bytes: 100,
        p99_limit_ms: 50.0,
        concurrency: 128,
    }
}

/// The same fan-out ladder against Palisade with history off (`HISTORY_SIZE=0`: no offsets,
/// nothing kept) and on (the default, clients joining with the room extensions so their
/// frames carry offsets): what numbering and keeping every message costs.
async fn history(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    room_size: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        common.url.is_none(),
        "the history scenario starts its own gateways (no --url)"
    );
    let config = fanout_config(common, room_size);
    let binary = target::gateway_binary(common.gateway.clone())?;
    let off = Launch {
        name: "palisade, history off",
        redis: common.redis.as_deref(),
        env: vec![("HISTORY_SIZE", "0")],
        ..Launch::default()
    };
    let on = Launch {
        name: "palisade, history on",
        redis: common.redis.as_deref(),
        room_extensions: true,
        ..Launch::default()
    };
    for launch in [off, on] {
        let target = Target::palisade(&binary, &launch).await?;
        run.history
            .push(fanout::run(&target, &config, progress).await?);
    }
    run.history_config = Some(config);
    Ok(())
}

/// Publishes through the server API of a Palisade the bench starts, into one room.
async fn api(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    room_size: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        common.url.is_none(),
        "the api scenario starts its own gateway (no --url)"
    );
    let config = ApiConfig {
        room_size,
        publish_steps: if common.quick {
            vec![50, 100]
        } else {
            vec![
                250, 500, 1000, 2000, 4000, 6000, 8000, 10_000, 12_000, 16_000,
            ]
        },
        connections: 64,
        warmup_secs: if common.quick { 0.3 } else { 1.0 },
        window_secs: if common.quick { 0.5 } else { 3.0 },
        body_bytes: 100,
        p99_limit_ms: 50.0,
    };
    let binary = target::gateway_binary(common.gateway.clone())?;
    let launch = Launch {
        redis: common.redis.as_deref(),
        api: true,
        ..Launch::default()
    };
    let target = Target::palisade(&binary, &launch).await?;
    run.api.push(api::run(&target, &config, progress).await?);
    run.api_config = Some(config);
    Ok(())
}

async fn rooms(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    users: Option<usize>,
    rooms_per_user: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        common.url.is_none(),
        "the rooms scenario starts its own gateways (no --url)"
    );
    let config = RoomsConfig {
        users: users.unwrap_or(if common.quick { 32 } else { 1000 }),
        rooms_per_user,
        room_size: 16,
        concurrency: 256,
        settle_secs: if common.quick { 0.2 } else { 2.0 },
    };
    let binary = target::gateway_binary(common.gateway.clone())?;
    for v2 in [true, false] {
        let launch = Launch {
            redis: common.redis.as_deref(),
            env: vec![("MAX_ROOMS_PER_SOCKET", "64")],
            ..Launch::default()
        };
        let target = Target::palisade(&binary, &launch).await?;
        let result = rooms::run(&target, &config, v2, progress).await?;
        progress.println(format!(
            "  rooms {}: {} users in {} rooms each over {} sockets, {:.2} KiB RSS per user",
            result.layout,
            result.users,
            config.rooms_per_user,
            result.sockets_held,
            result.rss_per_user_kib
        ));
        run.rooms.push(result);
    }
    run.rooms_config = Some(config);
    Ok(())
}

async fn churn(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    algorithms: &[String],
    concurrency: Option<usize>,
    secs: Option<f64>,
) -> anyhow::Result<()> {
    let config = ChurnConfig {
        concurrency: concurrency.unwrap_or(if common.quick { 8 } else { 64 }),
        secs: secs.unwrap_or(if common.quick { 1.0 } else { 10.0 }),
    };
    for algorithm in algorithms {
        let es256 = match algorithm.as_str() {
            "HS256" => false,
            "ES256" if common.url.is_none() => true,
            "ES256" => continue, // a server at --url verifies with its own keys
            other => anyhow::bail!("unknown algorithm {other}: HS256 or ES256"),
        };
        let target = under_test(common, es256).await?;
        let result = churn::run(&target, &config, progress).await?;
        progress.println(format!(
            "  churn {} {}: {:.0} sessions/s, joined p99 {:.2} ms, {} failed",
            result.target,
            result.algorithm,
            result.sessions_per_sec,
            result.joined_p99_ms,
            result.failed
        ));
        run.churn.push(result);
    }
    run.churn_config = Some(config);
    Ok(())
}

/// The commit measured, `-dirty` when the work tree has changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(status) if !status.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}
