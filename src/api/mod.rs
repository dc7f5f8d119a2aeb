//! The server API: the product's backend talking to the gateway over JSON and HTTP/1.1, on its
//! own listener (`API_BIND_ADDR:API_PORT`, loopback by default), only when a credential is
//! configured. `docs/API.md` describes it for its users and `docs/openapi.yaml` exactly.
//!
//! | method and path (under `/api/v1`) | what |
//! |---|---|
//! | `POST /rooms/{room}/messages` | post a message as a system sender (numbered and kept like any) |
//! | `POST /messages` | post one message to several rooms |
//! | `GET /rooms` | rooms with members on any node, paged |
//! | `GET /rooms/{room}/members` | a room's members, paged |
//! | `GET /rooms/{room}/history` | a room's messages after an offset, paged |
//! | `GET /users/{user}` | whether a user is online, their sessions on each node |
//! | `POST /users/{user}/disconnect` | close every session of a user (4015) |
//! | `GET`, `POST /bans`; `DELETE /bans/{offender}` | bans of users and addresses |
//! | `GET`, `POST /revocations` | revoked token ids and users (4016) |
//!
//! Every request needs a bearer credential ([`credentials`]), is held to its credential's rate,
//! and is logged (caller, action, target, status; never a body or a credential). Every
//! refusal is an RFC 9457 problem ([`problem`]). The listener shares the other listeners'
//! header limits and timeout (a request head, and an idle keep-alive connection, within
//! `HEADER_READ_TIMEOUT_MS`; a connection closed after 12 times that, once the response in
//! flight is sent) and holds at most `API_MAX_CONNECTIONS`.

mod bans;
mod credentials;
mod idempotency;
mod problem;
mod request;
mod rooms;
pub(crate) mod settings;
mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::info;

use crate::http::{self, Body};
use crate::state::Gateway;
use credentials::{Credentials, Refusal};
use problem::Problem;
pub(crate) use settings::ApiSettings;

/// Where every path starts.
const PREFIX: &str = "/api/v1/";

/// The server API's state besides the gateway's.
pub(crate) struct Api {
    settings: ApiSettings,
    credentials: Credentials,
    idempotency: idempotency::Keys,
    connections: Arc<Semaphore>,
}

/// One request being answered.
struct Call<'a> {
    gateway: &'a Gateway,
    api: &'a Api,
    headers: &'a HeaderMap,
    path: &'a str,
    params: HashMap<String, String>,
    body: Bytes,
}

impl Api {
    pub(crate) fn new(settings: &ApiSettings) -> Arc<Api> {
        Arc::new(Api {
            credentials: Credentials::new(settings),
            idempotency: idempotency::Keys::new(
                settings.idempotency_window,
                settings.idempotency_max_keys,
            ),
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            settings: settings.clone(),
        })
    }

    /// Re-reads the key file, forgets idle callers and expired idempotency keys.
    pub(crate) fn housekeep(&self) {
        self.credentials.housekeep();
        self.idempotency.housekeep();
    }
}

/// Accepts API connections until the gateway stops.
pub(crate) async fn accept_loop(listener: TcpListener, gateway: Arc<Gateway>, api: Arc<Api>) {
    let connections = Arc::clone(&api.connections);
    let (stopping, tasks) = (gateway.stopping.clone(), gateway.tasks.clone());
    let serving = gateway.head.serving_requests();
    let handle = move |peer, request| {
        let (gateway, api) = (Arc::clone(&gateway), Arc::clone(&api));
        async move { serve(&gateway, &api, peer, request).await }
    };
    http::serve_capped(listener, serving, connections, stopping, tasks, handle).await;
}

