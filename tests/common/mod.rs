//! Test support: a real gateway on 127.0.0.1:0, tokens, and a WebSocket client.
#![allow(dead_code)] // each test binary uses a different part of this module

pub(crate) mod child;
pub(crate) mod jwks;
pub(crate) mod raw;
pub(crate) mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use palisade::config::Secret;
use palisade::mint::{mint_hs_token, TokenRequest};
use palisade::testing::Probe;
use palisade::RunningGateway;
use palisade::Settings;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) const SECRET: &str = "test-secret-that-is-long-enough-for-hs256";
pub(crate) const ORIGIN: &str = "http://chat.test";

/// Long enough for a loaded CI machine, short enough that a hung test fails quickly.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings every test server starts from; tests override what they exercise.
fn base_settings() -> Vec<(String, String)> {
    [
        ("PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("ALLOWED_ORIGINS", ORIGIN),
        ("JWT_DECODE_SECRET", SECRET),
        // Generous rates: tests of the limits set them back explicitly.
        ("MSG_RATE_PER_SEC", "10000"),
        ("MSG_BURST", "10000"),
        ("USER_MSG_RATE_PER_SEC", "10000"),
        ("USER_MSG_BURST", "10000"),
        ("CONTROL_RATE_PER_SEC", "10000"),
        ("CONTROL_BURST", "10000"),
        ("CONNECT_RATE_PER_SEC", "10000"),
        ("CONNECT_BURST", "10000"),
        ("MAX_CONNECTIONS_PER_IP", "10000"),
        ("MAX_SESSIONS_PER_USER", "1000"),
        ("BAN_STRIKES", "1000"),
        ("CLOSE_TIMEOUT_MS", "500"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        ("DRAIN_DELAY_SECS", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub(crate) struct TestServer {
    pub running: RunningGateway,
    pub addr: SocketAddr,
}

impl TestServer {
    pub(crate) async fn start() -> TestServer {
        Self::with(&[]).await
    }

    /// Starts a gateway with the base settings plus `overrides` (later entries win).
    pub(crate) async fn with(overrides: &[(&str, &str)]) -> TestServer {
        let mut settings = base_settings();
        for (key, value) in overrides {
            settings.retain(|(k, _)| k != key);
            settings.push(((*key).to_owned(), (*value).to_owned()));
        }
        let settings = Settings::from_pairs(settings).expect("test settings are valid");
        let listeners = palisade::Listeners {
            main: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let running = palisade::start_with(&settings, listeners)
            .await
            .expect("gateway starts");
        let addr = running.local_addr();
        TestServer { running, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub(crate) async fn connect(&self) -> Client {
        Client::connect(&self.url(), Some(ORIGIN)).await
    }

    /// Connects, authenticates as `sub` (display name = `sub` capitalised) and joins `room`,
    /// consuming the client's own join acknowledgement.
    pub(crate) async fn joined(&self, sub: &str, room: &str) -> Client {
        let mut client = self.connect().await;
        client.auth(&token(sub)).await;
        client
            .send_json(json!({"type": "join", "username": sub, "room": room}))
            .await;
        let ack = client.recv_json().await;
        assert_eq!(ack["type"], "join", "join ack: {ack}");
        assert_eq!(ack["userId"], sub, "join ack: {ack}");
        client
    }

    /// Waits until `/readyz` would say ready (keys loaded, broker connected).
    pub(crate) async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while !self.probe().is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A view of the gateway's insides, for assertions.
    pub(crate) fn probe(&self) -> Probe {
        Probe::of(&self.running)
    }

    /// Waits until `room` has `count` local members (membership changes are asynchronous to
    /// the client that caused them, e.g. after a TCP reset).
    pub(crate) async fn wait_members(&self, room: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while self.probe().member_count(room) != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {room} has {} members, expected {count}",
                self.probe().member_count(room)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A fresh client can still authenticate, join and chat: the server is healthy.
    pub(crate) async fn assert_serves(&self) {
        let room = "health-check";
        let mut a = self.joined("healthy-a", room).await;
        let mut b = self.joined("healthy-b", room).await;
        assert_eq!(a.recv_json().await["username"], "Healthy-b");
        b.send_json(json!({"type": "message", "body": "still here"}))
            .await;
        let got = a.recv_json().await;
        assert_eq!(got["type"], "message");
        assert_eq!(got["body"], "still here");
        a.close().await;
        b.close().await;
    }
}

/// The display name tests give each subject.
/// A joined client whose kernel receive buffer is tiny, so that not reading fills it fast.
pub(crate) async fn tiny_buffer_client(server: &TestServer, sub: &str, room: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_static(ORIGIN));
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut client = Client { ws };
    client.auth(&token(sub)).await;
    client
        .send_json(json!({"type": "join", "room": room}))
        .await;
    assert_eq!(client.recv_json().await["type"], "join");
    client
}

pub(crate) fn display_name(sub: &str) -> String {
    let mut chars = sub.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A valid token for `sub`, named [`display_name`]`(sub)`, signed with [`SECRET`].
pub(crate) fn token(sub: &str) -> String {
    let name = display_name(sub);
    let mut request = TokenRequest::new(sub);
    request.name = Some(&name);
    mint_hs_token(&Secret::new(SECRET), &request).unwrap()
}

/// `base` with the fields of `extra` set over it; a `null` in `extra` removes the field.
pub(crate) fn merged(mut base: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().expect("extra claims are an object") {
        if value.is_null() {
            base.as_object_mut().unwrap().remove(key);
        } else {
            base[key] = value.clone();
        }
    }
    base
}

/// Signs arbitrary claims with `key` (HS256 unless `alg` says otherwise).
pub(crate) fn sign(claims: &Value, key: &[u8], alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub(crate) async fn connect(url: &str, origin: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        assert_eq!(response.status(), 101);
        Client { ws }
    }

    pub(crate) async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub(crate) async fn auth(&mut self, token: &str) {
        self.send_json(json!({"type": "auth", "body": token})).await;
    }

    /// The next message, skipping pings; panics after [`RECV_TIMEOUT`].
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the receive timeout");
            match next {
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text frame, parsed.
    pub(crate) async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).expect("server sends JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame, as the server's exact bytes.
    pub(crate) async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Some(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the server's close frame and returns its code and reason, skipping any
    /// text frames before it.
    pub(crate) async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Some(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(Message::Text(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub(crate) async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(Some(Ok(message))) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Reads for `wait`, accepting only pings (which tungstenite answers): the connection
    /// stays alive and nothing else arrives. Returns how many pings came.
    pub(crate) async fn expect_only_pings(&mut self, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pings = 0;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match next {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("expected only pings, got {other:?}"),
            }
        }
        pings
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
/// What became of an `auth` and `join` with a token.
pub(crate) enum Outcome {
    Accepted { name: String, user_id: String },
    Refused(u16),
}

/// Authenticates with `token`, then tries to join `lobby`.
pub(crate) async fn outcome(server: &TestServer, token: &str) -> Outcome {
    let mut client = server.connect().await;
    client.auth(token).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    match client.recv().await {
        Some(Message::Text(text)) => {
            let frame: Value = serde_json::from_str(&text).unwrap();
            client.close().await;
            Outcome::Accepted {
                name: frame["username"].as_str().unwrap().into(),
                user_id: frame["userId"].as_str().unwrap().into(),
            }
        }
        Some(Message::Close(Some(frame))) => Outcome::Refused(u16::from(frame.code)),
        other => panic!("unexpected {other:?}"),
    }
}

pub(crate) fn accepted(name: &str, user_id: &str) -> Outcome {
    Outcome::Accepted {
        name: name.into(),
        user_id: user_id.into(),
    }
}
