//! Every JWT refusal GarinChat got wrong, and the ways tokens are accepted, over real sockets.

mod common;

use base64::Engine;
use common::{accepted, merged, now, outcome, sign, Outcome, TestServer, SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn claims(extra: Value) -> Value {
    merged(
        json!({"sub": "alice", "name": "Alice", "exp": now() + 600}),
        extra,
    )
}

fn hs256(extra: Value) -> String {
    sign(&claims(extra), SECRET.as_bytes(), Algorithm::HS256)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn alice() -> Outcome {
    accepted("Alice", "alice")
}

const REFUSED: Outcome = Outcome::Refused(4002);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_is_accepted_and_names_the_user() {
    let server = TestServer::start().await;
    assert_eq!(outcome(&server, &hs256(json!({}))).await, alice());
    // No name claim: the display name falls back to the subject.
    assert_eq!(
        outcome(&server, &hs256(json!({"name": null}))).await,
        accepted("alice", "alice")
    );
    let custom = TestServer::with(&[("USERNAME_CLAIM", "preferred_username")]).await;
    assert_eq!(
        outcome(&custom, &hs256(json!({"preferred_username": "ally"}))).await,
        accepted("ally", "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_not_before_respect_a_small_leeway() {
    let server = TestServer::with(&[("JWT_LEEWAY_SECS", "5")]).await;
    let now = now();
    assert_eq!(
        outcome(&server, &hs256(json!({"exp": now - 60}))).await,
        REFUSED
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"exp": now - 2}))).await,
        alice()
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"exp": null}))).await,
        REFUSED
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"exp": "tomorrow"}))).await,
        REFUSED
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"nbf": now + 60}))).await,
        REFUSED
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"nbf": now + 2}))).await,
        alice()
    );
    assert_eq!(
        outcome(&server, &hs256(json!({"nbf": "later"}))).await,
        REFUSED
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_is_required() {
    let server = TestServer::start().await;
    assert_eq!(
        outcome(&server, &hs256(json!({"sub": null}))).await,
        REFUSED
    );
    assert_eq!(outcome(&server, &hs256(json!({"sub": ""}))).await, REFUSED);
    assert_eq!(outcome(&server, &hs256(json!({"sub": 42}))).await, REFUSED);
    assert_eq!(
        outcome(&server, &hs256(json!({"sub": "x".repeat(257)}))).await,
        REFUSED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_tokens_are_refused() {
    let server = TestServer::start().await;
    let good = hs256(json!({}));
    let parts: Vec<&str> = good.split('.').collect();

    let wrong_key = sign(&claims(json!({})), b"not-the-secret", Algorithm::HS256);
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(json!({"sub": "admin"})).to_string().as_bytes()),
        parts[2]
    );
    let mut signature = parts[2].to_owned();
    let last = if signature.ends_with('A') { "B" } else { "A" };
    signature.replace_range(signature.len() - 1.., last);
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], signature);
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    for (what, token) in [
        ("wrong key", wrong_key),
        ("tampered payload", tampered_payload),
        ("tampered signature", tampered_signature),
        ("alg none", alg_none),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.{}", parts[2])),
        (
            "bad base64",
            format!("{}.{}!!.{}", parts[0], parts[1], parts[2]),
        ),
        ("empty", String::new()),
        ("garbage", "not a token at all".into()),
    ] {
        assert_eq!(outcome(&server, &token).await, REFUSED, "{what}");
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithms_are_pinned_by_config() {
    let server = TestServer::start().await; // HS256 only
    let hs384 = sign(&claims(json!({})), SECRET.as_bytes(), Algorithm::HS384);
    assert_eq!(outcome(&server, &hs384).await, REFUSED);
    let both = TestServer::with(&[("JWT_ALGORITHMS", "HS256, HS384")]).await;
    assert_eq!(outcome(&both, &hs384).await, alice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crit_headers_are_refused_and_key_url_headers_ignored() {
    let server = TestServer::start().await;
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".into()]);
    let crit = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(outcome(&server, &crit).await, REFUSED);

    // A token pointing at an attacker's key set, or carrying the attacker's key or
    // certificate: the header is never followed.
    let mut header = Header::new(Algorithm::HS256);
    header.jku = Some("http://127.0.0.1:9/keys.json".into());
    header.x5u = Some("http://127.0.0.1:9/cert.pem".into());
    header.x5c = Some(vec!["MIIBattackercert".into()]);
    header.jwk = Some(
        serde_json::from_value(json!({"kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"attacker")}))
            .unwrap(),
    );
    let attacker = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(b"attacker"),
    )
    .unwrap();
    assert_eq!(outcome(&server, &attacker).await, REFUSED);
    let honest = jsonwebtoken::encode(
        &header,
        &claims(json!({})),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(outcome(&server, &honest).await, alice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_length_is_capped_before_decoding() {
    // Find a padded token of an exact length, then allow exactly that length and one less.
    let token = hs256(json!({"pad": "p".repeat(300)}));
    let len = token.len().to_string();
    let shorter = (token.len() - 1).to_string();
    let at_limit = TestServer::with(&[("MAX_TOKEN_BYTES", &len)]).await;
    assert_eq!(outcome(&at_limit, &token).await, alice());
    let past_limit = TestServer::with(&[("MAX_TOKEN_BYTES", &shorter)]).await;
    assert_eq!(outcome(&past_limit, &token).await, REFUSED);

    // An 8 MiB token never gets near the decoder: the message limit stops it (1009).
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.auth(&"a".repeat(8 << 20)).await;
    assert_eq!(client.expect_close().await.0, 1009);
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_required_when_configured() {
    let server = TestServer::with(&[
        ("JWT_ISSUER", "https://idp.test/"),
        ("JWT_AUDIENCE", "palisade"),
    ])
    .await;
    let iss = "https://idp.test/";
    assert_eq!(
        outcome(&server, &hs256(json!({"iss": iss, "aud": "palisade"}))).await,
        alice()
    );
    assert_eq!(
        outcome(
            &server,
            &hs256(json!({"iss": iss, "aud": ["other", "palisade"]}))
        )
        .await,
        alice()
    );
    for (what, extra) in [
        ("no iss", json!({"aud": "palisade"})),
        (
            "wrong iss",
            json!({"iss": "https://evil.test/", "aud": "palisade"}),
        ),
        ("no aud", json!({"iss": iss})),
        ("wrong aud", json!({"iss": iss, "aud": "other"})),
    ] {
        assert_eq!(outcome(&server, &hs256(extra)).await, REFUSED, "{what}");
    }
    // Without JWT_AUDIENCE, an aud in the token is not checked (GarinChat tokens may carry one).
    let lenient = TestServer::start().await;
    assert_eq!(
        outcome(&lenient, &hs256(json!({"aud": "anything"}))).await,
        alice()
    );
}

fn private_key(file: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_ed_pem(&pem).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_algorithms_verify_with_the_configured_pem() {
    for (alg, name, private, public) in [
        (
            Algorithm::RS256,
            "RS256",
            "rsa_private.pem",
            "rsa_public.pem",
        ),
        (
            Algorithm::PS256,
            "PS256",
            "rsa_private.pem",
            "rsa_public.pem",
        ),
        (Algorithm::ES256, "ES256", "ec_private.pem", "ec_public.pem"),
        (Algorithm::EdDSA, "EdDSA", "ed_private.pem", "ed_public.pem"),
    ] {
        let key_file = format!("{FIXTURES}/{public}");
        let server = TestServer::with(&[
            ("JWT_ALGORITHMS", name),
            ("JWT_PUBLIC_KEY_FILE", &key_file),
            ("JWT_DECODE_SECRET", ""),
        ])
        .await;
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &claims(json!({})),
            &private_key(private, alg),
        )
        .unwrap();
        assert_eq!(outcome(&server, &token).await, alice(), "{name}");
        let expired = jsonwebtoken::encode(
            &Header::new(alg),
            &claims(json!({"exp": now() - 60})),
            &private_key(private, alg),
        )
        .unwrap();
        assert_eq!(outcome(&server, &expired).await, REFUSED, "{name} expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs_token_signed_with_the_public_key_is_refused() {
    let public_pem = std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap();
    let key_file = format!("{FIXTURES}/rsa_public.pem");
    let server = TestServer::with(&[
        ("JWT_ALGORITHMS", "RS256"),
        ("JWT_PUBLIC_KEY_FILE", &key_file),
    ])
    .await;
    let confused = sign(&claims(json!({})), &public_pem, Algorithm::HS256);
    assert_eq!(outcome(&server, &confused).await, REFUSED);
    let honest = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(json!({})),
        &private_key("rsa_private.pem", Algorithm::RS256),
    )
    .unwrap();
    assert_eq!(outcome(&server, &honest).await, alice());
}
