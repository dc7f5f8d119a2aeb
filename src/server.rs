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
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::admission::{Admitted, IpSlot, Refusal};
use crate::bans::Offender;
use crate::client_ip::IpKey;
use crate::http::{self, plain, Body, ResponseFuture};
use crate::metrics::labels::Outcome;
use crate::session;
use crate::state::Gateway;
use crate::upgrade::{check_upgrade, offered_version, select_version};

/// How long answering a connection refused at accept may take.
const REFUSAL_ANSWER_TIME: Duration = Duration::from_secs(1);

/// Refusals at accept answered at once at most; more are closed unanswered.
const REFUSALS_IN_FLIGHT: usize = 64;

/// Plain-HTTP pages served beside the upgrade, plugged in by whoever starts the gateway (the
/// demo's page and token endpoint); this module knows none of them.
pub trait Pages: Send + Sync + 'static {
    /// The response for a request that is not an upgrade, or `None` if this is not a page.
    fn serve(&self, peer: SocketAddr, request: Request<Incoming>) -> ResponseFuture<'_>;
}

/// Accepts connections on the public port until the gateway stops.
///
/// Admission starts at accept, before any byte is read: a banned address is refused, and a
/// client that connects directly takes its place under `MAX_CONNECTIONS_PER_IP` then, so
/// however it behaves before the upgrade it holds no more than its share. (A trusted proxy's
/// clients are told apart only by their requests' forwarding headers, at the upgrade.)
pub(crate) async fn accept_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    pages: Option<Arc<dyn Pages>>,
) {
    let public = Arc::new(Public {
        gateway: Arc::clone(&gateway),
        pages,
        refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
    });
    let serving = Arc::new(gateway.head.serving());
    http::accept_loop(listener, gateway.stopping.clone(), |stream, peer| {
        let Some(connection) = public.admit(stream, peer) else {
            return;
        };
        let Connection { stream, held } = connection;
        // Chat frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let public = Arc::clone(&public);
        let stopping = gateway.stopping.clone();
        let serving = Arc::clone(&serving);
        let deadline = serving.deadline();
        gateway.tasks.spawn(async move {
            let held = Arc::new(held);
            let service_public = Arc::clone(&public);
            let service = service_fn(move |request| {
                let public = Arc::clone(&service_public);
                let held = Arc::clone(&held);
                async move { Ok::<_, Infallible>(public.route(peer, &held, request).await) }
            });
            let Some(tls) = &public.gateway.tls else {
                serving
                    .serve(stream, peer, deadline, service, &stopping)
                    .await;
                return;
            };
            // The handshake, admitted already, has what is left of the time before the upgrade.
            match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => {
                    serving
                        .serve(stream, peer, deadline, service, &stopping)
                        .await
                }
                Ok(Err(err)) => debug!(peer = %peer.ip(), %err, "TLS handshake failed"),
                Err(_) => debug!(peer = %peer.ip(), "TLS handshake timed out"),
            }
        });
    })
    .await;
}

/// An accepted connection and what it holds.
struct Connection {
    stream: TcpStream,
    held: Held,
}

/// A connection's places under the caps, until it upgrades (the session then holds them).
struct Held {
    permit: Arc<OwnedSemaphorePermit>,
    /// Taken at accept for a client that connected directly.
    ip: Mutex<Option<IpSlot>>,
}

/// What the public listener serves: the gateway, and the pages plugged into it.
struct Public {
    gateway: Arc<Gateway>,
    pages: Option<Arc<dyn Pages>>,
    /// Refusals being answered, so that a flood of refused connections holds a bounded number
    /// of descriptors.
    refusals: Arc<Semaphore>,
}

