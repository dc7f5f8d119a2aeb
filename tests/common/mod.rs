//! Test support: a real gateway on 127.0.0.1:0, tokens, and a WebSocket client.
#![allow(dead_code)] // each test binary uses a different part of this module

pub(crate) mod api;
pub(crate) mod child;
pub(crate) mod frames;
pub(crate) mod http;
pub(crate) mod jwks;
pub(crate) mod ordered;
pub(crate) mod outage;
pub(crate) mod proxy;
pub(crate) mod raw;
pub(crate) mod receiver;
pub(crate) mod redis;
pub(crate) mod redis_cluster;
pub(crate) mod sentinel;
pub(crate) mod tls;
pub(crate) mod tls_redis;

use std::net::SocketAddr;
use std::time::Duration;

use frames::Protocol;
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

/// Settings every test server starts from: loopback, the test secret, every limit lifted
/// (`palisade::testing::NO_LIMITS`: tests of a limit set it back explicitly), short closes.
fn base_settings() -> Vec<(String, String)> {
    [
        ("PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("ALLOWED_ORIGINS", ORIGIN),
        ("JWT_DECODE_SECRET", SECRET),
        ("CLOSE_TIMEOUT_MS", "500"),
        ("SHUTDOWN_GRACE_SECS", "5"),
        ("DRAIN_DELAY_SECS", "0"),
    ]
    .into_iter()
    .chain(palisade::testing::NO_LIMITS.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// With `PALISADE_TEST_LOG` set (a tracing filter such as `palisade=debug`), the gateways of a
/// test log to stderr: for investigating a failure, never needed to pass.
fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Ok(filter) = std::env::var("PALISADE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// Polls `check` every 10 ms until it holds; fails naming `what` after [`RECV_TIMEOUT`].
pub(crate) async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`], for a check that has to wait itself (an HTTP request, say).
pub(crate) async fn wait_until_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        Self::on("127.0.0.1:0", overrides).await
    }

    /// Starts a gateway whose public listener is bound to `addr` (e.g. `[::]:0`).
    pub(crate) async fn on(addr: &str, overrides: &[(&str, &str)]) -> TestServer {
        init_logs();
        let mut settings = base_settings();
        for (key, value) in overrides {
            settings.retain(|(k, _)| k != key);
            settings.push(((*key).to_owned(), (*value).to_owned()));
        }
        let settings = Settings::from_pairs(settings).expect("test settings are valid");
        let listeners = palisade::Listeners {
            main: tokio::net::TcpListener::bind(addr).await.unwrap(),
            admin: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            api: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let running = palisade::start_with(&settings, listeners)
            .await
            .expect("gateway starts");
        let mut addr = running.local_addr();
        if addr.ip().is_unspecified() {
            // Bound to every address (dual-stack `[::]`): reach it over IPv4 loopback.
            addr.set_ip([127, 0, 0, 1].into());
        }
        TestServer { running, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub(crate) async fn connect(&self) -> Client {
        Client::connect(&self.url(), Some(ORIGIN)).await
    }

    /// Connects offering `palisade.v2`: a v2 client once the server selects it (see
    /// [`Client::protocol`]; this does not assert the selection).
    pub(crate) async fn connect_v2(&self) -> Client {
        Client::connect_with_protocols(&self.url(), Some(ORIGIN), &[frames::V2_SUBPROTOCOL]).await
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

    /// Like [`joined`](Self::joined), with the room extensions (offsets, typing, seen).
    pub(crate) async fn joined_extended(&self, sub: &str, room: &str) -> Client {
        let mut client = self.connect().await;
        client.auth(&token(sub)).await;
        client
            .send_json(json!({"type": "join", "room": room, "history": 0}))
            .await;
        assert_eq!(client.recv_json().await["type"], "join");
        client
    }

    /// Authenticates as `sub` and joins `room`; the close code if that was refused.
    pub(crate) async fn try_join(&self, sub: &str, room: &str) -> Result<Client, u16> {
        let mut client = self.connect().await;
        client.auth(&token(sub)).await;
        client
            .send_json(json!({"type": "join", "room": room}))
            .await;
        match client.recv().await {
            Some(tokio_tungstenite::tungstenite::Message::Text(_)) => Ok(client),
            Some(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => {
                Err(u16::from(frame.code))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Waits until `/readyz` would say ready (keys loaded, broker connected).
    pub(crate) async fn wait_ready(&self) {
        let probe = self.probe();
        wait_until("ready", || probe.is_ready()).await;
    }

    /// A view of the gateway's insides, for assertions.
    pub(crate) fn probe(&self) -> Probe {
        Probe::of(&self.running)
    }

    /// Waits until `room` has `count` local members (membership changes are asynchronous to
    /// the client that caused them, e.g. after a TCP reset).
    pub(crate) async fn wait_members(&self, room: &str, count: usize) {
        let probe = self.probe();
        wait_until(&format!("{count} members in {room}"), || {
            probe.member_count(room) == count
        })
        .await;
    }

    /// Shuts the gateway down and asserts that it took less than `limit` and abandoned no
    /// session.
    pub(crate) async fn shutdown_within(self, limit: Duration) {
        let started = tokio::time::Instant::now();
        let report = self.running.shutdown().await;
        assert_eq!(report.abandoned, 0);
        assert!(started.elapsed() < limit, "{:?}", started.elapsed());
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
    let mut client = Client::opened(ws, None);
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

impl Drop for Client {
    fn drop(&mut self) {
        frames::forget(&self.ws);
    }
}

impl Client {
    /// A client on a socket just opened, whose 101 answer selected `subprotocol`; its protocol
    /// is recorded for [`protocol`](Self::protocol) and the frame log.
    pub(crate) fn opened(
        ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
        subprotocol: Option<&str>,
    ) -> Client {
        frames::register(&ws, subprotocol);
        Client { ws }
    }

    /// The protocol version the server selected at the upgrade. Panics for a socket that no
    /// constructor here opened (a test's own `Client { ws }`).
    pub(crate) fn protocol(&self) -> Protocol {
        frames::protocol_of(&self.ws)
            .expect("a client opened by Client::connect* or TestServer::connect*")
    }

    /// The subprotocol the server's 101 answer selected (`Sec-WebSocket-Protocol`), if any.
    /// Panics like [`protocol`](Self::protocol).
    pub(crate) fn subprotocol(&self) -> Option<String> {
        frames::selected_for(&self.ws)
            .expect("a client opened by Client::connect* or TestServer::connect*")
    }

    /// Connects offering the subprotocols `protocols` (`Sec-WebSocket-Protocol`); the client
    /// speaks v2 if the server selects `palisade.v2`, v1 otherwise.
    pub(crate) async fn connect_with_protocols(
        url: &str,
        origin: Option<&str>,
        protocols: &[&str],
    ) -> Client {
        let (ws, selected) = frames::connect_offering(url, origin, protocols).await;
        Client::opened(ws, selected.as_deref())
    }

    pub(crate) async fn connect(url: &str, origin: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin).unwrap());
        }
        // Without Nagle: a test that writes twice and then waits would otherwise wait out the
        // server's delayed ACK (40 ms) on every round.
        let (ws, response) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .expect("websocket connects");
        assert_eq!(response.status(), 101);
        let selected = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|value| value.to_str().ok());
        Client::opened(ws, selected)
    }

    /// Connects over TLS with `tls` as the client configuration.
    pub(crate) async fn connect_tls(
        url: &str,
        origin: &str,
        tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).unwrap());
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector))
                .await?;
        Ok(Client::opened(ws, None))
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
                Some(Ok(message)) => {
                    frames::received(&self.ws, &message);
                    return Some(message);
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text frame within `wait` (skipping pings and pongs), parsed.
    pub(crate) async fn recv_within(&mut self, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {wait:?}"));
            if let Some(Ok(message)) = &next {
                frames::received(&self.ws, message);
            }
            match next {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one of type `kind` (with `body`, for notices) arrives within `wait`.
    pub(crate) async fn wait_for(
        &mut self,
        kind: &str,
        body: Option<&str>,
        wait: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = self
                .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
            if frame["type"] == kind && body.is_none_or(|body| frame["body"] == body) {
                return frame;
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
            frames::received(&self.ws, &message);
            panic!("expected silence, got {message:?}");
        }
    }

    /// Reads for `wait`, accepting only pings (which tungstenite answers): the connection
    /// stays alive and nothing else arrives. Returns how many pings came.
    pub(crate) async fn expect_only_pings(&mut self, wait: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pings = 0;
        while let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Some(Ok(message)) = &next {
                frames::received(&self.ws, message);
            }
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

/// How a [`PacedSender`] sends: bodies of the message number plus `padding` bytes, a pause
/// after every `burst` of them, at most `limit` in all.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pacing {
    pub(crate) padding: usize,
    pub(crate) burst: usize,
    pub(crate) pause: Duration,
    pub(crate) limit: usize,
}

/// A client sending numbered messages in the background until stopped, paced so that the
/// readers of a test keep up on a busy two-core machine.
pub(crate) struct PacedSender {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Client, usize)>,
}

impl PacedSender {
    pub(crate) fn start(mut client: Client, pacing: Pacing) -> PacedSender {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let padding = "z".repeat(pacing.padding);
            let mut sent = 0usize;
            while !stopped.load(Ordering::Relaxed) && sent < pacing.limit {
                let body = if padding.is_empty() {
                    sent.to_string()
                } else {
                    format!("{sent} {padding}")
                };
                client
                    .send_json(json!({"type": "message", "body": body}))
                    .await;
                sent += 1;
                if sent % pacing.burst == 0 {
                    tokio::time::sleep(pacing.pause).await;
                }
            }
            (client, sent)
        });
        PacedSender { stop, task }
    }

    /// Stops sending; the client and how many messages it sent.
    pub(crate) async fn stop(self) -> (Client, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("the sender does not panic")
    }
}
