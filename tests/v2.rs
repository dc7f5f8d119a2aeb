//! Protocol v2 (`palisade.v2`) over real sockets: negotiation, many rooms on one socket,
//! requests answered by id, error frames instead of closes, the join deadline until the first
//! join, the room limits at and past them, and direct messages under each policy, on one node
//! and across two nodes sharing a real Redis.

mod common;

use std::time::Duration;

use common::redis::{node_with, RedisServer};
use common::{token, Client, TestServer, ORIGIN};
use palisade::V2_SUBPROTOCOL;
use serde_json::{json, Value};

/// Opens a socket offering `protocols` (comma-separated); the socket and the subprotocol the
/// server selected.
async fn connect_offering(server: &TestServer, protocols: &str) -> (Client, Option<String>) {
    let offered: Vec<&str> = protocols
        .split(',')
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .collect();
    let client = Client::connect_with_protocols(&server.url(), Some(ORIGIN), &offered).await;
    let selected = client.subprotocol();
    (client, selected)
}

/// A v2 socket authenticated as `sub`, its `authed` answer consumed.
async fn v2(server: &TestServer, sub: &str) -> Client {
    let (mut client, selected) = connect_offering(server, V2_SUBPROTOCOL).await;
    assert_eq!(selected.as_deref(), Some(V2_SUBPROTOCOL));
    client
        .send_json(json!({"type": "auth", "id": "a1", "body": token(sub)}))
        .await;
    let authed = client.recv_json().await;
    assert_eq!(
        authed,
        json!({"type": "authed", "id": "a1", "username": common::display_name(sub), "userId": sub})
    );
    client
}

/// Sends a request with `id` and returns its answer, skipping other frames.
async fn ask(client: &mut Client, request: Value) -> Value {
    let id = request["id"].clone();
    client.send_json(request).await;
    loop {
        let frame = client.recv_json().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

/// Joins `room`, returning the acknowledgement.
async fn join(client: &mut Client, room: &str) -> Value {
    let ack = ask(
        client,
        json!({"type": "join", "id": format!("j-{room}"), "room": room}),
    )
    .await;
    assert_eq!(ack["type"], "join", "{ack}");
    assert_eq!(ack["room"], room, "{ack}");
    ack
}

fn error(id: &str, room: Option<&str>, code: &str) -> Value {
    let mut frame = json!({"type": "error", "id": id, "code": code});
    if let Some(room) = room {
        frame["room"] = room.into();
    }
    frame
}

#[tokio::test]
async fn v2_is_selected_only_when_offered() {
    let server = TestServer::start().await;
    let (_v1, selected) = connect_offering(&server, "").await;
    assert_eq!(
        selected, None,
        "GarinChat's clients offer nothing and get nothing"
    );
    let other = raw_upgrade(&server, "chat, palisade.v3").await;
    assert!(other.starts_with("http/1.1 101"), "{other}");
    assert!(!other.contains("sec-websocket-protocol"), "{other}");
    let offered = raw_upgrade(&server, "chat, palisade.v2").await;
    assert!(
        offered.contains("sec-websocket-protocol: palisade.v2\r\n"),
        "{offered}"
    );
}

/// The head of the server's answer to an upgrade request offering `protocols`.
async fn raw_upgrade(server: &TestServer, protocols: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {ORIGIN}\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0; 1024];
    let read = stream.read(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[..read]).to_lowercase()
}

#[tokio::test]
async fn one_socket_in_many_rooms_names_each_and_leaves_one_at_a_time() {
    let server = TestServer::start().await;
    let mut alice = v2(&server, "alice").await;
    for room in ["r-one", "r-two", "r-three"] {
        let ack = join(&mut alice, room).await;
        assert_eq!(ack["userId"], "alice");
        assert!(ack["epoch"].is_string() && ack["offset"] == 0, "{ack}");
    }
    let mut bob = v2(&server, "bob").await;
    join(&mut bob, "r-two").await;
    join(&mut bob, "r-one").await;
    let seen_join = alice.recv_json().await;
    assert_eq!(
        seen_join,
        json!({"type": "join", "room": "r-two", "username": "Bob", "totalUsers": 2, "userId": "bob"})
    );
    assert_eq!(alice.recv_json().await["room"], "r-one");

    let ok = ask(
        &mut bob,
        json!({"type": "message", "id": "m1", "room": "r-two", "body": "hi two"}),
    )
    .await;
    assert_eq!(ok, json!({"type": "ok", "id": "m1"}));
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "message", "room": "r-two", "body": "hi two", "username": "Bob", "userId": "bob", "offset": 1})
    );

    // Alice leaves one room and stays in the others.
    let left = ask(
        &mut alice,
        json!({"type": "userleave", "id": "l1", "room": "r-one"}),
    )
    .await;
    assert_eq!(left, json!({"type": "ok", "id": "l1"}));
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "userleave", "room": "r-one", "username": "Alice", "totalUsers": 1, "userId": "alice"})
    );
    bob.send_json(json!({"type": "message", "room": "r-two", "body": "still here?"}))
        .await;
    let message = alice.recv_json().await;
    assert_eq!(
        (message["room"].clone(), message["body"].clone()),
        (json!("r-two"), json!("still here?"))
    );
    let members = ask(
        &mut alice,
        json!({"type": "members", "id": "q", "room": "r-three"}),
    )
    .await;
    assert_eq!(
        members,
        json!({"type": "members", "id": "q", "room": "r-three", "members": [{"userId": "alice", "username": "Alice"}], "total": 1, "truncated": false})
    );
    // Typing and read positions are per room too.
    bob.send_json(json!({"type": "typing", "room": "r-two"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "typing", "room": "r-two", "username": "Bob", "userId": "bob"})
    );
    let ok = ask(
        &mut alice,
        json!({"type": "seen", "id": "s1", "room": "r-two", "offset": 2}),
    )
    .await;
    assert_eq!(ok, json!({"type": "ok", "id": "s1"}));
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "seen", "room": "r-two", "username": "Alice", "userId": "alice", "offset": 2})
    );
}

