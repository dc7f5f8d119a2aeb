//! The admin listener (`METRICS_BIND_ADDR:METRICS_PORT`, loopback by default): `/metrics` for
//! Prometheus, plus `/healthz` and `/readyz` as on the main port. Kept off the public port so
//! that metrics are not served to the internet by accident. It holds at most
//! `ADMIN_MAX_CONNECTIONS` connections, each for at most `HEADER_READ_TIMEOUT_MS`, so it can
//! never starve the public port of descriptors.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::{self, plain, Body};
use crate::state::Gateway;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Accepts admin connections until the gateway stops.
pub(crate) async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>) {
    let connections = Arc::clone(&gateway.admin_connections);
    let (stopping, tasks) = (gateway.stopping.clone(), gateway.tasks.clone());
    let serving = gateway.head.serving();
    let handle = move |_peer, request: Request<Incoming>| {
        let answer = route(&gateway, &request);
        std::future::ready(answer)
    };
    http::serve_capped(listener, serving, connections, stopping, tasks, handle).await;
}

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/metrics" => http::with_type(StatusCode::OK, gateway.metrics.encode(), OPENMETRICS),
        path => http::health(path, || gateway.is_ready())
            .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n")),
    }
}
