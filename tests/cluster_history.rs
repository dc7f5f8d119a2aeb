//! Rooms that remember across nodes, on a real Redis: offsets every node agrees on, history
//! and recovery on another node, a Redis that lost its data, Pub/Sub messages lost between
//! Redis and a node, and members, typing and read positions across nodes.

mod common;

use std::time::Duration;

use common::redis::{node, RedisServer};
use common::{token, Client, TestServer};
use serde_json::{json, Value};

/// Connects as `sub` and joins `room` with the extensions in `extra` (`{}` for a GarinChat
/// join); returns the client and its acknowledgement.
async fn join(server: &TestServer, sub: &str, room: &str, extra: Value) -> (Client, Value) {
    let mut client = server.connect().await;
    client.auth(&token(sub)).await;
    let mut frame = json!({"type": "join", "room": room});
    for (key, value) in extra.as_object().unwrap() {
        frame[key] = value.clone();
    }
    client.send_json(frame).await;
    let ack = client.recv_json().await;
    assert_eq!(ack["type"], "join", "{ack}");
    (client, ack)
}

/// The next `count` chat messages (skipping other frames).
async fn messages(client: &mut Client, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let frame = client.recv_within(Duration::from_secs(10)).await;
        if frame["type"] == "message" {
            got.push(frame);
        }
    }
    got
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

fn bodies(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["body"].as_str().unwrap()).collect()
}

async fn say(client: &mut Client, body: &str) {
    client
        .send_json(json!({"type": "message", "body": body}))
        .await;
}

