//! Several gateway nodes sharing rooms through a real Redis: each test starts its own
//! `redis-server` on a free port (so it may kill it), and nodes in this process or as child
//! processes (so one may be killed abruptly).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{http, status};
use common::redis::{broker_settings, child_node, node, node_with, RedisServer};
use common::{token, Client, PacedSender, Pacing, TestServer};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Connects to `server`, authenticates as `sub`, joins `room`, and returns the client with the
/// `totalUsers` of its own join acknowledgement.
async fn join(server: &TestServer, sub: &str, room: &str) -> (Client, u64) {
    let mut client = server.connect().await;
    join_with(&mut client, sub, room).await;
    let ack = client.recv_json().await;
    assert_eq!(ack["type"], "join", "{ack}");
    assert_eq!(ack["userId"], sub, "{ack}");
    (client, ack["totalUsers"].as_u64().unwrap())
}

async fn join_with(client: &mut Client, sub: &str, room: &str) {
    client.auth(&token(sub)).await;
    client
        .send_json(json!({"type": "join", "room": room}))
        .await;
}

/// The value of an unlabelled (or fully labelled) series in the node's metrics.
fn metric(node: &TestServer, series: &str) -> u64 {
    let text = node.probe().metrics();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
        .parse()
        .unwrap()
}

