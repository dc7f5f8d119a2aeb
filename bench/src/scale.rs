//! The scenarios of measured scale: fan-out over two nodes sharing rooms through a Redis the
//! bench starts (beside one node on the same Redis, in the same run), one large room on one
//! node, and the soak.

use std::time::Duration;

use crate::fanout::{self, FanoutConfig};
use crate::nodes::Nodes;
use crate::progress::Progress;
use crate::report::Run;
use crate::scenarios::fanout_config;
use crate::soak::{self, SoakConfig};
use crate::target::{self, Launch};
use crate::Common;

/// Rooms of `room_size` over one node, then over two, each time with a fresh Redis: the same
/// ladder, the members of every room split over the nodes. Redis carries every message in
/// both runs, so the ratio is what a second node adds, not what Redis costs.
pub async fn two_nodes(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    room_size: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        common.url.is_none(),
        "the two-node scenario starts its own gateways and Redis (no --url)"
    );
    let config = fanout_config(common, room_size);
    let binary = target::gateway_binary(common.gateway.clone())?;
    for (count, name) in [(1, "palisade, one node"), (2, "palisade, two nodes")] {
        let launch = Launch {
            name,
            ..Launch::default()
        };
        let nodes = Nodes::start(&binary, count, &launch).await?;
        run.two_nodes
            .push(fanout::run(&nodes.refs(), &config, progress).await?);
    }
    run.two_nodes_config = Some(config);
    Ok(())
}

/// One room of `members` (10 000; 200 with --quick) on one node, one sender: the ladder in
/// deliveries per second, climbing until the delay passes the limit.
pub async fn large_room(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    members: Option<usize>,
) -> anyhow::Result<()> {
    let room_size = members.unwrap_or(if common.quick { 200 } else { 10_000 });
    let config = FanoutConfig {
        room_size,
        rooms: 1,
        delivered_steps: if common.quick {
            vec![2_000, 4_000]
        } else {
            vec![
                20_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000,
            ]
        },
        climb_secs: Some(if common.quick { 1.0 } else { 60.0 }),
        concurrency: 32,
        ..fanout_config(common, room_size)
    };
    let target = match &common.url {
        Some(_) => crate::scenarios::under_test(common, false).await?,
        None => {
            // A room as large as the connection limit (the default cap is 1 000 members), and
            // queues deep enough for the join storm: every join is announced to every member
            // already there, in bursts as wide as the joins in flight, which the default
            // 256-frame queue of a member on a busy 2-core machine does not absorb.
            let launch = Launch {
                redis: common.redis.as_deref(),
                env: vec![
                    ("MAX_ROOM_MEMBERS", "19500"),
                    ("OUTBOUND_QUEUE_FRAMES", "65536"),
                    ("MAX_OUTBOUND_BYTES", "16777216"),
                    // Under the storm, a new socket's auth and join wait their turn.
                    ("AUTH_TIMEOUT_MS", "20000"),
                    ("JOIN_TIMEOUT_MS", "20000"),
                ],
                ..Launch::default()
            };
            let binary = target::gateway_binary(common.gateway.clone())?;
            target::Target::palisade(&binary, &launch).await?
        }
    };
    run.large_room
        .push(fanout::run(&[&target], &config, progress).await?);
    run.large_room_config = Some(config);
    Ok(())
}

/// The soak: two nodes and a Redis under mixed load for `duration` (or `default_secs`).
pub async fn soak(
    common: &Common,
    run: &mut Run,
    progress: &Progress,
    duration: Option<Duration>,
    default_secs: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        common.url.is_none(),
        "the soak starts its own gateways and Redis (no --url)"
    );
    let secs = duration.map_or(default_secs, |d| d.as_secs_f64());
    let config = SoakConfig::new(secs, common.quick);
    let binary = target::gateway_binary(common.gateway.clone())?;
    let result = soak::run(&binary, &config, progress).await?;
    progress.println(format!(
        "  soak {:.0} s: {} sent, {} delivered of {} due, {} lost, {} repeated or reordered: {}",
        result.elapsed_secs,
        result.delivery.sent,
        result.delivery.delivered,
        result.delivery.expected,
        result.delivery.lost,
        result.delivery.repeated_or_reordered,
        if result.passed {
            "passed".to_owned()
        } else {
            format!("FAILED ({})", result.failures.join("; "))
        }
    ));
    run.soak = Some(result);
    Ok(())
}

/// `90`, `90s`, `30m`, `1h`, `1h30m`: a duration for `--duration`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut secs = 0u64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("{text:?}: a number with s, m or h (90s, 30m, 1h)")),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c}"))?;
        secs += value * unit;
        number.clear();
    }
    if !number.is_empty() {
        secs += number.parse::<u64>().map_err(|err| err.to_string())?;
    }
    if secs == 0 {
        return Err(format!("{text:?}: the duration must be above zero"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