/// What a node would publish for a message numbered `offset` in `epoch`.
fn envelope(offset: u64, epoch: &str, body: &str) -> String {
    json!({"v": 1, "node": "elsewhere", "seq": offset, "ts": common::now() * 1000,
        "event": "message", "session": 1, "username": "Ghost", "userId": "ghost",
        "body": body, "offset": offset, "epoch": epoch})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_the_same_offsets_and_a_busy_rooms_history_has_no_seam() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let (mut on_a, ack_a) = join(&a, "ann", "lobby", json!({"history": 0})).await;
    let (mut on_b, ack_b) = join(&b, "bob", "lobby", json!({"history": 0})).await;
    assert_eq!(ack_a["epoch"], ack_b["epoch"], "one epoch for the room");
    let mut sender_a = a.joined("sa", "lobby").await;
    let mut sender_b = b.joined("sb", "lobby").await;
    let sent = 400;
    // Halfway, the senders wait for the late joiner: it joins mid-flow, however fast they are.
    let (halfway, at_halfway) = tokio::sync::oneshot::channel();
    let (go_on, going_on) = tokio::sync::oneshot::channel::<()>();
    let sending = tokio::spawn(async move {
        let (mut halfway, mut going_on) = (Some(halfway), Some(going_on));
        for n in 0..sent {
            if n == sent / 2 {
                halfway.take().unwrap().send(()).unwrap();
                going_on.take().unwrap().await.unwrap();
            }
            let (sender, name) = if n % 2 == 0 {
                (&mut sender_a, "a")
            } else {
                (&mut sender_b, "b")
            };
            say(sender, &format!("{name}{n}")).await;
            if n % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        (sender_a, sender_b)
    });
    at_halfway.await.unwrap();
    let (mut late, ack) = join(&b, "late", "lobby", json!({"history": 100})).await;
    let boundary = ack["offset"].as_u64().unwrap();
    go_on.send(()).unwrap();
    let _senders = sending.await.unwrap();
    assert!(
        boundary > 0 && boundary < sent as u64,
        "joined mid-flow: {boundary}"
    );
    let seen_a = messages(&mut on_a, sent).await;
    let seen_b = messages(&mut on_b, sent).await;
    assert_eq!(offsets(&seen_a), (1..=sent as u64).collect::<Vec<_>>());
    assert_eq!(
        bodies(&seen_a),
        bodies(&seen_b),
        "both nodes deliver one order"
    );
    assert_eq!(offsets(&seen_a), offsets(&seen_b));
    // The late joiner: the last 100 before it joined, then everything after, no seam.
    let expected = sent as u64 - boundary.saturating_sub(100);
    let got = messages(&mut late, expected as usize).await;
    let first = boundary.saturating_sub(100) + 1;
    assert_eq!(offsets(&got), (first..=sent as u64).collect::<Vec<_>>());
    for frame in &got {
        let past = frame["offset"].as_u64().unwrap() <= boundary;
        assert_eq!(frame.get("history").is_some(), past, "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_the_other_node_recovers_exactly_what_was_missed() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut sender = a.joined("sender", "lobby").await;
    let (mut reader, ack) = join(&a, "reader", "lobby", json!({"history": 0})).await;
    let epoch = ack["epoch"].clone();
    say(&mut sender, "before").await;
    let last = messages(&mut reader, 1).await[0]["offset"]
        .as_u64()
        .unwrap();
    reader.close().await;
    for n in 0..3 {
        say(&mut sender, &format!("missed {n}")).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut back, ack) = join(
        &b,
        "reader",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": last}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let missed = messages(&mut back, 3).await;
    assert_eq!(bodies(&missed), ["missed 0", "missed 1", "missed 2"]);
    assert_eq!(offsets(&missed), [last + 1, last + 2, last + 3]);
    say(&mut sender, "live").await;
    assert_eq!(messages(&mut back, 1).await[0]["offset"], last + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_lost_its_data_members_hear_of_the_new_epoch_and_old_positions_do_not_recover()
{
    let mut redis = RedisServer::start().await;
    let a = node(&redis).await;
    let mut sender = a.joined("sender", "lobby").await;
    let (mut member, ack) = join(&a, "member", "lobby", json!({"history": 0})).await;
    let old_epoch = ack["epoch"].as_str().unwrap().to_owned();
    say(&mut sender, "one").await;
    say(&mut sender, "two").await;
    let _ = messages(&mut member, 2).await;
    redis.restart().await; // empty: nothing on disk
    let reset = member
        .wait_for("notice", Some("history_reset"), Duration::from_secs(10))
        .await;
    let new_epoch = reset["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(reset["offset"], 0);
    a.wait_ready().await;
    let (_, ack) = join(
        &a,
        "returning",
        "lobby",
        json!({"since": {"epoch": old_epoch, "offset": 2}}),
    )
    .await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["epoch"], new_epoch.as_str());
    say(&mut sender, "three").await;
    let after = messages(&mut member, 1).await;
    assert_eq!(
        after[0]["offset"], 1,
        "offsets start again in the new epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_between_redis_and_a_node_is_filled_in_before_the_next() {
    let redis = RedisServer::start().await;
    let a = node(&redis).await;
    let (mut ext, ack) = join(&a, "ext", "lobby", json!({"history": 0})).await;
    let (mut plain, _) = join(&a, "plain", "lobby", json!({})).await;
    let _ = ext.recv_json().await; // plain's join
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    // Offsets 1 and 2 numbered and stored as a node's script would, but only 2 published:
    // the node sees 2 where it expects 1.
    let _: i64 = redis
        .command(&["HINCRBY", "palisade:position:lobby", "offset", "2"])
        .await;
    for offset in [1, 2] {
        let id = format!("0-{offset}");
        let payload = envelope(offset, &epoch, &format!("stored {offset}"));
        let _: String = redis
            .command(&["XADD", "palisade:history:lobby", &id, "e", &payload])
            .await;
    }
    let _: i64 = redis
        .command(&[
            "PUBLISH",
            "palisade:room:lobby",
            &envelope(2, &epoch, "stored 2"),
        ])
        .await;
    let got = messages(&mut ext, 2).await;
    assert_eq!(bodies(&got), ["stored 1", "stored 2"]);
    assert_eq!(offsets(&got), [1, 2]);
    assert_eq!(
        bodies(&messages(&mut plain, 2).await),
        ["stored 1", "stored 2"]
    );
    assert!(a
        .probe()
        .metrics()
        .contains("palisade_history_discontinuities_total{kind=\"gap_filled\"} 1"));

    // Offset 3 lost for good (numbered, never stored), 4 published: a gap, told, then 4.
    let _: i64 = redis
        .command(&["HINCRBY", "palisade:position:lobby", "offset", "2"])
        .await;
    let payload = envelope(4, &epoch, "after the gap");
    let _: String = redis
        .command(&["XADD", "palisade:history:lobby", "0-4", "e", &payload])
        .await;
    let _: i64 = redis
        .command(&["PUBLISH", "palisade:room:lobby", &payload])
        .await;
    let gap = ext.recv_within(Duration::from_secs(5)).await;
    assert_eq!(
        gap,
        json!({"type": "notice", "body": "history_gap", "epoch": epoch, "offset": 3})
    );
    assert_eq!(messages(&mut ext, 1).await[0]["offset"], 4);
    assert_eq!(messages(&mut plain, 1).await[0]["body"], "after the gap");

    // A lost message that was the room's last: the heartbeat finds Redis ahead.
    let _: i64 = redis
        .command(&["HINCRBY", "palisade:position:lobby", "offset", "1"])
        .await;
    let payload = envelope(5, &epoch, "the last one");
    let _: String = redis
        .command(&["XADD", "palisade:history:lobby", "0-5", "e", &payload])
        .await;
    let last = messages(&mut ext, 1).await;
    assert_eq!(last[0]["offset"], 5);
    assert_eq!(last[0]["body"], "the last one");
    // And a live message follows in order.
    let mut sender = a.joined("sender", "lobby").await;
    say(&mut sender, "six").await;
    assert_eq!(messages(&mut ext, 1).await[0]["offset"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_typing_and_read_positions_cross_nodes() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis).await, node(&redis).await);
    let (mut ann, _) = join(&a, "ann", "lobby", json!({"history": 0})).await;
    let (mut bob, _) = join(&b, "bob", "lobby", json!({"history": 0})).await;
    let (_bob2, _) = join(&a, "bob", "lobby", json!({})).await;
    a.wait_members("lobby", 2).await;
    common::wait_until("a knows b's member", || a.probe().total_count("lobby") == 3).await;
    ann.send_json(json!({"type": "members"})).await;
    let list = ann.wait_for("members", None, Duration::from_secs(5)).await;
    assert_eq!(
        list,
        json!({"type": "members", "members": [
            {"userId": "ann", "username": "Ann"}, {"userId": "bob", "username": "Bob"}
        ], "total": 2, "truncated": false}),
        "one entry per user, on every node"
    );
    bob.send_json(json!({"type": "typing"})).await;
    let typing = ann.wait_for("typing", None, Duration::from_secs(5)).await;
    assert_eq!(typing["userId"], "bob");

    let mut sender = a.joined("sender", "lobby").await;
    say(&mut sender, "x").await;
    say(&mut sender, "y").await;
    let _ = messages(&mut bob, 2).await;
    bob.send_json(json!({"type": "seen", "offset": 2})).await;
    let seen = ann.wait_for("seen", None, Duration::from_secs(5)).await;
    assert_eq!(
        (seen["userId"].as_str(), seen["offset"].as_u64()),
        (Some("bob"), Some(2))
    );
    bob.close().await;
    // Back on the other node: where bob left off, from Redis.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, ack) = join(&a, "bob", "lobby", json!({"history": 0})).await;
    assert_eq!(ack["seen"], 2, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_history_vanished_or_rolled_back_resets_and_keeps_delivering() {
    let redis = RedisServer::start().await;
    let a = node(&redis).await;
    let mut sender = a.joined("sender", "lobby").await;
    let (mut ext, ack) = join(&a, "ext", "lobby", json!({"history": 0})).await;
    let (mut plain, _) = join(&a, "plain", "lobby", json!({})).await;
    let _ = ext.recv_json().await; // plain's join
    let first_epoch = ack["epoch"].as_str().unwrap().to_owned();
    // A room without messages keeps its position only as long as a node has members there.
    let ttl: i64 = redis.command(&["TTL", "palisade:position:lobby"]).await;
    assert!(
        (1..=3).contains(&ttl),
        "a fresh position lives REDIS_KEY_TTL_SECS: {ttl}"
    );
    for body in ["one", "two", "three"] {
        say(&mut sender, body).await;
    }
    assert_eq!(offsets(&messages(&mut ext, 3).await), [1, 2, 3]);
    let _ = messages(&mut plain, 3).await;
    let ttl: i64 = redis.command(&["TTL", "palisade:position:lobby"]).await;
    assert!(
        ttl > 3,
        "after a message, seven times HISTORY_TTL_SECS: {ttl}"
    );

    // Redis rolls back to offset 1 in the same epoch (a failover that lost writes): the next
    // message is numbered 2 again, under another body.
    let _: () = redis
        .command(&["HSET", "palisade:position:lobby", "offset", "1"])
        .await;
    say(&mut sender, "after the rollback").await;
    let reset = ext
        .wait_for("notice", Some("history_reset"), Duration::from_secs(5))
        .await;
    assert_ne!(reset["epoch"], first_epoch.as_str());
    let next = messages(&mut ext, 1).await;
    assert_eq!(
        next[0]["body"], "after the rollback",
        "not swallowed as a duplicate"
    );
    assert_eq!(
        messages(&mut plain, 1).await[0]["body"],
        "after the rollback"
    );

    // The room's keys vanish while members are connected (a flush, an eviction): the next
    // message starts a new epoch, announced, and is delivered.
    let _: i64 = redis
        .command(&["DEL", "palisade:position:lobby", "palisade:history:lobby"])
        .await;
    say(&mut sender, "in a new epoch").await;
    let reset = ext
        .wait_for("notice", Some("history_reset"), Duration::from_secs(5))
        .await;
    assert_eq!(reset["offset"], 0);
    let next = messages(&mut ext, 1).await;
    assert_eq!(
        (next[0]["body"].as_str(), next[0]["offset"].as_u64()),
        (Some("in a new epoch"), Some(1))
    );
    assert_eq!(messages(&mut plain, 1).await[0]["body"], "in a new epoch");
}