#[tokio::test]
async fn refusals_of_one_room_or_frame_are_error_frames_and_the_socket_stays() {
    let server =
        TestServer::with(&[("MAX_ROOMS_PER_SOCKET", "2"), ("MAX_ROOM_MEMBERS", "1")]).await;
    let mut bob = v2(&server, "bob").await;
    join(&mut bob, "full-room").await;
    let mut alice = v2(&server, "alice").await;
    let refused = [
        (
            json!({"type": "message", "id": "e1", "room": "nowhere", "body": "x"}),
            error("e1", Some("nowhere"), "not_joined"),
        ),
        (
            json!({"type": "join", "id": "e2", "room": "full-room"}),
            error("e2", Some("full-room"), "room_full"),
        ),
        (
            json!({"type": "join", "id": "e3", "room": "no"}),
            error("e3", None, "invalid_name"),
        ),
        (
            json!({"type": "direct", "id": "e4", "to": "bob", "body": "x"}),
            error("e4", None, "direct_off"),
        ),
    ];
    for (request, expected) in refused {
        assert_eq!(ask(&mut alice, request).await, expected);
    }
    // At the limit, and past it.
    join(&mut alice, "room-a").await;
    join(&mut alice, "room-b").await;
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "join", "id": "e5", "room": "room-c"})
        )
        .await,
        error("e5", Some("room-c"), "too_many_rooms")
    );
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "join", "id": "e6", "room": "room-a"})
        )
        .await,
        error("e6", Some("room-a"), "already_joined")
    );
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "seen", "id": "e7", "room": "room-a", "offset": 5})
        )
        .await,
        error("e7", Some("room-a"), "seen_ahead")
    );
    // Without an id, the error comes all the same; the socket goes on.
    alice
        .send_json(json!({"type": "members", "room": "gone"}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "error", "room": "gone", "code": "not_joined"})
    );
    ask(
        &mut alice,
        json!({"type": "userleave", "id": "l", "room": "room-b"}),
    )
    .await;
    join(&mut alice, "room-c").await;
    // A room frame without its room is malformed: that ends the session.
    alice.send_json(json!({"type": "typing"})).await;
    assert_eq!(alice.expect_close().await.0, 4004);
}

