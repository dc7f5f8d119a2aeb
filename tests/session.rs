//! The session over real sockets: states, deadlines, GarinChat frames, ghosts, limits.

mod common;

use std::time::Duration;

use common::{token, Client, TestServer};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garinchat_frames_byte_for_byte() {
    let server = TestServer::start().await;
    let mut alice = server.connect().await;
    alice.auth(&token("alice")).await;
    alice
        .send_json(json!({"type": "join", "username": "alice", "room": "lobby"}))
        .await;
    assert_eq!(
        alice.recv_text().await,
        r#"{"type":"join","username":"Alice","totalUsers":1,"userId":"alice"}"#
    );

    let mut bob = server.connect().await;
    bob.auth(&token("bob")).await;
    bob.send_json(json!({"type": "join", "username": "bob", "room": "lobby"}))
        .await;
    let bob_joined = r#"{"type":"join","username":"Bob","totalUsers":2,"userId":"bob"}"#;
    assert_eq!(
        bob.recv_text().await,
        bob_joined,
        "the joiner's own acknowledgement"
    );
    assert_eq!(alice.recv_text().await, bob_joined);

    bob.send_json(json!({"type": "message", "body": "hi <b>&</b>"}))
        .await;
    assert_eq!(
        alice.recv_text().await,
        r#"{"type":"message","body":"hi \u003cb\u003e\u0026\u003c/b\u003e","username":"Bob","userId":"bob"}"#
    );
    bob.expect_silence(Duration::from_millis(200)).await; // no echo to the sender

    bob.send_json(json!({"type": "userleave"})).await;
    assert_eq!(
        alice.recv_text().await,
        r#"{"type":"userleave","username":"Bob","totalUsers":1,"userId":"bob"}"#
    );
    bob.expect_silence(Duration::from_millis(100)).await; // the leaver is not told

    // Rejoining after userleave is allowed, in another room too.
    bob.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);
    assert_eq!(alice.recv_json().await["totalUsers"], 2);
    bob.send_json(json!({"type": "message", "body": "back"}))
        .await;
    assert_eq!(alice.recv_json().await["body"], "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_case_insensitive_and_unknown_fields_ignored() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.connect().await;
    bob.send_json(json!({"TYPE": "auth", "Body": token("bob"), "extra": {"nested": [1, 2]}}))
        .await;
    bob.send_json(json!({"Type": "join", "ROOM": "lobby"}))
        .await;
    assert_eq!(bob.recv_json().await["totalUsers"], 2);
    assert_eq!(alice.recv_json().await["username"], "Bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_deadline_closes_with_4001() {
    let server = TestServer::with(&[("AUTH_TIMEOUT_MS", "150")]).await;
    let mut client = server.connect().await;
    let started = std::time::Instant::now();
    assert_eq!(client.expect_close().await, (4001, "auth timeout".into()));
    assert!(started.elapsed() >= Duration::from_millis(140));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_deadline_closes_with_4003_and_restarts_after_userleave() {
    let server = TestServer::with(&[("JOIN_TIMEOUT_MS", "300")]).await;
    let mut client = server.connect().await;
    client.auth(&token("alice")).await;
    assert_eq!(client.expect_close().await, (4003, "join timeout".into()));

    // After userleave the client is back in AwaitJoin with a fresh deadline.
    let mut client = server.joined("bob", "lobby").await;
    tokio::time::sleep(Duration::from_millis(400)).await; // longer than the join deadline
    client.send_json(json!({"type": "userleave"})).await;
    assert_eq!(client.expect_close().await.0, 4003);
    server.assert_serves().await;
}

/// Every frame that is wrong for its state, or not a frame at all, closes with 4004 and
/// leaves the server serving. The first two are GarinChat's whole-process crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_4004() {
    let server = TestServer::start().await;
    let after_auth = [
        json!({"type": "message", "body": "before join"}).to_string(),
        json!({"type": "userleave"}).to_string(),
        // (A second `auth` is a token refresh, not a violation: see tests/identity.rs.)
    ];
    for frame in &after_auth {
        let mut client = server.connect().await;
        client.auth(&token("alice")).await;
        client.send_text(frame).await;
        assert_eq!(client.expect_close().await.0, 4004, "{frame}");
    }
    let before_auth = [
        json!({"type": "join", "room": "lobby"}).to_string(),
        json!({"type": "message", "body": "x"}).to_string(),
        json!({"type": "userleave"}).to_string(),
        json!({"type": "shout"}).to_string(),
        json!({"type": "auth"}).to_string(),
        json!({"type": "auth", "body": 42}).to_string(),
        json!({"body": "no type"}).to_string(),
        "null".to_owned(),
        "[]".to_owned(),
        "\"auth\"".to_owned(),
        "{not json".to_owned(),
        format!("{{\"a\":{}{}}}", "[".repeat(500), "]".repeat(500)),
    ];
    for frame in &before_auth {
        let mut client = server.connect().await;
        client.send_text(frame).await;
        let (code, reason) = client.expect_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (4004, "protocol violation"),
            "{frame}"
        );
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kib_field_is_refused_as_too_big() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .send_json(json!({"type": "auth", "body": "x".repeat(100 * 1024)}))
        .await;
    assert_eq!(client.expect_close().await.0, 1009);
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_with_1003() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .ws
        .send(Message::binary(br#"{"type":"auth"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(client.expect_close().await.0, 1003);
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_message_closes_with_1009_and_is_not_relayed() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    assert_eq!(alice.recv_json().await["type"], "join");
    let body = "x".repeat(1 << 20);
    bob.send_json(json!({"type": "message", "body": body}))
        .await;
    assert_eq!(bob.expect_close().await, (1009, "message too big".into()));
    let next = alice.recv_json().await;
    assert_eq!(next["type"], "userleave", "nothing relayed: {next}");
    assert_eq!(next["totalUsers"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit_is_exact() {
    // Large enough for the auth frame with its token.
    let server = TestServer::with(&[("MAX_MESSAGE_BYTES", "400")]).await;
    let mut alice = server.joined("alice", "room1").await;
    let mut bob = server.joined("bob", "room1").await;
    alice.recv_json().await;
    let frame_of = |len: usize| {
        let overhead = json!({"type": "message", "body": ""}).to_string().len();
        json!({"type": "message", "body": "y".repeat(len - overhead)}).to_string()
    };
    bob.send_text(&frame_of(400)).await;
    assert_eq!(alice.recv_json().await["type"], "message");
    bob.send_text(&frame_of(401)).await;
    assert_eq!(bob.expect_close().await.0, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_messages_are_dropped_not_relayed() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    alice.recv_json().await;
    bob.send_json(json!({"type": "message", "body": ""})).await;
    bob.send_json(json!({"type": "message"})).await;
    bob.send_json(json!({"type": "message", "body": "after"}))
        .await;
    assert_eq!(alice.recv_json().await["body"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_message_back_to_back_is_rate_limited_with_the_defaults() {
    let server = TestServer::with(&[("MSG_RATE_PER_SEC", "1"), ("MSG_BURST", "1")]).await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    alice.recv_json().await;
    bob.send_json(json!({"type": "message", "body": "one"}))
        .await;
    bob.send_json(json!({"type": "message", "body": "two"}))
        .await;
    assert_eq!(bob.expect_close().await, (4006, "rate limited".into()));
    assert_eq!(alice.recv_json().await["body"], "one");
    let leave = alice.recv_json().await;
    assert_eq!(
        (leave["type"].as_str(), leave["totalUsers"].as_u64()),
        (Some("userleave"), Some(1))
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_allows_exactly_that_many() {
    let server = TestServer::with(&[("MSG_RATE_PER_SEC", "1"), ("MSG_BURST", "3")]).await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    alice.recv_json().await;
    for n in 0..3 {
        bob.send_json(json!({"type": "message", "body": format!("m{n}")}))
            .await;
    }
    for n in 0..3 {
        assert_eq!(alice.recv_json().await["body"], format!("m{n}"));
    }
    bob.send_json(json!({"type": "message", "body": "over"}))
        .await;
    assert_eq!(bob.expect_close().await.0, 4006);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_flood_is_rate_limited() {
    let server = TestServer::with(&[("CONTROL_RATE_PER_SEC", "1"), ("CONTROL_BURST", "2")]).await;
    let mut client = server.connect().await;
    client.auth(&token("alice")).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    client.recv_json().await;
    client.send_json(json!({"type": "userleave"})).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(client.expect_close().await.0, 4006);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_room_and_username_close_with_4005() {
    let server = TestServer::with(&[("ROOM_MAX_CHARS", "8")]).await;
    for room in ["ab", "123456789", "lob by", "lobby\u{0}", "<script>"] {
        let mut client = server.connect().await;
        client.auth(&token("alice")).await;
        client
            .send_json(json!({"type": "join", "room": room}))
            .await;
        assert_eq!(
            client.expect_close().await,
            (4005, "invalid username or room".into()),
            "{room:?}"
        );
    }
    // At the limit is fine.
    let mut client = server.connect().await;
    client.auth(&token("alice")).await;
    client
        .send_json(json!({"type": "join", "room": "12345678"}))
        .await;
    assert_eq!(client.recv_json().await["type"], "join");

    let trusting = TestServer::with(&[
        ("TRUST_CLIENT_USERNAME", "true"),
        ("USERNAME_MAX_CHARS", "5"),
    ])
    .await;
    let too_long = "abcdef";
    for join in [
        json!({"type": "join", "room": "lobby", "username": "ab"}),
        json!({"type": "join", "room": "lobby", "username": too_long}),
        json!({"type": "join", "room": "lobby", "username": "a\u{202E}bc"}),
        json!({"type": "join", "room": "lobby", "username": " abc"}),
        json!({"type": "join", "room": "lobby"}),
    ] {
        let mut client = trusting.connect().await;
        client.auth(&token("alice")).await;
        client.send_json(join.clone()).await;
        assert_eq!(client.expect_close().await.0, 4005, "{join}");
    }
    let mut client = trusting.connect().await;
    client.auth(&token("alice")).await;
    client
        .send_json(json!({"type": "join", "room": "lobby", "username": "abcde"}))
        .await;
    assert_eq!(
        client.recv_json().await["username"],
        "abcde",
        "at the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_token() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut mallory = server.connect().await;
    mallory.auth(&token("mallory")).await;
    mallory
        .send_json(json!({"type": "join", "username": "Alice", "room": "lobby"}))
        .await;
    let joined = alice.recv_json().await;
    assert_eq!(
        (joined["username"].as_str(), joined["userId"].as_str()),
        (Some("Mallory"), Some("mallory"))
    );

    // Opt-in GarinChat behaviour: the client's name is shown, the user id still is the token's.
    let trusting = TestServer::with(&[("TRUST_CLIENT_USERNAME", "true")]).await;
    let mut alice = trusting.joined("alice", "lobby").await;
    let mut mallory = trusting.connect().await;
    mallory.auth(&token("mallory")).await;
    mallory
        .send_json(json!({"type": "join", "username": "Alice", "room": "lobby"}))
        .await;
    let joined = alice.recv_json().await;
    assert_eq!(
        (joined["username"].as_str(), joined["userId"].as_str()),
        (Some("Alice"), Some("mallory"))
    );
    mallory.recv_json().await;
    mallory
        .send_json(json!({"type": "message", "body": "hi", "username": "Bob", "userId": "bob"}))
        .await;
    let message = alice.recv_json().await;
    assert_eq!(
        (message["username"].as_str(), message["userId"].as_str()),
        (Some("Alice"), Some("mallory"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_isolated() {
    let server = TestServer::start().await;
    let mut a = server.joined("alice", "room-a").await;
    let mut b = server.joined("bob", "room-b").await;
    b.send_json(json!({"type": "message", "body": "only b"}))
        .await;
    a.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.probe().room_count(), 2);
    b.send_json(json!({"type": "userleave"})).await;
    server.wait_members("room-b", 0).await;
    assert_eq!(server.probe().room_count(), 1, "an empty room is dropped");
}

/// Each way a member can vanish removes it exactly once, with an exact `totalUsers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_path_leaves_no_ghost() {
    let server = TestServer::start().await;
    let mut watcher = server.joined("watcher", "lobby").await;

    // Close 1000 and 4000: the server echoes the code.
    for code in [1000u16, 4000] {
        let leaver = server.joined("leaver", "lobby").await;
        assert_eq!(watcher.recv_json().await["totalUsers"], 2);
        let echoed = close_and_read_echo(leaver, Some(code)).await;
        assert_eq!(echoed.0, code);
        let left = watcher.recv_json().await;
        assert_eq!(
            (left["type"].as_str(), left["totalUsers"].as_u64()),
            (Some("userleave"), Some(1))
        );
    }

    // A close frame with no code (1005 at the other end): echoed empty.
    let leaver = server.joined("leaver", "lobby").await;
    watcher.recv_json().await;
    assert_eq!(close_and_read_echo(leaver, None).await.0, 1005);
    assert_eq!(watcher.recv_json().await["totalUsers"], 1);

    // An unknown type and a duplicate join close with 4004.
    for frame in [
        json!({"type": "shout"}),
        json!({"type": "join", "room": "lobby"}),
    ] {
        let mut leaver = server.joined("leaver", "lobby").await;
        watcher.recv_json().await;
        leaver.send_json(frame.clone()).await;
        assert_eq!(leaver.expect_close().await.0, 4004, "{frame}");
        let left = watcher.recv_json().await;
        assert_eq!(
            (left["type"].as_str(), left["totalUsers"].as_u64()),
            (Some("userleave"), Some(1))
        );
    }

    // A TCP reset: no close frame at all.
    let leaver = server.joined("leaver", "lobby").await;
    watcher.recv_json().await;
    let tcp = leaver.ws.get_ref();
    if let tokio_tungstenite::MaybeTlsStream::Plain(stream) = tcp {
        stream.set_zero_linger().unwrap();
    }
    drop(leaver);
    let left = watcher.recv_json().await;
    assert_eq!(
        (left["type"].as_str(), left["totalUsers"].as_u64()),
        (Some("userleave"), Some(1))
    );

    assert_eq!(server.probe().member_count("lobby"), 1);
    watcher.expect_silence(Duration::from_millis(200)).await; // no second userleave anywhere
}

/// Sends a close frame (with `code`, or empty) and returns the server's echo.
async fn close_and_read_echo(mut client: Client, code: Option<u16>) -> (u16, String) {
    let frame = code.map(|code| CloseFrame {
        code: WsCloseCode::from(code),
        reason: "bye".into(),
    });
    client.ws.send(Message::Close(frame)).await.unwrap();
    client.expect_close().await
}

/// GarinChat panicked on concurrent writes when many members sent at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_simultaneous_senders() {
    const N: usize = 60;
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..N {
        let client = server.joined(&format!("user{i:02}"), "crowd").await;
        clients.push(client);
    }
    // Drain the join notices each client saw of later joiners.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..N {
            assert_eq!(client.recv_json().await["type"], "join");
        }
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client
                .send_json(json!({"type": "message", "body": format!("from {i}")}))
                .await;
            let mut seen = std::collections::HashSet::new();
            for _ in 0..N - 1 {
                let message = client.recv_json().await; // each must parse: no interleaving
                assert_eq!(message["type"], "message");
                assert!(seen.insert(message["body"].as_str().unwrap().to_owned()));
            }
            assert!(!seen.contains(&format!("from {i}")), "no echo");
            client
        }));
    }
    for task in tasks {
        task.await.expect("client saw every message exactly once");
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pings_are_answered() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let next = tokio::time::timeout(
        common::RECV_TIMEOUT,
        futures_util::StreamExt::next(&mut client.ws),
    )
    .await
    .unwrap();
    assert!(matches!(next, Some(Ok(Message::Pong(payload))) if &payload[..] == b"are you there"));
}

/// Every server-initiated close sends its close frame, on the multi-threaded runtime where
/// the writer can see its queue close before the session asks for the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_gets_its_close_frame() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let mut client = Client::connect(&url, Some(common::ORIGIN)).await;
                client.send_json(json!({"type": "shout"})).await;
                assert_eq!(client.expect_close().await.0, 4004);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_joins_with_4012() {
    let server = TestServer::with(&[("MAX_ROOM_MEMBERS", "2")]).await;
    let _a = server.joined("alice", "small").await;
    let _b = server.joined("bob", "small").await;
    let mut carol = server.connect().await;
    carol.auth(&token("carol")).await;
    carol
        .send_json(json!({"type": "join", "room": "small"}))
        .await;
    assert_eq!(carol.expect_close().await, (4012, "room full".into()));
    assert_eq!(server.probe().member_count("small"), 2);
    let _elsewhere = server.joined("carol", "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_session_with_4013() {
    let server = TestServer::with(&[("JWT_LEEWAY_SECS", "0")]).await;
    let mut watcher = server.joined("watcher", "lobby").await;
    let short = common::sign(
        &json!({"sub": "brief", "name": "Brief", "exp": common::now() + 2}),
        common::SECRET.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
    );
    let mut brief = server.connect().await;
    brief.auth(&short).await;
    brief
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(brief.recv_json().await["type"], "join");
    assert_eq!(watcher.recv_json().await["totalUsers"], 2);
    let started = std::time::Instant::now();
    assert_eq!(brief.expect_close().await, (4013, "token expired".into()));
    assert!(started.elapsed() < Duration::from_secs(4));
    let left = watcher.recv_json().await;
    assert_eq!(
        (left["type"].as_str(), left["totalUsers"].as_u64()),
        (Some("userleave"), Some(1))
    );
}
