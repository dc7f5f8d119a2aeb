//! The `direct` frame (protocol v2): a message to one user, handed to every v2 session of that
//! user on every node, under `DIRECT_MESSAGES`.
//!
//! Who may be messaged is decided here, before anything is spent on delivery: nobody
//! (`off`), a user who shares one of the sender's rooms as this node knows them (rooms carry
//! their members on every node), or any user with a session somewhere (`all`: this node's
//! sessions first, then the cluster's directory). A direct message is not stored: the sender
//! is told when nobody could get it.

use std::sync::Arc;

use tracing::debug;

use super::{Answer, Handled, Refusal, Session, State};
use crate::broker::directory::Cluster;
use crate::broker::Notice;
use crate::config::DirectMessages;
use crate::metrics::labels::{DropReason, RateLimit};
use crate::protocol::{CloseCode, ErrorCode, ServerFrame};

impl Session {
    pub(super) async fn on_direct(&mut self, to: &str, body: &str) -> Handled {
        let State::Authed { identity, .. } = &self.state else {
            return Err(self.out_of_state("direct").into());
        };
        let policy = self.gateway.session.direct_messages;
        if policy == DirectMessages::Off {
            return Err(Refusal::Error(ErrorCode::DirectOff));
        }
        let from = Arc::clone(&identity.user_id);
        let username = Arc::clone(&identity.display_name);
        self.spend_message(&from)?;
        if !self.limiters.allow_direct(&self.gateway.quotas) {
            debug!(session = self.id, "direct message rate exceeded");
            self.gateway.metrics.rate_limit(RateLimit::Direct);
            return Err(CloseCode::RateLimited.into());
        }
        if body.is_empty() {
            // As an empty chat message: dropped, though it counted above.
            self.gateway.metrics.dropped(DropReason::Empty);
            return Ok(Answer::Done);
        }
        let to: Arc<str> = Arc::from(to);
        match policy {
            DirectMessages::Off => unreachable!("refused above"),
            DirectMessages::SharedRoom => self.shares_a_room(&to)?,
            DirectMessages::All => self.is_online(&to).await?,
        }
        let broker = self.gateway.hub.broker();
        broker.count_message(&from);
        self.gateway.metrics.messages_received.inc();
        let frame = ServerFrame::direct(body, &username, &from).encode();
        let here = self.gateway.sessions.deliver_direct(&to, frame, self.id);
        self.gateway.metrics.messages_delivered.inc_by(here as u64);
        broker.announce(Notice::Direct {
            to,
            from,
            username,
            body: Arc::from(body),
        });
        Ok(Answer::Done)
    }

    /// `shared-room`: the recipient is in one of this socket's rooms, on some node.
    fn shares_a_room(&self, to: &str) -> Result<(), Refusal> {
        let State::Authed { rooms, .. } = &self.state else {
            unreachable!("authenticated");
        };
        let hub = &self.gateway.hub;
        if rooms
            .iter()
            .any(|joined| hub.has_user(joined.membership.room(), to))
        {
            return Ok(());
        }
        Err(Refusal::Error(ErrorCode::DirectNotAllowed))
    }

    /// `all`: the recipient has a session on this node or, as the cluster's directory says,
    /// on another.
    async fn is_online(&self, to: &Arc<str>) -> Result<(), Refusal> {
        if self.gateway.sessions.user_count(to) > 0 {
            return Ok(());
        }
        match self.gateway.hub.broker().user_sessions(to).await {
            Cluster::Known(sessions) if sessions.iter().any(|(_, count)| *count > 0) => Ok(()),
            Cluster::Known(_) | Cluster::Alone => Err(Refusal::Error(ErrorCode::RecipientOffline)),
            Cluster::Unreachable => Err(Refusal::Error(ErrorCode::Unavailable)),
        }
    }
}
