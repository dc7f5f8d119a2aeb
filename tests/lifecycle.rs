//! Slow consumers and shutdown, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{tiny_buffer_client, token, Client, PacedSender, Pacing, TestServer};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_closed_as_slow_consumer_while_the_room_flows() {
    let server = TestServer::with(&[
        ("OUTBOUND_QUEUE_FRAMES", "64"),
        ("CLOSE_TIMEOUT_MS", "5000"),
    ])
    .await;
    let mut slow = tiny_buffer_client(&server, "slow", "busy").await;
    let mut reader = server.joined("reader", "busy").await;
    let sender = server.joined("sender", "busy").await;
    assert_eq!(reader.recv_json().await["userId"], "sender");

    // The sender sends until told to stop (bounded), 3 KB at a time, paced so that the reader
    // (which does read, and parses each frame in a debug build on the machine's two cores)
    // never falls 64 frames behind, while the slow socket's buffers still fill in seconds.
    let sending = PacedSender::start(
        sender,
        Pacing {
            padding: 3000,
            burst: 16,
            pause: Duration::from_millis(5),
            limit: 20_000,
        },
    );

    // The reader keeps receiving, in order, until the slow member is dropped.
    let mut received = 0usize;
    let left = loop {
        let frame = reader.recv_json().await;
        match frame["type"].as_str() {
            Some("message") => {
                let seq: usize = frame["body"]
                    .as_str()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(seq, received, "in order, nothing lost");
                received += 1;
            }
            Some("userleave") => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(left["userId"], "slow");
    assert_eq!(left["totalUsers"], 2);
    assert_eq!(server.probe().member_count("busy"), 2);

    // The room keeps flowing after the eviction.
    let after = Instant::now();
    let next = reader.recv_json().await;
    assert_eq!(next["type"], "message");
    assert!(after.elapsed() < Duration::from_secs(2));
    let (_sender, sent) = sending.stop().await;
    assert!(sent > received, "sent {sent}, received {received}");

    // The slow socket, once it reads, finds what was buffered and then the 4007 close.
    let mut frames = 0usize;
    let close = loop {
        match slow.recv().await {
            Some(Message::Text(_)) => frames += 1,
            Some(Message::Close(Some(frame))) => break u16::from(frame.code),
            other => panic!("expected frames then a close, got {other:?} after {frames}"),
        }
    };
    assert_eq!(close, 4007);
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_session_with_1001() {
    let server = TestServer::start().await;
    let mut in_room = server.joined("alice", "lobby").await;
    let mut awaiting_join = server.connect().await;
    awaiting_join.auth(&token("bob")).await;
    let mut awaiting_auth = server.connect().await;
    server.wait_members("lobby", 1).await;

    let addr = server.addr;
    let started = Instant::now();
    let shutdown = tokio::spawn(server.running.shutdown());
    for client in [&mut in_room, &mut awaiting_join, &mut awaiting_auth] {
        assert_eq!(
            client.expect_close().await,
            (1001, "server shutting down, reconnect".into())
        );
    }
    let report = shutdown.await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_unresponsive_peers_within_the_grace_period() {
    // A peer that never answers our close frame is dropped after CLOSE_TIMEOUT_MS; the whole
    // shutdown stays within SHUTDOWN_GRACE_SECS.
    let server =
        TestServer::with(&[("CLOSE_TIMEOUT_MS", "300"), ("SHUTDOWN_GRACE_SECS", "2")]).await;
    let _silent: Vec<Client> =
        futures_util::future::join_all((0..20).map(|_| server.connect())).await;
    server.shutdown_within(Duration::from_secs(2)).await;
}
