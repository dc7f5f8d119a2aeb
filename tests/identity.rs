//! Third-party identity providers: JWKS keys by kid, rotation, outages, several issuers, the
//! claim layouts of Auth0, Keycloak, Firebase and Clerk, rooms claims, refresh and revocation.

mod common;

use std::time::{Duration, Instant};

use common::jwks::{sign_as, sign_with, JwksServer, Mode};
use common::{accepted, merged, now, outcome, sign, Outcome, TestServer, SECRET};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test/";

const REFUSED: Outcome = Outcome::Refused(4002);

fn claims(extra: Value) -> Value {
    merged(
        json!({"iss": ISSUER, "aud": "chat", "sub": "alice", "name": "Alice", "exp": now() + 600}),
        extra,
    )
}

/// A gateway trusting `jwks` for ISSUER, ready (its keys loaded).
async fn gateway_for(jwks: &JwksServer, extra: &[(&str, &str)]) -> TestServer {
    let mut settings = vec![
        ("JWKS_URL", jwks.url.as_str()),
        ("JWT_ISSUER", ISSUER),
        ("JWT_AUDIENCE", "chat"),
        ("JWT_ALGORITHMS", "RS256,ES256"),
        ("JWT_DECODE_SECRET", ""),
        ("JWKS_REFETCH_COOLDOWN_SECS", "1"),
        ("JWKS_TIMEOUT_MS", "500"),
    ];
    settings.extend_from_slice(extra);
    let server = TestServer::with(&settings).await;
    server.wait_ready().await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_verify_by_kid() {
    let jwks = JwksServer::start(&["rsa-1", "ec-1"]).await;
    let server = gateway_for(&jwks, &[]).await;
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &claims(json!({})))).await,
        accepted("Alice", "alice")
    );
    assert_eq!(
        outcome(&server, &sign_with("ec-1", &claims(json!({})))).await,
        accepted("Alice", "alice")
    );
    // Signed with another key under a known kid.
    let forged = sign_as(
        "rsa-1",
        Algorithm::RS256,
        "rsa2_private.pem",
        &claims(json!({})),
    );
    assert_eq!(outcome(&server, &forged).await, REFUSED);
    // A kid whose key is of another type than the token's alg.
    let mismatched = sign_as(
        "ec-1",
        Algorithm::RS256,
        "rsa_private.pem",
        &claims(json!({})),
    );
    assert_eq!(outcome(&server, &mismatched).await, REFUSED);
    // The key's own alg binds: RS512 with an RS256 key is refused even if the signature fits.
    let server512 = gateway_for(&jwks, &[("JWT_ALGORITHMS", "RS256,RS512")]).await;
    let rs512 = sign_as(
        "rsa-1",
        Algorithm::RS512,
        "rsa_private.pem",
        &claims(json!({})),
    );
    assert_eq!(outcome(&server512, &rs512).await, REFUSED);
    // Wrong or missing issuer.
    let other_iss = sign_with("rsa-1", &claims(json!({"iss": "https://evil.test/"})));
    assert_eq!(outcome(&server, &other_iss).await, REFUSED);
    let no_iss = sign_with("rsa-1", &claims(json!({"iss": null})));
    assert_eq!(outcome(&server, &no_iss).await, REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_key_set() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    jwks.set_mode(Mode::Fail);
    let server = TestServer::with(&[
        ("JWKS_URL", jwks.url.as_str()),
        ("JWT_ISSUER", ISSUER),
        ("JWT_AUDIENCE", "chat"),
        ("JWT_DECODE_SECRET", ""),
        ("JWKS_REFETCH_COOLDOWN_SECS", "1"),
        ("JWKS_TIMEOUT_MS", "500"),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gateway = server.running.gateway();
    assert!(!gateway.is_ready(), "not ready without keys");
    let head = common::raw::http(server.addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(common::raw::status(&head), 503);
    jwks.set_mode(Mode::Serve);
    server.wait_ready().await;
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &claims(json!({})))).await,
        accepted("Alice", "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_and_removed_ones_refused() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(&jwks, &[]).await;
    let old = sign_with("rsa-1", &claims(json!({})));
    assert_eq!(outcome(&server, &old).await, accepted("Alice", "alice"));

    // The provider rotates: rsa-2 appears and rsa-1 is withdrawn.
    jwks.set_keys(&["rsa-2"]);
    let before = jwks.requests();
    let new = sign_with("rsa-2", &claims(json!({})));
    assert_eq!(
        outcome(&server, &new).await,
        accepted("Alice", "alice"),
        "unknown kid → refetch"
    );
    assert_eq!(jwks.requests(), before + 1);
    assert_eq!(outcome(&server, &old).await, REFUSED, "withdrawn key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(&jwks, &[("JWKS_REFETCH_COOLDOWN_SECS", "30")]).await;
    let before = jwks.requests();
    let started = Instant::now();
    let attempts: Vec<_> = (0..40)
        .map(|n| {
            let token = sign_as(
                &format!("made-up-{n}"),
                Algorithm::RS256,
                "rsa_private.pem",
                &claims(json!({})),
            );
            let url = server.url();
            tokio::spawn(async move {
                let mut client = common::Client::connect(&url, Some(common::ORIGIN)).await;
                client.auth(&token).await;
                client.expect_close().await.0
            })
        })
        .collect();
    for attempt in attempts {
        assert_eq!(attempt.await.unwrap(), 4002);
    }
    assert!(
        jwks.requests() <= before + 1,
        "{} fetches",
        jwks.requests() - before
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Known keys keep working throughout.
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &claims(json!({})))).await,
        accepted("Alice", "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_keys_survive_an_endpoint_that_fails_hangs_or_returns_garbage() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(&jwks, &[]).await;
    let known = sign_with("rsa-1", &claims(json!({})));
    for mode in [Mode::Fail, Mode::Garbage, Mode::Hang] {
        jwks.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(1100)).await; // past the cooldown
        let unknown = sign_as(
            "rotated",
            Algorithm::RS256,
            "rsa2_private.pem",
            &claims(json!({})),
        );
        let started = Instant::now();
        assert_eq!(outcome(&server, &unknown).await, REFUSED, "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{mode:?}: bounded by JWKS_TIMEOUT_MS"
        );
        assert_eq!(
            outcome(&server, &known).await,
            accepted("Alice", "alice"),
            "{mode:?}"
        );
    }
    assert!(server.probe().is_ready(), "keys once loaded stay loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs_tokens_signed_with_the_public_key_are_refused() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(&jwks, &[]).await;
    let public = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa_public.pem"
    ))
    .unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(outcome(&server, &confused).await, REFUSED);
    // An issuer's keys without an audience or azp check would accept tokens meant for any
    // of its applications: refused unless explicitly allowed.
    let open = [
        ("ALLOWED_ORIGINS", "x"),
        ("JWKS_URL", jwks.url.as_str()),
        ("JWT_ISSUER", ISSUER),
    ];
    assert!(palisade::Settings::from_pairs(open)
        .unwrap_err()
        .to_string()
        .contains("JWT_AUDIENCE"));
    let mut allowed = open.to_vec();
    allowed.push(("JWT_ACCEPT_ANY_AUDIENCE", "true"));
    assert!(palisade::Settings::from_pairs(allowed).is_ok());
    // And a JWKS cannot be combined with HS algorithms at all.
    let refused = palisade::Settings::from_pairs([
        ("ALLOWED_ORIGINS", "x"),
        ("JWKS_URL", jwks.url.as_str()),
        ("JWT_ISSUER", ISSUER),
        ("JWT_ALGORITHMS", "HS256"),
    ]);
    assert!(refused.unwrap_err().to_string().contains("JWT_ALGORITHMS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issuer_is_verified_only_with_its_own_keys() {
    let a = JwksServer::start(&["rsa-1"]).await;
    let b = JwksServer::start(&["ec-1"]).await;
    let issuers = json!([
        {"issuer": "https://a.test/", "jwks_url": a.url, "audience": "chat", "user_id_prefix": "a:"},
        {"issuer": "https://b.test/", "jwks_url": b.url, "azp": "web", "user_id_prefix": "b:"},
    ])
    .to_string();
    let server = TestServer::with(&[
        ("TRUSTED_ISSUERS", &issuers),
        ("JWT_ALGORITHMS", "RS256,ES256"),
        ("JWT_DECODE_SECRET", ""),
        ("JWKS_REFETCH_COOLDOWN_SECS", "1"),
        ("JWKS_TIMEOUT_MS", "500"),
    ])
    .await;
    server.wait_ready().await;
    let from_a = claims(json!({"iss": "https://a.test/", "aud": "chat"}));
    let from_b = claims(json!({"iss": "https://b.test/", "aud": null, "azp": "web"}));
    // The same `sub` at two issuers is two users.
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &from_a)).await,
        accepted("Alice", "a:alice")
    );
    assert_eq!(
        outcome(&server, &sign_with("ec-1", &from_b)).await,
        accepted("Alice", "b:alice")
    );
    let other_client = claims(json!({"iss": "https://b.test/", "aud": null, "azp": "other"}));
    assert_eq!(
        outcome(&server, &sign_with("ec-1", &other_client)).await,
        REFUSED
    );
    // A's key presented as B's token, and B's as A's: refused.
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &from_b)).await,
        REFUSED
    );
    assert_eq!(outcome(&server, &sign_with("ec-1", &from_a)).await, REFUSED);
    // A's audience applies to A only.
    let wrong_aud = claims(json!({"iss": "https://a.test/", "aud": "other"}));
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &wrong_aud)).await,
        REFUSED
    );
    let unknown_issuer = claims(json!({"iss": "https://c.test/"}));
    assert_eq!(
        outcome(&server, &sign_with("rsa-1", &unknown_issuer)).await,
        REFUSED
    );
}

