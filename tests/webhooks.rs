//! Webhooks from one node to a real HTTP receiver: presence events with the offline grace,
//! batched message events, the signature, and a receiver that fails or goes away without
//! slowing any room.

mod common;

use std::time::Duration;

use common::api::{ApiClient, API_SETTINGS};
use common::http::{get, sample};
use common::receiver::{kinds_for, tampered, verify, Receiver};
use common::TestServer;
use serde_json::json;

async fn server_for(receiver: &Receiver, extra: &[(&str, &str)]) -> TestServer {
    let hooks = receiver.settings("0");
    let mut settings: Vec<(&str, &str)> = hooks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(extra);
    TestServer::with(&settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_offline_and_rooms_are_reported_once_with_the_grace_and_signed() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, &[("WEBHOOK_OFFLINE_GRACE_SECS", "1")]).await;

    let alice = server.joined("alice", "lobby").await;
    receiver
        .wait_until("online and occupied", Duration::from_secs(5), |events| {
            events.len() >= 2
        })
        .await;
    assert_eq!(
        receiver.accepted_kinds(),
        [
            ("user.online".to_owned(), json!({"userId": "alice"})),
            ("room.occupied".to_owned(), json!({"room": "lobby"})),
        ]
    );
    // Every POST is signed over its timestamp and body; every event has an id of its own.
    for post in receiver.posts() {
        assert!(verify(&post.signature, &post.body), "{}", post.signature);
        assert!(!verify(&post.signature, &tampered(&post.body)));
    }

    // A reconnect within the grace: the room empties and fills again, the user never left.
    alice.close().await;
    let again = server.joined("alice", "lobby").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = receiver.accepted();
    assert_eq!(kinds_for(&events, "userId", "alice"), ["user.online"]);
    assert_eq!(
        kinds_for(&events, "room", "lobby"),
        ["room.occupied", "room.empty", "room.occupied"]
    );

    // Gone for good: offline once the grace is over, not before.
    again.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        kinds_for(&receiver.accepted(), "userId", "alice"),
        ["user.online"]
    );
    receiver
        .wait_until(
            "offline after the grace",
            Duration::from_secs(5),
            |events| kinds_for(events, "userId", "alice").len() == 2,
        )
        .await;
    let events = receiver.accepted();
    assert_eq!(
        kinds_for(&events, "userId", "alice"),
        ["user.online", "user.offline"]
    );
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "unique ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_reported_in_batches_when_asked() {
    let receiver = Receiver::start().await;
    let hooks = receiver.settings("300");
    let mut settings: Vec<(&str, &str)> = hooks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&API_SETTINGS);
    settings.push(("WEBHOOK_EVENTS", "message.published"));
    let server = TestServer::with(&settings).await;
    let mut alice = server.joined("alice", "lobby").await;
    for n in 0..5 {
        alice
            .send_json(json!({"type": "message", "body": format!("m{n}")}))
            .await;
    }
    let api = ApiClient::of(&server);
    let posted = api
        .post("/rooms/lobby/messages", json!({"body": "from the backend"}))
        .await;
    assert_eq!(posted.status, 202);
    receiver
        .wait_until("six messages", Duration::from_secs(5), |events| {
            events.len() == 6
        })
        .await;
    let events = receiver.accepted();
    assert!(
        receiver.posts().len() <= 2,
        "batched: {} posts",
        receiver.posts().len()
    );
    let bodies: Vec<&str> = events
        .iter()
        .map(|event| event["data"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4", "from the backend"]);
    assert_eq!(events[0]["type"], "message.published");
    assert_eq!(events[0]["data"]["userId"], "alice");
    assert_eq!(events[0]["data"]["room"], "lobby");
    assert_eq!(events[0]["data"]["offset"], 1);
    assert_eq!(events[5]["data"]["offset"], 6);
    assert_eq!(events[5]["data"]["userId"], "system");
    assert!(events[0]["data"]["ts"].as_u64().unwrap() > 0);
    assert!(events
        .iter()
        .all(|event| event["data"]["epoch"] == events[0]["data"]["epoch"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_absent_receiver_delays_events_but_never_a_room() {
    let mut receiver = Receiver::start().await;
    receiver.answer(500);
    let server = server_for(
        &receiver,
        &[
            ("WEBHOOK_MAX_ATTEMPTS", "100"),
            ("WEBHOOK_RETRY_MAX_SECS", "1"),
        ],
    )
    .await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    receiver.wait_until_posted(2, Duration::from_secs(5)).await;
    // The room flows while the receiver fails.
    for n in 0..20 {
        alice
            .send_json(json!({"type": "message", "body": format!("m{n}")}))
            .await;
        let got = bob.wait_for("message", None, Duration::from_secs(2)).await;
        assert_eq!(got["body"], format!("m{n}"));
    }
    assert!(receiver.accepted().is_empty());
    let failed_ids: Vec<String> = receiver.posts()[0]
        .events()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();

    // It recovers: the same events (same ids) are accepted, in order.
    receiver.answer(200);
    receiver
        .wait_until(
            "delivered after recovery",
            Duration::from_secs(5),
            |events| events.len() >= 3,
        )
        .await;
    let accepted = receiver.accepted();
    assert_eq!(
        accepted[0]["id"],
        failed_ids[0].as_str(),
        "retries keep their ids"
    );
    assert_eq!(accepted[0]["type"], "user.online");

    // Down (connections refused), then up on the same port: what happened meanwhile arrives.
    receiver.stop();
    drop(bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.restart().await;
    receiver
        .wait_until(
            "bob's offline after the outage",
            Duration::from_secs(10),
            |events| kinds_for(events, "userId", "bob") == ["user.online", "user.offline"],
        )
        .await;
    let admin = server.running.admin_addr().unwrap();
    let metrics = get(admin, "/metrics").await.1;
    assert!(sample(&metrics, "palisade_webhook_retries_total") >= 1.0);
    assert!(sample(&metrics, "palisade_webhook_posts_total{result=\"refused\"}") >= 1.0);
    assert!(sample(&metrics, "palisade_webhook_events_total{outcome=\"sent\"}") >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_and_the_attempts_events_are_dropped_and_counted() {
    let mut receiver = Receiver::start().await;
    receiver.stop();
    let server = server_for(
        &receiver,
        &[
            ("WEBHOOK_QUEUE", "2"),
            ("WEBHOOK_BATCH_MAX", "1"),
            ("WEBHOOK_MAX_ATTEMPTS", "2"),
            ("WEBHOOK_RETRY_MAX_SECS", "1"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for n in 0..6 {
        clients.push(
            server
                .joined(&format!("user{n}"), &format!("room{n}"))
                .await,
        );
    }
    let admin = server.running.admin_addr().unwrap();
    common::wait_until_async("drops counted", || async {
        let metrics = get(admin, "/metrics").await.1;
        sample(
            &metrics,
            "palisade_webhook_events_total{outcome=\"queue_full\"}",
        ) >= 1.0
            && sample(
                &metrics,
                "palisade_webhook_events_total{outcome=\"gave_up\"}",
            ) >= 1.0
    })
    .await;
    // Chat went on all the while.
    let mut last = clients.pop().unwrap();
    last.send_json(json!({"type": "members"})).await;
    assert_eq!(last.recv_json().await["type"], "members");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_node_and_python_recipes_verify_a_real_delivery() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, &[]).await;
    let _alice = server.joined("alice", "lobby").await;
    receiver.wait_until_posted(1, Duration::from_secs(5)).await;
    let post = receiver.posts()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, &post.body).unwrap();
    let tampered_body = dir.path().join("tampered.json");
    std::fs::write(&tampered_body, tampered(&post.body)).unwrap();
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks");
    for (program, script) in [("node", "verify.mjs"), ("python3", "verify.py")] {
        let run = |file: &std::path::Path, secret: &str| {
            std::process::Command::new(program)
                .arg(format!("{docs}/{script}"))
                .arg(&post.signature)
                .arg(file)
                .arg(secret)
                .status()
                .unwrap_or_else(|err| panic!("{program} must be installed: {err}"))
                .success()
        };
        assert!(
            run(&body, common::receiver::WEBHOOK_SECRET),
            "{script} verifies"
        );
        assert!(
            !run(&tampered_body, common::receiver::WEBHOOK_SECRET),
            "{script} refuses a changed body"
        );
        assert!(
            !run(&body, "another-secret-0123456789abcdef0123"),
            "{script} refuses another secret"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_counts_from_the_last_departure() {
    let receiver = Receiver::start().await;
    let server = server_for(&receiver, &[("WEBHOOK_OFFLINE_GRACE_SECS", "1")]).await;
    let first = server.joined("alice", "lobby").await;
    receiver.wait_until_posted(1, Duration::from_secs(5)).await;
    first.close().await; // this grace would end in 1 s...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = server.joined("alice", "lobby").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    again.close().await; // ...this one 0.6 s later
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        kinds_for(&receiver.accepted(), "userId", "alice"),
        ["user.online"]
    );
    receiver
        .wait_until("offline", Duration::from_secs(5), |events| {
            kinds_for(events, "userId", "alice").len() == 2
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_times_out_without_slowing_rooms_or_the_api() {
    let receiver = Receiver::start().await;
    receiver.slow_down(Duration::from_secs(3));
    let hooks = receiver.settings("0");
    let mut settings: Vec<(&str, &str)> = hooks.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.extend_from_slice(&API_SETTINGS);
    settings.extend_from_slice(&[
        ("WEBHOOK_TIMEOUT_MS", "200"),
        ("WEBHOOK_EVENTS", "user.online,message.published"),
    ]);
    let server = TestServer::with(&settings).await;
    let mut alice = server.joined("alice", "lobby").await;
    let mut bob = server.joined("bob", "lobby").await;
    let api = ApiClient::of(&server);
    for n in 0..10 {
        let started = tokio::time::Instant::now();
        alice
            .send_json(json!({"type": "message", "body": format!("m{n}")}))
            .await;
        assert_eq!(
            bob.wait_for("message", None, Duration::from_secs(1)).await["body"],
            format!("m{n}")
        );
        let posted = api
            .post("/rooms/lobby/messages", json!({"body": format!("api{n}")}))
            .await;
        assert_eq!(posted.status, 202);
        let _ = bob.wait_for("message", None, Duration::from_secs(1)).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a message and a publish took {:?}",
            started.elapsed()
        );
        let _ = alice
            .wait_for("message", None, Duration::from_secs(1))
            .await;
    }
    let admin = server.running.admin_addr().unwrap();
    common::wait_until_async("a POST timed out", || async {
        let metrics = get(admin, "/metrics").await.1;
        sample(&metrics, "palisade_webhook_posts_total{result=\"failed\"}") >= 1.0
    })
    .await;
    // Answering quickly again, it gets what waited.
    receiver.slow_down(Duration::ZERO);
    receiver
        .wait_until("everything delivered", Duration::from_secs(10), |events| {
            events
                .iter()
                .filter(|event| event["type"] == "message.published")
                .count()
                == 20
        })
        .await;
}