impl Public {
    /// Admits a connection at accept, or answers it with a refusal and `None`.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Option<Connection> {
        let gateway = &self.gateway;
        let proxied = gateway.proxies.is_trusted(peer.ip());
        let key = IpKey::of(peer.ip());
        let mut ip = None;
        if !proxied {
            if let Some(left) = gateway.moderation.bans().remaining(&Offender::Ip(key)) {
                debug!(client = %key, "banned address at accept");
                gateway.metrics.connection(Outcome::Banned);
                self.refuse(stream, Refusal::Banned { retry_after: left });
                return None;
            }
            let Some(slot) = gateway.admission.admit_peer(key) else {
                debug!(client = %key, "at MAX_CONNECTIONS_PER_IP at accept");
                gateway.metrics.connection(Outcome::TooManyFromIp);
                self.refuse(stream, Refusal::TooManyFromIp);
                return None;
            };
            ip = Some(slot);
        }
        let Some(permit) = gateway.admission.try_connection() else {
            debug!(peer = %peer.ip(), "at MAX_CONNECTIONS");
            gateway.metrics.connection(Outcome::Busy);
            self.refuse(stream, Refusal::Busy);
            return None;
        };
        Some(Connection {
            stream,
            held: Held {
                permit: Arc::new(permit),
                ip: Mutex::new(ip),
            },
        })
    }

    /// Answers a refused connection without hyper, bounded in time and in how many at once
    /// (past that, it is closed unanswered).
    fn refuse(&self, stream: TcpStream, refusal: Refusal) {
        let Ok(slot) = Arc::clone(&self.refusals).try_acquire_owned() else {
            return;
        };
        self.gateway.tasks.spawn(async move {
            answer_at_accept(stream, refusal).await;
            drop(slot);
        });
    }

    async fn route(
        &self,
        peer: SocketAddr,
        held: &Held,
        request: Request<Incoming>,
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
        let mut response = self.upgrade(peer, held, request);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // A refused upgrade ends the connection: a proxy that switched to tunnel mode on
            // seeing `Upgrade` must never carry a second request on it.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Checks an upgrade request and answers 101 (spawning the session), or refuses it.
    fn upgrade(
        &self,
        peer: SocketAddr,
        held: &Held,
        mut request: Request<Incoming>,
    ) -> Response<Body> {
        let gateway = &self.gateway;
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
        if gateway.memory.is_shedding() {
            debug!(peer = %peer.ip(), "memory above MEMORY_HIGH_WATERMARK: upgrade shed");
            gateway.metrics.connection(Outcome::Memory);
            return Refusal::Memory.into_response();
        }
        let client_ip = gateway.proxies.client_ip(peer.ip(), request.headers());
        let key = IpKey::of(client_ip);
        if let Some(left) = gateway.moderation.bans().remaining(&Offender::Ip(key)) {
            debug!(client = %key, "banned address");
            gateway.metrics.connection(Outcome::Banned);
            return Refusal::Banned { retry_after: left }.into_response();
        }
        let taken = held.ip.lock().expect("never poisoned").take();
        let ip_slot = match gateway.admission.admit_upgrade(key, taken) {
            Ok(slot) => slot,
            Err(refusal) => {
                debug!(client = %key, ?refusal, "admission refused");
                gateway.metrics.connection(refusal.outcome());
                return refusal.into_response();
            }
        };
        let admitted = Admitted {
            _connection: Arc::clone(&held.permit),
            ip: ip_slot,
        };
        let version = offered_version(request.headers());
        let (mut response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
            Ok(pair) => pair,
            Err(err) => {
                debug!(peer = %peer.ip(), %err, "upgrade failed");
                gateway.metrics.connection(Outcome::Handshake);
                return plain(StatusCode::BAD_REQUEST, "bad websocket handshake\n");
            }
        };
        gateway.metrics.connection(Outcome::Upgraded);
        let gateway_for_session = Arc::clone(gateway);
        gateway.session_tasks.spawn(async move {
            let upgraded = match upgrade.await {
                Ok(ws) => ws.into_inner().into_inner(),
                Err(err) => {
                    debug!(client = %client_ip, %err, "upgrade did not complete");
                    return;
                }
            };
            let gateway = gateway_for_session;
            // A plain TCP connection is taken out of hyper's wrapper (a box and an indirection
            // per socket), with the bytes hyper read past the request; a TLS one reads through
            // the wrapper, which replays them.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    // Copied, not converted: the bytes share hyper's read buffer (8 KiB), which
                    // must be freed now rather than held for the socket's life.
                    let early = parts.read_buf.to_vec();
                    drop(parts.read_buf);
                    let stream = parts.io.into_inner();
                    session::run(gateway, stream, early, client_ip, admitted, version).await
                }
                Err(upgraded) => {
                    let stream = TokioIo::new(upgraded);
                    session::run(gateway, stream, Vec::new(), client_ip, admitted, version).await
                }
            }
        });
        select_version(&mut response, version);
        // No Sec-WebSocket-Extensions in the response: permessage-deflate is never negotiated.
        response.map(|_| Body::default())
    }
}

/// Answers a connection refused at accept without hyper: read what the client sent (so
/// closing does not reset the connection and destroy the answer), answer, close. Bounded in
/// time.
async fn answer_at_accept(mut stream: TcpStream, refusal: Refusal) {
    let head = refusal.head();
    let _ = tokio::time::timeout(REFUSAL_ANSWER_TIME, async {
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
