//! The load generator's WebSocket client: Palisade's protocol (auth, join, message) or the
//! bare ceiling server's (a room in the path, raw text frames), over sockets spread across
//! 127.0.0.x source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// How long any single step of a handshake may take before the attempt counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Source addresses used on loopback: 127.0.0.2 … 127.0.0.201.
const SOURCE_ADDRESSES: u32 = 200;

/// What the server speaks.
#[derive(Clone, Debug, Serialize)]
pub enum Protocol {
    /// `{"type":"auth"}`, `{"type":"join"}`, then `{"type":"message"}` frames.
    Palisade,
    /// The ceiling: `/room/{room}` in the path, then any text frame is broadcast as is.
    Bare,
}

/// Opens client sockets to one server.
pub struct Dialer {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub origin: Option<String>,
    /// Palisade: join with the room extensions (`"history":0`), as the SDK does, so frames
    /// carry offsets.
    pub room_extensions: bool,
    next_source: AtomicU32,
}

impl Dialer {
    pub fn new(addr: SocketAddr, protocol: Protocol, origin: Option<String>) -> Dialer {
        Dialer {
            addr,
            protocol,
            origin,
            room_extensions: false,
            next_source: AtomicU32::new(0),
        }
    }

    /// A TCP connection from the next 127.0.0.x source address (on loopback), so that many
    /// sockets do not exhaust one address's ephemeral ports.
    async fn tcp(&self) -> anyhow::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if self.addr.ip().is_loopback() {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES;
            let source = Ipv4Addr::new(127, 0, 0, 2 + n as u8);
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        }
        socket.set_nodelay(true)?;
        Ok(socket.connect(self.addr).await?)
    }

    /// A WebSocket to `path`, with small buffers (the load generator holds many thousands),
    /// offering `subprotocol` if any.
    async fn websocket(&self, path: &str, subprotocol: Option<&str>) -> anyhow::Result<Ws> {
        let stream = self.tcp().await?;
        let mut request = format!("ws://{}{path}", self.addr).into_client_request()?;
        if let Some(origin) = &self.origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin)?);
        }
        if let Some(subprotocol) = subprotocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(subprotocol)?,
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .context("upgrade")?;
        Ok(ws)
    }

    /// A WebSocket to the server's root, nothing sent yet.
    pub async fn raw(&self) -> anyhow::Result<Ws> {
        self.websocket("/", None).await
    }

    /// A socket in `room` for `user`: authenticated with `token` and joined (Palisade: the
    /// join acknowledgement has arrived), or connected to the room's path (bare).
    pub async fn joined(&self, user: &str, token: &str, room: &str) -> anyhow::Result<Ws> {
        Ok(self.joined_with(user, token, room, None).await?.0)
    }

    /// As [`Dialer::joined`], asking for the last `history` messages (which turns the room
    /// extensions on) if given; also returns the join acknowledgement (empty for the bare
    /// server). The join carries a `username`: GarinChat requires one, Palisade ignores it
    /// (the name comes from the token).
    pub async fn joined_with(
        &self,
        user: &str,
        token: &str,
        room: &str,
        history: Option<u64>,
    ) -> anyhow::Result<(Ws, String)> {
        match self.protocol {
            Protocol::Bare => Ok((
                self.websocket(&format!("/room/{room}"), None).await?,
                String::new(),
            )),
            Protocol::Palisade => {
                let mut ws = self.websocket("/", None).await?;
                let auth = serde_json::json!({"type": "auth", "body": token}).to_string();
                let mut join = serde_json::json!({"type": "join", "room": room, "username": user});
                if let Some(history) = history.or(self.room_extensions.then_some(0)) {
                    join["history"] = history.into();
                }
                let join = join.to_string();
                ws.send(Message::text(auth)).await?;
                ws.send(Message::text(join)).await?;
                loop {
                    let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
                        .await
                        .context("no join acknowledgement")?;
                    match frame {
                        Some(Ok(Message::Text(text))) if text.contains(r#""type":"join""#) => {
                            return Ok((ws, text.as_str().to_owned()))
                        }
                        Some(Ok(Message::Close(frame))) => bail!("closed at join: {frame:?}"),
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                        None => bail!("closed at join"),
                    }
                }
            }
        }
    }
}

impl Dialer {
    /// A Palisade socket speaking protocol v2, authenticated with `token` and in every room of
    /// `rooms` (each join's acknowledgement has arrived).
    pub async fn joined_v2(&self, user: &str, token: &str, rooms: &[String]) -> anyhow::Result<Ws> {
        let mut ws = self.websocket("/", Some("palisade.v2")).await?;
        let auth = serde_json::json!({"type": "auth", "body": token}).to_string();
        ws.send(Message::text(auth)).await?;
        for (n, room) in rooms.iter().enumerate() {
            let join = serde_json::json!({"type": "join", "id": format!("j{n}"), "room": room, "username": user});
            ws.send(Message::text(join.to_string())).await?;
        }
        let mut acknowledged = 0;
        while acknowledged < rooms.len() {
            let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
                .await
                .context("no join acknowledgement")?;
            match frame {
                Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"join","id":"#) => {
                    acknowledged += 1
                }
                Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"error""#) => {
                    bail!("join refused: {text}")
                }
                Some(Ok(Message::Close(frame))) => bail!("closed at join: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err.into()),
                None => bail!("closed at join"),
            }
        }
        Ok(ws)
    }
}

/// A chat message carrying its send time: `{"type":"message","body":"<20-digit ns> xxx…"}`,
/// padded so that the body is `size` bytes.
pub fn timestamped_message(size: usize) -> String {
    let stamp = format!("{:020}", unix_nanos());
    let padding = "x".repeat(size.saturating_sub(stamp.len() + 1));
    format!(r#"{{"type":"message","body":"{stamp} {padding}"}}"#)
}

/// The send time in a received message frame (Palisade's relayed frame, or the ceiling's echo
/// of the client's own), if it carries one.
pub fn sent_at_nanos(frame: &str) -> Option<u128> {
    let start = frame.find(r#""body":""#)? + 8;
    frame.get(start..start + 20)?.parse().ok()
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_send_time_both_ways() {
        let sent = timestamped_message(100);
        let body_len = sent.len() - r#"{"type":"message","body":""}"#.len();
        assert_eq!(body_len, 100);
        let stamp = sent_at_nanos(&sent).unwrap();
        let relayed = format!(
            r#"{{"type":"message","body":"{:020} xx","username":"A","userId":"a"}}"#,
            stamp
        );
        assert_eq!(sent_at_nanos(&relayed), Some(stamp));
        assert_eq!(sent_at_nanos(r#"{"type":"join","username":"A"}"#), None);
    }
}
