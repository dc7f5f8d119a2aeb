//! Accepting TCP connections, HTTP/1.1 with hyper, the routes, and the WebSocket upgrade.
//!
//! Every refusal that can happen before the 101 does, with a plain HTTP status: a bad Origin
//! (403), a request that is not a WebSocket upgrade (426), a bad handshake (400, or 426 for a
//! version other than 13). hyper enforces the header read timeout (it needs `.timer()` for
//! that, or a slow-header client holds a socket forever) and the header size and count limits.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ORIGIN, RETRY_AFTER, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use crate::admission::{Admitted, Refusal};
use crate::bans::Offender;
use crate::client_ip::{client_ip, IpKey};
use crate::config::Config;
use crate::demo;
use crate::gateway::Gateway;
use crate::metrics::outcome;
use crate::session;

type Body = Full<Bytes>;

/// How long an accept error that is not about one connection (e.g. out of file descriptors)
/// pauses the loop, so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long answering a connection over `MAX_CONNECTIONS` may take.
const BUSY_ANSWER_TIME: Duration = Duration::from_secs(1);

/// What a client over a global limit is told to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a plain HTTP connection may take to finish its response at shutdown.
const HTTP_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Accepts connections until shutdown. Never exits on an accept error.
pub async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    let http = http_builder(&gateway.config);
    loop {
        let accepted = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if is_per_connection_error(&err) => continue,
            Err(err) => {
                warn!(%err, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(permit) = gateway.admission.try_connection() else {
            debug!(peer = %peer.ip(), "at MAX_CONNECTIONS");
            gateway.metrics.connection(outcome::BUSY);
            gateway.tasks.spawn(refuse_busy(stream));
            continue;
        };
        let permit = Arc::new(permit);
        // Chat frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let gateway_for_conn = Arc::clone(&gateway);
        let http = http.clone();
        gateway.tasks.spawn(async move {
            let gateway = gateway_for_conn;
            let service_gateway = Arc::clone(&gateway);
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&service_gateway);
                let permit = Arc::clone(&permit);
                async move { Ok::<_, Infallible>(route(&gateway, peer, permit, request).await) }
            });
            let connection = http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            // The whole exchange before an upgrade is bounded, not only the header read: a
            // client that pipelines requests and never reads the answers would otherwise hold
            // the connection for ever (hyper has no write timeout).
            let deadline = tokio::time::sleep(gateway.config.header_read_timeout());
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(peer = %peer.ip(), %err, "http connection ended with an error");
                    }
                }
                _ = deadline => debug!(peer = %peer.ip(), "http connection timed out"),
                _ = gateway.shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_SHUTDOWN_WAIT, connection).await;
                }
            }
        });
    }
}

fn http_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .max_header_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
}

