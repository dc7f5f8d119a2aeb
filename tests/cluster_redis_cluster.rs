//! Nodes on a Redis Cluster (`REDIS_CLUSTER_NODES`): three masters and a replica each, started
//! by the test on free ports and created with `redis-cli --cluster create`. Rooms land on
//! different shards and deliver across nodes with history, presence and the server API; a
//! shard's master is killed and its replica promoted; a room's slot is migrated to another
//! shard under traffic; a shard that stops delivering is found by its canary; and the whole
//! cluster can speak TLS only.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::api::{ApiClient, API_SETTINGS};
use common::ordered::{talker, Reader};
use common::receiver::{kinds_for, Receiver};
use common::redis::node_reaching;
use common::redis_cluster::RedisCluster;
use common::TestServer;
use serde_json::json;
use tokio::time::Instant;

/// A node on the cluster, with the server API and whatever else `extra` says.
async fn cluster_node(cluster: &RedisCluster, extra: &[(&str, &str)]) -> TestServer {
    let seeds = cluster.seeds();
    let mut pairs = vec![("REDIS_CLUSTER_NODES", seeds.as_str()), API_SETTINGS[0]];
    pairs.extend_from_slice(extra);
    node_reaching(&pairs).await
}

/// The slot a room's keys and channel are in: its name is their hash tag.
fn room_slot(room: &str) -> u16 {
    RedisCluster::slot_of(&format!("{{{room}}}"))
}

