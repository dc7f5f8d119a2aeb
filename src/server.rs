//! Accepting TCP connections, HTTP/1.1 with hyper, the routes, and the WebSocket upgrade.
//!
//! Every refusal that can happen before the 101 does, with a plain HTTP status: a bad Origin
//! (403), a request that is not a WebSocket upgrade (426), a bad handshake (400, or 426 for a
//! version other than 13). hyper enforces the header read timeout (it needs `.timer()` for
//! that, or a slow-header client holds a socket forever) and the header size and count limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::admission::{Admitted, Refusal};
use crate::bans::Offender;
use crate::client_ip::{client_ip, IpKey};
use crate::http::{self, plain, with_retry_after, Body, ResponseFuture};
use crate::metrics::labels::Outcome;
use crate::session;
use crate::state::Gateway;
use crate::upgrade::check_upgrade;

/// How long answering a connection over `MAX_CONNECTIONS` may take.
const BUSY_ANSWER_TIME: Duration = Duration::from_secs(1);

/// What a client over a global limit is told to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Plain-HTTP pages served beside the upgrade, plugged in by whoever starts the gateway (the
/// demo's page and token endpoint); this module knows none of them.
pub trait Pages: Send + Sync + 'static {
    /// The response for a request that is not an upgrade, or `None` if this is not a page.
    fn serve(&self, peer: SocketAddr, request: Request<Incoming>) -> ResponseFuture<'_>;
}

/// What the public listener serves: the gateway, and the pages plugged into it.
struct Public {
    gateway: Arc<Gateway>,
    pages: Option<Arc<dyn Pages>>,
}

/// Accepts connections on the public port until the gateway stops.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    pages: Option<Arc<dyn Pages>>,
) {
    let public = Arc::new(Public {
        gateway: Arc::clone(&gateway),
        pages,
    });
    let limits = gateway.head;
    http::accept_loop(listener, gateway.stopping.clone(), |stream, peer| {
        let Some(permit) = gateway.admission.try_connection() else {
            debug!(peer = %peer.ip(), "at MAX_CONNECTIONS");
            gateway.metrics.connection(Outcome::Busy);
            gateway.tasks.spawn(refuse_busy(stream));
            return;
        };
        let permit = Arc::new(permit);
        // Chat frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let public = Arc::clone(&public);
        let stopping = gateway.stopping.clone();
        gateway.tasks.spawn(async move {
            let service_public = Arc::clone(&public);
            let service = service_fn(move |request| {
                let public = Arc::clone(&service_public);
                let permit = Arc::clone(&permit);
                async move { Ok::<_, Infallible>(public.route(peer, permit, request).await) }
            });
            http::serve_connection(stream, peer, &limits, service, &stopping).await;
        });
    })
    .await;
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

impl Public {
    async fn route(
        &self,
        peer: SocketAddr,
        connection: Arc<OwnedSemaphorePermit>,
        mut request: Request<Incoming>,
    ) -> Response<Body> {
        let gateway = &self.gateway;
        if let Some(response) = http::health(request.uri().path(), || gateway.is_ready()) {
            return response;
        }
        if !fastwebsockets::upgrade::is_upgrade_request(&request) {
            if let Some(pages) = &self.pages {
                return pages
                    .serve(peer, request)
                    .await
                    .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n"));
            }
            // GarinChat clients connect to any path; a plain GET there is a client that forgot
            // to upgrade.
            let mut response = plain(StatusCode::UPGRADE_REQUIRED, "websocket upgrade required\n");
            response
                .headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
            return response;
        }
        if let Err(refusal) = check_upgrade(&gateway.upgrade, &request) {
            debug!(peer = %peer.ip(), status = refusal.status.as_u16(), reason = refusal.reason, "upgrade refused");
            gateway
                .metrics
                .connection(if refusal.status == StatusCode::FORBIDDEN {
                    Outcome::Origin
                } else {
                    Outcome::Handshake
                });
            return refusal.into_response();
        }
        let client_ip = client_ip(
            peer.ip(),
            request.headers(),
            &gateway.upgrade.trusted_proxies,
        );
        let key = IpKey::of(client_ip);
        if let Some(left) = gateway.bans.remaining(&Offender::Ip(key)) {
            debug!(client = %key, "banned address");
            gateway.metrics.connection(Outcome::Banned);
            return with_retry_after(plain(StatusCode::FORBIDDEN, "banned\n"), left);
        }
        let ip_slot = match gateway.admission.admit_ip(key) {
            Ok(slot) => slot,
            Err(refusal) => {
                debug!(client = %key, ?refusal, "admission refused");
                gateway.metrics.connection(match refusal {
                    Refusal::Busy => Outcome::Busy,
                    Refusal::TooManyFromIp => Outcome::TooManyFromIp,
                    Refusal::TooFast { .. } => Outcome::TooFast,
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
            _connection: connection,
            ip: ip_slot,
        };
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
            Ok(pair) => pair,
            Err(err) => {
                debug!(peer = %peer.ip(), %err, "upgrade failed");
                gateway.metrics.connection(Outcome::Handshake);
                return plain(StatusCode::BAD_REQUEST, "bad websocket handshake\n");
            }
        };
        gateway.metrics.connection(Outcome::Upgraded);
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
}