/// Errors that concern one connection only; the next accept may well succeed.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over `MAX_CONNECTIONS` without involving hyper: read what the client
/// sent (so closing does not reset the connection and destroy the answer), answer 503, close.
/// Bounded in time, so a flood of these cannot pile up.
async fn refuse_busy(mut stream: TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Length: 15\r\n\
        Connection: close\r\n\r\nserver is busy\n";
    let _ = tokio::time::timeout(BUSY_ANSWER_TIME, async {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(RESPONSE).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn route(
    gateway: &Arc<Gateway>,
    peer: SocketAddr,
    connection: Arc<OwnedSemaphorePermit>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    if let Some(response) = health(gateway, request.uri().path()) {
        return response;
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        if gateway.config.demo {
            if let Some(response) = demo::serve(gateway, peer, request).await {
                return response;
            }
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        // GarinChat clients connect to any path; a plain GET there is a client that forgot
        // to upgrade.
        let mut response = plain(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    if let Err(refusal) = check_upgrade(&gateway.config, &request) {
        debug!(peer = %peer.ip(), status = refusal.status.as_u16(), reason = refusal.reason, "upgrade refused");
        gateway
            .metrics
            .connection(if refusal.status == StatusCode::FORBIDDEN {
                outcome::ORIGIN
            } else {
                outcome::HANDSHAKE
            });
        return refusal.into_response();
    }
    let client_ip = client_ip(
        peer.ip(),
        request.headers(),
        &gateway.config.trusted_proxies,
    );
    let key = IpKey::of(client_ip);
    if let Some(left) = gateway.bans.remaining(&Offender::Ip(key)) {
        debug!(client = %key, "banned address");
        gateway.metrics.connection(outcome::BANNED);
        return with_retry_after(plain(StatusCode::FORBIDDEN, "banned\n"), left);
    }
    let ip_slot = match gateway.admission.admit_ip(key) {
        Ok(slot) => slot,
        Err(refusal) => {
            debug!(client = %key, ?refusal, "admission refused");
            gateway.metrics.connection(match refusal {
                Refusal::Busy => outcome::BUSY,
                Refusal::TooManyFromIp => outcome::TOO_MANY_FROM_IP,
                Refusal::TooFast { .. } => outcome::TOO_FAST,
            });
            return match refusal {
                Refusal::Busy => with_retry_after(
                    plain(StatusCode::SERVICE_UNAVAILABLE, "server is busy\n"),
                    BUSY_RETRY_AFTER,
                ),
                Refusal::TooManyFromIp => {
                    plain(StatusCode::TOO_MANY_REQUESTS, "too many connections\n")
                }
                Refusal::TooFast { retry_after } => with_retry_after(
                    plain(StatusCode::TOO_MANY_REQUESTS, "connecting too fast\n"),
                    retry_after,
                ),
            };
        }
    };
    let admitted = Admitted {
        connection,
        ip: ip_slot,
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(err) => {
            debug!(peer = %peer.ip(), %err, "upgrade failed");
            gateway.metrics.connection(outcome::HANDSHAKE);
            return plain(StatusCode::BAD_REQUEST, "bad websocket handshake\n");
        }
    };
    gateway.metrics.connection(outcome::UPGRADED);
    let gateway_for_session = Arc::clone(gateway);
    gateway.sessions.spawn(async move {
        match upgrade.await {
            Ok(ws) => session::run(gateway_for_session, ws, client_ip, admitted).await,
            Err(err) => debug!(peer = %peer.ip(), %err, "upgrade did not complete"),
        }
    });
    // No Sec-WebSocket-Extensions in the response: permessage-deflate is never negotiated.
    response.map(|_| Body::default())
}

/// A refused handshake, answered with plain HTTP.
struct HandshakeRefusal {
    status: StatusCode,
    reason: &'static str,
}

impl HandshakeRefusal {
    fn into_response(self) -> Response<Body> {
        let mut response = plain(self.status, self.reason);
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// The checks fastwebsockets leaves to us: method, Origin, version, and the key's form.
fn check_upgrade(config: &Config, request: &Request<Incoming>) -> Result<(), HandshakeRefusal> {
    let refuse = |status, reason| Err(HandshakeRefusal { status, reason });
    if request.method() != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "websocket upgrade must be a GET\n",
        );
    }
    if !origin_allowed(config, request.headers().get(ORIGIN)) {
        return refuse(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if request
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "websocket version 13 required\n",
        );
    }
    if !request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .is_some_and(is_valid_key)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key\n",
        );
    }
    Ok(())
}

/// Origins are compared whole and ignoring ASCII case (scheme and host are case-insensitive);
/// `*` in `ALLOWED_ORIGINS` admits any Origin. A missing Origin is admitted only with
/// `ALLOW_MISSING_ORIGIN=true`.
fn origin_allowed(config: &Config, origin: Option<&HeaderValue>) -> bool {
    let Some(origin) = origin else {
        return config.allow_missing_origin;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    config
        .origins()
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
}

/// RFC 6455 4.1: the key is 16 random bytes, base64-encoded: 24 characters ending in `==`.
fn is_valid_key(key: &HeaderValue) -> bool {
    let key = key.as_bytes();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Adds `Retry-After` in whole seconds, rounded up (at least 1).
fn with_retry_after(mut response: Response<Body>, wait: Duration) -> Response<Body> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// `/healthz`: the process is alive. `/readyz`: it should get new clients (not draining).
pub(crate) fn health(gateway: &Gateway, path: &str) -> Option<Response<Body>> {
    match path {
        "/healthz" => Some(plain(StatusCode::OK, "ok\n")),
        "/readyz" if gateway.is_ready() => Some(plain(StatusCode::OK, "ready\n")),
        "/readyz" => Some(plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")),
        _ => None,
    }
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