async fn readyz(addr: SocketAddr) -> u16 {
    status(
        &http(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_other_node_exactly_once_and_in_order() {
    let redis = RedisServer::start().await;
    // 1000 messages sent back to back arrive at node B in a burst or two: room for all of them
    // in Bob's queue (the slow-consumer limit is not what this test is about).
    let queue = [("OUTBOUND_QUEUE_FRAMES", "2048")];
    let a = node_with(&redis, &queue).await;
    let b = node_with(&redis, &queue).await;
    let (mut alice, total) = join(&a, "alice", "lobby").await;
    assert_eq!(total, 1);
    redis.wait_for_members("lobby", 1).await;
    let (mut bob, total) = join(&b, "bob", "lobby").await;
    assert_eq!(total, 2, "totalUsers counts the member on the other node");
    let seen = alice.recv_json().await;
    assert_eq!(
        (&seen["type"], &seen["userId"], &seen["totalUsers"]),
        (&json!("join"), &json!("bob"), &json!(2))
    );

    // Bob reads while Alice sends, as a client does (a reader that waits for all 1000 would be
    // a slow consumer).
    let reading = tokio::spawn(async move {
        for n in 0..1000 {
            let frame = bob.recv_json().await;
            assert_eq!(
                frame,
                json!({"type": "message", "body": format!("m{n}"), "username": "Alice", "userId": "alice"}),
                "message {n}: in order, nothing lost or repeated"
            );
        }
        bob
    });
    for n in 0..1000 {
        alice
            .send_json(json!({"type": "message", "body": format!("m{n}")}))
            .await;
    }
    let mut bob = reading.await.unwrap();
    bob.expect_silence(Duration::from_millis(500)).await;
    alice.expect_silence(Duration::from_millis(100)).await;

    bob.send_json(json!({"type": "message", "body": "back"}))
        .await;
    assert_eq!(alice.recv_json().await["body"], "back");
    bob.expect_silence(Duration::from_millis(200)).await;

    // A leave on one node is a userleave on the other, with the new total.
    bob.send_json(json!({"type": "userleave"})).await;
    let left = alice.recv_json().await;
    assert_eq!(
        (&left["type"], &left["userId"], &left["totalUsers"]),
        (&json!("userleave"), &json!("bob"), &json!(1))
    );
    let metrics = a.probe().metrics();
    assert!(metrics.contains("palisade_broker_up 1"), "{metrics}");
    assert!(!metrics.contains("palisade_broker_published_total 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_users_is_right_across_nodes_through_joins_leaves_and_a_node_kill() {
    let redis = RedisServer::start().await;
    let a = node(&redis).await;
    let settings = broker_settings(&redis);
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = common::child::Gateway::start(&pairs).await;
    b.wait_ready().await;
    let b_url = format!("ws://{}/", b.addr);

    let (mut alice, total) = join(&a, "alice", "room").await;
    assert_eq!(total, 1);
    redis.wait_for_members("room", 1).await;
    let mut bob = Client::connect(&b_url, Some(common::ORIGIN)).await;
    join_with(&mut bob, "bob", "room").await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);
    assert_eq!(alice.recv_json().await["totalUsers"], 2);
    let (mut carol, total) = join(&a, "carol", "room").await;
    assert_eq!(total, 3);
    for member in [&mut alice, &mut bob] {
        let joined = member.recv_json().await;
        assert_eq!(
            (&joined["userId"], &joined["totalUsers"]),
            (&json!("carol"), &json!(3))
        );
    }

    // Leave and rejoin on node B.
    bob.send_json(json!({"type": "userleave"})).await;
    for member in [&mut alice, &mut carol] {
        let left = member.recv_json().await;
        assert_eq!(
            (&left["type"], &left["userId"], &left["totalUsers"]),
            (&json!("userleave"), &json!("bob"), &json!(2))
        );
    }
    bob.send_json(json!({"type": "join", "room": "room"})).await;
    assert_eq!(bob.recv_json().await["totalUsers"], 3);
    for member in [&mut alice, &mut carol] {
        let joined = member.recv_json().await;
        assert_eq!(
            (&joined["userId"], &joined["totalUsers"]),
            (&json!("bob"), &json!(3))
        );
    }

    // Node B dies without a word: its member ages out within the key TTL and a heartbeat.
    drop(b);
    for member in [&mut alice, &mut carol] {
        let left = member.recv_within(Duration::from_secs(10)).await;
        assert_eq!(
            (&left["type"], &left["userId"], &left["totalUsers"]),
            (&json!("userleave"), &json!("bob"), &json!(2)),
            "the dead node's member left"
        );
    }
    let (_dave, total) = join(&a, "dave", "room").await;
    assert_eq!(total, 3, "no ghost of the dead node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_local_rooms_working_and_delivery_resumes_after_it() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis).await;
    let b = node(&redis).await;
    let (mut alice, _) = join(&a, "alice", "ops").await;
    let (mut carol, _) = join(&a, "carol", "ops").await;
    redis.wait_for_members("ops", 2).await;
    let (mut bob, total) = join(&b, "bob", "ops").await;
    assert_eq!(total, 3);
    for _ in 0..2 {
        assert_eq!(alice.recv_json().await["type"], "join");
    }
    assert_eq!(carol.recv_json().await["type"], "join");

    // Alice talks all along (bounded), numbering her messages.
    let talking = PacedSender::start(
        alice,
        Pacing {
            padding: 0,
            burst: 1,
            pause: Duration::from_millis(10),
            limit: 3000,
        },
    );
    // Checks that message numbers only grow (no duplicate, no reordering); returns the last.
    let next_message = |frame: &Value, last: &mut Option<u64>| -> bool {
        if frame["type"] != "message" {
            return false;
        }
        let n: u64 = frame["body"].as_str().unwrap().parse().unwrap();
        assert!(last.is_none_or(|last| n > last), "{n} after {last:?}");
        *last = Some(n);
        true
    };
    let (mut bob_last, mut carol_last) = (None, None);
    while bob_last.is_none() {
        let frame = bob.recv_json().await;
        next_message(&frame, &mut bob_last);
    }

    redis.kill();
    let interrupted = Instant::now();
    // Bob learns that cross-node delivery stopped; node A stops being ready.
    loop {
        let frame = bob.recv_within(Duration::from_secs(5)).await;
        if frame["type"] == "notice" {
            assert_eq!(frame["body"], "delivery_interrupted");
            break;
        }
        next_message(&frame, &mut bob_last);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while readyz(a.addr).await != 503 {
        assert!(
            Instant::now() < deadline,
            "node A still ready without Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Carol, on Alice's node, still hears her: the room works locally.
    let frame = carol
        .wait_for(
            "notice",
            Some("delivery_interrupted"),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(frame["type"], "notice");
    let before_restart = carol_last;
    while carol_last <= before_restart {
        let frame = carol.recv_within(Duration::from_secs(5)).await;
        next_message(&frame, &mut carol_last);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.restart().await;
    let restarted = Instant::now();
    let mut restored = false;
    let bob_before = bob_last;
    // Delivery resumes: a restored notice, then Alice's messages again (some were missed).
    while !(restored && bob_last > bob_before) {
        let frame = bob.recv_within(Duration::from_secs(10)).await;
        if frame["type"] == "notice" {
            assert_eq!(frame["body"], "delivery_restored");
            restored = true;
        } else if next_message(&frame, &mut bob_last) {
            assert!(
                restored,
                "a message from the other node before the restored notice"
            );
        }
    }
    let resumed_after = restarted.elapsed();
    assert!(
        resumed_after < Duration::from_secs(8),
        "delivery resumed {resumed_after:?} after Redis came back"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while readyz(a.addr).await != 200 || readyz(b.addr).await != 200 {
        assert!(Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_alice, sent) = talking.stop().await;
    assert!(bob_last.unwrap() < sent as u64);
    eprintln!(
        "outage of {:?}; delivery resumed {resumed_after:?} after the restart",
        restarted - interrupted
    );

    // Presence is rebuilt: a newcomer counts everyone on both nodes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (newcomer, total) = join(&b, "dave", "ops").await;
        if total == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "totalUsers {total}, expected 4");
        newcomer.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = a.probe().metrics();
    assert!(
        metrics.contains("palisade_broker_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_redis_serves_its_rooms_locally_and_says_so() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    redis.kill();
    let a = TestServer::with(&[("REDIS_URL", &url), ("REDIS_TIMEOUT_MS", "300")]).await;
    assert!(!a.probe().is_ready());
    assert_eq!(readyz(a.addr).await, 503);
    let (mut alice, total) = join(&a, "alice", "solo").await;
    assert_eq!(total, 1);
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "notice", "body": "delivery_interrupted"})
    );
    let (mut bob, _) = join(&a, "bob", "solo").await;
    assert_eq!(bob.recv_json().await["type"], "notice");
    assert_eq!(alice.recv_json().await["userId"], "bob");
    bob.send_json(json!({"type": "message", "body": "local"}))
        .await;
    assert_eq!(alice.recv_json().await["body"], "local");

    // Redis appears: the node connects, becomes ready, and tells its members.
    redis.restart().await;
    a.wait_ready().await;
    assert_eq!(
        alice.wait_for("notice", None, Duration::from_secs(5)).await["body"],
        "delivery_restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_cap_counts_members_on_every_node() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, &[("MAX_ROOM_MEMBERS", "2")]).await;
    let b = node_with(&redis, &[("MAX_ROOM_MEMBERS", "2")]).await;
    let (mut alice, _) = join(&a, "alice", "small").await;
    redis.wait_for_members("small", 1).await;
    let (_bob, total) = join(&b, "bob", "small").await;
    assert_eq!(total, 2);
    // Node A counts Bob once it has heard of his join (SCALING.md: two joins on two nodes at
    // the same instant may both pass the cap). Alice's copy of that join says A has; without
    // this wait, a busy machine let Carol in before A heard of Bob.
    let joined = alice.recv_json().await;
    assert_eq!(
        (&joined["userId"], &joined["totalUsers"]),
        (&json!("bob"), &json!(2))
    );
    let mut carol = a.connect().await;
    join_with(&mut carol, "carol", "small").await;
    assert_eq!(carol.expect_close().await.0, 4012);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_on_one_node_slows_neither_node() {
    let redis = RedisServer::start().await;
    let a = node(&redis).await;
    // Envelopes reach node B in bursts (the publisher batches them): a queue that absorbs a
    // burst, and that a socket which never reads still fills within a second or two.
    let b = node_with(
        &redis,
        &[
            ("OUTBOUND_QUEUE_FRAMES", "1024"),
            ("CLOSE_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let (mut sender, _) = join(&a, "sender", "busy").await;
    let (mut local_reader, _) = join(&a, "local", "busy").await;
    redis.wait_for_members("busy", 2).await;
    let mut slow = common::tiny_buffer_client(&b, "slow", "busy").await;
    let (remote_reader, total) = join(&b, "remote", "busy").await;
    assert_eq!(total, 4);
    for _ in 0..3 {
        assert_eq!(sender.recv_json().await["type"], "join");
    }
    for _ in 0..2 {
        assert_eq!(local_reader.recv_json().await["type"], "join");
    }

    // Paced (about 6 MB/s) so that both readers keep up on a busy two-core machine, while the
    // socket that never reads still fills within a second.
    let sending = PacedSender::start(
        sender,
        Pacing {
            padding: 3000,
            burst: 4,
            pause: Duration::from_millis(2),
            limit: 20_000,
        },
    );
    // Each reader reads as a client does, on its own, every message in order until the slow
    // member is evicted (on node B), and goes on receiving after that.
    let read_until_eviction = |mut reader: Client| async move {
        let mut received = 0usize;
        loop {
            let frame = reader.recv_json().await;
            match frame["type"].as_str() {
                Some("message") => {
                    let body = frame["body"].as_str().unwrap();
                    let number: usize = body.split(' ').next().unwrap().parse().unwrap();
                    assert_eq!(number, received, "in order, nothing lost");
                    received += 1;
                }
                Some("userleave") => {
                    assert_eq!(
                        (&frame["userId"], &frame["totalUsers"]),
                        (&json!("slow"), &json!(3))
                    );
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let next = reader.recv_json().await;
        assert_eq!(next["type"], "message", "the room flows on: {next}");
        // Still open: a reader done first must not leave while the other waits for a message.
        (received, reader)
    };
    let local = tokio::spawn(read_until_eviction(local_reader));
    let remote = tokio::spawn(read_until_eviction(remote_reader));
    let ((local, _local_reader), (remote, _remote_reader)) =
        (local.await.unwrap(), remote.await.unwrap());
    assert!(local > 0 && remote > 0, "local {local}, remote {remote}");
    let _ = sending.stop().await;
    let close = loop {
        match slow.recv().await {
            Some(Message::Text(_)) => {}
            Some(Message::Close(Some(frame))) => break u16::from(frame.code),
            other => panic!("expected frames then a close, got {other:?}"),
        }
    };
    assert_eq!(close, 4007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_behave_as_one_gateway_and_a_stopping_node_says_goodbye() {
    let redis = RedisServer::start().await;
    // A long TTL: the stopping node's members must leave at once, not when its keys expire.
    let extra = [("REDIS_KEY_TTL_SECS", "60"), ("DRAIN_DELAY_SECS", "0")];
    let a = child_node(&redis, &extra).await;
    let b = child_node(&redis, &extra).await;
    let url = |node: &common::child::Gateway| format!("ws://{}/", node.addr);

    let mut alice = Client::connect(&url(&a), Some(common::ORIGIN)).await;
    join_with(&mut alice, "alice", "hall").await;
    assert_eq!(alice.recv_json().await["totalUsers"], 1);
    redis.wait_for_members("hall", 1).await;
    let mut bob = Client::connect(&url(&b), Some(common::ORIGIN)).await;
    join_with(&mut bob, "bob", "hall").await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);
    assert_eq!(alice.recv_json().await["userId"], "bob");
    alice
        .send_json(json!({"type": "message", "body": "<b>hi</b> & bye"}))
        .await;
    // Byte for byte what one node sends (Go's HTML-safe escaping included).
    assert_eq!(
        bob.recv_text().await,
        r#"{"type":"message","body":"\u003cb\u003ehi\u003c/b\u003e \u0026 bye","username":"Alice","userId":"alice"}"#
    );

    // SIGTERM node B: Bob gets 1001, and Alice hears him leave well before any expiry.
    // SAFETY: kill(2) on a child we spawned, with a valid signal, has no memory effects.
    assert_eq!(
        unsafe { libc::kill(b.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert_eq!(bob.expect_close().await.0, 1001);
    let left = alice.recv_within(Duration::from_secs(5)).await;
    assert_eq!(
        (&left["type"], &left["userId"], &left["totalUsers"]),
        (&json!("userleave"), &json!("bob"), &json!(1))
    );
    let mut carol = Client::connect(&url(&a), Some(common::ORIGIN)).await;
    join_with(&mut carol, "carol", "hall").await;
    assert_eq!(carol.recv_json().await["totalUsers"], 2, "no ghost of bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_publish_queue_messages_are_dropped_and_counted_never_reordered() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, &[("REDIS_PUBLISH_QUEUE", "1")]).await;
    let b = node_with(&redis, &[("OUTBOUND_QUEUE_FRAMES", "4096")]).await;
    let (mut alice, _) = join(&a, "alice", "burst").await;
    redis.wait_for_members("burst", 1).await;
    let (mut bob, total) = join(&b, "bob", "burst").await;
    assert_eq!(total, 2);
    assert_eq!(alice.recv_json().await["userId"], "bob");
    // A queue of one holds one event: a burst overflows it.
    for n in 0..2000 {
        alice
            .send_json(json!({"type": "message", "body": n.to_string()}))
            .await;
    }
    alice
        .send_json(json!({"type": "message", "body": "last"}))
        .await;
    let mut last: Option<u64> = None;
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), bob.recv_json()).await
        else {
            break;
        };
        if frame["type"] != "message" {
            continue;
        }
        let Ok(n) = frame["body"].as_str().unwrap().parse::<u64>() else {
            continue;
        };
        assert!(last.is_none_or(|last| n > last), "{n} after {last:?}");
        last = Some(n);
        received += 1;
    }
    assert!(received < 2000, "nothing was dropped: {received}");
    let dropped = metric(&a, "palisade_broker_dropped_total{reason=\"backlog\"}");
    assert!(dropped > 0);
    eprintln!("a queue of 1: {received} of 2000 delivered, {dropped} dropped and counted");
    // The room still works both ways once the burst is over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.send_json(json!({"type": "message", "body": "after"}))
        .await;
    assert_eq!(
        alice
            .wait_for("message", None, Duration::from_secs(5))
            .await["body"],
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_during_a_partition_are_repaired_when_it_heals() {
    let redis = RedisServer::start().await;
    let a = node(&redis).await;
    let b = node(&redis).await;
    let (mut alice, _) = join(&a, "alice", "kept").await;
    redis.wait_for_members("kept", 1).await;
    let (mut bob, total) = join(&b, "bob", "kept").await;
    assert_eq!(total, 2);
    assert_eq!(alice.recv_json().await["userId"], "bob");

    // Redis stalls (its data stays): both nodes notice and say so.
    redis.pause();
    for member in [&mut alice, &mut bob] {
        let frame = member
            .wait_for("notice", None, Duration::from_secs(5))
            .await;
        assert_eq!(frame["body"], "delivery_interrupted");
    }
    // Meanwhile Bob leaves (his node's last member of the room: the room closes there), and
    // Carol opens a new room on node B.
    bob.send_json(json!({"type": "userleave"})).await;
    let (mut carol, total) = join(&b, "carol", "fresh").await;
    assert_eq!(total, 1);
    assert_eq!(carol.recv_json().await["body"], "delivery_interrupted");

    redis.resume();
    let frame = alice
        .wait_for("notice", None, Duration::from_secs(10))
        .await;
    assert_eq!(frame["body"], "delivery_restored");
    // The leave that could not be written is repaired: Bob leaves Alice's room...
    let left = alice
        .wait_for("userleave", None, Duration::from_secs(10))
        .await;
    assert_eq!(
        (&left["userId"], &left["totalUsers"]),
        (&json!("bob"), &json!(1))
    );
    // ...and the room opened during the partition is subscribed: it hears node A.
    redis.wait_for_members("fresh", 1).await;
    let (mut dave, total) = join(&a, "dave", "fresh").await;
    assert_eq!(total, 2, "Carol's presence was written after the partition");
    carol.wait_for("join", None, Duration::from_secs(5)).await;
    dave.send_json(json!({"type": "message", "body": "across"}))
        .await;
    assert_eq!(
        carol
            .wait_for("message", None, Duration::from_secs(5))
            .await["body"],
        "across"
    );
    let (_erin, total) = join(&b, "erin", "kept").await;
    assert_eq!(total, 2, "no ghost of bob in the kept room");
}
