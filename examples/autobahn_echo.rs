//! Test-only: an echo server built from the gateway's own frame layer, for the
//! Autobahn|Testsuite fuzzing client (`.ci/autobahn`). It is never part of the gateway.
//!
//! The socket (frame reader, writer and close handshake) is exactly the gateway's; only the
//! limits differ, because Autobahn sends messages of up to 16 MiB in up to 2^18 fragments, far
//! beyond what a chat gateway should accept.
//!
//! Usage: `cargo run --example autobahn_echo -- 127.0.0.1:9001`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use palisade::testing::SharedPayload;
use palisade::testing::{CloseRequest, Event, Inbound, Outbound, Outbox, ReadLimits, Socket};
use tokio::net::TcpListener;

const LIMITS: ReadLimits = ReadLimits {
    max_message_bytes: 20 << 20,
    max_fragments: 1 << 20,
};

/// Deep enough that echoing never evicts: Autobahn waits for its echoes before closing.
const QUEUE: usize = 1 << 16;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("an address like 127.0.0.1:9001");
    let listener = TcpListener::bind(addr).await?;
    println!("autobahn echo on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|mut request: Request<hyper::body::Incoming>| async move {
                let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
                    Ok(pair) => pair,
                    Err(_) => {
                        let mut response = Response::new(Empty::<Bytes>::new());
                        *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        return Ok::<_, Infallible>(response);
                    }
                };
                tokio::spawn(async move {
                    if let Ok(ws) = upgrade.await {
                        echo(ws.into_inner()).await;
                    }
                });
                Ok(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn echo<S>(io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (outbox, outbox_rx) = Outbox::new(QUEUE, usize::MAX);
    let mut socket = Socket::new(io, Vec::new(), LIMITS, outbox_rx, None);
    let close = loop {
        let Event::Client(event) = socket.next().await else {
            break None;
        };
        match event {
            Inbound::Text(text) => {
                outbox.deliver(Outbound::text(text.into_string()));
            }
            Inbound::Binary(data) => {
                outbox.deliver(Outbound::Binary(SharedPayload::new(data.into_vec())));
            }
            Inbound::Ping(payload) => {
                outbox.deliver(Outbound::Pong(SharedPayload::new(payload.into_vec())));
            }
            Inbound::Pong(_) => {}
            Inbound::Close(code) => break Some((code, true)),
            Inbound::Violation(code) => break Some((Some(code.code()), false)),
            Inbound::Gone => break None,
        }
    };
    if let Some((code, drain)) = close {
        let request = CloseRequest {
            code,
            reason: "",
            drain,
        };
        // Then the client has a moment to close TCP first.
        socket.close(request, true, Duration::from_secs(2)).await;
    }
}
