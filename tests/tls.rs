//! `wss://` served directly: a certificate made by the test's own CA, its reload without
//! dropping open sockets, and handshakes that are slow or garbage.

mod common;

use std::time::Duration;

use common::tls::TestCa;
use common::{token, Client, TestServer, ORIGIN};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// A gateway serving TLS from files in `dir` holding a certificate named `name`.
async fn tls_server(ca: &TestCa, dir: &std::path::Path, name: &str) -> TestServer {
    let (cert, _, key) = ca.leaf(name);
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    TestServer::with(&[
        ("TLS_CERT_FILE", cert_file.to_str().unwrap()),
        ("TLS_KEY_FILE", key_file.to_str().unwrap()),
        ("HOUSEKEEPING_INTERVAL_MS", "100"),
        ("HEADER_READ_TIMEOUT_MS", "500"),
    ])
    .await
}

async fn wss_joined(server: &TestServer, ca: &TestCa, sub: &str) -> Client {
    let url = format!("wss://{}/", server.addr);
    let mut client = Client::connect_tls(&url, ORIGIN, ca.client())
        .await
        .expect("a wss client connects");
    client.auth(&token(sub)).await;
    client
        .send_json(json!({"type": "join", "room": "lobby"}))
        .await;
    assert_eq!(client.recv_json().await["type"], "join");
    client
}

/// The certificate the server presents to a fresh handshake.
async fn presented(server: &TestServer, ca: &TestCa) -> Vec<u8> {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector = TlsConnector::from(ca.client());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_chat_and_a_new_certificate_is_picked_up_without_dropping_them() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(&ca, dir.path(), "first").await;
    let mut alice = wss_joined(&server, &ca, "alice").await;
    let mut bob = wss_joined(&server, &ca, "bob").await;
    assert_eq!(alice.recv_json().await["userId"], "bob");

    // Renewal: new files in place; new handshakes get the new certificate...
    let (cert, der, key) = ca.leaf("second");
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while presented(&server, &ca).await != der.to_vec() {
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the sockets already open never noticed.
    bob.send_json(json!({"type": "message", "body": "after the renewal"}))
        .await;
    assert_eq!(alice.recv_json().await["body"], "after the renewal");
    let _carol = wss_joined(&server, &ca, "carol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_garbage_handshakes_are_dropped_in_time() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(&ca, dir.path(), "only").await;
    // Silence: dropped at HEADER_READ_TIMEOUT_MS (500 ms), the budget before the upgrade.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    // Garbage: refused at once.
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    garbage.write_all(&[0u8; 512]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    // A plain ws:// client gets nothing but a closed connection.
    let plain = tokio_tungstenite::connect_async(format!("ws://{}/", server.addr)).await;
    assert!(plain.is_err());
    let _healthy = wss_joined(&server, &ca, "dave").await;
}