#[tokio::test]
async fn rooms_per_user_are_counted_over_the_users_sockets() {
    let server = TestServer::with(&[("MAX_ROOMS_PER_USER", "3")]).await;
    let mut first = v2(&server, "alice").await;
    let mut second = v2(&server, "alice").await;
    join(&mut first, "room-1").await;
    join(&mut first, "room-2").await;
    join(&mut second, "room-3").await;
    assert_eq!(
        ask(
            &mut second,
            json!({"type": "join", "id": "x", "room": "room-4"})
        )
        .await,
        error("x", Some("room-4"), "too_many_rooms_for_user")
    );
    // A place comes back when a room is left, or a socket closes.
    ask(
        &mut first,
        json!({"type": "userleave", "id": "l", "room": "room-1"}),
    )
    .await;
    join(&mut second, "room-4").await;
    first.close().await;
    join(&mut second, "room-5").await;
    assert_eq!(
        ask(
            &mut second,
            json!({"type": "join", "id": "y", "room": "room-6"})
        )
        .await,
        error("y", Some("room-6"), "too_many_rooms_for_user")
    );
}

#[tokio::test]
async fn the_join_deadline_runs_only_until_the_first_join() {
    let server = TestServer::with(&[("JOIN_TIMEOUT_MS", "300")]).await;
    let mut late = v2(&server, "late").await;
    assert_eq!(late.expect_close().await.0, 4003);

    let mut alice = v2(&server, "alice").await;
    join(&mut alice, "lobby").await;
    ask(
        &mut alice,
        json!({"type": "userleave", "id": "l", "room": "lobby"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Still open, in no room: it may join again whenever it likes.
    join(&mut alice, "lobby").await;
}

#[tokio::test]
async fn a_refresh_is_answered_and_garinchat_sockets_see_nothing_new() {
    let server = TestServer::with(&[("DIRECT_MESSAGES", "all")]).await;
    let mut alice = v2(&server, "alice").await;
    let refreshed = ask(
        &mut alice,
        json!({"type": "auth", "id": "r1", "body": token("alice")}),
    )
    .await;
    assert_eq!(refreshed["type"], "authed");

    // A GarinChat socket: ids are ignored (no `ok`), and `direct` is an unknown type.
    let mut old = server.joined("carol", "lobby").await;
    old.send_json(json!({"type": "members", "id": "q"})).await;
    let members = old.recv_json().await;
    assert!(
        members.get("id").is_none() && members.get("room").is_none(),
        "{members}"
    );
    old.send_json(json!({"type": "direct", "to": "alice", "body": "x"}))
        .await;
    assert_eq!(old.expect_close().await.0, 4004);
}

#[tokio::test]
async fn direct_messages_reach_every_v2_session_of_the_user_under_the_policy() {
    let server = TestServer::with(&[("DIRECT_MESSAGES", "all")]).await;
    let mut alice = v2(&server, "alice").await;
    let mut bob_phone = v2(&server, "bob").await;
    let mut bob_laptop = v2(&server, "bob").await;
    let mut bob_old = server.joined("bob", "lobby").await;
    let ok = ask(
        &mut alice,
        json!({"type": "direct", "id": "d1", "to": "bob", "body": "psst <3"}),
    )
    .await;
    assert_eq!(ok, json!({"type": "ok", "id": "d1"}));
    let expected =
        json!({"type": "direct", "body": "psst <3", "username": "Alice", "userId": "alice"});
    assert_eq!(bob_phone.recv_json().await, expected);
    assert_eq!(bob_laptop.recv_json().await, expected);
    bob_old.expect_silence(Duration::from_millis(200)).await;
    alice.expect_silence(Duration::from_millis(100)).await;
    // To a user with another of one's own sockets: that socket gets it, the sender's does not.
    ask(
        &mut bob_phone,
        json!({"type": "direct", "id": "d2", "to": "bob", "body": "note"}),
    )
    .await;
    assert_eq!(bob_laptop.recv_json().await["body"], "note");
    bob_phone.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "direct", "id": "d3", "to": "nobody", "body": "x"})
        )
        .await,
        error("d3", None, "recipient_offline")
    );
}

