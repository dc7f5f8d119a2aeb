//! The admin listener (`BIND_ADDR:METRICS_PORT`): `/metrics` for Prometheus, plus `/healthz`
//! and `/readyz` as on the main port. Kept off the public port so that metrics are not
//! served to the internet by accident; put it on a private network.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::warn;

use crate::gateway::Gateway;
use crate::server::{health, plain};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(gateway.config.header_read_timeout());
    loop {
        let accepted = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            warn!("admin accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let gateway = Arc::clone(&gateway);
        let http = http.clone();
        let shutdown = gateway.shutdown.clone();
        let timeout = gateway.config.header_read_timeout();
        gateway.tasks.clone().spawn(async move {
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, Infallible>(route(&gateway, &request)) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = tokio::time::sleep(timeout) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        path => {
            health(gateway, path).unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n"))
        }
    }
}