/// One room name per master, each on a different shard.
async fn a_room_per_shard(cluster: &RedisCluster) -> BTreeMap<u16, String> {
    let mut rooms = BTreeMap::new();
    let masters = cluster.masters().await;
    for n in 0.. {
        let room = format!("room-{n}");
        let master = cluster.master_of_slot(room_slot(&room)).await;
        rooms.entry(master).or_insert(room);
        if rooms.len() == masters.len() {
            return rooms;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_every_shard_deliver_across_nodes_with_history_presence_and_the_api() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (
        cluster_node(&cluster, &[]).await,
        cluster_node(&cluster, &[]).await,
    );
    let rooms = a_room_per_shard(&cluster).await;
    assert_eq!(rooms.len(), 3, "three shards: {rooms:?}");
    let mut members = Vec::new();
    for (master, room) in &rooms {
        let mut bob = b.joined_extended("bob", room).await;
        let mut alice = a.joined("alice", room).await;
        let joined = bob.wait_for("join", None, Duration::from_secs(5)).await;
        assert_eq!(joined["totalUsers"], 2, "{joined}");
        for body in ["one", "two"] {
            alice
                .send_json(json!({"type": "message", "body": body}))
                .await;
            let message = bob.wait_for("message", None, Duration::from_secs(5)).await;
            assert_eq!(message["body"], body);
            tokio::time::sleep(Duration::from_millis(1100)).await; // MSG_RATE_PER_SEC
        }
        // The room's history and presence live on the shard that serves its slot.
        let on_its_shard: i64 = cluster
            .command(
                *master,
                &[
                    "EXISTS",
                    &format!("palisade:history:{{{room}}}"),
                    &format!("palisade:position:{{{room}}}"),
                    &format!("palisade:members:{{{room}}}"),
                ],
            )
            .await;
        assert_eq!(on_its_shard, 3, "{room} on {master}");
        let history = ApiClient::of(&a)
            .get(&format!("/rooms/{room}/history?after=0&limit=5"))
            .await;
        assert_eq!(history.json["lastOffset"], 2, "{}", history.json);
        members.extend([alice, bob]);
    }
    // The rooms list reads every master, following the cursor across shards.
    let api = ApiClient::of(&b);
    let mut listed = Vec::new();
    for room in api.every_room().await {
        assert_eq!(room["members"], 2, "{room}");
        listed.push(room["room"].as_str().unwrap().to_owned());
    }
    listed.sort();
    let mut expected: Vec<String> = rooms.values().cloned().collect();
    expected.sort();
    assert_eq!(listed, expected);
    // A user's sessions, and the session cap, count every node.
    let user = api.get("/users/alice").await;
    assert_eq!(user.json["sessions"], 3, "{}", user.json);
    a.wait_ready().await;
    b.wait_ready().await;
}

/// What every node shares beside rooms: bans (kept in Redis, read from every master by a node
/// that starts later), the per-user session cap (one claim on the user's hash, wherever its
/// slot is), and the presence webhooks (each item settled on its own shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_the_session_cap_and_presence_webhooks_hold_across_nodes() {
    let cluster = RedisCluster::start().await;
    let receiver = Receiver::start().await;
    let mut settings = receiver.settings("0");
    settings.push(("WEBHOOK_OFFLINE_GRACE_SECS", "1".into()));
    settings.push(("MAX_SESSIONS_PER_USER", "2".into()));
    let extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (a, b) = (
        cluster_node(&cluster, &extra).await,
        cluster_node(&cluster, &extra).await,
    );

    let mut mallory = b.joined("mallory", "lobby").await;
    for user in ["mallory", "eve", "trudy", "oscar"] {
        a.probe()
            .ban(&format!("user:{user}"), Duration::from_secs(60));
    }
    assert_eq!(
        mallory.expect_close().await.0,
        4009,
        "closed on the other node"
    );
    let c = cluster_node(&cluster, &extra).await;
    for user in ["mallory", "eve", "trudy", "oscar"] {
        assert!(c.probe().is_banned(&format!("user:{user}")), "{user}");
    }

    let first = a.try_join("alice", "lobby").await.expect("first");
    let _second = b
        .try_join("alice", "hall")
        .await
        .expect("second, other node");
    assert_eq!(c.try_join("alice", "lobby").await.err(), Some(4008));
    receiver
        .wait_until("online", Duration::from_secs(5), |events| {
            kinds_for(events, "userId", "alice") == ["user.online"]
        })
        .await;
    first.close().await;
    drop(_second);
    let events = receiver
        .settled(
            "offline",
            Duration::from_secs(5),
            |events| kinds_for(events, "userId", "alice").len() == 2,
            Duration::from_millis(1500),
        )
        .await;
    assert_eq!(
        kinds_for(&events, "userId", "alice"),
        ["user.online", "user.offline"]
    );
    assert_eq!(
        kinds_for(&events, "room", "hall"),
        ["room.occupied", "room.empty"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_failover_is_followed_and_delivery_resumes_in_order_with_notices() {
    let mut cluster = RedisCluster::start().await;
    let (a, b) = (
        cluster_node(&cluster, &[]).await,
        cluster_node(&cluster, &[]).await,
    );
    let room = "failing-shard";
    let mut on_b = Reader::new(b.joined_extended("bob", room).await);
    let alice = talker(a.joined("alice", room).await);
    on_b.until_after(None).await;

    let killed = Instant::now();
    let promotion = cluster.kill_master_of_slot(room_slot(room)).await;
    on_b.until_notice("delivery_interrupted").await;
    let before = on_b.last;
    on_b.until_notice("delivery_restored").await;
    on_b.until_after(before).await;
    let resumed = killed.elapsed();
    eprintln!("promotion took {promotion:?}; delivery resumed {resumed:?} after the kill");
    assert!(
        resumed < Duration::from_secs(20),
        "resumed after {resumed:?}"
    );
    assert_eq!(on_b.notices, ["delivery_interrupted", "delivery_restored"]);
    let last = on_b.last;
    on_b.until_after(last).await;
    a.wait_ready().await;
    let (_, sent) = alice.stop().await;
    assert!(on_b.last.unwrap() < sent as u64);
    on_b.assert_no_silent_gap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_slot_migrated_to_another_shard_under_traffic_keeps_delivering() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (
        cluster_node(&cluster, &[]).await,
        cluster_node(&cluster, &[]).await,
    );
    let room = "moving-room";
    let slot = room_slot(room);
    let mut on_b = Reader::new(b.joined_extended("bob", room).await);
    let mut on_a = Reader::new(a.joined_extended("carol", room).await);
    let alice = talker(a.joined("alice", room).await);
    on_b.until_after(None).await;
    on_a.until_after(None).await;

    let from = cluster.master_of_slot(slot).await;
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|master| **master != from)
        .unwrap();
    let took = cluster.migrate_slot(slot, to).await;
    eprintln!("slot {slot} moved from {from} to {to} in {took:?}");
    assert_eq!(cluster.master_of_slot(slot).await, to);
    // The old shard dropped both nodes' subscriptions to the room; they are made again on the
    // new one (not only recovered from history at each heartbeat).
    let channel = format!("palisade:room:{{{room}}}");
    let resubscribed = Instant::now();
    loop {
        let (_, count): (String, i64) = cluster
            .command(to, &["PUBSUB", "SHARDNUMSUB", &channel])
            .await;
        if count == 2 {
            eprintln!(
                "both nodes subscribed on the new shard {:?} after the move",
                resubscribed.elapsed()
            );
            break;
        }
        assert!(
            resubscribed.elapsed() < Duration::from_secs(5),
            "{count} subscribers on the new shard"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Messages keep coming, numbered on the new shard, and nobody was interrupted: the
    // sending node's batches waited for the slot to settle.
    for _ in 0..3 {
        for reader in [&mut on_a, &mut on_b] {
            let last = reader.last;
            reader.until_after(last).await;
        }
    }
    assert_eq!(
        on_a.notices,
        Vec::<String>::new(),
        "the sending node's member"
    );
    assert_eq!(
        on_b.notices,
        Vec::<String>::new(),
        "the other node's member"
    );
    let stream: i64 = cluster
        .command(to, &["EXISTS", &format!("palisade:history:{{{room}}}")])
        .await;
    assert_eq!(stream, 1, "the room's history moved with its slot");
    let (_, sent) = alice.stop().await;
    assert!(on_b.last.unwrap() < sent as u64);
    on_b.assert_no_silent_gap();
    on_a.assert_no_silent_gap();
    a.wait_ready().await;
    b.wait_ready().await;
}

/// A shard whose master stops sending (`CLIENT PAUSE WRITE` holds its `SPUBLISH`es) while
/// every connection stays up: that shard's canary does not come back, the node says it is not
/// ready, and its members are told; when the shard sends again, delivery is restored. Every
/// shard in turn: a canary on one shard alone would miss the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_stops_delivering_is_found_by_its_canary() {
    let cluster = RedisCluster::start().await;
    let a = cluster_node(&cluster, &[]).await;
    for (master, room) in a_room_per_shard(&cluster).await {
        let mut alice = Reader::new(a.joined_extended("alice", &room).await);
        let _: String = cluster
            .command(master, &["CLIENT", "PAUSE", "1500", "WRITE"])
            .await;
        let paused = Instant::now();
        alice.until_notice("delivery_interrupted").await;
        let found = paused.elapsed();
        eprintln!("the shard of {master} paused: found after {found:?}");
        // Within two canary intervals (200 ms each here), and the round trips of a loaded
        // machine.
        assert!(
            found < Duration::from_millis(2 * 200 + 600),
            "found after {found:?}"
        );
        assert!(!a.probe().is_ready(), "not ready while a shard is silent");
        alice.until_notice("delivery_restored").await;
        a.wait_ready().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deliver_across_a_tls_only_cluster_trusting_its_ca() {
    let cluster = RedisCluster::start_tls().await;
    let ca = cluster.ca_file();
    let extra = [
        ("REDIS_TLS", "true"),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
    ];
    let (a, b) = (
        cluster_node(&cluster, &extra).await,
        cluster_node(&cluster, &extra).await,
    );
    for room in a_room_per_shard(&cluster).await.values() {
        let mut bob = b.joined_extended("bob", room).await;
        let mut alice = a.joined("alice", room).await;
        alice
            .send_json(json!({"type": "message", "body": "over tls"}))
            .await;
        let message = bob.wait_for("message", None, Duration::from_secs(5)).await;
        assert_eq!(message["body"], "over tls");
        assert_eq!(message["offset"], 1);
    }
}