#[tokio::test]
async fn shared_room_direct_messages_need_a_room_in_common() {
    let server = TestServer::with(&[("DIRECT_MESSAGES", "shared-room")]).await;
    let mut alice = v2(&server, "alice").await;
    let mut bob = v2(&server, "bob").await;
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "direct", "id": "d1", "to": "bob", "body": "x"})
        )
        .await,
        error("d1", None, "direct_not_allowed")
    );
    join(&mut alice, "lobby").await;
    join(&mut bob, "lobby").await;
    let _bob_joined = alice.recv_json().await;
    let ok = ask(
        &mut alice,
        json!({"type": "direct", "id": "d2", "to": "bob", "body": "hi"}),
    )
    .await;
    assert_eq!(ok["type"], "ok");
    assert_eq!(bob.recv_json().await["type"], "direct");
}

#[tokio::test]
async fn direct_messages_spend_the_message_budgets_and_their_own() {
    let server = TestServer::with(&[
        ("DIRECT_MESSAGES", "all"),
        ("DM_RATE_PER_SEC", "1"),
        ("DM_BURST", "2"),
    ])
    .await;
    let _bob = v2(&server, "bob").await;
    let mut alice = v2(&server, "alice").await;
    for id in ["d1", "d2"] {
        let ok = ask(
            &mut alice,
            json!({"type": "direct", "id": id, "to": "bob", "body": "x"}),
        )
        .await;
        assert_eq!(ok["type"], "ok", "within DM_BURST");
    }
    alice
        .send_json(json!({"type": "direct", "to": "bob", "body": "x"}))
        .await;
    assert_eq!(alice.expect_close().await.0, 4006, "past DM_BURST");

    // With the default message rate (burst 1), a direct message spends the one message.
    let strict = TestServer::with(&[
        ("DIRECT_MESSAGES", "all"),
        ("MSG_RATE_PER_SEC", "1"),
        ("MSG_BURST", "1"),
    ])
    .await;
    let _bob = v2(&strict, "bob").await;
    let mut alice = v2(&strict, "alice").await;
    join(&mut alice, "lobby").await;
    alice
        .send_json(json!({"type": "direct", "to": "bob", "body": "x"}))
        .await;
    alice
        .send_json(json!({"type": "message", "room": "lobby", "body": "y"}))
        .await;
    assert_eq!(alice.expect_close().await.0, 4006);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_cross_nodes_and_know_who_is_online_anywhere() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, &[("DIRECT_MESSAGES", "all")]).await;
    let b = node_with(&redis, &[("DIRECT_MESSAGES", "all")]).await;
    let mut bob = v2(&b, "bob").await;
    let mut alice = v2(&a, "alice").await;
    // Bob's presence reaches the directory shortly after his auth.
    let mut answer = json!(null);
    for attempt in 0..50 {
        answer = ask(
            &mut alice,
            json!({"type": "direct", "id": format!("d{attempt}"), "to": "bob", "body": "across"}),
        )
        .await;
        if answer["type"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer["type"], "ok", "{answer}");
    assert_eq!(
        bob.recv_json().await,
        json!({"type": "direct", "body": "across", "username": "Alice", "userId": "alice"})
    );
    assert_eq!(
        ask(
            &mut alice,
            json!({"type": "direct", "id": "z", "to": "nobody", "body": "x"})
        )
        .await,
        error("z", None, "recipient_offline")
    );
}

#[tokio::test]
async fn refused_requests_spend_the_control_budget() {
    let server = TestServer::with(&[("CONTROL_RATE_PER_SEC", "1"), ("CONTROL_BURST", "2")]).await;
    let mut alice = v2(&server, "alice").await;
    for id in ["e1", "e2"] {
        let refused = ask(
            &mut alice,
            json!({"type": "message", "id": id, "room": "nowhere", "body": "x"}),
        )
        .await;
        assert_eq!(refused, error(id, Some("nowhere"), "not_joined"));
    }
    alice
        .send_json(json!({"type": "message", "room": "nowhere", "body": "x"}))
        .await;
    assert_eq!(alice.expect_close().await.0, 4006, "past CONTROL_BURST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_notices_name_each_room_of_a_v2_socket() {
    let mut redis = RedisServer::start().await;
    let a = node_with(&redis, &[]).await;
    let mut alice = v2(&a, "alice").await;
    join(&mut alice, "room-a").await;
    join(&mut alice, "room-b").await;
    redis.kill();
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let notice = alice.recv_within(Duration::from_secs(10)).await;
        assert_eq!(
            (&notice["type"], &notice["body"]),
            (&json!("notice"), &json!("delivery_interrupted")),
            "{notice}"
        );
        rooms.push(notice["room"].as_str().unwrap().to_owned());
    }
    rooms.sort();
    assert_eq!(rooms, ["room-a", "room-b"]);
}

