//! Admission control, bans and keepalive, over real sockets. Each test ends by checking that a
//! fresh client can still auth, join and chat.

mod common;

use std::time::{Duration, Instant};

use common::raw::{header, status, RawSocket, ServerEvent, BINARY, FIN, PING};
use common::{token, TestServer, ORIGIN};
use serde_json::json;

/// Upgrade headers for a client behind the (trusted) proxy, as seen by the gateway.
fn via_proxy(client: &str) -> String {
    format!("Origin: {ORIGIN}\r\nX-Forwarded-For: {client}\r\n")
}

fn direct() -> String {
    format!("Origin: {ORIGIN}\r\n")
}

async fn refused(server: &TestServer, headers: &str) -> String {
    match RawSocket::try_connect(server.addr, headers).await {
        Ok(_) => panic!("expected a refusal"),
        Err(head) => head,
    }
}

async fn authed_raw(server: &TestServer, headers: &str, sub: &str) -> RawSocket {
    let mut socket = RawSocket::try_connect(server.addr, headers)
        .await
        .expect("admitted");
    socket
        .send_text(&json!({"type": "auth", "body": token(sub)}).to_string())
        .await;
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_answers_503() {
    let server = TestServer::with(&[("MAX_CONNECTIONS", "3")]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            RawSocket::try_connect(server.addr, &direct())
                .await
                .expect("under the cap"),
        );
    }
    let head = refused(&server, &direct()).await;
    assert_eq!(status(&head), 503, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("5"));
    assert_eq!(server.probe().open_connections(), 3);

    open.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.probe().open_connections() > 2 {
        assert!(
            Instant::now() < deadline,
            "the closed socket's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(open);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_answers_429() {
    let server = TestServer::with(&[
        ("MAX_CONNECTIONS_PER_IP", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let a = RawSocket::try_connect(server.addr, &via_proxy("198.51.100.1"))
        .await
        .unwrap();
    let _b = RawSocket::try_connect(server.addr, &via_proxy("198.51.100.1"))
        .await
        .unwrap();
    let head = refused(&server, &via_proxy("198.51.100.1")).await;
    assert_eq!(status(&head), 429, "{head}");
    // Another address behind the same proxy is unaffected.
    let _c = RawSocket::try_connect(server.addr, &via_proxy("198.51.100.2"))
        .await
        .unwrap();
    // A closed socket gives its place back.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RawSocket::try_connect(server.addr, &via_proxy("198.51.100.1")).await {
            Ok(_) => break,
            Err(head) => assert_eq!(status(&head), 429),
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_rate_answers_429_with_retry_after() {
    let server = TestServer::with(&[
        ("CONNECT_RATE_PER_SEC", "1"),
        ("CONNECT_BURST", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    for _ in 0..2 {
        RawSocket::try_connect(server.addr, &via_proxy("198.51.100.7"))
            .await
            .expect("within the burst");
    }
    let head = refused(&server, &via_proxy("198.51.100.7")).await;
    assert_eq!(status(&head), 429, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("1"));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_per_64() {
    let server = TestServer::with(&[
        ("CONNECT_RATE_PER_SEC", "1"),
        ("CONNECT_BURST", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    RawSocket::try_connect(server.addr, &via_proxy("2001:db8:0:7::1"))
        .await
        .unwrap();
    RawSocket::try_connect(server.addr, &via_proxy("[2001:db8:0:7::2]:443"))
        .await
        .unwrap();
    let head = refused(&server, &via_proxy("2001:db8:0:7:ffff::3")).await;
    assert_eq!(status(&head), 429, "same /64");
    RawSocket::try_connect(server.addr, &via_proxy("2001:db8:0:8::1"))
        .await
        .expect("another /64");
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    // Untrusted: a client cannot dodge its limit by writing other addresses.
    let server = TestServer::with(&[("CONNECT_RATE_PER_SEC", "1"), ("CONNECT_BURST", "2")]).await;
    for n in 1..=2 {
        RawSocket::try_connect(server.addr, &via_proxy(&format!("198.51.100.{n}")))
            .await
            .unwrap();
    }
    let head = refused(&server, &via_proxy("198.51.100.3")).await;
    assert_eq!(status(&head), 429);
    let head = refused(
        &server,
        &format!("Origin: {ORIGIN}\r\nForwarded: for=198.51.100.4\r\n"),
    )
    .await;
    assert_eq!(status(&head), 429);
    // The budget refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    RawSocket::try_connect(server.addr, &direct())
        .await
        .expect("admitted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_session_cap_closes_with_4008() {
    let server = TestServer::with(&[("MAX_SESSIONS_PER_USER", "2")]).await;
    let first = server.joined("alice", "lobby").await;
    let _second = server.joined("alice", "lobby").await;
    let mut third = server.connect().await;
    third.auth(&token("alice")).await;
    assert_eq!(
        third.expect_close().await,
        (4008, "too many sessions for this user".into())
    );
    // Other users are unaffected, and a closed session frees its place.
    let _bob = server.joined("bob", "lobby").await;
    first.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = server.connect().await;
        again.auth(&token("alice")).await;
        again
            .send_json(json!({"type": "join", "room": "lobby"}))
            .await;
        match again.recv().await {
            Some(tokio_tungstenite::tungstenite::Message::Text(_)) => break,
            other => assert!(Instant::now() < deadline, "place not given back: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_offenders_are_banned_by_ip_until_the_ban_expires() {
    let server = TestServer::with(&[
        ("BAN_STRIKES", "2"),
        ("BAN_SECS", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let offender = via_proxy("203.0.113.66");
    for _ in 0..2 {
        let mut socket = RawSocket::try_connect(server.addr, &offender)
            .await
            .expect("not banned yet");
        socket.send_frame(FIN | BINARY, b"junk").await;
        assert_eq!(socket.close_code().await, Some(1003));
    }
    // The strike is recorded when the session ends; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let head = loop {
        match RawSocket::try_connect(server.addr, &offender).await {
            Err(head) => break head,
            Ok(_) => assert!(Instant::now() < deadline, "never banned"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status(&head), 403, "{head}");
    assert_eq!(header(&head, "retry-after"), Some("1"));
    // Others are not banned; the offender is admitted again once the ban expires.
    RawSocket::try_connect(server.addr, &via_proxy("203.0.113.67"))
        .await
        .expect("another address");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    RawSocket::try_connect(server.addr, &offender)
        .await
        .expect("ban expired");
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_user_is_refused_at_auth_from_any_address() {
    let server = TestServer::with(&[
        ("BAN_STRIKES", "2"),
        ("MSG_RATE_PER_SEC", "1"),
        ("MSG_BURST", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    // Two rate-limit kicks from two addresses: the IPs have one strike each, the user two.
    for n in 1..=2 {
        let mut socket =
            authed_raw(&server, &via_proxy(&format!("203.0.113.{n}")), "spammer").await;
        socket
            .send_text(&json!({"type": "join", "room": "lobby"}).to_string())
            .await;
        for _ in 0..3 {
            socket
                .send_text(&json!({"type": "message", "body": "spam"}).to_string())
                .await;
        }
        assert_eq!(socket.close_code().await, Some(4006));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut socket = authed_raw(&server, &via_proxy("203.0.113.3"), "spammer").await;
        match socket.close_code().await {
            Some(4009) => break,
            other => assert!(Instant::now() < deadline, "never banned: {other:?}"),
        }
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_buy_more_messages_with_more_sockets() {
    let server = TestServer::with(&[("USER_MSG_RATE_PER_SEC", "1"), ("USER_MSG_BURST", "2")]).await;
    let mut watcher = server.joined("watcher", "lobby").await;
    let mut first = server.joined("multi", "lobby").await;
    let mut second = server.joined("multi", "lobby").await;
    for _ in 0..2 {
        watcher.recv_json().await; // the two joins
    }
    first
        .send_json(json!({"type": "message", "body": "one"}))
        .await;
    assert_eq!(watcher.recv_json().await["body"], "one");
    second
        .send_json(json!({"type": "message", "body": "two"}))
        .await;
    assert_eq!(watcher.recv_json().await["body"], "two");
    // The user's budget is spent, whichever socket asks next.
    first
        .send_json(json!({"type": "message", "body": "three"}))
        .await;
    assert_eq!(first.expect_close().await.0, 4006);
    // Another user is unaffected.
    watcher
        .send_json(json!({"type": "message", "body": "mine"}))
        .await;
    // `second` sees, in order: "one" (from its twin socket), the twin's userleave, "mine".
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let frame = second.recv_json().await;
        kinds.push(format!(
            "{}:{}",
            frame["type"].as_str().unwrap(),
            frame["body"].as_str().unwrap_or("")
        ));
    }
    assert_eq!(kinds, ["message:one", "userleave:", "message:mine"]);
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_closes_with_4010() {
    let server = TestServer::with(&[
        ("PING_INTERVAL_SECS", "1"),
        ("PONG_TIMEOUT_SECS", "1"),
        ("AUTH_TIMEOUT_MS", "10000"),
    ])
    .await;
    // A peer that reads but never answers, like a half-open connection.
    let mut silent = RawSocket::connect(server.addr, ORIGIN).await;
    let started = Instant::now();
    assert_eq!(silent.next_event().await, ServerEvent::Other(PING));
    assert_eq!(silent.close_code().await, Some(4010));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );

    // A client that answers pings stays connected through several intervals.
    let mut alive = server.joined("alice", "lobby").await;
    let pings = alive.expect_only_pings(Duration::from_millis(3500)).await;
    assert!(pings >= 2, "{pings} pings");
    alive
        .send_json(json!({"type": "message", "body": "still here"}))
        .await;
    server.wait_members("lobby", 1).await;
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_frame_is_reaped_by_the_pong_timeout() {
    let server = TestServer::with(&[("PING_INTERVAL_SECS", "1"), ("PONG_TIMEOUT_SECS", "1")]).await;
    let mut socket = authed_raw(&server, &direct(), "alice").await;
    socket
        .send_text(&json!({"type": "join", "room": "lobby"}).to_string())
        .await;
    assert!(matches!(socket.next_event().await, ServerEvent::Text(_)));
    // A header promising 100 bytes, then 10 of them, then silence.
    socket.send_raw(&[FIN | 0x1, 0x80 | 100, 1, 2, 3, 4]).await;
    socket.send_raw(&[0u8; 10]).await;
    let started = Instant::now();
    assert_eq!(socket.close_code().await, Some(4010));
    assert!(started.elapsed() < Duration::from_secs(4));
    server.wait_members("lobby", 0).await;
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_silent_members_with_4011() {
    let server = TestServer::with(&[("IDLE_TIMEOUT_SECS", "1")]).await;
    let mut chatty = server.joined("chatty", "lobby").await;
    let mut silent = server.joined("silent", "lobby").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        chatty
            .send_json(json!({"type": "message", "body": "tick"}))
            .await;
    }
    assert_eq!(silent.expect_close().await, (4011, "idle timeout".into()));
    let mut left = false;
    for _ in 0..3 {
        let frame = chatty.recv_json().await;
        left |= frame["type"] == "userleave" && frame["userId"] == "silent";
        if left {
            break;
        }
    }
    assert!(left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_clients_keep_the_limiter_bounded() {
    let server = TestServer::with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("CONNECT_RATE_PER_SEC", "1000"),
        ("CONNECT_BURST", "1"),
        ("MAX_TRACKED_CLIENTS", "300"),
        ("HOUSEKEEPING_INTERVAL_MS", "100"),
    ])
    .await;
    let admission = server.probe();
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..1500u32 {
        let ip = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
        let head =
            common::raw::http(server.addr, &common::raw::upgrade_request(&via_proxy(&ip))).await;
        *statuses.entry(status(&head)).or_insert(0) += 1;
        assert!(
            admission.tracked_clients() <= 300,
            "limiter map grew past its cap"
        );
    }
    assert!(
        statuses.keys().all(|s| [101, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses[&101] > 300, "{statuses:?}");
    // Housekeeping forgets clients whose budget is full again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        admission.tracked_clients() < 50,
        "{}",
        admission.tracked_clients()
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_offenders_keep_the_strike_map_bounded() {
    let server = TestServer::with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("BAN_STRIKES", "3"),
        ("MAX_TRACKED_CLIENTS", "100"),
    ])
    .await;
    let bans = server.probe();
    for n in 0..300u32 {
        let ip = format!("10.9.{}.{}", n >> 8, n & 255);
        let mut socket = RawSocket::try_connect(server.addr, &via_proxy(&ip))
            .await
            .unwrap();
        socket.send_frame(FIN | BINARY, b"x").await;
        assert_eq!(socket.close_code().await, Some(1003));
        // MAX_TRACKED_CLIENTS caps the connect-rate map too, which is swept at most every
        // 100 ms when full: at this pace it always has room.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (strikes, banned) = bans.tracked_offenders();
    assert!(
        strikes <= 100 && banned <= 100,
        "{strikes} strike entries, {banned} bans"
    );
    assert!(
        strikes >= 90,
        "strikes are recorded up to the cap: {strikes}"
    );
    server.assert_serves().await;
}
