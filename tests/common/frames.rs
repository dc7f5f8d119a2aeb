//! Which protocol version a test client speaks, and the frame log that `.ci/asyncapi` checks
//! against docs/asyncapi.yaml.
//!
//! With `PALISADE_FRAME_LOG` naming a directory, every text frame a test [`Client`] receives
//! from the server is appended to `<dir>/<test binary>-<pid>.jsonl` as one line
//! `{"from":"server","protocol":"v1"|"v2","frame":…}`. The hook is on the socket itself
//! ([`LoggedSocket`]), so frames a test reads straight from `client.ws` are logged too. What
//! the test client sends is not logged: many tests send hostile frames on purpose.
//!
//! [`Client`]: super::Client

use std::fs::File;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::RECV_TIMEOUT;

/// The subprotocol that selects protocol v2.
pub(crate) const V2_SUBPROTOCOL: &str = "palisade.v2";

/// The WebSocket the test client reads and writes.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The protocol version of a connection, as the server selected it in its 101 answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// GarinChat's protocol (no subprotocol selected).
    V1,
    /// `palisade.v2`.
    V2,
}

impl Protocol {
    /// From the `Sec-WebSocket-Protocol` header of the 101 answer, if any.
    pub(crate) fn selected(header: Option<&str>) -> Protocol {
        match header {
            Some(value) if value.trim() == V2_SUBPROTOCOL => Protocol::V2,
            _ => Protocol::V1,
        }
    }

    /// As the frame log and docs/asyncapi.yaml name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::V1 => "v1",
            Protocol::V2 => "v2",
        }
    }
}

/// A [`Socket`] that logs every text frame it yields (see the module docs). It derefs to the
/// socket, so tests keep using it as one (`client.ws.send(…)`, `client.ws.get_ref()`).
pub(crate) struct LoggedSocket {
    socket: Socket,
    protocol: Protocol,
}

impl LoggedSocket {
    pub(crate) fn new(socket: Socket, protocol: Protocol) -> LoggedSocket {
        LoggedSocket { socket, protocol }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }
}

impl Deref for LoggedSocket {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        &self.socket
    }
}

impl DerefMut for LoggedSocket {
    fn deref_mut(&mut self) -> &mut Socket {
        &mut self.socket
    }
}

impl Stream for LoggedSocket {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.socket).poll_next(cx);
        if let Poll::Ready(Some(Ok(Message::Text(text)))) = &next {
            log_received(self.protocol, text.as_str());
        }
        next
    }
}

/// The log file of this test process, opened on first use; `None` without
/// `PALISADE_FRAME_LOG`. A directory that cannot be written fails the test: a check that
/// silently logged nothing would pass on no evidence.
fn log_file() -> Option<&'static File> {
    static LOG: OnceLock<Option<File>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = PathBuf::from(std::env::var_os("PALISADE_FRAME_LOG")?);
        let binary = std::env::current_exe()
            .ok()
            .and_then(|exe| {
                exe.file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "tests".to_owned());
        let path = dir.join(format!("{binary}-{}.jsonl", std::process::id()));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("PALISADE_FRAME_LOG: cannot open {}: {e}", path.display()));
        Some(file)
    })
    .as_ref()
}

/// Appends one received text frame to the log. The frame goes in as the server's own text, so
/// that the check sees its fields in the server's order (a `serde_json::Value` would sort
/// them); a frame that is not JSON is logged as a string, so the check reports it rather than
/// this hook hiding it.
fn log_received(protocol: Protocol, text: &str) {
    let Some(mut file) = log_file() else {
        return;
    };
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let mut line = if is_json && !text.contains(['\n', '\r']) {
        format!(
            r#"{{"from":"server","protocol":"{}","frame":{text}}}"#,
            protocol.as_str()
        )
    } else {
        let frame = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        json!({"from": "server", "protocol": protocol.as_str(), "frame": frame}).to_string()
    }
    .into_bytes();
    line.push(b'\n');
    // One write of the whole line to a file opened for appending: the tests of one process
    // log from many threads, and their lines must not interleave.
    let written = file
        .write(&line)
        .unwrap_or_else(|e| panic!("PALISADE_FRAME_LOG: cannot write: {e}"));
    assert_eq!(written, line.len(), "PALISADE_FRAME_LOG: a short write");
}

/// Opens a WebSocket to `url` (`ws://` only) offering `protocols` in `Sec-WebSocket-Protocol`,
/// and returns it with the subprotocol the server selected.
///
/// The handshake is done here rather than by tungstenite, which fails a handshake whose answer
/// selects none of the offered subprotocols: a server without v2 legitimately selects none,
/// and the test must then get a v1 connection, not an error.
pub(crate) async fn connect_offering(
    url: &str,
    origin: Option<&str>,
    protocols: &[&str],
) -> (Socket, Option<String>) {
    let request = url.into_client_request().expect("a ws:// URL");
    let uri = request.uri();
    assert_eq!(
        uri.scheme_str(),
        Some("ws"),
        "connect_offering speaks ws:// only"
    );
    let host = uri.host().expect("a host in the URL");
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());

    let mut stream = TcpStream::connect((host, port))
        .await
        .expect("TCP connects");
    // Without Nagle, as `Client::connect`: see there.
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let key = generate_key();
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if let Some(origin) = origin {
        head.push_str(&format!("Origin: {origin}\r\n"));
    }
    if !protocols.is_empty() {
        head.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            protocols.join(", ")
        ));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("upgrade request sent");

    let (answer, rest) = read_answer(&mut stream).await;
    let mut lines = answer.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.1 101"),
        "websocket connects: {answer:?}"
    );
    let header = |name: &str| {
        answer.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    assert_eq!(
        header("Sec-WebSocket-Accept"),
        Some(derive_accept_key(key.as_bytes())),
        "the 101 answer accepts our key: {answer:?}"
    );
    let selected = header("Sec-WebSocket-Protocol");
    let socket = WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(stream),
        rest,
        Role::Client,
        None,
    )
    .await;
    (socket, selected)
}

/// Reads the answer's head; returns it and whatever bytes came after it (early frames).
async fn read_answer(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = received.split_off(end + 4);
            return (String::from_utf8_lossy(&received).into_owned(), rest);
        }
        let read = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("the upgrade answer within the receive timeout")
            .expect("the upgrade answer can be read");
        assert!(
            read > 0,
            "the server closed before answering the upgrade: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..read]);
    }
}
