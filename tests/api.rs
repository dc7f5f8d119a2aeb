//! The server API on one node, over real HTTP and real sockets: every operation, its effect on
//! connected clients, and its errors (RFC 9457 problems, never a 5xx).

mod common;

use std::time::Duration;

use common::api::{ApiClient, API_KEY, API_SETTINGS};
use common::{merged, now, outcome, sign, token, Client, Outcome, TestServer, SECRET};
use reqwest::Method;
use serde_json::{json, Value};

async fn server_with(extra: &[(&str, &str)]) -> TestServer {
    let settings: Vec<(&str, &str)> = API_SETTINGS.iter().chain(extra).copied().collect();
    TestServer::with(&settings).await
}

/// The next chat message a client gets, skipping other frames.
async fn next_message(client: &mut Client) -> Value {
    client
        .wait_for("message", None, Duration::from_secs(5))
        .await
}

/// A token for `sub` with extra claims (`jti`, say).
fn token_with(sub: &str, extra: Value) -> String {
    let claims = merged(json!({"sub": sub, "name": sub, "exp": now() + 3600}), extra);
    sign(&claims, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256)
}

fn assert_problem(answer: &common::api::Answer, status: u16, kind: &str) {
    assert_eq!(answer.status, status, "{}", answer.json);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{}",
        answer.json
    );
    assert_eq!(answer.json["status"], status);
    assert_eq!(answer.json["type"], format!("urn:palisade:problem:{kind}"));
    assert!(answer.json["title"].is_string() && answer.json["detail"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_reaches_every_member_numbered_and_kept() {
    let server = server_with(&[]).await;
    let api = ApiClient::of(&server);
    let mut plain = server.joined("plain", "lobby").await;
    let mut extended = server.joined_extended("ext", "lobby").await;

    let answer = api
        .post(
            "/rooms/lobby/messages",
            json!({"body": "maintenance at noon", "username": "Ops Bot", "userId": "ops"}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.json);
    assert_eq!(answer.json["room"], "lobby");
    assert_eq!(answer.json["delivered"], true);
    assert_eq!(answer.json["offset"], 1);
    let epoch = answer.json["epoch"].as_str().unwrap().to_owned();

    // GarinChat's frame to a plain client; the offset to one with the extensions.
    let mut text = plain.recv_text().await;
    while !text.contains(r#""type":"message""#) {
        text = plain.recv_text().await;
    }
    assert_eq!(
        text,
        r#"{"type":"message","body":"maintenance at noon","username":"Ops Bot","userId":"ops"}"#
    );
    let frame = next_message(&mut extended).await;
    assert_eq!(
        (frame["offset"].clone(), frame["userId"].clone()),
        (json!(1), json!("ops"))
    );

    // The default sender, and a room nobody is in: kept for whoever comes.
    let answer = api
        .post("/rooms/empty/messages", json!({"body": "hello, future"}))
        .await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.json["offset"], 1);
    let mut late = server.connect().await;
    late.auth(&token("late")).await;
    late.send_json(json!({"type": "join", "room": "empty", "history": 10}))
        .await;
    assert_eq!(late.recv_json().await["type"], "join");
    let past = next_message(&mut late).await;
    assert_eq!(
        (
            past["body"].clone(),
            past["username"].clone(),
            past["userId"].clone()
        ),
        (json!("hello, future"), json!("System"), json!("system"))
    );
    assert_eq!(past["history"], true);

    // And the history reads back through the API.
    let history = api.get("/rooms/lobby/history").await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json["epoch"], epoch);
    assert_eq!(history.json["lastOffset"], 1);
    assert_eq!(history.json["messages"][0]["body"], "maintenance at noon");
    assert_eq!(history.json["messages"][0]["userId"], "ops");
    assert!(history.json["messages"][0]["ts"].as_u64().unwrap() > 0);
    assert_eq!(history.json["next"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_to_several_rooms_and_an_idempotent_retry_delivers_once() {
    let server = server_with(&[("API_MAX_ROOMS_PER_PUBLISH", "3")]).await;
    let api = ApiClient::of(&server);
    let mut a = server.joined("alice", "room-a").await;
    let mut b = server.joined("bob", "room-b").await;

    let broadcast = json!({"rooms": ["room-a", "room-b", "room-a"], "body": "to all"});
    let answer = api.post("/messages", broadcast).await;
    assert_eq!(answer.status, 202, "{}", answer.json);
    let rooms: Vec<&str> = answer.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["room-a", "room-b"], "each room once");
    assert_eq!(next_message(&mut a).await["body"], "to all");
    assert_eq!(next_message(&mut b).await["body"], "to all");

    // At and past API_MAX_ROOMS_PER_PUBLISH.
    let three = json!({"rooms": ["r-1", "r-2", "r-3"], "body": "x"});
    assert_eq!(api.post("/messages", three).await.status, 202);
    let four = json!({"rooms": ["r-1", "r-2", "r-3", "r-4"], "body": "x"});
    assert_problem(&api.post("/messages", four).await, 400, "invalid-request");

    // The same Idempotency-Key twice: one delivery, the first answer again.
    let body = json!({"body": "exactly once"}).to_string();
    let key = [("idempotency-key", "order-42-shipped")];
    let first = api
        .send(
            Method::POST,
            "/rooms/room-a/messages",
            &key,
            Some(body.clone()),
        )
        .await;
    let again = api
        .send(Method::POST, "/rooms/room-a/messages", &key, Some(body))
        .await;
    assert_eq!((first.status, again.status), (202, 202));
    assert_eq!(first.json, again.json);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(next_message(&mut a).await["body"], "exactly once");
    a.expect_silence(Duration::from_millis(300)).await;
    // The same key with another request is refused rather than answered with the first's.
    let other = Some(json!({"body": "something else"}).to_string());
    let reused = api
        .send(Method::POST, "/rooms/room-a/messages", &key, other)
        .await;
    assert_problem(&reused, 422, "idempotency-key-reused");
    let elsewhere = Some(json!({"body": "exactly once"}).to_string());
    let reused = api
        .send(Method::POST, "/rooms/room-b/messages", &key, elsewhere)
        .await;
    assert_problem(&reused, 422, "idempotency-key-reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_session_of_the_user_and_presence_follows() {
    let server = server_with(&[]).await;
    let api = ApiClient::of(&server);
    let mut first = server.joined("alice", "lobby").await;
    let mut second = server.joined("alice", "other").await;
    let _bob = server.joined("bob", "lobby").await;

    let user = api.get("/users/alice").await;
    assert_eq!(user.status, 200);
    assert_eq!(user.json["online"], true);
    assert_eq!(user.json["sessions"], 2);

    let answer = api.post("/users/alice/disconnect", json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.json);
    assert_eq!(answer.json["closedHere"], 2);
    assert_eq!(
        first.expect_close().await,
        (4015, "disconnected by the server".into())
    );
    assert_eq!(second.expect_close().await.0, 4015);

    common::wait_until("alice offline", || {
        server.probe().user_sessions("alice") == 0
    })
    .await;
    let user = api.get("/users/alice").await;
    assert_eq!(
        (user.json["online"].clone(), user.json["sessions"].clone()),
        (json!(false), json!(0))
    );
    // A user with an unusual id, percent-encoded in the path.
    let user = api.get("/users/auth0%7C42").await;
    assert_eq!(
        (user.status, user.json["userId"].clone()),
        (200, json!("auth0|42"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_close_sessions_refuse_new_ones_and_are_listed_and_lifted() {
    let server = server_with(&[("API_MAX_BAN_SECS", "600")]).await;
    let api = ApiClient::of(&server);
    let mut mallory = server.joined("mallory", "lobby").await;

    let answer = api
        .post("/bans", json!({"user": "mallory", "durationSecs": 600}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.json);
    assert_eq!(answer.json["offender"], "user:mallory");
    let until = answer.json["untilMs"].as_u64().unwrap();
    assert!(until > now() * 1000 + 590_000, "{until}");
    assert_eq!(mallory.expect_close().await.0, 4009);
    assert_eq!(
        outcome(&server, &token("mallory")).await,
        Outcome::Refused(4009)
    );

    let past = json!({"user": "eve", "durationSecs": 601});
    assert_problem(&api.post("/bans", past).await, 400, "invalid-request");
    let both = json!({"user": "eve", "ip": "10.0.0.1", "durationSecs": 60});
    assert_problem(&api.post("/bans", both).await, 400, "invalid-request");
    let answer = api
        .post("/bans", json!({"ip": "203.0.113.7", "durationSecs": 60}))
        .await;
    assert_eq!(answer.json["offender"], "ip:203.0.113.7");

    let bans = api.get("/bans").await;
    let offenders: Vec<&str> = bans.json["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ban| ban["offender"].as_str().unwrap())
        .collect();
    assert_eq!(offenders, ["ip:203.0.113.7", "user:mallory"]);

    assert_eq!(api.delete("/bans/user:mallory").await.status, 204);
    assert_problem(&api.delete("/bans/user:mallory").await, 404, "not-found");
    assert_problem(&api.delete("/bans/host:x").await, 400, "invalid-request");
    assert!(matches!(
        outcome(&server, &token("mallory")).await,
        Outcome::Accepted { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_close_the_token_or_the_user_and_refuse_them() {
    let server = server_with(&[]).await;
    let api = ApiClient::of(&server);
    let stolen = token_with("alice", json!({"jti": "stolen-1"}));
    let fresh = token_with("alice", json!({"jti": "fresh-2"}));
    let mut with_stolen = server.connect().await;
    with_stolen.auth(&stolen).await;
    with_stolen
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(with_stolen.recv_json().await["type"], "join");
    let mut with_fresh = server.connect().await;
    with_fresh.auth(&fresh).await;
    with_fresh
        .send_json(json!({"type": "join", "room": "other"}))
        .await;
    assert_eq!(with_fresh.recv_json().await["type"], "join");

    let answer = api
        .post(
            "/revocations",
            json!({"tokenId": "stolen-1", "durationSecs": 3600}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.json);
    assert_eq!(answer.json["revoked"], "jti:stolen-1");
    assert_eq!(
        with_stolen.expect_close().await,
        (4016, "token revoked".into())
    );
    assert_eq!(outcome(&server, &stolen).await, Outcome::Refused(4002));
    // The user's other token lives on...
    with_fresh
        .expect_only_pings(Duration::from_millis(200))
        .await;
    // ...until the user is revoked.
    let answer = api
        .post("/revocations", json!({"user": "alice", "durationSecs": 60}))
        .await;
    assert_eq!(answer.status, 201);
    assert_eq!(with_fresh.expect_close().await.0, 4016);
    assert_eq!(outcome(&server, &fresh).await, Outcome::Refused(4002));

    let listed = api.get("/revocations").await;
    assert_eq!(listed.json["revocations"][0]["revoked"], "jti:stolen-1");
    assert_eq!(listed.json["revocations"][1]["revoked"], "sub:alice");
    let neither = json!({"durationSecs": 60});
    assert_problem(
        &api.post("/revocations", neither).await,
        400,
        "invalid-request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_members_and_history_are_paged() {
    let server = server_with(&[("API_MAX_PAGE", "2")]).await;
    let api = ApiClient::of(&server);
    let _a = server.joined("alice", "aaa").await;
    let _b = server.joined("bob", "bbb").await;
    let _c = server.joined("carol", "ccc").await;
    let _d = server.joined("dave", "ccc").await;
    let _e = server.joined("erin", "ccc").await;

    // API_MAX_PAGE 2: a larger limit is clamped.
    let first = api.get("/rooms?limit=50").await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(
        first.json["rooms"],
        json!([{"room": "aaa", "members": 1}, {"room": "bbb", "members": 1}])
    );
    let next = first.json["next"].as_str().unwrap().to_owned();
    let second = api.get(&format!("/rooms?cursor={next}")).await;
    assert_eq!(second.json["rooms"], json!([{"room": "ccc", "members": 3}]));
    assert_eq!(second.json["next"], Value::Null);

    let members = api.get("/rooms/ccc/members").await;
    assert_eq!(members.json["total"], 3);
    assert_eq!(
        members.json["members"],
        json!([{"userId": "carol", "username": "Carol"}, {"userId": "dave", "username": "Dave"}])
    );
    let rest = api.get("/rooms/ccc/members?after=dave").await;
    assert_eq!(
        rest.json["members"],
        json!([{"userId": "erin", "username": "Erin"}])
    );
    assert_eq!(rest.json["next"], Value::Null);

    for body in ["one", "two", "three"] {
        api.post("/rooms/ccc/messages", json!({"body": body})).await;
    }
    let page = api.get("/rooms/ccc/history?limit=2").await;
    let bodies = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["body"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(bodies(&page.json), ["one", "two"]);
    assert_eq!(page.json["next"], 2);
    let page = api.get("/rooms/ccc/history?after=2").await;
    assert_eq!(bodies(&page.json), ["three"]);
    assert_eq!(page.json["next"], Value::Null);

    assert_problem(&api.get("/rooms/nobody/members").await, 404, "not-found");
    assert_problem(&api.get("/rooms/nobody/history").await, 404, "not-found");
    assert_problem(&api.get("/rooms?limit=0").await, 400, "invalid-request");
    assert_problem(
        &api.get("/rooms/ccc/history?after=x").await,
        400,
        "invalid-request",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problems_never_a_server_error() {
    let server = server_with(&[("API_MAX_BODY_BYTES", "1024")]).await;
    let api = ApiClient::of(&server);

    // Credentials: missing, wrong, or only in the URL.
    assert_problem(
        &api.with_credential(None).get("/rooms").await,
        401,
        "unauthorized",
    );
    let wrong = api.with_credential(Some("not-the-key-0123456789abcdef0123456789"));
    assert_problem(&wrong.get("/rooms").await, 401, "unauthorized");
    let in_url = api
        .with_credential(None)
        .get(&format!("/rooms?api_key={API_KEY}&access_token={API_KEY}"))
        .await;
    assert_problem(&in_url, 401, "unauthorized");

    let publish = "/rooms/lobby/messages";
    let raw = |body: &str| Some(body.to_owned());
    assert_problem(
        &api.send(Method::POST, publish, &[], raw("{")).await,
        400,
        "invalid-json",
    );
    assert_problem(
        &api.send(Method::POST, publish, &[], raw("[]")).await,
        400,
        "invalid-json",
    );
    let unknown = json!({"body": "x", "sudo": true});
    assert_problem(&api.post(publish, unknown).await, 400, "invalid-json");
    assert_problem(
        &api.post(publish, json!({"body": 7})).await,
        400,
        "invalid-json",
    );
    assert_problem(
        &api.post(publish, json!({"body": ""})).await,
        400,
        "invalid-request",
    );
    let bad_name = json!({"body": "x", "username": "\u{200b}"});
    assert_problem(&api.post(publish, bad_name).await, 400, "invalid-request");
    let bad_room = "/rooms/no%20spaces/messages";
    assert_problem(
        &api.post(bad_room, json!({"body": "x"})).await,
        400,
        "invalid-request",
    );
    // At and past API_MAX_BODY_BYTES.
    let fits = json!({"body": "x".repeat(1024 - 11)}).to_string();
    assert_eq!(fits.len(), 1024);
    assert_eq!(
        api.send(Method::POST, publish, &[], Some(fits))
            .await
            .status,
        202
    );
    let over = json!({"body": "x".repeat(1024 - 10)}).to_string();
    assert_problem(
        &api.send(Method::POST, publish, &[], Some(over)).await,
        413,
        "body-too-large",
    );
    let not_json = api
        .with_credential(Some(API_KEY))
        .send(
            Method::POST,
            publish,
            &[("content-type", "text/plain")],
            None,
        )
        .await;
    assert_eq!(not_json.status, 400, "an empty body is not a message");
    let key = [("idempotency-key", "with space")];
    let answer = api
        .send(Method::POST, publish, &key, raw(r#"{"body":"x"}"#))
        .await;
    assert_problem(&answer, 400, "invalid-request");

    assert_problem(&api.get("/nothing/here").await, 404, "not-found");
    assert_problem(&api.get("/users/%FF").await, 404, "not-found");
    let wrong_method = api.delete("/rooms").await;
    assert_problem(&wrong_method, 405, "method-not-allowed");
    assert_eq!(wrong_method.header("allow"), Some("GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_has_its_own_rate() {
    let other_key = "another-key-0123456789abcdef-0123456789";
    let keys = format!("{API_KEY},{other_key}");
    let server = TestServer::with(&[
        ("API_KEYS", keys.as_str()),
        ("API_RATE_PER_SEC", "1"),
        ("API_BURST", "2"),
    ])
    .await;
    let api = ApiClient::of(&server);
    assert_eq!(api.get("/bans").await.status, 200);
    assert_eq!(api.get("/bans").await.status, 200, "at API_BURST");
    let over = api.get("/bans").await;
    assert_problem(&over, 429, "rate-limited");
    assert!(over.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // The other key is not held back by the first's calls.
    let other = api.with_credential(Some(other_key));
    assert_eq!(other.get("/bans").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_need_the_api_audience_and_the_scope() {
    let server = TestServer::with(&[
        ("API_JWT_SCOPE", "chat:admin"),
        ("API_JWT_AUDIENCE", "palisade-api"),
    ])
    .await;
    let api = ApiClient::of(&server);
    let access = |claims: Value| {
        let claims = merged(json!({"sub": "backend", "exp": now() + 600}), claims);
        sign(&claims, SECRET.as_bytes(), jsonwebtoken::Algorithm::HS256)
    };
    let good = access(json!({"aud": "palisade-api", "scope": "openid chat:admin"}));
    assert_eq!(
        api.with_credential(Some(&good)).get("/bans").await.status,
        200
    );
    let scp = access(json!({"aud": "palisade-api", "scp": ["chat:admin"]}));
    assert_eq!(
        api.with_credential(Some(&scp)).get("/bans").await.status,
        200
    );
    let role = access(json!({"aud": ["other", "palisade-api"], "roles": ["chat:admin"]}));
    assert_eq!(
        api.with_credential(Some(&role)).get("/bans").await.status,
        200
    );

    let no_scope = access(json!({"aud": "palisade-api", "scope": "openid"}));
    assert_problem(
        &api.with_credential(Some(&no_scope)).get("/bans").await,
        403,
        "forbidden",
    );
    let chat_audience = access(json!({"aud": "chat", "scope": "chat:admin"}));
    let answer = api.with_credential(Some(&chat_audience)).get("/bans").await;
    assert_problem(&answer, 401, "unauthorized");
    // A chat user's token (no audience) is not an API credential.
    let user = token("alice");
    assert_problem(
        &api.with_credential(Some(&user)).get("/bans").await,
        401,
        "unauthorized",
    );
    let expired = access(json!({"aud": "palisade-api", "scope": "chat:admin", "exp": 1}));
    assert_problem(
        &api.with_credential(Some(&expired)).get("/bans").await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_the_key_file_and_no_credential_means_no_api() {
    let off = TestServer::start().await;
    assert_eq!(
        off.running.api_addr(),
        None,
        "no credential: no API listener"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-keys");
    let old_key = "old-key-0123456789abcdef-0123456789abcdef";
    let new_key = "new-key-0123456789abcdef-0123456789abcdef";
    std::fs::write(&file, format!("# the backend's key\n{old_key}\n")).unwrap();
    let server = TestServer::with(&[
        ("API_KEYS_FILE", file.to_str().unwrap()),
        ("HOUSEKEEPING_INTERVAL_MS", "50"),
    ])
    .await;
    let api = ApiClient::of(&server);
    assert_eq!(
        api.with_credential(Some(old_key)).get("/bans").await.status,
        200
    );
    // Both during the rotation, then only the new one.
    std::thread::sleep(Duration::from_millis(20)); // a later modification time
    std::fs::write(&file, format!("{old_key}\n{new_key}\n")).unwrap();
    let mut waited = 0;
    while api.with_credential(Some(new_key)).get("/bans").await.status != 200 {
        waited += 1;
        assert!(waited < 100, "the new key was never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        api.with_credential(Some(old_key)).get("/bans").await.status,
        200
    );
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, format!("{new_key}\n")).unwrap();
    let mut waited = 0;
    while api.with_credential(Some(old_key)).get("/bans").await.status != 401 {
        waited += 1;
        assert!(waited < 100, "the old key was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        api.with_credential(Some(new_key)).get("/bans").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_whose_requests_keep_being_refused_is_held_back() {
    let server = server_with(&[("API_RATE_PER_SEC", "1"), ("API_BURST", "3")]).await;
    let api = ApiClient::of(&server);
    let guess = api.with_credential(Some("guess-0123456789abcdef-0123456789abcdef"));
    for _ in 0..3 {
        assert_problem(&guess.get("/bans").await, 401, "unauthorized");
    }
    // Past API_BURST refusals, the address is held back, whatever it sends.
    let held = guess.get("/bans").await;
    assert_problem(&held, 429, "rate-limited");
    assert!(held.header("retry-after").is_some());
    assert_eq!(
        api.get("/bans").await.status,
        429,
        "even with the right key, for a while"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(api.get("/bans").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_null_is_refused_like_any_wrong_type() {
    let server = server_with(&[]).await;
    let api = ApiClient::of(&server);
    for (path, body) in [
        (
            "/rooms/lobby/messages",
            json!({"body": "x", "username": null}),
        ),
        (
            "/messages",
            json!({"rooms": ["lobby"], "body": "x", "userId": null}),
        ),
        (
            "/bans",
            json!({"user": null, "ip": "10.0.0.1", "durationSecs": 60}),
        ),
        (
            "/revocations",
            json!({"tokenId": null, "user": "alice", "durationSecs": 60}),
        ),
    ] {
        assert_problem(&api.post(path, body).await, 400, "invalid-json");
    }
}