#[tokio::test]
async fn history_and_recovery_work_per_room() {
    let server = TestServer::start().await;
    let mut bob = v2(&server, "bob").await;
    join(&mut bob, "room-a").await;
    join(&mut bob, "room-b").await;
    for (room, body) in [("room-a", "a1"), ("room-b", "b1"), ("room-a", "a2")] {
        ask(
            &mut bob,
            json!({"type": "message", "id": body, "room": room, "body": body}),
        )
        .await;
    }
    let mut alice = v2(&server, "alice").await;
    let ack = ask(
        &mut alice,
        json!({"type": "join", "id": "ja", "room": "room-a", "history": 10}),
    )
    .await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(ack["offset"], 2);
    for (offset, body) in [(1, "a1"), (2, "a2")] {
        let past = alice.recv_json().await;
        assert_eq!(
            (
                &past["room"],
                &past["body"],
                &past["offset"],
                &past["history"]
            ),
            (&json!("room-a"), &json!(body), &json!(offset), &json!(true)),
            "{past}"
        );
    }
    // A rejoin from offset 1 of room-a gets exactly what followed, and says it recovered.
    ask(
        &mut alice,
        json!({"type": "userleave", "id": "l", "room": "room-a"}),
    )
    .await;
    let ack = ask(
        &mut alice,
        json!({"type": "join", "id": "jb", "room": "room-a", "since": {"epoch": epoch, "offset": 1}}),
    )
    .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let missed = alice.recv_json().await;
    assert_eq!(
        (&missed["room"], &missed["body"]),
        (&json!("room-a"), &json!("a2"))
    );
    // Another epoch does not recover.
    let ack = ask(
        &mut alice,
        json!({"type": "join", "id": "jc", "room": "room-b", "since": {"epoch": "other", "offset": 0}}),
    )
    .await;
    assert_eq!(ack["recovered"], false, "{ack}");
}

/// A v2 socket of `sub` with a 4 KiB receive buffer, that reads nothing until asked: what the
/// server sends it backs up into its queue at once.
async fn v2_not_reading(server: &TestServer, sub: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = server.url().into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("Origin", HeaderValue::from_static(ORIGIN));
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(V2_SUBPROTOCOL),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut client = Client::opened(ws, Some(V2_SUBPROTOCOL));
    client.auth(&token(sub)).await;
    assert_eq!(client.recv_json().await["type"], "authed");
    client
}

#[tokio::test]
async fn direct_messages_never_push_a_recipient_out_as_a_slow_consumer() {
    let server = TestServer::with(&[("DIRECT_MESSAGES", "all")]).await;
    // Bob does not read: unbounded, direct messages of 24 KiB each (4 000 `<`, escaped six-fold)
    // would fill his queue (MAX_OUTBOUND_BYTES, 256 KiB) and close him with 4007.
    let mut bob = v2_not_reading(&server, "bob").await;
    let mut alice = v2(&server, "alice").await;
    let body = "<".repeat(4000);
    for _ in 0..300 {
        alice
            .send_json(json!({"type": "direct", "to": "bob", "body": body}))
            .await;
    }
    let answer = ask(
        &mut alice,
        json!({"type": "members", "id": "sync", "room": "none"}),
    )
    .await;
    assert_eq!(
        answer["code"], "not_joined",
        "every direct frame was handled"
    );
    // Bob reads now: some of them, not all, and he is still connected.
    let mut received = 0;
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), bob.recv_json()).await {
        assert_eq!(frame["type"], "direct", "{frame}");
        received += 1;
    }
    assert!(received > 0 && received < 300, "{received} of 300");
    join(&mut bob, "lobby").await;
}

#[tokio::test]
async fn garinchat_sockets_ignore_v2_keys_whatever_they_hold() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    let _bob_joined = alice.recv_json().await;
    bob.send_json(json!({"type": "message", "body": "hi", "id": 7, "to": [1], "ID": ""}))
        .await;
    assert_eq!(
        alice.recv_json().await,
        json!({"type": "message", "body": "hi", "username": "Bob", "userId": "bob"})
    );
}
