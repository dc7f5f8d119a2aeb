//! Hardening, round two: each hole found by trying the first wave as an attacker would, closed
//! and tested over real sockets (docs/SECURITY.md lists them with their limits).

mod common;

use std::time::Duration;

use common::raw::{header, http, status, RawSocket};
use common::{accepted, now, outcome, sign, Outcome, TestServer, ORIGIN, SECRET};
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::io::AsyncReadExt;

fn via(headers: &str) -> String {
    format!("Origin: {ORIGIN}\r\n{headers}")
}

/// A token for `sub` named `name`.
fn named(sub: &str, name: &str) -> String {
    let claims = json!({"sub": sub, "name": name, "exp": now() + 3600});
    sign(&claims, SECRET.as_bytes(), Algorithm::HS256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_proxy_on_a_dual_stack_listener_is_trusted() {
    // On `[::]` an IPv4 peer appears as ::ffff:127.0.0.1; it must still match 127.0.0.1.
    let server = TestServer::on(
        "[::]:0",
        &[
            ("TRUSTED_PROXIES", "127.0.0.1"),
            ("MAX_CONNECTIONS_PER_IP", "1"),
        ],
    )
    .await;
    let _first = RawSocket::try_connect(server.addr, &via("X-Forwarded-For: 198.51.100.1\r\n"))
        .await
        .expect("the first client");
    let second =
        RawSocket::try_connect(server.addr, &via("X-Forwarded-For: 198.51.100.2\r\n")).await;
    assert!(
        second.is_ok(),
        "another client behind the proxy has its own cap: {:?}",
        second.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_written_header_never_overrides_the_trusted_proxys() {
    // The proxy writes `Forwarded`; the client adds an `X-Forwarded-For` of its own.
    let server = TestServer::with(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("FORWARDED_HEADER", "forwarded"),
        ("MAX_CONNECTIONS_PER_IP", "1"),
    ])
    .await;
    let spoof = "X-Forwarded-For: 6.6.6.6\r\n";
    let _a = RawSocket::try_connect(
        server.addr,
        &via(&format!("{spoof}Forwarded: for=198.51.100.1\r\n")),
    )
    .await
    .expect("the first client");
    let b = RawSocket::try_connect(
        server.addr,
        &via(&format!("{spoof}Forwarded: for=198.51.100.2\r\n")),
    )
    .await;
    assert!(
        b.is_ok(),
        "keyed by the proxy's Forwarded, not the client's header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_lines_with_hashes_spaces_and_errors_each_apply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked.txt");
    std::fs::write(
        &file,
        "# revoked by ops\nsub ops#1\nsub \"Jane Doe\"\nthis line is wrong\njti stolen\n",
    )
    .unwrap();
    let server = TestServer::with(&[("REVOCATION_FILE", file.to_str().unwrap())]).await;
    let token = |sub: &str, jti: &str| {
        sign(
            &json!({"sub": sub, "jti": jti, "exp": now() + 3600}),
            SECRET.as_bytes(),
            Algorithm::HS256,
        )
    };
    // `#` inside a value is text: `ops#1` is revoked, `ops` is not.
    assert_eq!(
        outcome(&server, &token("ops#1", "a")).await,
        Outcome::Refused(4002)
    );
    assert_eq!(
        outcome(&server, &token("ops", "b")).await,
        accepted("ops", "ops")
    );
    assert_eq!(
        outcome(&server, &token("Jane Doe", "c")).await,
        Outcome::Refused(4002)
    );
    // The bad line is skipped; the one after it applies.
    assert_eq!(
        outcome(&server, &token("bob", "stolen")).await,
        Outcome::Refused(4002)
    );
    let metrics = server.probe().metrics();
    assert!(
        metrics.contains("palisade_revocation_invalid_lines 1"),
        "the bad line is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_characters_never_reach_other_clients() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    // Soft hyphen, Arabic letter mark, tag characters, a Hangul filler.
    let mut bob = server.connect().await;
    bob.auth(&named(
        "bob",
        "B\u{00AD}o\u{061C}b\u{E0041}\u{E007F}\u{3164}",
    ))
    .await;
    bob.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(alice.recv_json().await["username"], "Bob");
    // A name of nothing but fillers is blank: the user id is shown instead.
    let mut carol = server.connect().await;
    carol
        .auth(&named("carol", "\u{3164}\u{115F}\u{FFA0}"))
        .await;
    carol
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(alice.recv_json().await["username"], "carol");
    drop((bob, carol));

    // A client-chosen name (GarinChat mode) of fillers is refused.
    let trusting = TestServer::with(&[("TRUST_CLIENT_USERNAME", "true")]).await;
    let mut mallory = trusting.connect().await;
    mallory.auth(&common::token("mallory")).await;
    mallory
        .send_json(json!({"type": "join", "room": "lobby", "username": "\u{3164}\u{3164}\u{3164}"}))
        .await;
    assert_eq!(mallory.expect_close().await.0, 4005);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upgrade_is_refused_before_any_101_and_refusals_close() {
    let server = TestServer::start().await;
    let request = format!(
        "GET / HTTP/1.0\r\nHost: x\r\nOrigin: {ORIGIN}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let head = http(server.addr, &request).await;
    assert_eq!(status(&head), 400, "{head}");
    // Every refusal of an upgrade request closes the connection, so a proxy that switched to
    // tunnel mode on seeing `Upgrade` cannot smuggle a second request through.
    let refused = common::raw::upgrade_request("Origin: http://evil.test\r\n");
    let (code, _) = common::http::request(server.addr, &refused).await;
    assert_eq!(code, 403);
    let head = http(server.addr, &refused).await;
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot_before_the_upgrade() {
    // Idle connections stay for the (long) header timeout: nothing frees them meanwhile.
    let server = TestServer::with(&[
        ("MAX_CONNECTIONS", "60"),
        ("MAX_CONNECTIONS_PER_IP", "20"),
        ("HEADER_READ_TIMEOUT_MS", "30000"),
    ])
    .await;
    // 100 idle TCP connections from 127.0.0.1 that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    common::raw::settle().await;
    assert!(
        server.probe().open_connections() <= 20,
        "the address holds more than its share: {}",
        server.probe().open_connections()
    );
    // Another address still gets in.
    let other = RawSocket::try_connect_from(server.addr, [127, 0, 0, 2].into(), &via("")).await;
    assert!(other.is_ok(), "{:?}", other.err());
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_address_is_refused_at_accept() {
    let server = TestServer::with(&[("MAX_CONNECTIONS", "30")]).await;
    server.probe().ban("ip:127.0.0.3", Duration::from_secs(60));
    // Its idle connections are answered and closed at once, holding no slot.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(common::raw::connect_from(server.addr, [127, 0, 0, 3].into()).await);
    }
    for stream in &mut idle {
        let mut answer = String::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut answer));
        read.await.expect("closed by the server").unwrap();
        assert!(answer.is_empty() || status(&answer) == 403, "{answer}");
    }
    assert!(RawSocket::try_connect(server.addr, &via("")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_open_sessions_with_4009() {
    let server = TestServer::start().await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut alice_too = server.joined("alice", "side").await;
    let mut bob = server.joined("bob", "lobby").await;
    assert_eq!(alice.recv_json().await["userId"], "bob");
    server.probe().ban("user:alice", Duration::from_secs(60));
    assert_eq!(alice.expect_close().await.0, 4009);
    assert_eq!(alice_too.expect_close().await.0, 4009);
    assert_eq!(bob.recv_json().await["type"], "userleave");

    // A banned user cannot come back, from any address.
    let mut again = server.connect().await;
    again.auth(&common::token("alice")).await;
    assert_eq!(again.expect_close().await.0, 4009);
    let mut dave = server.joined("dave", "lobby").await;
    // An address ban closes the address's sessions too.
    server.probe().ban("ip:127.0.0.1", Duration::from_secs(60));
    assert_eq!(dave.expect_close().await.0, 4009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_bounded_in_bytes_not_only_frames() {
    let server = TestServer::with(&[("CLOSE_TIMEOUT_MS", "200")]).await;
    let _slow = common::tiny_buffer_client(&server, "slow", "busy").await;
    let mut reader = server.joined("reader", "busy").await;
    let mut sender = server.joined("sender", "busy").await;
    assert_eq!(reader.recv_json().await["userId"], "sender");
    // Each body of `<` escapes to six times its size: 4 000 bytes become a 24 KB frame.
    let body = "<".repeat(4000);
    let mut sent = 0;
    let evicted = loop {
        sender
            .send_json(json!({"type": "message", "body": body}))
            .await;
        sent += 1;
        let frame = reader.recv_json().await;
        if frame["type"] == "userleave" {
            break sent;
        }
        assert!(sent < 1000, "never evicted");
    };
    // Bounded in frames only (256), the queue alone would hold 6 MB before the eviction;
    // MAX_OUTBOUND_BYTES (256 KiB) holds about ten of these frames. What the kernel buffers
    // besides (at most 4 MiB here, tcp_wmem) is the rest.
    assert!(
        evicted < 256,
        "evicted after {evicted} frames of 24 KB: the byte budget did not hold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_pongs_do_not_keep_a_socket_that_never_reads_alive() {
    let server = TestServer::with(&[("PING_INTERVAL_SECS", "1"), ("PONG_TIMEOUT_SECS", "1")]).await;
    let mut socket = RawSocket::connect(server.addr, ORIGIN).await;
    socket
        .send_text(&json!({"type": "auth", "body": common::token("pong")}).to_string())
        .await;
    socket
        .send_text(&json!({"type": "join", "room": "lobby"}).to_string())
        .await;
    // Heartbeat pongs for four seconds, never reading (so never echoing a ping): the socket is
    // closed after the first unanswered ping (about 2 s in), and its close frame waits in our
    // buffer. Counted as answers, the pongs would keep it open as long as they come.
    for _ in 0..20 {
        socket
            .send_frame(common::raw::FIN | common::raw::PONG, b"alive")
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    socket.set_timeout(Duration::from_millis(300));
    assert_eq!(socket.close_code().await, Some(4010));
}

/// A token for `alice` of `bytes` bytes or a few more, padded as identity providers' tokens
/// with groups are.
fn big_token(bytes: usize) -> String {
    // base64 makes three bytes of claims four of token.
    let claims = |pad| json!({"sub": "alice", "exp": now() + 3600, "groups": "g".repeat(pad)});
    let mut pad = (bytes * 3 / 4).saturating_sub(120);
    loop {
        let token = sign(&claims(pad), SECRET.as_bytes(), Algorithm::HS256);
        if token.len() >= bytes {
            return token;
        }
        pad += 3;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_identity_provider_tokens_work_and_oversize_ones_are_never_strikes() {
    let server = TestServer::with(&[("BAN_STRIKES", "3")]).await;
    // A 6 KiB token, as Entra ID or Keycloak with groups issue: accepted.
    assert_eq!(
        outcome(&server, &big_token(6 * 1024)).await,
        accepted("alice", "alice")
    );
    // Over MAX_TOKEN_BYTES (16 KiB): 4002, as often as the client retries, and no ban.
    let oversize = big_token(16 * 1024 + 100);
    for _ in 0..5 {
        assert_eq!(outcome(&server, &oversize).await, Outcome::Refused(4002));
    }
    assert_eq!(
        outcome(&server, &big_token(100)).await,
        accepted("alice", "alice"),
        "neither the address nor the user was banned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_capped_and_never_starve_the_public_port() {
    let server = TestServer::with(&[("ADMIN_MAX_CONNECTIONS", "4")]).await;
    let admin = server.running.admin_addr().unwrap();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // Past the cap, connections are closed at once rather than held for the header timeout.
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 46,
        "only {closed} of 50 idle admin connections were closed"
    );
    server.assert_serves().await;
}