/// Tokens shaped as each provider issues them authenticate with the settings in docs/IDP.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth0_keycloak_firebase_and_clerk_tokens_authenticate() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let now = now();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Value, Outcome);
    let cases: [Case; 4] = [
        (
            "Auth0",
            vec![
                ("JWT_ISSUER", "https://example.eu.auth0.com/"),
                ("JWT_AUDIENCE", "https://chat.example.com/api"),
            ],
            json!({
                "iss": "https://example.eu.auth0.com/", "sub": "auth0|64f1c2",
                "aud": ["https://chat.example.com/api", "https://example.eu.auth0.com/userinfo"],
                "iat": now, "exp": now + 86400, "azp": "kq2Xc", "scope": "openid profile",
                "name": "Ada Lovelace", "nickname": "ada"
            }),
            accepted("Ada Lovelace", "auth0|64f1c2"),
        ),
        (
            "Keycloak",
            vec![
                ("JWT_ISSUER", "https://sso.example.com/realms/chat"),
                ("JWT_ALLOWED_AZP", "chat-web"),
                ("USERNAME_CLAIM", "preferred_username"),
            ],
            json!({
                "iss": "https://sso.example.com/realms/chat", "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
                "aud": "account", "azp": "chat-web", "typ": "Bearer", "exp": now + 300, "iat": now,
                "preferred_username": "grace", "email": "grace@example.com", "realm_access": {"roles": ["user"]}
            }),
            accepted("grace", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
        ),
        (
            "Firebase",
            vec![
                ("JWT_ISSUER", "https://securetoken.google.com/chat-prod"),
                ("JWT_AUDIENCE", "chat-prod"),
            ],
            json!({
                "iss": "https://securetoken.google.com/chat-prod", "aud": "chat-prod",
                "auth_time": now, "user_id": "Xq9uid", "sub": "Xq9uid", "iat": now, "exp": now + 3600,
                "name": "Linus", "firebase": {"identities": {}, "sign_in_provider": "password"}
            }),
            accepted("Linus", "Xq9uid"),
        ),
        (
            "Clerk",
            vec![
                ("JWT_ISSUER", "https://clean-fox-12.clerk.accounts.dev"),
                ("JWT_ALLOWED_AZP", "https://chat.example.com"),
            ],
            json!({
                "iss": "https://clean-fox-12.clerk.accounts.dev", "sub": "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",
                "azp": "https://chat.example.com", "sid": "sess_2NN", "iat": now, "nbf": now - 10, "exp": now + 60
            }),
            accepted(
                "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",
                "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",
            ),
        ),
    ];
    for (provider, settings, token_claims, expected) in cases {
        let mut all = vec![
            ("JWKS_URL", jwks.url.as_str()),
            ("JWT_ALGORITHMS", "RS256"),
            ("JWT_DECODE_SECRET", ""),
        ];
        all.extend(settings.iter().copied());
        let server = TestServer::with(&all).await;
        server.wait_ready().await;
        assert_eq!(
            outcome(&server, &sign_with("rsa-1", &token_claims)).await,
            expected,
            "{provider}"
        );
        // The same token with another azp (where checked) or issuer is refused.
        let mut tampered = token_claims.clone();
        tampered["iss"] = json!("https://evil.test/");
        assert_eq!(
            outcome(&server, &sign_with("rsa-1", &tampered)).await,
            REFUSED,
            "{provider}"
        );
        if token_claims.get("azp").is_some()
            && settings.iter().any(|(k, _)| *k == "JWT_ALLOWED_AZP")
        {
            let mut other_client = token_claims.clone();
            other_client["azp"] = json!("https://evil.example.com");
            assert_eq!(
                outcome(&server, &sign_with("rsa-1", &other_client)).await,
                REFUSED,
                "{provider} azp"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_user_id_claim_and_required_claims() {
    let server =
        TestServer::with(&[("USER_ID_CLAIM", "uid"), ("JWT_REQUIRED_CLAIMS", "email")]).await;
    let token = |extra: Value| sign(&claims(extra), SECRET.as_bytes(), Algorithm::HS256);
    assert_eq!(
        outcome(
            &server,
            &token(json!({"uid": "u-7", "email": "a@x", "sub": null}))
        )
        .await,
        accepted("Alice", "u-7")
    );
    assert_eq!(
        outcome(&server, &token(json!({"uid": "u-7"}))).await,
        REFUSED,
        "no email"
    );
    assert_eq!(
        outcome(&server, &token(json!({"email": "a@x"}))).await,
        REFUSED,
        "no uid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_limits_joins() {
    let server = TestServer::with(&[("ROOMS_CLAIM", "rooms")]).await;
    let token = sign(
        &claims(json!({"rooms": ["lobby", "team-*"]})),
        SECRET.as_bytes(),
        Algorithm::HS256,
    );
    let mut client = server.connect().await;
    client.auth(&token).await;
    for room in ["lobby", "team-red"] {
        client
            .send_json(json!({"type": "join", "room": room}))
            .await;
        assert_eq!(client.recv_json().await["type"], "join", "{room}");
        client.send_json(json!({"type": "userleave"})).await;
    }
    client
        .send_json(json!({"type": "join", "room": "secret"}))
        .await;
    assert_eq!(
        client.expect_close().await,
        (4014, "room not allowed".into())
    );
    // A token without the claim may join nothing.
    let bare = sign(&claims(json!({})), SECRET.as_bytes(), Algorithm::HS256);
    assert_eq!(outcome(&server, &bare).await, Outcome::Refused(4014));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_for_the_same_user_extends_the_session() {
    let server = TestServer::with(&[("JWT_LEEWAY_SECS", "0")]).await;
    let short = |sub: &str, ttl: u64| {
        sign(
            &claims(json!({"sub": sub, "exp": now() + ttl})),
            SECRET.as_bytes(),
            Algorithm::HS256,
        )
    };
    let mut client = server.connect().await;
    client.auth(&short("alice", 2)).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    client.recv_json().await;
    client.auth(&short("alice", 60)).await; // the refresh
    tokio::time::sleep(Duration::from_millis(3000)).await; // past the first token's expiry
    client
        .send_json(json!({"type": "message", "body": "still here"}))
        .await;
    server.wait_members("lobby", 1).await;
    assert_eq!(server.probe().member_count("lobby"), 1, "still in the room");

    // Another user's token is refused, and ends the session.
    client.auth(&short("mallory", 60)).await;
    assert_eq!(client.expect_close().await.0, 4002);
    server.wait_members("lobby", 0).await;
    // So is a bad refresh.
    let mut other = server.joined("bob", "lobby").await;
    other.auth("not.a.token").await;
    assert_eq!(other.expect_close().await.0, 4002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_and_subjects_are_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked.txt");
    std::fs::write(&file, "# revoked tokens\njti stolen-1\n").unwrap();
    let server = TestServer::with(&[
        ("REVOCATION_FILE", file.to_str().unwrap()),
        ("HOUSEKEEPING_INTERVAL_MS", "100"),
    ])
    .await;
    let token = |extra: Value| sign(&claims(extra), SECRET.as_bytes(), Algorithm::HS256);
    assert_eq!(
        outcome(&server, &token(json!({"jti": "stolen-1"}))).await,
        REFUSED
    );
    assert_eq!(
        outcome(&server, &token(json!({"jti": "fine-2"}))).await,
        accepted("Alice", "alice")
    );
    // Revoke the user by editing the file; no restart.
    tokio::time::sleep(Duration::from_millis(20)).await; // a new mtime
    std::fs::write(&file, format!("jti stolen-1\nsub alice {}\n", now() + 3600)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while outcome(&server, &token(json!({"jti": "fine-3"}))).await != REFUSED {
        assert!(Instant::now() < deadline, "revocation not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A missing file is a configuration error, not silently nothing revoked.
    let missing = palisade::Settings::from_pairs([
        ("ALLOWED_ORIGINS", "x"),
        ("JWT_DECODE_SECRET", "y"),
        ("REVOCATION_FILE", "/nonexistent/revoked.txt"),
    ])
    .unwrap();
    let err = palisade::Gateway::new(&missing)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("REVOCATION_FILE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_deadline_holds_while_waiting_for_keys() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(
        &jwks,
        &[("AUTH_TIMEOUT_MS", "1000"), ("JWKS_TIMEOUT_MS", "900")],
    )
    .await;
    jwks.set_mode(Mode::Hang);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refetch cooldown
    let mut client = server.connect().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unknown = sign_as(
        "new-kid",
        Algorithm::RS256,
        "rsa2_private.pem",
        &claims(json!({})),
    );
    client.auth(&unknown).await;
    assert_eq!(
        client.expect_close().await.0,
        4001,
        "the deadline, not the fetch, decides"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_hanging_key_fetch() {
    let jwks = JwksServer::start(&["rsa-1"]).await;
    let server = gateway_for(
        &jwks,
        &[
            ("JWKS_REFRESH_SECS", "1"),
            ("AUTH_TIMEOUT_MS", "60000"),
            ("JWKS_REFETCH_COOLDOWN_SECS", "60"),
            ("JWKS_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    jwks.set_mode(Mode::Hang);
    let before = jwks.requests();
    while jwks.requests() == before {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A refresh is now hanging for up to 30 s; shutdown must not wait for it.
    server.shutdown_within(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_expiry_does_not_break_the_session() {
    let server = TestServer::start().await;
    let token = sign(
        &claims(json!({"exp": 10_000_000_000_000_000_000u64})),
        SECRET.as_bytes(),
        Algorithm::HS256,
    );
    assert_eq!(outcome(&server, &token).await, accepted("Alice", "alice"));
    server.assert_serves().await;
}
