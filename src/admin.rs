//! The admin listener (`METRICS_BIND_ADDR:METRICS_PORT`, loopback by default): `/metrics` for
//! Prometheus, plus `/healthz` and `/readyz` as on the main port. Kept off the public port so
//! that metrics are not served to the internet by accident. It holds at most
//! `ADMIN_MAX_CONNECTIONS` connections, each for at most `HEADER_READ_TIMEOUT_MS`, so it can
//! never starve the public port of descriptors.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::{self, plain, Body};
use crate::state::Gateway;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Accepts admin connections until the gateway stops.
pub(crate) async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    let serving = Arc::new(gateway.head.serving());
    http::accept_loop(listener, gateway.stopping.clone(), |stream, peer| {
        // Past ADMIN_MAX_CONNECTIONS a connection is closed at once: idle admin connections
        // must never use up the descriptors the public port needs.
        let Ok(permit) = Arc::clone(&gateway.admin_connections).try_acquire_owned() else {
            return;
        };
        let service_gateway = Arc::clone(&gateway);
        let stopping = gateway.stopping.clone();
        let serving = Arc::clone(&serving);
        gateway.tasks.spawn(async move {
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&service_gateway);
                async move { Ok::<_, Infallible>(route(&gateway, &request)) }
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

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/metrics" => http::with_type(StatusCode::OK, gateway.metrics.encode(), OPENMETRICS),
        path => http::health(path, || gateway.is_ready())
            .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n")),
    }
}
