//! Rooms that remember, on one node, over real sockets: offsets, history on join, recovery,
//! members, typing and read positions, and what none of it changes for GarinChat clients.

mod common;

use std::time::Duration;

use common::{token, Client, TestServer};
use serde_json::{json, Value};

/// Connects as `sub` and joins `room` with the extensions the join carries in `extra`
/// (`history`, `since`); returns the client and its acknowledgement.
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
    assert_eq!(ack["userId"], sub, "{ack}");
    (client, ack)
}

/// Reads chat messages until `count` have arrived (skipping other frames).
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

fn bodies(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|frame| frame["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn say(client: &mut Client, body: &str) {
    client
        .send_json(json!({"type": "message", "body": body}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_positions_only_for_sockets_that_ask_and_garinchat_bytes_for_the_rest() {
    let server = TestServer::start().await;
    let mut plain = server.joined("plain", "lobby").await;
    let (mut ext, ack) = join(&server, "ext", "lobby", json!({"history": 0})).await;
    assert_eq!(ack["offset"], 0);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    assert!(ack.get("recovered").is_none(), "no since, no verdict");
    let _ = plain.recv_json().await; // ext's join
    say(&mut plain, "hello").await;
    assert_eq!(
        ext.recv_text().await,
        r#"{"type":"message","body":"hello","username":"Plain","userId":"plain","offset":1}"#
    );
    say(&mut ext, "back").await;
    assert_eq!(
        plain.recv_text().await,
        r#"{"type":"message","body":"back","username":"Ext","userId":"ext"}"#,
        "GarinChat's bytes, no offset"
    );
    ext.expect_silence(Duration::from_millis(200)).await; // no echo, offsets or not

    // A GarinChat client that joins later gets its plain acknowledgement and no history.
    let mut late = server.connect().await;
    late.auth(&token("late")).await;
    late.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    let late_joined = r#"{"type":"join","username":"Late","totalUsers":3,"userId":"late"}"#;
    assert_eq!(late.recv_text().await, late_joined);
    late.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(plain.recv_text().await, late_joined);
    assert_eq!(
        ext.recv_text().await,
        late_joined,
        "others' joins are GarinChat's frame"
    );

    // Typing and read positions never reach GarinChat clients.
    ext.send_json(json!({"type": "typing"})).await;
    ext.send_json(json!({"type": "seen", "offset": 2})).await;
    plain.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_join_while_the_room_is_busy_has_no_gap_and_no_duplicate() {
    // Queues large enough for the whole history at once (it is held to half of them).
    let server = TestServer::with(&[
        ("HISTORY_SIZE", "10000"),
        ("OUTBOUND_QUEUE_FRAMES", "20000"),
        ("MAX_OUTBOUND_BYTES", "16000000"),
    ])
    .await;
    let mut sender = server.joined("sender", "busy").await;
    let sent = 3000;
    let sending = tokio::spawn(async move {
        for n in 0..sent {
            say(&mut sender, &n.to_string()).await;
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sender
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut joiner, ack) = join(&server, "joiner", "busy", json!({"history": 10000})).await;
    let boundary = ack["offset"].as_u64().unwrap();
    assert!(boundary > 0, "joined while messages were flowing");
    let _sender = sending.await.unwrap();
    let got = messages(&mut joiner, sent).await;
    let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(
        offsets,
        (1..=sent as u64).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    assert_eq!(
        bodies(&got),
        (0..sent).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    for frame in &got {
        let past = frame["offset"].as_u64().unwrap() <= boundary;
        assert_eq!(frame.get("history").is_some(), past, "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_recovers_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let mut sender = server.joined("sender", "lobby").await;
    let (mut reader, ack) = join(&server, "reader", "lobby", json!({"history": 0})).await;
    let epoch = ack["epoch"].clone();
    let _ = sender.recv_json().await;
    for n in 0..3 {
        say(&mut sender, &format!("before {n}")).await;
    }
    let seen = messages(&mut reader, 3).await;
    let last = seen[2]["offset"].as_u64().unwrap();
    reader.close().await;
    let _ = sender.recv_json().await; // userleave
    for n in 0..4 {
        say(&mut sender, &format!("missed {n}")).await;
    }
    let (mut back, ack) = join(
        &server,
        "reader",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": last}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["offset"], last + 4);
    let missed = messages(&mut back, 4).await;
    assert_eq!(
        bodies(&missed),
        ["missed 0", "missed 1", "missed 2", "missed 3"]
    );
    assert!(missed.iter().all(|m| m["history"] == true));
    say(&mut sender, "live").await;
    let live = messages(&mut back, 1).await;
    assert_eq!(live[0]["offset"], last + 5);
    assert!(live[0].get("history").is_none());

    // Up to date already: recovered, nothing to send.
    let (mut current, ack) = join(
        &server,
        "current",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": last + 5}}),
    )
    .await;
    assert_eq!(ack["recovered"], true);
    current.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_refused_past_the_window_the_age_limit_or_the_epoch() {
    let server = TestServer::with(&[("HISTORY_SIZE", "5"), ("HISTORY_TTL_SECS", "1")]).await;
    let mut sender = server.joined("sender", "lobby").await;
    let (_watcher, ack) = join(&server, "watcher", "lobby", json!({"history": 0})).await;
    let epoch = ack["epoch"].clone();
    let _ = sender.recv_json().await;
    for n in 0..7 {
        say(&mut sender, &n.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // HISTORY_SIZE 5 holds offsets 3..=7: since 2 is exactly at the window, since 1 past it.
    let (mut at, ack) = join(
        &server,
        "at",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": 2}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(
        bodies(&messages(&mut at, 5).await),
        ["2", "3", "4", "5", "6"]
    );
    let (mut past, ack) = join(
        &server,
        "past",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": 1}}),
    )
    .await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["offset"], 7, "the room's position, to start again from");
    past.expect_silence(Duration::from_millis(200)).await;
    // Not recovered, but history asked for: the newest, marked as history.
    let (mut both, ack) = join(
        &server,
        "both",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": 1}, "history": 2}),
    )
    .await;
    assert_eq!(ack["recovered"], false);
    assert_eq!(bodies(&messages(&mut both, 2).await), ["5", "6"]);
    let (mut other, ack) = join(
        &server,
        "other",
        "lobby",
        json!({"since": {"epoch": "not-this-room", "offset": 7}}),
    )
    .await;
    assert_eq!(ack["recovered"], false, "another epoch");
    other.expect_silence(Duration::from_millis(100)).await;
    // HISTORY_TTL_SECS 1: a second and a half later, offset 7 itself has expired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut late, ack) = join(
        &server,
        "late",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": 6}}),
    )
    .await;
    assert_eq!(ack["recovered"], false, "expired: {ack}");
    late.expect_silence(Duration::from_millis(100)).await;
    let (_, ack) = join(
        &server,
        "late2",
        "lobby",
        json!({"since": {"epoch": epoch, "offset": 7}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "nothing missed, nothing needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_join_is_the_servers_default_for_joins_that_do_not_ask() {
    let server = TestServer::with(&[("HISTORY_SIZE", "3"), ("HISTORY_ON_JOIN", "2")]).await;
    let mut sender = server.joined("sender", "lobby").await;
    for n in 0..4 {
        say(&mut sender, &n.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut plain = server.joined("plain", "lobby").await;
    let past = messages(&mut plain, 2).await;
    assert_eq!(bodies(&past), ["2", "3"]);
    for frame in &past {
        assert_eq!(frame["history"], true);
        assert!(
            frame.get("offset").is_none(),
            "GarinChat clients get no offsets"
        );
    }
    // Asking for more than HISTORY_SIZE gets HISTORY_SIZE.
    let (mut greedy, _) = join(&server, "greedy", "lobby", json!({"history": 1000})).await;
    assert_eq!(bodies(&messages(&mut greedy, 3).await), ["1", "2", "3"]);
    greedy.expect_silence(Duration::from_millis(100)).await;
    // Asking for none gets none, whatever the default.
    let (mut none, _) = join(&server, "none", "lobby", json!({"history": 0})).await;
    none.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_once_per_user_and_capped() {
    let server = TestServer::with(&[("MAX_MEMBERS_LISTED", "2")]).await;
    let mut ann = server.joined("ann", "lobby").await;
    let _ann2 = server.joined("ann", "lobby").await;
    let _bob = server.joined("bob", "lobby").await;
    ann.send_json(json!({"type": "members"})).await;
    let list = ann.wait_for("members", None, Duration::from_secs(5)).await;
    assert_eq!(
        list,
        json!({"type": "members", "members": [
            {"userId": "ann", "username": "Ann"}, {"userId": "bob", "username": "Bob"}
        ], "total": 2, "truncated": false})
    );
    let _cy = server.joined("cy", "lobby").await;
    ann.send_json(json!({"type": "members"})).await;
    let list = ann.wait_for("members", None, Duration::from_secs(5)).await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["truncated"], true);
    assert_eq!(
        list["members"].as_array().unwrap().len(),
        2,
        "MAX_MEMBERS_LISTED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_coalesced_never_echoed_and_has_its_own_rate() {
    let server = TestServer::with(&[
        ("TYPING_INTERVAL_MS", "400"),
        ("TYPING_RATE_PER_SEC", "1"),
        ("TYPING_BURST", "3"),
    ])
    .await;
    let (mut ann, _) = join(&server, "ann", "lobby", json!({"history": 0})).await;
    let (mut bob, _) = join(&server, "bob", "lobby", json!({"history": 0})).await;
    let _ = ann.recv_json().await; // bob's join
    bob.send_json(json!({"type": "typing"})).await;
    bob.send_json(json!({"type": "typing"})).await;
    assert_eq!(
        ann.recv_text().await,
        r#"{"type":"typing","username":"Bob","userId":"bob"}"#
    );
    ann.expect_silence(Duration::from_millis(200)).await; // the second, coalesced
    bob.expect_silence(Duration::from_millis(100)).await; // never echoed
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_json(json!({"type": "typing"})).await;
    assert_eq!(ann.recv_json().await["type"], "typing", "the next interval");
    // The burst of 3 is spent; the next closes the socket.
    bob.send_json(json!({"type": "typing"})).await;
    assert_eq!(bob.expect_close().await.0, 4006);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_rise_are_relayed_coalesced_and_given_back_on_join() {
    let server = TestServer::with(&[("SEEN_INTERVAL_MS", "300")]).await;
    let mut sender = server.joined("sender", "lobby").await;
    let (mut ann, _) = join(&server, "ann", "lobby", json!({"history": 0})).await;
    let (mut bob, _) = join(&server, "bob", "lobby", json!({"history": 0})).await;
    let _ = ann.recv_json().await;
    for n in 0..3 {
        say(&mut sender, &n.to_string()).await;
    }
    let _ = messages(&mut ann, 3).await;
    let _ = messages(&mut bob, 3).await;
    bob.send_json(json!({"type": "seen", "offset": 1})).await;
    bob.send_json(json!({"type": "seen", "offset": 2})).await;
    bob.send_json(json!({"type": "seen", "offset": 1})).await; // lower: ignored
    assert_eq!(
        ann.recv_text().await,
        r#"{"type":"seen","username":"Bob","userId":"bob","offset":1}"#
    );
    // The interval's last position follows at its end.
    assert_eq!(ann.recv_within(Duration::from_secs(2)).await["offset"], 2);
    ann.expect_silence(Duration::from_millis(500)).await;
    bob.close().await;
    // (Kept: dropping the client would close it before `members` is asked.)
    let (_bob_again, ack) = join(&server, "bob", "lobby", json!({"history": 0})).await;
    assert_eq!(ack["seen"], 2, "where bob left off: {ack}");
    // A position from an earlier epoch is ignored, not judged against this one.
    ann.send_json(json!({"type": "seen", "offset": 4, "epoch": "an earlier epoch"}))
        .await;
    ann.send_json(json!({"type": "members"})).await;
    let members = ann.wait_for("members", None, Duration::from_secs(5)).await;
    assert_eq!(members["total"], 3, "{members}");
    // Past the room's last message: a protocol violation.
    ann.send_json(json!({"type": "seen", "offset": 4})).await;
    assert_eq!(ann.expect_close().await.0, 4004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_extension_frames_close_with_4004() {
    let server = TestServer::start().await;
    for bad in [
        json!({"type": "join", "room": "lobby", "history": -1}),
        json!({"type": "join", "room": "lobby", "history": "5"}),
        json!({"type": "join", "room": "lobby", "since": {"epoch": "e"}}),
        json!({"type": "join", "room": "lobby", "since": "e:5"}),
    ] {
        let mut client = server.connect().await;
        client.auth(&token("x")).await;
        client.send_json(bad.clone()).await;
        assert_eq!(client.expect_close().await.0, 4004, "{bad}");
    }
    for bad in [
        json!({"type": "seen"}),
        json!({"type": "seen", "offset": "1"}),
        json!({"type": "seen", "offset": 0.5}),
    ] {
        let mut client = server.joined("x", "lobby").await;
        client.send_json(bad.clone()).await;
        assert_eq!(client.expect_close().await.0, 4004, "{bad}");
    }
    for outside in ["typing", "members", "seen"] {
        let mut client = server.connect().await;
        client.auth(&token("x")).await;
        client
            .send_json(json!({"type": outside, "offset": 0}))
            .await;
        assert_eq!(
            client.expect_close().await.0,
            4004,
            "{outside} before a join"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_memory_stays_within_its_budget_over_ten_thousand_rooms() {
    let budget: usize = 1 << 20;
    let server = TestServer::with(&[("HISTORY_MAX_BYTES", &budget.to_string())]).await;
    let probe = server.probe();
    let mut client = server.connect().await;
    client.auth(&token("writer")).await;
    let body = "x".repeat(200);
    for room in 0..10_000 {
        client
            .send_json(json!({"type": "join", "room": format!("room{room}")}))
            .await;
        let _ = client.recv_json().await; // the acknowledgement
        say(&mut client, &body).await;
        client.send_json(json!({"type": "userleave"})).await;
    }
    // Everything sent has been handled once the last room's members are counted.
    common::wait_until("the last room left", || probe.room_count() == 0).await;
    let (bytes, entries) = probe.history_usage();
    assert!(bytes <= budget, "{bytes} bytes held, budget {budget}");
    let per_entry = bytes / entries.max(1);
    assert!(
        entries > 1000 && entries < 10_000,
        "the budget holds some, not all: {entries} entries of {per_entry} bytes"
    );
    // The newest rooms keep their message, the oldest lost theirs.
    let (mut newest, _) = join(&server, "n", "room9999", json!({"history": 1})).await;
    assert_eq!(messages(&mut newest, 1).await[0]["body"], body.as_str());
    let (mut oldest, ack) = join(&server, "o", "room0", json!({"history": 1})).await;
    assert_eq!(
        ack["offset"], 0,
        "a new epoch: the old one was evicted whole"
    );
    oldest.expect_silence(Duration::from_millis(200)).await;
    assert!(probe.metrics().contains("palisade_history_bytes"));
}