/// Answers one request: its credential, its route, and a log line.
async fn serve(
    gateway: &Gateway,
    api: &Api,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let caller = match api
        .credentials
        .admit(&parts.headers, &gateway.verifier, peer.ip())
        .await
    {
        Ok(caller) => caller,
        Err(refusal) => {
            let problem = match refusal {
                Refusal::Missing => {
                    Problem::unauthorized("send Authorization: Bearer <key or token>")
                }
                Refusal::Invalid => Problem::unauthorized("the credential is not valid"),
                Refusal::NoScope => Problem::forbidden("the access token lacks API_JWT_SCOPE"),
                Refusal::OverRate(wait) => {
                    Problem::too_many("over this credential's rate (API_RATE_PER_SEC)", wait)
                }
                Refusal::HeldBack(wait) => Problem::too_many(
                    "too many refused requests from this address (API_BURST, API_RATE_PER_SEC)",
                    wait,
                ),
            };
            info!(
                peer = %peer.ip(),
                status = problem.status().as_u16(),
                refusal = ?refusal,
                "api call refused"
            );
            return problem.into_response();
        }
    };
    let Some(segments) = request::segments(parts.uri.path(), PREFIX) else {
        return Problem::not_found("no such path").into_response();
    };
    let body = if parts.method == Method::POST {
        match request::body(body, &parts.headers, api.settings.max_body_bytes).await {
            Ok(body) => body,
            Err(problem) => return problem.into_response(),
        }
    } else {
        Bytes::new()
    };
    let call = Call {
        gateway,
        api,
        headers: &parts.headers,
        path: parts.uri.path(),
        params: request::query(parts.uri.query()),
        body,
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (action, target, outcome) = route(&call, &parts.method, &segments).await;
    let response = outcome.unwrap_or_else(Problem::into_response);
    info!(
        %caller,
        action,
        target = target.unwrap_or(""),
        status = response.status().as_u16(),
        bytes = call.body.len(),
        "api call"
    );
    response
}

type Outcome = Result<Response<Body>, Problem>;

/// The operation a method and path name, its target, and its answer.
async fn route<'a>(
    call: &Call<'_>,
    method: &Method,
    path: &[&'a str],
) -> (&'static str, Option<&'a str>, Outcome) {
    use Method as M;
    match (method, path) {
        (&M::GET, ["rooms"]) => ("list_rooms", None, call.list().await),
        (_, ["rooms"]) => ("list_rooms", None, not_allowed("GET")),
        (&M::POST, ["rooms", room, "messages"]) => {
            ("publish", Some(*room), call.publish(room).await)
        }
        (_, ["rooms", room, "messages"]) => ("publish", Some(*room), not_allowed("POST")),
        (&M::GET, ["rooms", room, "members"]) => {
            ("room_members", Some(*room), call.members(room).await)
        }
        (_, ["rooms", room, "members"]) => ("room_members", Some(*room), not_allowed("GET")),
        (&M::GET, ["rooms", room, "history"]) => {
            ("room_history", Some(*room), call.history(room).await)
        }
        (_, ["rooms", room, "history"]) => ("room_history", Some(*room), not_allowed("GET")),
        (&M::POST, ["messages"]) => ("broadcast", None, call.broadcast().await),
        (_, ["messages"]) => ("broadcast", None, not_allowed("POST")),
        (&M::GET, ["users", user]) => ("user", Some(*user), call.user(user).await),
        (_, ["users", user]) => ("user", Some(*user), not_allowed("GET")),
        (&M::POST, ["users", user, "disconnect"]) => {
            ("disconnect", Some(*user), call.disconnect(user))
        }
        (_, ["users", user, "disconnect"]) => ("disconnect", Some(*user), not_allowed("POST")),
        (&M::GET, ["bans"]) => ("list_bans", None, Ok(call.bans())),
        (&M::POST, ["bans"]) => ("ban", None, call.ban()),
        (_, ["bans"]) => ("bans", None, not_allowed("GET, POST")),
        (&M::DELETE, ["bans", offender]) => ("unban", Some(*offender), call.unban(offender)),
        (_, ["bans", offender]) => ("unban", Some(*offender), not_allowed("DELETE")),
        (&M::GET, ["revocations"]) => ("list_revocations", None, Ok(call.revocations())),
        (&M::POST, ["revocations"]) => ("revoke", None, call.revoke()),
        (_, ["revocations"]) => ("revocations", None, not_allowed("GET, POST")),
        _ => ("unknown", None, Err(Problem::not_found("no such path"))),
    }
}

fn not_allowed(allow: &'static str) -> Outcome {
    Err(Problem::method_not_allowed(allow))
}
