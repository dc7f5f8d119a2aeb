//! The admin listener (`BIND_ADDR:METRICS_PORT`): `/metrics` for Prometheus, plus `/healthz`
//! and `/readyz` as on the main port. Kept off the public port so that metrics are not
//! served to the internet by accident; put it on a private network.

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
    let limits = gateway.head;
    http::accept_loop(listener, gateway.stopping.clone(), |stream, peer| {
        let service_gateway = Arc::clone(&gateway);
        let stopping = gateway.stopping.clone();
        gateway.tasks.spawn(async move {
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&service_gateway);
                async move { Ok::<_, Infallible>(route(&gateway, &request)) }
            });
            http::serve_connection(stream, peer, &limits, service, &stopping).await;
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
