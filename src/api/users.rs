//! Users through the server API: whether one is online and where, disconnecting one.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use super::request::{json, reply};
use super::rooms::unavailable;
use super::Call;
use crate::auth::claims::MAX_SUBJECT_BYTES;
use crate::broker::Cluster;
use crate::http::Body;
use crate::protocol::CloseCode;

/// The longest user id: an issuer's `user_id_prefix` and a subject of `MAX_SUBJECT_BYTES`.
const MAX_USER_ID_BYTES: usize = 2 * MAX_SUBJECT_BYTES;

/// A user id (named `field` in the problem): 1 to 512 bytes without control characters.
pub(super) fn check_user_id(field: &str, id: &str) -> Result<(), Problem> {
    if id.is_empty() || id.len() > MAX_USER_ID_BYTES || id.chars().any(char::is_control) {
        return Err(Problem::invalid(format!(
            "{field}: 1 to {MAX_USER_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// How a node on its own names itself in a user's sessions.
const THIS_NODE: &str = "local";

impl Call<'_> {
    /// A user id: what a verified token could carry (an issuer's prefix and its subject).
    pub(super) fn check_user(&self, user: &str) -> Result<(), Problem> {
        check_user_id("user", user)
    }

    /// `GET /users/{user}`: whether the user is online, and their sessions on each node.
    pub(super) async fn user(&self, user: &str) -> Result<Response<Body>, Problem> {
        self.check_user(user)?;
        let nodes = match self.gateway.hub.broker().user_sessions(user).await {
            Cluster::Known(nodes) => nodes,
            Cluster::Unreachable => return Err(unavailable()),
            Cluster::Alone => {
                let here = self.gateway.sessions.user_count(&Arc::from(user));
                (here > 0)
                    .then(|| (Arc::from(THIS_NODE), here))
                    .into_iter()
                    .collect()
            }
        };
        #[derive(Serialize)]
        struct NodeJson {
            node: Arc<str>,
            sessions: usize,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct UserJson<'a> {
            user_id: &'a str,
            online: bool,
            sessions: usize,
            nodes: Vec<NodeJson>,
        }
        let sessions = nodes.iter().map(|(_, sessions)| sessions).sum();
        let mut nodes: Vec<NodeJson> = nodes
            .into_iter()
            .map(|(node, sessions)| NodeJson { node, sessions })
            .collect();
        nodes.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        let body = UserJson {
            user_id: user,
            online: sessions > 0,
            sessions,
            nodes,
        };
        Ok(reply(StatusCode::OK, &body))
    }

    /// `POST /users/{user}/disconnect`: closes every session of the user on every node with
    /// 4015.
    pub(super) fn disconnect(&self, user: &str) -> Result<Response<Body>, Problem> {
        self.check_user(user)?;
        // No options yet: an empty body or `{}`, nothing else.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Options {}
        let _: Options = json(self.headers, &self.body)?;
        let closed = self
            .gateway
            .moderation
            .kick(Arc::from(user), CloseCode::Disconnected);
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Disconnected<'a> {
            user_id: &'a str,
            closed_here: usize,
        }
        let body = Disconnected {
            user_id: user,
            closed_here: closed,
        };
        Ok(reply(StatusCode::ACCEPTED, &body))
    }
}
