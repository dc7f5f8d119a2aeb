//! Plain HTTP/1.1 over a fresh connection, for the gateway's non-WebSocket answers.

use std::net::{SocketAddr, TcpListener};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::raw::status;
use super::RECV_TIMEOUT;

/// A port nothing listens on (bound and released at once).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path`; the status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// POSTs a JSON `body` to `path` naming `host`, from a page at `origin` if any.
pub(crate) async fn post_from(
    addr: SocketAddr,
    host: &str,
    origin: Option<&str>,
    path: &str,
    body: &str,
) -> (u16, String) {
    let origin = origin
        .map(|origin| format!("Origin: {origin}\r\n"))
        .unwrap_or_default();
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// Sends a raw request and reads the response until the server closes; the status and body.
pub(crate) async fn request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(RECV_TIMEOUT, stream.read_to_string(&mut response)).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status(head), body.to_owned())
}

/// Every sample of a Prometheus exposition, by its name and labels as written
/// (`name{a="b"}`).
pub(crate) fn samples(exposition: &str) -> std::collections::BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// One series of an exposition; 0 when absent.
pub(crate) fn sample(exposition: &str, series: &str) -> f64 {
    samples(exposition).get(series).copied().unwrap_or(0.0)
}
