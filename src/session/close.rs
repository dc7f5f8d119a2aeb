//! How a session ends: counted, struck against its client when it was abuse, the close
//! handshake within `CLOSE_TIMEOUT_MS`, and one log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::bans::Offender;
use crate::client_ip::IpKey;
use crate::metrics::client_close_code;
use crate::metrics::labels::Initiator;
use crate::protocol::CloseCode;
use crate::socket::writer::CloseRequest;
use crate::socket::Socket;
use crate::state::Gateway;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The server closes with this code.
    Closed(CloseCode),
    /// The client sent a close frame (with this code, if any); we echo it.
    PeerClosed(Option<u16>),
    /// The connection vanished without a close frame.
    Gone,
}

impl End {
    /// Counts the close, and strikes the client when it closed for abuse. Done before the
    /// session is dropped: once the open-sessions gauge says it is gone, its close and any
    /// strike are already on record.
    pub(super) fn record(self, gateway: &Gateway, ip: &IpKey, user: Option<&Arc<str>>) {
        let metrics = &gateway.metrics;
        match self {
            End::Closed(code) => {
                metrics.server_close(code);
                if code.is_abuse() {
                    strike(gateway, ip, user, code);
                }
            }
            End::PeerClosed(code) => metrics.closed(Initiator::Client, client_close_code(code)),
            End::Gone => metrics.closed(Initiator::None, 1006),
        }
    }

    /// The close frame to write: ours, the echo of the client's, or none for a vanished peer.
    fn close_request(self) -> Option<CloseRequest> {
        match self {
            End::Closed(code) => Some(CloseRequest {
                code: Some(code.code()),
                reason: code.reason(),
                // A slow consumer's queue is the problem: do not wait for it to drain.
                drain: code != CloseCode::SlowConsumer,
            }),
            End::PeerClosed(code) => Some(CloseRequest {
                code,
                reason: "",
                drain: true,
            }),
            End::Gone => None,
        }
    }

    /// The code and reason for the log.
    fn describe(self) -> (u16, &'static str) {
        match self {
            End::Closed(code) => (code.code(), code.reason()),
            End::PeerClosed(code) => (code.unwrap_or(1005), "closed by client"),
            End::Gone => (1006, "connection lost"),
        }
    }
}

/// The close handshake: the close frame (after what is queued, unless the socket is a slow
/// consumer), then, when the server closed, the client has the rest of `timeout` to answer
/// before TCP is dropped.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    end: End,
    socket: &mut Socket<S>,
    timeout: Duration,
) {
    let Some(request) = end.close_request() else {
        return;
    };
    let server_closed = matches!(end, End::Closed(_));
    socket.close(request, server_closed, timeout).await;
}

/// What the log says of a finished session.
pub(super) struct Summary<'a> {
    pub peer: IpAddr,
    pub user_id: Option<&'a str>,
    pub state: &'static str,
    pub end: End,
    pub duration: Duration,
}

impl Summary<'_> {
    pub(super) fn log(&self) {
        let (code, reason) = self.end.describe();
        info!(
            peer = %self.peer,
            user_id = self.user_id.unwrap_or("-"),
            state = self.state,
            close_code = code,
            reason,
            duration_ms = self.duration.as_millis() as u64,
            "session ended"
        );
    }
}

/// Counts an abusive close against the client's IP and user.
fn strike(gateway: &Gateway, ip: &IpKey, user: Option<&Arc<str>>, code: CloseCode) {
    let offenders =
        std::iter::once(Offender::Ip(*ip)).chain(user.map(|u| Offender::User(Arc::clone(u))));
    for offender in offenders {
        gateway.moderation.strike(&offender, code);
    }
}
