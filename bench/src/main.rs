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
//! target/release/palisade-bench soak --duration 30m   # the soak for the record
//! ```

mod api;
mod capacity;
mod ceiling;
mod churn;
mod client;
mod fanout;
mod nodes;
mod procfs;
mod progress;
mod report;
mod rooms;
mod scale;
mod scenarios;
mod soak;
mod target;
mod tokens;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::progress::Progress;
use crate::report::Run;
use crate::scenarios::{api, capacity, churn, fanout, history, rooms};

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
    /// Capacity, fan-out (rooms of 10 and 100), history, two nodes, the large room, the server
    /// API, many rooms per user, churn (HS256, ES256) with the ceiling, and a short soak.
    All {
        #[command(flatten)]
        common: Common,
        /// How long the soak runs (default 2 minutes; 50 s with --quick).
        #[arg(long, value_parser = scale::parse_duration)]
        soak_duration: Option<Duration>,
        /// Members of the large room (default 10 000; 200 with --quick).
        #[arg(long)]
        large_room_members: Option<usize>,
    },
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
    /// Fan-out in rooms split over two nodes sharing a Redis the bench starts, beside one node
    /// on the same Redis.
    TwoNodes {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        room_size: usize,
    },
    /// One large room on one node, one sender: deliveries per second and delay.
    LargeRoom {
        #[command(flatten)]
        common: Common,
        /// Members (default 10 000; 200 with --quick).
        #[arg(long)]
        members: Option<usize>,
    },
    /// Two nodes and a Redis under mixed chat, churn, history and abuse: memory, descriptors,
    /// sessions and Redis memory must not grow, and every message must arrive once, in order.
    /// Exits non-zero when it fails.
    Soak {
        #[command(flatten)]
        common: Common,
        /// How long (`90s`, `30m`, `1h`; default 2 minutes, 50 s with --quick).
        #[arg(long, value_parser = scale::parse_duration)]
        duration: Option<Duration>,
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
        Command::All { common, .. }
        | Command::TwoNodes { common, .. }
        | Command::LargeRoom { common, .. }
        | Command::Soak { common, .. }
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
        two_nodes_config: None,
        two_nodes: Vec::new(),
        large_room_config: None,
        large_room: Vec::new(),
        soak: None,
        errors: Vec::new(),
    };
    let progress = Progress::new();
    let all = matches!(command, Command::All { .. });
    if let Command::Capacity {
        sockets, room_size, ..
    } = &command
    {
        let outcome = capacity(&common, &mut run, &progress, *sockets, *room_size).await;
        note(&mut run, &progress, "capacity", outcome);
    } else if all {
        let outcome = capacity(&common, &mut run, &progress, None, 10).await;
        note(&mut run, &progress, "capacity", outcome);
    }
    if let Command::Fanout { room_sizes, .. } = &command {
        let outcome = fanout(&common, &mut run, &progress, room_sizes).await;
        note(&mut run, &progress, "fanout", outcome);
    } else if all {
        let outcome = fanout(&common, &mut run, &progress, &[10, 100]).await;
        note(&mut run, &progress, "fanout", outcome);
    }
    if let Command::History { room_size, .. } = &command {
        let outcome = history(&common, &mut run, &progress, *room_size).await;
        note(&mut run, &progress, "history", outcome);
    } else if all {
        let outcome = history(&common, &mut run, &progress, 10).await;
        note(&mut run, &progress, "history", outcome);
    }
    if let Command::TwoNodes { room_size, .. } = &command {
        let outcome = scale::two_nodes(&common, &mut run, &progress, *room_size).await;
        note(&mut run, &progress, "two_nodes", outcome);
    } else if all {
        let outcome = scale::two_nodes(&common, &mut run, &progress, 100).await;
        note(&mut run, &progress, "two_nodes", outcome);
    }
    if let Command::LargeRoom { members, .. } = &command {
        let outcome = scale::large_room(&common, &mut run, &progress, *members).await;
        note(&mut run, &progress, "large_room", outcome);
    } else if let Command::All {
        large_room_members, ..
    } = &command
    {
        let outcome = scale::large_room(&common, &mut run, &progress, *large_room_members).await;
        note(&mut run, &progress, "large_room", outcome);
    }
    if let Command::Api { room_size, .. } = &command {
        let outcome = api(&common, &mut run, &progress, *room_size).await;
        note(&mut run, &progress, "api", outcome);
    } else if all {
        let outcome = api(&common, &mut run, &progress, 100).await;
        note(&mut run, &progress, "api", outcome);
    }
    if let Command::Rooms {
        users,
        rooms_per_user,
        ..
    } = &command
    {
        let outcome = rooms(&common, &mut run, &progress, *users, *rooms_per_user).await;
        note(&mut run, &progress, "rooms", outcome);
    } else if all {
        let outcome = rooms(&common, &mut run, &progress, None, 16).await;
        note(&mut run, &progress, "rooms", outcome);
    }
    if let Command::Churn {
        algorithms,
        concurrency,
        secs,
        ..
    } = &command
    {
        let outcome = churn(
            &common,
            &mut run,
            &progress,
            algorithms,
            *concurrency,
            *secs,
        )
        .await;
        note(&mut run, &progress, "churn", outcome);
    } else if all {
        let outcome = churn(
            &common,
            &mut run,
            &progress,
            &["HS256".into(), "ES256".into()],
            None,
            None,
        )
        .await;
        note(&mut run, &progress, "churn", outcome);
    }
    let soak_default = if quick { 50.0 } else { 120.0 };
    if let Command::Soak { duration, .. } = &command {
        let outcome = scale::soak(&common, &mut run, &progress, *duration, soak_default).await;
        note(&mut run, &progress, "soak", outcome);
    } else if let Command::All { soak_duration, .. } = &command {
        let outcome = scale::soak(&common, &mut run, &progress, *soak_duration, soak_default).await;
        note(&mut run, &progress, "soak", outcome);
    }
    progress.finish();
    let out = common.out.clone().unwrap_or_else(|| {
        if quick {
            "target/bench-quick".into()
        } else {
            "bench/results/latest".into()
        }
    });
    // The summary first: a run's figures reach the log even when its files cannot be written
    // (a 30-minute soak once ended on a full disk).
    println!("{}", run.summary());
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
    println!("Results, summary and charts: {}", out.display());
    if let Some(soak) = run.soak.as_ref().filter(|soak| !soak.passed) {
        anyhow::bail!("the soak failed: {}", soak.failures.join("; "));
    }
    if !run.errors.is_empty() {
        anyhow::bail!("scenarios failed: {}", run.errors.join("; "));
    }
    Ok(())
}

/// Records a scenario that failed and lets the run go on: one scenario's failure (a server
/// that died, a limit hit) does not throw away what the others measured. The run still ends
/// with an error.
fn note(run: &mut Run, progress: &Progress, scenario: &str, outcome: anyhow::Result<()>) {
    if let Err(err) = outcome {
        progress.println(format!("  {scenario} FAILED: {err:#}"));
        run.errors.push(format!("{scenario}: {err:#}"));
    }
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
