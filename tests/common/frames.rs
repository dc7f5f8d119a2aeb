//! Which protocol version a test client speaks, and the frame log that `.ci/asyncapi` checks
//! against docs/asyncapi.yaml.
//!
//! With `PALISADE_FRAME_LOG` naming a directory, every text frame a test [`Client`] receives
//! from the server through its receive methods is appended to
//! `<dir>/<test binary>-<pid>.jsonl` as one line `{"from":"server","protocol":"v1"|"v2",
//! "frame":…}`. What the test client sends is not logged: many tests send hostile frames on
//! purpose. (A test that reads `client.ws` directly bypasses the log.)
//!
//! The protocol of a socket is recorded when one of [`Client`]'s constructors opens it, in a
//! table beside the socket rather than in `Client`, so that a test may still build a
//! `Client { ws }` of its own; the frames of such a socket are logged with the protocol
//! `"unknown"`, which the check refuses: it cannot tell which schemas apply.
//!
//! [`Client`]: super::Client

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// The subprotocol the server selected (the 101 answer's `Sec-WebSocket-Protocol`, if any)
/// for every open socket a [`Client`](super::Client) constructor opened, by the socket's local
/// address (unique among open sockets; removed when the client is dropped, so a reused port
/// is never mistaken for an earlier socket).
fn selections() -> &'static Mutex<HashMap<SocketAddr, Option<String>>> {
    static SELECTIONS: OnceLock<Mutex<HashMap<SocketAddr, Option<String>>>> = OnceLock::new();
    SELECTIONS.get_or_init(Default::default)
}

fn local_addr(socket: &Socket) -> Option<SocketAddr> {
    match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().ok(),
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr().ok(),
        _ => None,
    }
}

/// Records the subprotocol the server selected for `socket` (`None`: none).
pub(crate) fn register(socket: &Socket, selected: Option<&str>) {
    let addr = local_addr(socket).expect("a connected socket has a local address");
    selections()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(addr, selected.map(str::to_owned));
}

/// Forgets `socket` (its client is being dropped).
pub(crate) fn forget(socket: &Socket) {
    if let Some(addr) = local_addr(socket) {
        selections()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&addr);
    }
}

/// The subprotocol the server selected for `socket` (`Some(None)`: none); `None` for a socket
/// no constructor of `Client` opened.
pub(crate) fn selected_for(socket: &Socket) -> Option<Option<String>> {
    let addr = local_addr(socket)?;
    selections()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&addr)
        .cloned()
}

/// The protocol of `socket`; `None` for a socket no constructor of `Client` opened.
pub(crate) fn protocol_of(socket: &Socket) -> Option<Protocol> {
    selected_for(socket).map(|selected| Protocol::selected(selected.as_deref()))
}

/// Logs `message` if it is a text frame (see the module docs).
pub(crate) fn received(socket: &Socket, message: &Message) {
    if let Message::Text(text) = message {
        if log_file().is_some() {
            let protocol = protocol_of(socket).map_or("unknown", Protocol::as_str);
            log_received(protocol, text.as_str());
        }
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
fn log_received(protocol: &str, text: &str) {
    let Some(mut file) = log_file() else {
        return;
    };
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    let mut line = if is_json && !text.contains(['\n', '\r']) {
        format!(r#"{{"from":"server","protocol":"{protocol}","frame":{text}}}"#)
    } else {
        let frame = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
        json!({"from": "server", "protocol": protocol, "frame": frame}).to_string()
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

    let (answer, rest) = super::raw::read_head_keeping_rest(&mut stream).await;
    assert!(
        !answer.is_empty(),
        "the server closed before answering the upgrade"
    );
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
