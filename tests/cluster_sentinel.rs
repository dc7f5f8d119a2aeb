//! Nodes that find Redis through Sentinel: three Sentinels, a master and a replica, all
//! started by the test on free ports. The master is killed (SIGKILL); the Sentinels promote
//! the replica (`down-after-milliseconds` 1000, so in a few seconds); the nodes follow it,
//! tell their members, and delivery resumes in order without duplicates.

mod common;

use std::time::Duration;

use common::ordered::{talker, Reader};
use common::redis::node_reaching;
use common::sentinel::{Passwords, SentinelTrio, MASTER};
use common::TestServer;
use tokio::time::Instant;

async fn sentinel_node(trio: &SentinelTrio) -> TestServer {
    let sentinels = trio.addresses();
    node_reaching(&[
        ("REDIS_SENTINELS", &sentinels),
        ("REDIS_SENTINEL_MASTER", MASTER),
    ])
    .await
}

const PASSWORDS: Passwords = Passwords {
    redis: "master-password-71c",
    sentinel: "sentinel-password-2ab",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_tell_their_members_and_deliver_in_order_after_it() {
    let mut trio = SentinelTrio::start().await;
    let (a, b) = (sentinel_node(&trio).await, sentinel_node(&trio).await);
    // A room per direction: a sender on one node, a reader on the other.
    let mut on_b = Reader::new(b.joined_extended("bob", "a-to-b").await);
    let mut on_a = Reader::new(a.joined_extended("erin", "b-to-a").await);
    let alice = talker(a.joined("alice", "a-to-b").await);
    let dan = talker(b.joined("dan", "b-to-a").await);
    on_b.until_after(None).await;
    on_a.until_after(None).await;

    trio.master.kill();
    let killed = Instant::now();
    for reader in [&mut on_a, &mut on_b] {
        reader.until_notice("delivery_interrupted").await;
    }
    let (before_a, before_b) = (on_a.last, on_b.last);
    for reader in [&mut on_a, &mut on_b] {
        reader.until_notice("delivery_restored").await;
    }
    on_b.until_after(before_b).await;
    on_a.until_after(before_a).await;
    let resumed = killed.elapsed();
    eprintln!("delivery resumed {resumed:?} after the master was killed");
    // The Sentinels' promotion (down-after 1 s, then an election) plus a reconnect.
    assert!(
        resumed < Duration::from_secs(20),
        "resumed after {resumed:?}"
    );
    assert_eq!(
        trio.master_port().await,
        Some(trio.replica.port()),
        "the replica is the master now"
    );
    for reader in [&on_a, &on_b] {
        assert_eq!(
            reader.notices,
            ["delivery_interrupted", "delivery_restored"],
            "told once each, in order"
        );
    }
    // Both directions keep flowing, and both nodes are ready on the new master.
    let (last_a, last_b) = (on_a.last, on_b.last);
    on_a.until_after(last_a).await;
    on_b.until_after(last_b).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let (_, sent_by_alice) = alice.stop().await;
    let (_, sent_by_dan) = dan.stop().await;
    assert!(on_b.last.unwrap() < sent_by_alice as u64);
    assert!(on_a.last.unwrap() < sent_by_dan as u64);
    on_a.assert_no_silent_gap();
    on_b.assert_no_silent_gap();
}

/// A failover the Sentinels are asked for leaves the old master alive, answering (as a
/// replica now): the nodes follow the `+switch-master` notice (or the first write refused
/// with `-READONLY`), with every password in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_whose_old_master_stays_up_through_passworded_sentinels() {
    let trio = SentinelTrio::start_with(Some(PASSWORDS), false).await;
    let sentinels = trio.addresses();
    let pairs = [
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", MASTER),
        ("REDIS_SENTINEL_PASSWORD", PASSWORDS.sentinel),
        ("REDIS_PASSWORD", PASSWORDS.redis),
    ];
    let (a, b) = (node_reaching(&pairs).await, node_reaching(&pairs).await);
    let mut on_b = Reader::new(b.joined("bob", "a-to-b").await);
    let alice = talker(a.joined("alice", "a-to-b").await);
    on_b.until_after(None).await;

    trio.fail_over().await;
    let asked = Instant::now();
    on_b.until_notice("delivery_interrupted").await;
    let before = on_b.last;
    on_b.until_notice("delivery_restored").await;
    on_b.until_after(before).await;
    eprintln!(
        "delivery resumed {:?} after the failover was asked for",
        asked.elapsed()
    );
    assert_eq!(trio.master_port().await, Some(trio.replica.port()));
    assert_eq!(on_b.notices, ["delivery_interrupted", "delivery_restored"]);
    for node in [&a, &b] {
        let metrics = node.probe().metrics();
        assert!(
            metrics.contains("palisade_broker_errors_total{kind=\"failover\"} 1"),
            "followed +switch-master: {metrics}"
        );
    }
    a.wait_ready().await;
    let (_, sent) = alice.stop().await;
    assert!(on_b.last.unwrap() < sent as u64);
}

/// Sentinels and servers that speak TLS only: the node reaches both over TLS, trusting the
/// test CA alone, and follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_sentinels_and_master_over_tls_and_follow_a_failover() {
    let mut trio = SentinelTrio::start_with(None, true).await;
    let sentinels = trio.addresses();
    let ca = trio.ca_file();
    let pairs = [
        ("REDIS_SENTINELS", sentinels.as_str()),
        ("REDIS_SENTINEL_MASTER", MASTER),
        ("REDIS_TLS", "true"),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ];
    let (a, b) = (node_reaching(&pairs).await, node_reaching(&pairs).await);
    let mut on_b = Reader::new(b.joined("bob", "a-to-b").await);
    let alice = talker(a.joined("alice", "a-to-b").await);
    on_b.until_after(None).await;
    trio.master.kill();
    on_b.until_notice("delivery_interrupted").await;
    let before = on_b.last;
    on_b.until_notice("delivery_restored").await;
    on_b.until_after(before).await;
    assert_eq!(trio.master_port().await, Some(trio.replica.port()));
    let (_, sent) = alice.stop().await;
    assert!(on_b.last.unwrap() < sent as u64);
}
