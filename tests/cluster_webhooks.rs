//! Webhooks across nodes sharing a real Redis: each fact is reported once for the whole
//! cluster. A user moving between nodes is never reported offline; a user reconnecting within
//! the grace on another node is not either; a node that is SIGKILLed has its users and rooms
//! reported offline and empty once, by another node, after its key expires.

mod common;

use std::time::Duration;

use common::child::Gateway;
use common::proxy::DeafeningProxy;
use common::receiver::{kinds_for, Receiver};
use common::redis::{child_node, node_reaching, node_with, RedisServer};
use common::{token, Client, TestServer, ORIGIN};
use serde_json::{json, Value};

/// Webhooks to `receiver`, sent at once, with a grace of 1 s.
fn hooks(receiver: &Receiver) -> Vec<(&'static str, String)> {
    let mut hooks = receiver.settings("0");
    hooks.push(("WEBHOOK_OFFLINE_GRACE_SECS", "1".into()));
    hooks
}

fn pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn hooked_node(redis: &RedisServer, receiver: &Receiver) -> TestServer {
    node_with(redis, &pairs(&hooks(receiver))).await
}

/// A hooked node reaching Redis through a proxy, which can lose Redis's answers.
async fn hooked_node_through_proxy(
    redis: &RedisServer,
    receiver: &Receiver,
) -> (DeafeningProxy, TestServer) {
    let proxy = DeafeningProxy::start(redis.addr()).await;
    let mut settings = hooks(receiver);
    settings.push(("REDIS_URL", proxy.url()));
    let node = node_reaching(&pairs(&settings)).await;
    (proxy, node)
}

/// Carol, joined to the attic on `node` (a child process, to be killed).
async fn carol_in_the_attic(node: &Gateway) -> Client {
    let mut carol = Client::connect(&format!("ws://{}/", node.addr), Some(ORIGIN)).await;
    carol.auth(&token("carol")).await;
    carol
        .send_json(json!({"type": "join", "room": "attic"}))
        .await;
    assert_eq!(carol.recv_json().await["type"], "join");
    carol
}

/// Once carol's node is killed: she is reported offline, and the attic empty, once each (the
/// events after `wait` and a quiet 2.5 s).
async fn carol_and_the_attic_reported_off(receiver: &Receiver, wait: Duration) -> Vec<Value> {
    let events = receiver
        .settled(
            "carol offline, attic empty",
            wait,
            |events| {
                kinds_for(events, "userId", "carol").len() == 2
                    && kinds_for(events, "room", "attic").len() == 2
            },
            Duration::from_millis(2500),
        )
        .await;
    assert_eq!(
        kinds_for(&events, "userId", "carol"),
        ["user.online", "user.offline"],
        "once, however many nodes saw the node die"
    );
    assert_eq!(
        kinds_for(&events, "room", "attic"),
        ["room.occupied", "room.empty"]
    );
    events
}

