//! The server API across two nodes sharing a real Redis: what one node is asked, every node
//! does (an idempotent publish delivers once, kicks, bans and revocations close sessions
//! elsewhere), and what it reads covers every node (presence, rooms, members, history).

mod common;

use std::time::Duration;

use common::api::{ApiClient, API_SETTINGS};
use common::redis::{node_with, RedisServer};
use common::{merged, now, outcome, sign, token, Outcome, TestServer, SECRET};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

async fn api_node(redis: &RedisServer) -> TestServer {
    node_with(redis, &API_SETTINGS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_nodes_delivers_once() {
    let redis = RedisServer::start().await;
    let a = api_node(&redis).await;
    let b = api_node(&redis).await;
    let mut on_a = a.joined_extended("alice", "lobby").await;
    let mut on_b = b.joined_extended("bob", "lobby").await;
    let probe = a.probe();
    common::wait_until("bob seen on A", || probe.total_count("lobby") == 2).await;
    let _ = on_a.wait_for("join", None, Duration::from_secs(5)).await;

    let body = Some(json!({"body": "your order shipped"}).to_string());
    let key = [("idempotency-key", "order-7-shipped")];
    let path = "/rooms/lobby/messages";
    let first = ApiClient::of(&a)
        .send(Method::POST, path, &key, body.clone())
        .await;
    let retried = ApiClient::of(&b).send(Method::POST, path, &key, body).await;
    assert_eq!(
        (first.status, retried.status),
        (202, 202),
        "{}",
        retried.json
    );
    assert_eq!(retried.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json, retried.json);

    for member in [&mut on_a, &mut on_b] {
        let message = member
            .wait_for("message", None, Duration::from_secs(5))
            .await;
        assert_eq!(message["body"], "your order shipped");
        assert_eq!(message["offset"], 1, "numbered by Redis like any message");
        member.expect_only_pings(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_bans_and_revocations_asked_of_one_node_close_sessions_on_the_other() {
    let redis = RedisServer::start().await;
    let a = api_node(&redis).await;
    let b = api_node(&redis).await;
    let api = ApiClient::of(&a);
    let mut alice = b.joined("alice", "lobby").await;
    let mut mallory = b.joined("mallory", "hall").await;
    let mut carol = b.joined("carol", "den").await;

    let asked = Instant::now();
    let answer = api.post("/users/alice/disconnect", json!({})).await;
    assert_eq!(
        (answer.status, answer.json["closedHere"].clone()),
        (202, json!(0))
    );
    assert_eq!(alice.expect_close().await.0, 4015);

    let ban = json!({"user": "mallory", "durationSecs": 60});
    assert_eq!(api.post("/bans", ban).await.status, 201);
    assert_eq!(mallory.expect_close().await.0, 4009);
    assert_eq!(outcome(&b, &token("mallory")).await, Outcome::Refused(4009));

    let revocation = json!({"user": "carol", "durationSecs": 60});
    assert_eq!(api.post("/revocations", revocation).await.status, 201);
    assert_eq!(carol.expect_close().await.0, 4016);
    assert_eq!(outcome(&b, &token("carol")).await, Outcome::Refused(4002));
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "three decisions in force on the other node within a second each: {:?}",
        asked.elapsed()
    );

    // A node that starts later learns the revocation (and the ban) from Redis.
    let c = api_node(&redis).await;
    assert_eq!(outcome(&c, &token("carol")).await, Outcome::Refused(4002));
    assert_eq!(outcome(&c, &token("mallory")).await, Outcome::Refused(4009));
    let listed = ApiClient::of(&c).get("/revocations").await;
    assert_eq!(listed.json["revocations"][0]["revoked"], "sub:carol");
    // A revoked token id, by its jti, on the other node.
    let stolen = sign(
        &merged(
            json!({"sub": "dave", "name": "Dave", "exp": now() + 600}),
            json!({"jti": "stolen-9"}),
        ),
        SECRET.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
    );
    let mut dave = b.connect().await;
    dave.auth(&stolen).await;
    dave.send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(dave.recv_json().await["type"], "join");
    let revocation = json!({"tokenId": "stolen-9", "durationSecs": 60});
    assert_eq!(api.post("/revocations", revocation).await.status, 201);
    assert_eq!(dave.expect_close().await.0, 4016);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_rooms_members_and_history_cover_every_node() {
    let redis = RedisServer::start().await;
    let a = api_node(&redis).await;
    let b = api_node(&redis).await;
    let api = ApiClient::of(&a);
    let mut alice = b.joined_extended("alice", "lobby").await;
    let _alice_again = b.joined("alice", "kitchen").await;
    let _bob = a.joined("bob", "hall").await;
    // The API answers from Redis, where each node writes its members in the background.
    for room in ["lobby", "kitchen", "hall"] {
        redis.wait_for_members(room, 1).await;
    }

    let user = api.get("/users/alice").await;
    assert_eq!(user.status, 200, "{}", user.json);
    assert_eq!(user.json["online"], true);
    assert_eq!(user.json["sessions"], 2);
    assert_eq!(
        user.json["nodes"].as_array().unwrap().len(),
        1,
        "{}",
        user.json
    );
    assert_eq!(user.json["nodes"][0]["sessions"], 2);
    assert_eq!(api.get("/users/nobody").await.json["online"], false);

    // Rooms, following the cursor to its end.
    let mut rooms: Vec<(String, u64)> = api
        .every_room()
        .await
        .iter()
        .map(|room| {
            (
                room["room"].as_str().unwrap().to_owned(),
                room["members"].as_u64().unwrap(),
            )
        })
        .collect();
    rooms.sort();
    assert_eq!(
        rooms,
        [
            ("hall".into(), 1),
            ("kitchen".into(), 1),
            ("lobby".into(), 1)
        ]
    );

    let members = api.get("/rooms/lobby/members").await;
    assert_eq!(
        members.json["members"],
        json!([{"userId": "alice", "username": "Alice"}])
    );

    // Messages said on B read back through A, from Redis's stream.
    for (n, body) in ["one", "two", "three"].into_iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await; // MSG_RATE_PER_SEC
        }
        alice
            .send_json(json!({"type": "message", "body": body}))
            .await;
    }
    // Written by B's publisher in the background: read until the third is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let history = loop {
        let history = api.get("/rooms/lobby/history?after=1&limit=5").await;
        assert_eq!(history.status, 200, "{}", history.json);
        if history.json["lastOffset"] == 3 || tokio::time::Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bodies: Vec<&str> = history.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["two", "three"]);
    assert_eq!(history.json["lastOffset"], 3);
    assert_eq!(history.json["messages"][0]["offset"], 2);
    let _: Value = history.json;
}
