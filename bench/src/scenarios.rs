//! The scenarios as the command line runs them: each picks its settings (full or quick),
//! starts the servers it measures, and adds its results to the run.

use crate::api::{self, ApiConfig};
use crate::capacity::{self, CapacityConfig};
use crate::churn::{self, ChurnConfig};
use crate::fanout::{self, FanoutConfig};
use crate::progress::Progress;
use crate::report::Run;
use crate::rooms::{self, RoomsConfig};
use crate::target::{self, External, Launch, Target};
use crate::Common;

/// The server under test: the one at `--url`, or a fresh Palisade.
pub async fn under_test(common: &Common, es256: bool) -> anyhow::Result<Target> {
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

pub async fn capacity(
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
        progress.println(format!("  capacity {}", result.line()));
    }
    run.capacity_config = Some(config);
    Ok(())
}

pub async fn fanout(
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
                .push(fanout::run(&[&ceiling], &config, progress).await?);
        }
        let target = under_test(common, false).await?;
        run.fanout
            .push(fanout::run(&[&target], &config, progress).await?);
        run.fanout_configs.push(config);
    }
    Ok(())
}

/// The fan-out ladder for rooms of `room_size`.
pub fn fanout_config(common: &Common, room_size: usize) -> FanoutConfig {
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
        // Past 640 000 deliveries/s, on until the server (or the machine) saturates.
        climb_secs: Some(if common.quick { 1.0 } else { 60.0 }),
    }
}

/// The same fan-out ladder against Palisade with history off (`HISTORY_SIZE=0`: no offsets,
/// nothing kept) and on (the default, clients joining with the room extensions so their
/// frames carry offsets): what numbering and keeping every message costs.
pub async fn history(
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
            .push(fanout::run(&[&target], &config, progress).await?);
    }
    run.history_config = Some(config);
    Ok(())
}

/// Publishes through the server API of a Palisade the bench starts, into one room.
pub async fn api(
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

pub async fn rooms(
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

pub async fn churn(
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
    // The bare server first (unless --no-ceiling): its connect-upgrade-close rate is what the
    // cost of auth and join is a ratio to. Each server starts just before its turn.
    let mut turns: Vec<Option<bool>> = Vec::new();
    if !common.no_ceiling {
        turns.push(None);
    }
    for algorithm in algorithms {
        match algorithm.as_str() {
            "HS256" => turns.push(Some(false)),
            "ES256" if common.url.is_none() => turns.push(Some(true)),
            "ES256" => continue, // a server at --url verifies with its own keys
            other => anyhow::bail!("unknown algorithm {other}: HS256 or ES256"),
        }
    }
    for es256 in turns {
        let target = match es256 {
            None => Target::ceiling().await?,
            Some(es256) => under_test(common, es256).await?,
        };
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
