//! Plain HTTP, shared by every listener: the accept loop, serving one connection, and the small
//! responses (`/healthz`, `/readyz`, plain text with a status).
//!
//! Every listener goes through [`accept_loop`] and [`serve_connection`], so they share one
//! policy for accept errors (skip those that concern one connection, pause on the rest, never
//! exit), for the header read timeout and limits, for how long a connection may stay before it
//! upgrades, and for shutdown (finish the response in flight, then close).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::{at_least, millis, nonzero_usize, Config, ConfigError};

/// The body of every response the gateway writes itself.
pub(crate) type Body = Full<Bytes>;

/// How long an accept error that is not about one connection (e.g. out of file descriptors)
/// pauses the loop, so it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A connection to the server API lives at most this many header timeouts: long
/// enough that keep-alive pools rarely reopen connections, short enough that a client that
/// never reads its answers gives its slot back.
const REQUEST_LISTENER_LIFETIMES: u32 = 12;

/// How long a plain HTTP connection may take to finish its response at shutdown.
const HTTP_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The limits every HTTP listener applies to a request head and to a connection's life before
/// it upgrades (or, on a listener that never upgrades, to its whole life).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadLimits {
    /// Time for the request head to arrive, and the longest a connection may stay before it
    /// upgrades (hyper has no write timeout: a client that pipelines requests and never reads
    /// the answers would otherwise hold the connection for ever).
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl HeadLimits {
    pub(crate) fn from_env(env: &Config) -> Result<HeadLimits, ConfigError> {
        Ok(HeadLimits {
            header_read_timeout: millis("HEADER_READ_TIMEOUT_MS", env.header_read_timeout_ms)?,
            // A browser's upgrade request alone is several hundred bytes.
            max_header_bytes: at_least("MAX_HEADER_BYTES", env.max_header_bytes, 1024)?,
            max_headers: nonzero_usize("MAX_HEADERS", env.max_headers)?.get(),
        })
    }

    /// How the public listener serves its connections under these limits (made once): a
    /// connection that has not upgraded by the deadline is dropped.
    pub(crate) fn serving(&self) -> Serving {
        self.serving_with(false)
    }

    /// How the server API's listener serves its connections: each
    /// request head within the header timeout (an idle keep-alive connection closes then), a
    /// connection for at most [`REQUEST_LISTENER_LIFETIMES`] header timeouts, and at that
    /// deadline the response in flight is finished (with `Connection: close`) before the
    /// connection closes, so a keep-alive client never sees a request cut off.
    pub(crate) fn serving_requests(&self) -> Serving {
        let mut serving = self.serving_with(true);
        serving.lifetime = self.header_read_timeout * REQUEST_LISTENER_LIFETIMES;
        serving
    }

    fn serving_with(&self, finish_at_deadline: bool) -> Serving {
        let mut builder = http1::Builder::new();
        // hyper applies no header read timeout without a timer: a slow-header client would
        // hold its socket for ever.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_header_size(self.max_header_bytes)
            .max_headers(self.max_headers)
            .max_buf_size(self.max_header_bytes.max(8192));
        Serving {
            builder,
            lifetime: self.header_read_timeout,
            finish_at_deadline,
        }
    }
}

/// A listener's hyper builder and the longest a connection may stay before it upgrades.
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    builder: http1::Builder,
    lifetime: Duration,
    /// At the deadline, finish the response in flight (up to a second) rather than drop it.
    finish_at_deadline: bool,
}

/// Accepts connections until `stopping` is cancelled, handing each to `accepted`. Never exits
/// on an accept error.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    stopping: CancellationToken,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let next = tokio::select! {
            _ = stopping.cancelled() => return,
            next = listener.accept() => next,
        };
        match next {
            Ok((stream, peer)) => accepted(stream, peer),
            Err(err) if is_per_connection_error(&err) => continue,
            Err(err) => {
                warn!(%err, "accept failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Accepts connections of plain requests (the admin and API listeners) until `stopping`: at
/// most `connections` at once, more closed at once (so idle ones never use up the descriptors
/// the public port needs), each served on `tasks` with `handle` answering its requests.
pub(crate) async fn serve_capped<H, F>(
    listener: TcpListener,
    serving: Serving,
    connections: Arc<Semaphore>,
    stopping: CancellationToken,
    tasks: TaskTracker,
    handle: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let serving = Arc::new(serving);
    accept_loop(listener, stopping.clone(), |stream, peer| {
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            return;
        };
        let (serving, stopping, handle) = (Arc::clone(&serving), stopping.clone(), handle.clone());
        tasks.spawn(async move {
            let service = service_fn(move |request| {
                let answer = handle(peer, request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let deadline = serving.deadline();
            serving
                .serve(stream, peer, deadline, service, &stopping)
                .await;
            drop(permit);
        });
    })
    .await;
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

impl Serving {
    /// When a connection accepted now must have upgraded (or finished) by.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.lifetime
    }

    /// Serves HTTP/1.1 on one connection until it ends, upgrades, passes `deadline` (from
    /// [`deadline`](Self::deadline), taken at accept: a TLS handshake counts against it), or the
    /// gateway stops (then the response in flight may finish for a second).
    pub(crate) async fn serve<T, S>(
        &self,
        stream: T,
        peer: SocketAddr,
        deadline: Instant,
        service: S,
        stopping: &CancellationToken,
    ) where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = Body>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        S::Future: Send,
    {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(peer = %peer.ip(), %err, "http connection ended with an error");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                debug!(peer = %peer.ip(), "http connection timed out");
                if self.finish_at_deadline {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HTTP_SHUTDOWN_WAIT, connection).await;
                }
            }
            _ = stopping.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HTTP_SHUTDOWN_WAIT, connection).await;
            }
        }
    }
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    with_type(
        status,
        Bytes::from_static(text.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

/// A response with a body of the given content type.
pub(crate) fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Adds `Retry-After`, in whole seconds rounded up.
pub(crate) fn with_retry_after(mut response: Response<Body>, wait: Duration) -> Response<Body> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    response
}

/// A wait as `Retry-After` writes it: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// `/healthz`: the process is alive. `/readyz`: it should get new clients (`ready` says).
/// `None` for any other path.
pub(crate) fn health(path: &str, ready: impl FnOnce() -> bool) -> Option<Response<Body>> {
    match path {
        "/healthz" => Some(plain(StatusCode::OK, "ok\n")),
        "/readyz" if ready() => Some(plain(StatusCode::OK, "ready\n")),
        "/readyz" => Some(plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")),
        _ => None,
    }
}

/// A future that resolves to a response: what pluggable pages return.
pub(crate) type ResponseFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Option<Response<Full<Bytes>>>> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn head_limits_at_and_past_their_limits() {
        let limits = HeadLimits::from_env(&env(&[
            ("MAX_HEADER_BYTES", "1024"),
            ("MAX_HEADERS", "1"),
            ("HEADER_READ_TIMEOUT_MS", "1"),
        ]))
        .unwrap();
        assert_eq!((limits.max_header_bytes, limits.max_headers), (1024, 1));
        for (var, value) in [
            ("MAX_HEADER_BYTES", "1023"),
            ("MAX_HEADERS", "0"),
            ("HEADER_READ_TIMEOUT_MS", "0"),
        ] {
            assert_names(HeadLimits::from_env(&env(&[(var, value)])), var);
        }
    }
}
