//! Delivery that cannot fail silently: every node sends itself a canary through Redis Pub/Sub
//! (`REDIS_CANARY_INTERVAL_MS`, 200 ms here) and must get it back. A subscriber that stops
//! receiving while its connection stays up is found within two intervals and repaired
//! (reconnect, resubscribe, resync), its members are told, and what they missed is recovered
//! from history; readiness and `palisade_broker_delivery_ok` follow the canary, not a PING.

mod common;

use std::time::Duration;

use common::outage::{assert_told_and_complete, heard_at, listen_until, say};
use common::proxy::DeafeningProxy;
use common::redis::{node, node_reaching, node_with, RedisServer};
use common::TestServer;
use tokio::time::Instant;

/// The tests' canary interval (see `common::redis::short_periods`).
const CANARY: Duration = Duration::from_millis(200);

/// How late a notice may be beyond the two intervals the canary promises: the reconnect's
/// first wait, a command timeout and a loaded machine's scheduling.
const SLACK: Duration = Duration::from_millis(1500);

/// The value of an unlabelled (or fully labelled) series in the node's metrics.
fn metric(node: &TestServer, series: &str) -> u64 {
    let text = node.probe().metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_answers_but_hears_nothing_is_found_within_two_intervals_and_repaired() {
    let redis = RedisServer::start().await;
    let proxy = DeafeningProxy::start(redis.addr()).await;
    let deaf_side = node_reaching(&[("REDIS_URL", &proxy.url())]).await;
    let other = node(&redis).await;
    let mut alice = deaf_side.joined("alice", "ops").await;
    let mut bob = other.joined("bob", "ops").await;
    assert_eq!(metric(&deaf_side, "palisade_broker_delivery_ok"), 1);
    say(&mut bob, 0).await;
    listen_until(&mut alice, 0, Duration::from_secs(5)).await;

    // Node A's connections stay up and answer every command, PING included; only Pub/Sub
    // messages stop reaching it. Bob goes on talking.
    proxy.deafen_open_connections();
    let deafened = Instant::now();
    for n in 1..=5 {
        say(&mut bob, n).await;
    }
    let mut heard = listen_until(&mut alice, 5, Duration::from_secs(10)).await;
    // The notice may follow message 5: a heartbeat that falls before the canary is missed
    // fills the room in from history, notice or not.
    say(&mut bob, 6).await;
    heard.append(&mut listen_until(&mut alice, 6, Duration::from_secs(5)).await);
    let interrupted = heard_at(&heard, "delivery_interrupted").expect("alice was told");
    println!("silent subscriber found after {:?}", interrupted - deafened);
    assert!(
        interrupted - deafened < 2 * CANARY + SLACK,
        "found after {:?}",
        interrupted - deafened
    );
    assert_told_and_complete(&heard, 1..=6);
    assert!(metric(&deaf_side, "palisade_broker_errors_total{kind=\"canary\"}") >= 1);
    assert_eq!(metric(&deaf_side, "palisade_broker_delivery_ok"), 1);
    assert!(deaf_side.probe().is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_canaries_never_come_back_is_not_ready_though_redis_answers() {
    let redis = RedisServer::start().await;
    let proxy = DeafeningProxy::start(redis.addr()).await;
    proxy.deafen_every_connection();
    let periods = common::redis::short_periods();
    let mut pairs: Vec<(&str, &str)> = periods.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = proxy.url();
    pairs.push(("REDIS_URL", &url));
    let node = TestServer::with(&pairs).await;
    tokio::time::sleep(6 * CANARY).await;
    assert!(!node.probe().is_ready(), "ready on a PING's word");
    assert_eq!(metric(&node, "palisade_broker_delivery_ok"), 0);
    assert!(metric(&node, "palisade_broker_errors_total{kind=\"canary\"}") >= 1);
    proxy.hear_again();
    node.wait_ready().await;
    assert_eq!(metric(&node, "palisade_broker_delivery_ok"), 1);
}

/// `CLIENT KILL TYPE pubsub` closes every node's subscriber: the subscription ends, which the
/// driver sees at once (this one passed before the canary too; it guards the repair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_is_replaced_and_members_are_told() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut alice = a.joined("alice", "ops").await;
    let mut bob = b.joined("bob", "ops").await;
    say(&mut bob, 0).await;
    listen_until(&mut alice, 0, Duration::from_secs(5)).await;
    let _: redis::Value = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let killed_at = Instant::now();
    // Both nodes lost their subscriber. What a node sends while it is away only reaches its
    // own members (SCALING.md, Outages): bob speaks once his node is back.
    for notice in ["delivery_interrupted", "delivery_restored"] {
        bob.wait_for("notice", Some(notice), Duration::from_secs(5))
            .await;
    }
    for n in 1..=5 {
        say(&mut bob, n).await;
    }
    let heard = listen_until(&mut alice, 5, Duration::from_secs(10)).await;
    let interrupted = heard_at(&heard, "delivery_interrupted").expect("alice was told");
    assert!(
        interrupted - killed_at < 2 * CANARY + SLACK,
        "found after {:?}",
        interrupted - killed_at
    );
    assert_told_and_complete(&heard, 1..=5);
    say(&mut alice, 6).await;
    listen_until(&mut bob, 6, Duration::from_secs(5)).await;
}

/// `CLIENT PAUSE … WRITE`: Redis answers `PING` but holds every write, `PUBLISH` included, so
/// no node can deliver across. A node with nothing to send would never notice (its probe
/// would pass); its canary is held too, so it is told within two intervals, and again that
/// delivery is back once the pause ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_holds_every_write_is_noticed_by_a_node_with_nothing_to_send() {
    let redis = RedisServer::start().await;
    // A heartbeat every 10 s: its writes, held too, would notice only then.
    let slow_heartbeat = [("REDIS_KEY_TTL_SECS", "30")];
    let a = node_with(&redis, &slow_heartbeat).await;
    let b = node_with(&redis, &slow_heartbeat).await;
    let mut alice = a.joined("alice", "ops").await;
    let mut bob = b.joined("bob", "ops").await;
    say(&mut bob, 0).await;
    listen_until(&mut alice, 0, Duration::from_secs(5)).await;
    let _: () = redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let paused = Instant::now();
    let frame = alice
        .wait_for(
            "notice",
            Some("delivery_interrupted"),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(frame["body"], "delivery_interrupted");
    assert!(
        paused.elapsed() < 2 * CANARY + SLACK,
        "told after {:?}",
        paused.elapsed()
    );
    assert!(
        !a.probe().is_ready(),
        "not ready while nothing can be delivered"
    );
    alice
        .wait_for("notice", Some("delivery_restored"), Duration::from_secs(10))
        .await;
    a.wait_ready().await;
    b.wait_ready().await;
    say(&mut bob, 1).await;
    let heard = listen_until(&mut alice, 1, Duration::from_secs(5)).await;
    assert!(heard
        .iter()
        .all(|(_, event)| matches!(event, common::outage::Heard::Message(1))));
}
