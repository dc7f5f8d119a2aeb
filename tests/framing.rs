//! RFC 6455 framing rules, with raw frames over real sockets.

mod common;

use common::raw::{
    encode_frame, RawSocket, ServerEvent, BINARY, CLOSE, CONTINUATION, FIN, PING, PONG, TEXT,
};
use common::{token, TestServer, ORIGIN};
use serde_json::json;

async fn raw(server: &TestServer) -> RawSocket {
    RawSocket::connect(server.addr, ORIGIN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_their_payload_arrives() {
    // The largest frame is an `auth` frame: MAX_TOKEN_BYTES plus 1 KiB of JSON.
    let server = TestServer::with(&[("MAX_TOKEN_BYTES", "3072")]).await;
    // A header promising 4097 bytes, and no payload: 1009 at once.
    let mut socket = raw(&server).await;
    let mut header = vec![FIN | TEXT, 0x80 | 126];
    header.extend_from_slice(&4097u16.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    socket.send_raw(&header).await;
    assert_eq!(socket.close_code().await, Some(1009));

    // A declared 2^63-byte length: 1009, no allocation.
    let mut socket = raw(&server).await;
    let mut header = vec![FIN | TEXT, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    socket.send_raw(&header).await;
    assert_eq!(socket.close_code().await, Some(1009));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_capped_in_total_size_and_count() {
    let server = TestServer::with(&[("MAX_FRAGMENTS", "8"), ("MAX_TOKEN_BYTES", "3072")]).await;
    // Each fragment fits, together they do not.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, &[b' '; 3000]).await;
    socket.send_frame(CONTINUATION, &[b' '; 3000]).await;
    assert_eq!(socket.close_code().await, Some(1009));

    // A continuation whose header alone passes what is left of the budget: refused before
    // its payload arrives.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, &[b' '; 3000]).await;
    let mut header = vec![CONTINUATION | FIN, 0x80 | 126];
    header.extend_from_slice(&2000u16.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    socket.send_raw(&header).await;
    assert_eq!(socket.close_code().await, Some(1009));

    // A flood of tiny continuations hits the count cap.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, b" ").await;
    for _ in 0..20 {
        socket.send_frame(CONTINUATION, b" ").await;
    }
    assert_eq!(socket.close_code().await, Some(1009));

    // At the cap, a fragmented auth frame is reassembled and accepted.
    let mut socket = raw(&server).await;
    let auth = json!({"type": "auth", "body": token("alice")}).to_string();
    let chunks: Vec<&[u8]> = auth.as_bytes().chunks(auth.len().div_ceil(8)).collect();
    assert_eq!(chunks.len(), 8);
    for (i, chunk) in chunks.iter().enumerate() {
        let first = if i == 0 { TEXT } else { CONTINUATION };
        let fin = if i == chunks.len() - 1 { FIN } else { 0 };
        socket.send_frame(first | fin, chunk).await;
    }
    socket
        .send_frame(
            FIN | TEXT,
            json!({"type": "join", "room": "lobby"})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert!(matches!(socket.next_event().await, ServerEvent::Text(t) if t.contains("\"join\"")));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_rules() {
    let server = TestServer::start().await;
    let mut socket = raw(&server).await;
    socket.send_frame(FIN | CONTINUATION, b"orphan").await;
    assert_eq!(socket.close_code().await, Some(1002));

    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, b"{\"type\":").await;
    socket.send_frame(FIN | TEXT, b"{}").await;
    assert_eq!(
        socket.close_code().await,
        Some(1002),
        "new data frame mid-message"
    );

    let mut socket = raw(&server).await;
    socket.send_frame(BINARY, b"ab").await;
    socket.send_frame(FIN | CONTINUATION, b"cd").await;
    assert_eq!(
        socket.close_code().await,
        Some(1003),
        "a fragmented binary message"
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_rules() {
    let server = TestServer::start().await;
    for (first, len) in [
        (FIN | PING, 126),
        (FIN | PONG, 126),
        (FIN | CLOSE, 126),
        (PING, 4),
    ] {
        let mut socket = raw(&server).await;
        socket.send_frame(first, &vec![b'x'; len]).await;
        assert_eq!(
            socket.close_code().await,
            Some(1002),
            "first byte {first:#x}, {len} bytes"
        );
    }
    // A ping between fragments is allowed and answered.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, b"{\"type\":").await;
    socket.send_frame(FIN | PING, b"p").await;
    assert_eq!(socket.next_event().await, ServerEvent::Other(PONG));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_and_opcodes_get_a_close_frame() {
    let server = TestServer::start().await;
    for first in [
        FIN | 0x40 | TEXT,
        FIN | 0x20 | TEXT,
        FIN | 0x10 | TEXT,
        FIN | 0x3,
        FIN | 0xB,
    ] {
        let mut socket = raw(&server).await;
        socket.send_frame(first, b"{}").await;
        assert_eq!(
            socket.close_code().await,
            Some(1002),
            "first byte {first:#x}"
        );
    }
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frames_are_refused_with_1002() {
    let server = TestServer::start().await;
    // RFC 6455 5.1: a server must close the connection on a frame its client did not mask.
    let mut socket = raw(&server).await;
    socket.send_raw(&[FIN | TEXT, 2, b'{', b'}']).await;
    assert_eq!(socket.close_code().await, Some(1002));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_behind_the_upgrade_request_are_read() {
    let server = TestServer::start().await;
    // A client need not wait for the 101: its first frame may share a packet with the request
    // (hyper reads it with the request; the socket must start from those bytes).
    let auth = json!({"type": "auth", "body": "not-a-token"}).to_string();
    let early = encode_frame(FIN | TEXT, auth.as_bytes());
    let mut socket = RawSocket::connect_sending(server.addr, ORIGIN, &early).await;
    assert_eq!(
        socket.close_code().await,
        Some(4002),
        "the auth frame was read"
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_arriving_a_byte_at_a_time_is_read_whole() {
    let server = TestServer::start().await;
    let mut socket = raw(&server).await;
    socket.stream.set_nodelay(true).unwrap();
    let auth = json!({"type": "auth", "body": "not-a-token"}).to_string();
    for byte in encode_frame(FIN | TEXT, auth.as_bytes()) {
        socket.send_raw(&[byte]).await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        socket.close_code().await,
        Some(4002),
        "the auth frame was read"
    );
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_even_across_fragments() {
    let server = TestServer::start().await;
    let mut socket = raw(&server).await;
    socket.send_frame(FIN | TEXT, b"{\"type\":\"\xff\"}").await;
    assert_eq!(socket.close_code().await, Some(1007));

    // Invalid bytes in the first fragment are caught before the message completes.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, b"ok \xc0\xaf").await;
    assert_eq!(socket.close_code().await, Some(1007));

    // A truncated sequence at the end of the message.
    let mut socket = raw(&server).await;
    socket.send_frame(TEXT, b"ok").await;
    socket.send_frame(FIN | CONTINUATION, b"\xe2\x82").await;
    assert_eq!(socket.close_code().await, Some(1007));

    // A character split across fragments is fine.
    let mut socket = raw(&server).await;
    let auth = format!(
        "{{\"type\":\"auth\",\"body\":\"{}\",\"x\":\"€\"}}",
        token("alice")
    );
    let split = auth.find('€').unwrap() + 1;
    socket.send_frame(TEXT, &auth.as_bytes()[..split]).await;
    socket
        .send_frame(FIN | CONTINUATION, &auth.as_bytes()[split..])
        .await;
    socket
        .send_frame(FIN | TEXT, br#"{"type":"join","room":"lobby"}"#)
        .await;
    assert!(matches!(socket.next_event().await, ServerEvent::Text(t) if t.contains("\"join\"")));
    server.assert_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_from_the_client_are_validated() {
    let server = TestServer::start().await;
    for (payload, expected) in [
        (vec![0x03], 1002),                     // one byte
        (1005u16.to_be_bytes().to_vec(), 1002), // reserved, never on the wire
        (999u16.to_be_bytes().to_vec(), 1002),
        (5000u16.to_be_bytes().to_vec(), 1002),
        ([&1000u16.to_be_bytes()[..], b"\xff"].concat(), 1007),
    ] {
        let mut socket = raw(&server).await;
        socket.send_frame(FIN | CLOSE, &payload).await;
        assert_eq!(socket.close_code().await, Some(expected), "{payload:?}");
    }
    // Valid codes are echoed.
    for code in [1000u16, 1001, 3000, 4999] {
        let mut socket = raw(&server).await;
        socket.send_frame(FIN | CLOSE, &code.to_be_bytes()).await;
        assert_eq!(socket.close_code().await, Some(code));
    }
    server.assert_serves().await;
}