/// Waits until `count` nodes hold `item` in the ledger: a node records what it holds in the
/// background, after answering the join.
async fn wait_for_holders(redis: &RedisServer, item: &str, count: usize) {
    let key = format!("palisade:held:{item}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let holders: usize = redis.command(&["HLEN", &key]).await;
        if holders == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{holders} nodes hold {item}, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moving_between_nodes_is_online_once_and_offline_once() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let a = hooked_node(&redis, &receiver).await;
    let b = hooked_node(&redis, &receiver).await;

    let on_a = a.joined("alice", "lobby").await;
    receiver
        .wait_until("online", Duration::from_secs(5), |events| {
            kinds_for(events, "userId", "alice") == ["user.online"]
        })
        .await;
    // To B while still on A, then off A: a move, no event.
    let on_b = b.joined("alice", "lobby").await;
    // Off A once B's hold is recorded: a room has no grace, and A would report it empty.
    wait_for_holders(&redis, "room:lobby", 2).await;
    on_a.close().await;
    // Off B, and back on A within the grace: a reconnect on another node, no event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_b.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = a.joined("alice", "lobby").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let events = receiver.accepted();
    assert_eq!(kinds_for(&events, "userId", "alice"), ["user.online"]);
    // Rooms have no grace: the room was empty between the two reconnects.
    assert_eq!(
        kinds_for(&events, "room", "lobby"),
        ["room.occupied", "room.empty", "room.occupied"]
    );

    // Gone everywhere: offline once, empty once, whichever node reports them.
    back.close().await;
    let events = receiver
        .settled(
            "offline",
            Duration::from_secs(5),
            |events| kinds_for(events, "userId", "alice").len() == 2,
            Duration::from_millis(1500),
        )
        .await;
    assert_eq!(
        kinds_for(&events, "userId", "alice"),
        ["user.online", "user.offline"]
    );
    assert_eq!(
        kinds_for(&events, "room", "lobby"),
        ["room.occupied", "room.empty", "room.occupied", "room.empty"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_go_offline_once_reported_by_another_node() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let a = hooked_node(&redis, &receiver).await;
    let _b = hooked_node(&redis, &receiver).await;
    let mut doomed = child_node(&redis, &pairs(&hooks(&receiver))).await;

    let _carol = carol_in_the_attic(&doomed).await;
    let _dave = a.joined("dave", "hall").await;
    receiver
        .wait_until(
            "carol and dave online, attic occupied",
            Duration::from_secs(5),
            |events| {
                kinds_for(events, "userId", "carol") == ["user.online"]
                    && kinds_for(events, "userId", "dave") == ["user.online"]
                    && kinds_for(events, "room", "attic") == ["room.occupied"]
            },
        )
        .await;

    // Killed only once its events are out: what a node had not yet sent dies with it.
    doomed.child.kill().unwrap(); // SIGKILL: no goodbye, its key expires (REDIS_KEY_TTL_SECS 3)
    let _ = doomed.child.wait();
    let events = carol_and_the_attic_reported_off(&receiver, Duration::from_secs(10)).await;
    assert_eq!(kinds_for(&events, "userId", "dave"), ["user.online"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_departure_on_another_node_restarts_the_grace() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let a = hooked_node(&redis, &receiver).await; // grace 1 s
    let b = hooked_node(&redis, &receiver).await;
    let on_a = a.joined("alice", "lobby").await;
    receiver
        .wait_until("online", Duration::from_secs(5), |events| {
            kinds_for(events, "userId", "alice") == ["user.online"]
        })
        .await;
    on_a.close().await; // A's grace ends in 1 s...
    tokio::time::sleep(Duration::from_millis(400)).await;
    let on_b = b.joined("alice", "lobby").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    on_b.close().await; // ...but this departure's grace ends 0.8 s later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        kinds_for(&receiver.accepted(), "userId", "alice"),
        ["user.online"],
        "not offline while the last departure's grace runs"
    );
    let events = receiver
        .settled(
            "offline after the last grace",
            Duration::from_secs(5),
            |events| kinds_for(events, "userId", "alice").len() == 2,
            Duration::from_millis(1000),
        )
        .await;
    assert_eq!(
        kinds_for(&events, "userId", "alice"),
        ["user.online", "user.offline"]
    );
}

/// Redis flips an item but its answer is lost (held past `REDIS_TIMEOUT_MS` by a proxy, as a
/// timeout or a dropped connection loses it): the node asks again under the same stamp and is
/// told the flip was its own, so the event comes late instead of never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_after_the_flip_delays_the_event_but_does_not_lose_it() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let (proxy, node) = hooked_node_through_proxy(&redis, &receiver).await;
    let lost = Duration::from_millis(800); // REDIS_TIMEOUT_MS is 500

    proxy.hold_replies_after(&["here", "held:user:alice"], lost);
    let alice = node.joined("alice", "lobby").await;
    receiver
        .wait_until("online", Duration::from_secs(10), |events| {
            kinds_for(events, "userId", "alice") == ["user.online"]
        })
        .await;
    assert_eq!(proxy.holds(), 1, "the answer to alice's arrival was held");

    proxy.hold_replies_after(&["settle", "held:user:alice"], lost);
    alice.close().await;
    let events = receiver
        .settled(
            "offline",
            Duration::from_secs(10),
            |events| kinds_for(events, "userId", "alice").len() == 2,
            Duration::from_millis(1500),
        )
        .await;
    assert_eq!(proxy.holds(), 2, "the answer to alice's settling was held");
    assert_eq!(
        kinds_for(&events, "userId", "alice"),
        ["user.online", "user.offline"]
    );
    assert_eq!(
        kinds_for(&events, "room", "lobby"),
        ["room.occupied", "room.empty"]
    );
}

/// The same for a dead node's sweep: the node that swept it asks again as it was (the same
/// dead node, its items as found, the same stamp), and reports what its lost answer turned
/// off, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweeps_lost_answer_still_reports_the_dead_nodes_users_offline() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let (proxy, sweeper) = hooked_node_through_proxy(&redis, &receiver).await;
    let mut doomed = child_node(&redis, &pairs(&hooks(&receiver))).await;
    let _carol = carol_in_the_attic(&doomed).await;
    // Killed only once its events are out: what a node had not yet sent dies with it.
    receiver
        .wait_until(
            "carol online, attic occupied",
            Duration::from_secs(5),
            |events| {
                kinds_for(events, "userId", "carol") == ["user.online"]
                    && kinds_for(events, "room", "attic") == ["room.occupied"]
            },
        )
        .await;

    // Only a sweep drops carol: she was on the dead node alone.
    proxy.hold_replies_after(&["drop", "held:user:carol"], Duration::from_millis(800));
    doomed.child.kill().unwrap(); // its key expires (REDIS_KEY_TTL_SECS 3): the sweeper's turn
    let _ = doomed.child.wait();
    carol_and_the_attic_reported_off(&receiver, Duration::from_secs(15)).await;
    assert_eq!(proxy.holds(), 1, "the sweep's answer was held");
    drop(sweeper);
}
