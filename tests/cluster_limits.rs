//! Bans, the per-user session cap and the per-user message rate hold across nodes sharing a
//! real Redis; and what each does while Redis is away (docs/SECURITY.md says which fail open).

mod common;

use std::time::Duration;

use common::raw::{status, RawSocket};
use common::redis::{node_with, RedisServer};
use common::ORIGIN;
use serde_json::json;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_node_holds_on_every_node_within_a_second() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, &[]).await;
    let b = node_with(&redis, &[]).await;
    let mut on_b = b.joined("mallory", "lobby").await;
    a.probe().ban("user:mallory", Duration::from_secs(60));
    let started = Instant::now();
    assert_eq!(
        on_b.expect_close().await.0,
        4009,
        "closed on the other node"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.try_join("mallory", "lobby").await.err(), Some(4009));

    // An address banned on A is refused on B before the upgrade.
    a.probe().ban("ip:127.0.0.1", Duration::from_secs(60));
    common::wait_until("B learned the address ban", || {
        b.probe().is_banned("ip:127.0.0.1")
    })
    .await;
    let refused = RawSocket::try_connect(b.addr, &format!("Origin: {ORIGIN}\r\n")).await;
    let head = refused.err().expect("refused");
    assert!(head.is_empty() || status(&head) == 403, "{head}");

    // A node that starts later learns the bans already in force.
    a.probe().unban("ip:127.0.0.1");
    // B hearing of the unban shows it written: the ban's key goes before the notice.
    common::wait_until("B learned the unban", || {
        !b.probe().is_banned("ip:127.0.0.1")
    })
    .await;
    let c = node_with(&redis, &[]).await;
    assert!(c.probe().is_banned("user:mallory"));
    assert!(!c.probe().is_banned("ip:127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_session_cap_counts_every_node() {
    let redis = RedisServer::start().await;
    let cap = [("MAX_SESSIONS_PER_USER", "2")];
    let a = node_with(&redis, &cap).await;
    let b = node_with(&redis, &cap).await;
    let first = a.try_join("alice", "lobby").await.expect("first");
    let _second = b
        .try_join("alice", "lobby")
        .await
        .expect("second, other node");
    assert_eq!(a.try_join("alice", "lobby").await.err(), Some(4008));
    assert_eq!(b.try_join("alice", "lobby").await.err(), Some(4008));
    // A session that ends gives its place back.
    first.close().await;
    a.wait_members("lobby", 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.try_join("alice", "lobby").await {
            Ok(_) => break,
            Err(code) => {
                assert_eq!(code, 4008);
                assert!(Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_message_rate_counts_every_node() {
    let redis = RedisServer::start().await;
    // Each node alone allows 5 messages a second (and 5 back to back); every node together
    // allows 5 a second over the 5-second window, plus the burst.
    let rate = [
        ("USER_MSG_RATE_PER_SEC", "5"),
        ("USER_MSG_BURST", "5"),
        ("REDIS_RATE_SYNC_MS", "100"),
    ];
    let a = node_with(&redis, &rate).await;
    let b = node_with(&redis, &rate).await;
    let mut on_a = a.try_join("spammer", "lobby").await.unwrap();
    let mut on_b = b.try_join("spammer", "lobby").await.unwrap();
    // Four a second on each node: within either node's limit, twice the user's.
    let mut closed = None;
    'sending: for n in 0..40 {
        for client in [&mut on_a, &mut on_b] {
            client
                .send_json(json!({"type": "message", "body": n.to_string()}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        for client in [&mut on_a, &mut on_b] {
            if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))))) =
                tokio::time::timeout(
                    Duration::ZERO,
                    futures_util::StreamExt::next(&mut client.ws),
                )
                .await
            {
                closed = Some((n, u16::from(frame.code)));
                break 'sending;
            }
        }
    }
    let (after, code) = closed.expect("the shared rate was never enforced");
    assert_eq!(code, 4006);
    // 8 a second pass the shared budget (5 × 5 + 5) after about 30 messages: 4 seconds.
    assert!(after < 24, "enforced only after {after} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_known_bans_hold_and_caps_fall_back_to_each_node() {
    let mut redis = RedisServer::start().await;
    let cap = [("MAX_SESSIONS_PER_USER", "1")];
    let a = node_with(&redis, &cap).await;
    let b = node_with(&redis, &cap).await;
    a.probe().ban("user:mallory", Duration::from_secs(60));
    common::wait_until("B learned the ban", || b.probe().is_banned("user:mallory")).await;
    let _alice = a.try_join("alice", "lobby").await.unwrap();
    redis.kill();
    common::wait_until("both nodes saw Redis go", || {
        !a.probe().is_ready() && !b.probe().is_ready()
    })
    .await;
    // Fail closed for bans already known: mallory stays out of B.
    assert_eq!(b.try_join("mallory", "lobby").await.err(), Some(4009));
    // Fail open for the cap: each node counts only its own sessions meanwhile.
    let _also = b.try_join("alice", "lobby").await.expect("B's own cap");
    assert_eq!(a.try_join("alice", "lobby").await.err(), Some(4008));
    // A ban decided while Redis is away reaches the other node once it is back.
    a.probe().ban("user:eve", Duration::from_secs(60));
    redis.restart().await;
    a.wait_ready().await;
    b.wait_ready().await;
    common::wait_until("B learned the ban made during the outage", || {
        b.probe().is_banned("user:eve")
    })
    .await;
}
