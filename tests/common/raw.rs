//! A hand-rolled WebSocket client for inputs no well-behaved library will send: raw HTTP
//! requests, and arbitrary (masked) frames.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::RECV_TIMEOUT;

/// The value of header `name` in a response head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Sends `request` as-is and returns the response head (status line and headers).
pub(crate) async fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut stream).await
}

/// A TCP connection to `addr` from the address `source` (any of 127.0.0.0/8 on loopback).
pub(crate) async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// The status code of a response head.
pub(crate) fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

async fn read_head(stream: &mut TcpStream) -> String {
    read_head_keeping_rest(stream).await.0
}

/// Reads a response head; returns it and any bytes that came after it (early frames).
pub(crate) async fn read_head_keeping_rest(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = received.split_off(end + 4);
            return (String::from_utf8_lossy(&received).into_owned(), rest);
        }
        let read = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response within the timeout")
            .unwrap_or(0);
        if read == 0 {
            return (String::from_utf8_lossy(&received).into_owned(), Vec::new());
        }
        received.extend_from_slice(&chunk[..read]);
    }
}

/// An upgrade request with the given extra header lines (each ending in `\r\n`).
pub(crate) fn upgrade_request(extra_headers: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

/// A raw WebSocket connection after a successful handshake.
pub(crate) struct RawSocket {
    pub stream: TcpStream,
    /// Bytes read past the handshake, consumed before the stream.
    pending: Vec<u8>,
    /// How long one read may wait before the test fails.
    pub timeout: Duration,
}

/// What the server sent, frame by frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerEvent {
    Text(String),
    Close(Option<u16>),
    Other(u8),
    /// The connection ended without (more) frames.
    Eof,
}

impl RawSocket {
    pub(crate) async fn connect(addr: SocketAddr, origin: &str) -> RawSocket {
        match Self::try_connect(addr, &format!("Origin: {origin}\r\n")).await {
            Ok(socket) => socket,
            Err(head) => panic!("upgrade refused: {head}"),
        }
    }

    /// Upgrades with the given extra header lines; on refusal, the response head.
    pub(crate) async fn try_connect(
        addr: SocketAddr,
        extra_headers: &str,
    ) -> Result<RawSocket, String> {
        Self::upgrade_over(TcpStream::connect(addr).await.unwrap(), extra_headers, &[]).await
    }

    /// Upgrades with `early` bytes (frames) sent in the same write as the request, before the
    /// server's answer.
    pub(crate) async fn connect_sending(addr: SocketAddr, origin: &str, early: &[u8]) -> RawSocket {
        let headers = format!("Origin: {origin}\r\n");
        let stream = TcpStream::connect(addr).await.unwrap();
        match Self::upgrade_over(stream, &headers, early).await {
            Ok(socket) => socket,
            Err(head) => panic!("upgrade refused: {head}"),
        }
    }

    /// Upgrades over a connection made from `source` (another loopback address, say).
    pub(crate) async fn try_connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        extra_headers: &str,
    ) -> Result<RawSocket, String> {
        Self::upgrade_over(connect_from(addr, source).await, extra_headers, &[]).await
    }

    async fn upgrade_over(
        mut stream: TcpStream,
        extra_headers: &str,
        early: &[u8],
    ) -> Result<RawSocket, String> {
        let mut request = upgrade_request(extra_headers).into_bytes();
        request.extend_from_slice(early);
        stream.write_all(&request).await.unwrap();
        let (head, pending) = read_head_keeping_rest(&mut stream).await;
        if head.is_empty() || status(&head) != 101 {
            return Err(head);
        }
        Ok(RawSocket {
            stream,
            pending,
            timeout: RECV_TIMEOUT,
        })
    }

    /// Sends a masked text frame.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send_frame(FIN | TEXT, text.as_bytes()).await;
    }

    /// Writes one frame: `first` is the FIN/RSV/opcode byte; the payload is masked.
    pub(crate) async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let _ = self.stream.write_all(&encode_frame(first, payload)).await;
    }

    /// How long reads wait for the server from now on.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Writes raw bytes (for headers that lie about their length).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    pub(crate) async fn next_event(&mut self) -> ServerEvent {
        let mut header = [0u8; 2];
        if self.read_exact(&mut header).await.is_err() {
            return ServerEvent::Eof;
        }
        let opcode = header[0] & 0x0f;
        let len = match header[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                if self.read_exact(&mut ext).await.is_err() {
                    return ServerEvent::Eof;
                }
                u16::from_be_bytes(ext) as usize
            }
            127 => {
                let mut ext = [0u8; 8];
                if self.read_exact(&mut ext).await.is_err() {
                    return ServerEvent::Eof;
                }
                u64::from_be_bytes(ext) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        if self.read_exact(&mut payload).await.is_err() {
            return ServerEvent::Eof;
        }
        match opcode {
            0x1 => ServerEvent::Text(String::from_utf8(payload).expect("server text is UTF-8")),
            0x8 if payload.len() >= 2 => {
                ServerEvent::Close(Some(u16::from_be_bytes([payload[0], payload[1]])))
            }
            0x8 => ServerEvent::Close(None),
            other => ServerEvent::Other(other),
        }
    }

    /// The code of the server's close frame, skipping text frames before it.
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                ServerEvent::Text(_) | ServerEvent::Other(_) => continue,
                ServerEvent::Close(code) => return code,
                ServerEvent::Eof => panic!("connection ended without a close frame"),
            }
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let from_pending = buf.len().min(self.pending.len());
        buf[..from_pending].copy_from_slice(&self.pending[..from_pending]);
        self.pending.drain(..from_pending);
        let buf = &mut buf[from_pending..];
        if buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.stream.read_exact(buf)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => panic!("no frame within the receive timeout"),
        }
    }
}

pub(crate) const FIN: u8 = 0x80;
pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xA;

/// A masked client frame.
pub(crate) fn encode_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Waits a little for the server to act on what was sent.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
