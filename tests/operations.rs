//! What an operator sees: `/metrics` after a scripted session, readiness during a drain, and
//! a SIGTERM to a real process holding 1 000 sessions.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::child::{raise_nofile_limit, Gateway};
use common::http::{get, samples};
use common::raw::{status, RawSocket, ServerEvent};
use common::{sign, token, TestServer, ORIGIN, SECRET};
use futures_util::StreamExt;
use serde_json::json;

/// Every sample of a scrape of the admin listener.
async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let (code, body) = get(server.running.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    samples(&body)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

async fn wait_no_sessions(server: &TestServer) {
    let deadline = Instant::now() + common::RECV_TIMEOUT;
    loop {
        let samples = scrape(server).await;
        let open: f64 = samples
            .iter()
            .filter(|(series, _)| series.starts_with("palisade_sessions_open"))
            .map(|(_, value)| value)
            .sum();
        if open == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} sessions still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_session_exactly() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    alice.recv_json().await; // bob's join

    let during = scrape(&server).await;
    assert_eq!(
        value(&during, r#"palisade_sessions_open{state="in_room"}"#),
        2.0
    );
    assert_eq!(value(&during, "palisade_rooms"), 1.0);

    bob.send_json(json!({"type": "message", "body": "one"}))
        .await;
    bob.send_json(json!({"type": "message", "body": "two"}))
        .await;
    alice.recv_json().await;
    alice.recv_json().await;
    alice
        .send_json(json!({"type": "message", "body": ""}))
        .await;
    bob.send_json(json!({"type": "userleave"})).await;
    alice.recv_json().await; // bob's userleave

    let mut forged = server.connect().await;
    forged
        .auth(&sign(
            &json!({"sub": "x", "exp": common::now() + 60}),
            b"wrong",
            jsonwebtoken::Algorithm::HS256,
        ))
        .await;
    assert_eq!(forged.expect_close().await.0, 4002);
    let refused = common::raw::http(
        server.addr,
        &common::raw::upgrade_request("Origin: http://evil.test\r\n"),
    )
    .await;
    assert_eq!(status(&refused), 403);
    alice.close().await;
    bob.close().await;
    wait_no_sessions(&server).await;

    let samples = scrape(&server).await;
    for (series, expected) in [
        (r#"palisade_connections_total{outcome="upgraded"}"#, 3.0),
        (r#"palisade_connections_total{outcome="origin"}"#, 1.0),
        (
            r#"palisade_auth_failures_total{reason="bad_signature"}"#,
            1.0,
        ),
        ("palisade_auth_duration_seconds_count", 3.0),
        ("palisade_joins_total", 2.0),
        ("palisade_leaves_total", 2.0),
        ("palisade_rooms", 0.0),
        ("palisade_messages_received_total", 2.0),
        (r#"palisade_messages_dropped_total{reason="empty"}"#, 1.0),
        // alice's ack; bob's join to both; two messages to alice; bob's leave to alice
        ("palisade_messages_delivered_total", 6.0),
        ("palisade_fanout_delay_seconds_count", 6.0),
        (
            r#"palisade_closes_total{initiator="server",code="4002"}"#,
            1.0,
        ),
        // Client::close sends an empty close frame (1005 at our end).
        (
            r#"palisade_closes_total{initiator="client",code="1005"}"#,
            2.0,
        ),
        (r#"palisade_sessions_open{state="in_room"}"#, 0.0),
        (r#"palisade_sessions_open{state="await_join"}"#, 0.0),
        (r#"palisade_sessions_open{state="await_auth"}"#, 0.0),
    ] {
        assert_eq!(value(&samples, series), expected, "{series}");
    }
    // No label carries a user, room or address.
    for series in samples.keys() {
        for forbidden in ["alice", "bob", "lobby", "127.0.0.1"] {
            assert!(!series.contains(forbidden), "{series}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_bans_are_counted() {
    let server = TestServer::with(&[
        ("MSG_RATE_PER_SEC", "1"),
        ("MSG_BURST", "1"),
        ("BAN_STRIKES", "1"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let mut socket = RawSocket::try_connect(
        server.addr,
        &format!("Origin: {ORIGIN}\r\nX-Forwarded-For: 203.0.113.5\r\n"),
    )
    .await
    .unwrap();
    socket
        .send_text(&json!({"type": "auth", "body": token("spam")}).to_string())
        .await;
    socket
        .send_text(&json!({"type": "join", "room": "lobby"}).to_string())
        .await;
    for _ in 0..2 {
        socket
            .send_text(&json!({"type": "message", "body": "x"}).to_string())
            .await;
    }
    assert_eq!(socket.close_code().await, Some(4006));
    wait_no_sessions(&server).await;
    let samples = scrape(&server).await;
    assert_eq!(
        value(&samples, r#"palisade_rate_limited_total{kind="message"}"#),
        1.0
    );
    assert_eq!(value(&samples, r#"palisade_bans_total{kind="ip"}"#), 1.0);
    assert_eq!(value(&samples, r#"palisade_bans_total{kind="user"}"#), 1.0);
    assert_eq!(
        value(
            &samples,
            r#"palisade_closes_total{initiator="server",code="4006"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_first_and_sessions_close_after_the_drain_delay() {
    let server = TestServer::with(&[("DRAIN_DELAY_SECS", "1"), ("SHUTDOWN_GRACE_SECS", "5")]).await;
    let (main, admin) = (server.addr, server.running.admin_addr().unwrap());
    assert_eq!(get(main, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    let mut member = server.joined("alice", "lobby").await;

    let started = Instant::now();
    let shutdown = tokio::spawn(server.running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(main, "/readyz").await.0,
        503,
        "not ready while draining"
    );
    assert_eq!(get(admin, "/readyz").await.0, 503);
    assert_eq!(get(main, "/healthz").await.0, 200, "still alive");
    assert_eq!(get(admin, "/metrics").await.0, 200, "still observable");
    // Still serving during the delay.
    let late = common::Client::connect(&format!("ws://{main}/"), Some(ORIGIN)).await;
    drop(late);

    assert_eq!(
        member.expect_close().await,
        (1001, "server shutting down, reconnect".into())
    );
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(950),
        "{closed_after:?}"
    );
    assert_eq!(shutdown.await.unwrap().abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_at_the_grace_deadline_are_dropped_and_counted() {
    // A peer that never answers the close frame holds its session for CLOSE_TIMEOUT_MS, longer
    // than the grace period.
    let server =
        TestServer::with(&[("CLOSE_TIMEOUT_MS", "5000"), ("SHUTDOWN_GRACE_SECS", "1")]).await;
    let _silent = common::Client::connect(&server.url(), Some(ORIGIN)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = server.probe();
    let started = Instant::now();
    let report = server.running.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(report.abandoned >= 1, "{report:?}");
    assert!(metrics.metrics().contains(&format!(
        "palisade_sessions_abandoned_total {}",
        report.abandoned
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_thousand_sessions_closes_each_with_1001_within_the_grace_period() {
    raise_nofile_limit();
    let gateway = Gateway::start(&[
        ("DRAIN_DELAY_SECS", "1"),
        ("SHUTDOWN_GRACE_SECS", "10"),
        ("MSG_RATE_PER_SEC", "100"),
    ])
    .await;
    // 1 000 sessions in rooms of 10, each authenticated as its own user and joined.
    let headers = format!("Origin: {ORIGIN}\r\n");
    let sockets: Vec<RawSocket> = futures_util::stream::iter(0..1000)
        .map(|n| {
            let headers = headers.clone();
            let addr = gateway.addr;
            async move {
                let mut socket = RawSocket::try_connect(addr, &headers)
                    .await
                    .expect("upgraded");
                let token = sign(
                    &json!({"sub": format!("user{n}"), "exp": common::now() + 600}),
                    SECRET.as_bytes(),
                    jsonwebtoken::Algorithm::HS256,
                );
                socket
                    .send_text(&json!({"type": "auth", "body": token}).to_string())
                    .await;
                socket
                    .send_text(
                        &json!({"type": "join", "room": format!("room{}", n / 10)}).to_string(),
                    )
                    .await;
                assert!(
                    matches!(socket.next_event().await, ServerEvent::Text(_)),
                    "joined"
                );
                socket
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;

    let started = Instant::now();
    // SAFETY: kill(2) on our own child with a valid signal.
    assert_eq!(
        unsafe { libc::kill(gateway.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let closes: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| tokio::spawn(async move { socket.close_code().await }))
        .collect();
    let mut codes = BTreeMap::new();
    for close in closes {
        *codes.entry(close.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(codes, BTreeMap::from([(Some(1001), 1000)]));
    let mut child = gateway;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let took = started.elapsed();
    eprintln!("1000 sessions drained and the process exited in {took:?}");
    assert!(took < Duration::from_secs(10));
}
