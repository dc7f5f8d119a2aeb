//! The session's deadlines and timers, driven over in-memory sockets on tokio's paused clock:
//! minutes of protocol time in milliseconds of wall time.

use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use tokio::io::DuplexStream;

use crate::auth::mint::{mint_hs_token, TokenRequest};
use crate::config::Secret;
use crate::settings::Settings;
use crate::testing::{connect_in_memory, Version};
use crate::CloseCode;

const SECRET: &str = "session-test-secret";

fn gateway(extra: &[(&str, &str)]) -> std::sync::Arc<crate::Gateway> {
    let mut pairs = vec![
        ("ALLOWED_ORIGINS", "*"),
        ("JWT_DECODE_SECRET", SECRET),
        ("JWT_LEEWAY_SECS", "0"),
    ];
    pairs.extend_from_slice(extra);
    crate::testing::gateway(&Settings::from_pairs(pairs).expect("valid settings"))
}

fn token(sub: &str, ttl: Duration) -> String {
    let mut request = TokenRequest::new(sub);
    request.ttl = ttl;
    mint_hs_token(&Secret::new(SECRET), &request).unwrap()
}

async fn send(client: &mut WebSocket<DuplexStream>, json: String) {
    client
        .write_frame(Frame::text(Payload::Owned(json.into_bytes())))
        .await
        .unwrap();
}

async fn auth(client: &mut WebSocket<DuplexStream>, token: &str) {
    send(client, format!(r#"{{"type":"auth","body":"{token}"}}"#)).await;
}

async fn join(client: &mut WebSocket<DuplexStream>) {
    send(client, r#"{"type":"join","room":"lobby"}"#.to_owned()).await;
}

/// Reads until the server's close frame; its code. A session that never closes fails the
/// test after a (paused) day.
async fn close_code(client: &mut WebSocket<DuplexStream>) -> u16 {
    let close = async {
        loop {
            let frame = client.read_frame().await.expect("a close frame first");
            if frame.opcode == OpCode::Close {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(86_400), close)
        .await
        .expect("the session closed")
}

/// Connects a client to a fresh gateway with `extra` settings.
fn connect(extra: &[(&str, &str)]) -> WebSocket<DuplexStream> {
    let gateway = gateway(extra);
    connect_in_memory(&gateway, [127, 0, 0, 1].into(), Version::GarinChat).0
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn no_auth_within_the_deadline_closes_4001() {
    let mut client = connect(&[]);
    assert_eq!(close_code(&mut client).await, CloseCode::AuthTimeout.code());
}

#[tokio::test(start_paused = true)]
async fn no_join_within_the_deadline_closes_4003() {
    let mut client = connect(&[]);
    auth(&mut client, &token("alice", HOUR)).await;
    assert_eq!(close_code(&mut client).await, CloseCode::JoinTimeout.code());
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_ping_closes_4010() {
    let mut client = connect(&[("PING_INTERVAL_SECS", "5"), ("PONG_TIMEOUT_SECS", "2")]);
    client.set_auto_pong(false);
    auth(&mut client, &token("alice", HOUR)).await;
    join(&mut client).await;
    assert_eq!(close_code(&mut client).await, CloseCode::PongTimeout.code());
}

#[tokio::test(start_paused = true)]
async fn silence_past_the_idle_timeout_closes_4011() {
    let mut client = connect(&[("IDLE_TIMEOUT_SECS", "60")]);
    auth(&mut client, &token("alice", HOUR)).await;
    join(&mut client).await;
    assert_eq!(close_code(&mut client).await, CloseCode::IdleTimeout.code());
}

#[tokio::test(start_paused = true)]
async fn an_expiring_token_closes_4013() {
    let mut client = connect(&[]);
    auth(&mut client, &token("alice", Duration::from_secs(120))).await;
    join(&mut client).await;
    assert_eq!(
        close_code(&mut client).await,
        CloseCode::TokenExpired.code()
    );
}

#[tokio::test(start_paused = true)]
async fn a_refresh_with_another_subject_closes_4002() {
    let mut client = connect(&[]);
    auth(&mut client, &token("alice", HOUR)).await;
    join(&mut client).await;
    auth(&mut client, &token("mallory", HOUR)).await;
    assert_eq!(close_code(&mut client).await, CloseCode::AuthFailed.code());
}

#[tokio::test(start_paused = true)]
async fn a_refresh_by_a_banned_user_closes_4009() {
    // A ban this node learned without closing the session (its notice was lost, say): the
    // next refresh catches it.
    let gateway = gateway(&[]);
    let (mut client, _session) =
        connect_in_memory(&gateway, [127, 0, 0, 1].into(), Version::GarinChat);
    auth(&mut client, &token("alice", HOUR)).await;
    join(&mut client).await;
    tokio::task::yield_now().await;
    gateway
        .moderation
        .bans()
        .ban(crate::bans::Offender::User("alice".into()), HOUR);
    auth(&mut client, &token("alice", HOUR)).await;
    assert_eq!(close_code(&mut client).await, CloseCode::Banned.code());
}
