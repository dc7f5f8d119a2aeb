//! The `direct` frame (protocol v2): a message to one user, handed to every v2 session of that
//! user on every node, under `DIRECT_MESSAGES`.
//!
//! Who may be messaged is decided here: nobody (`off`), a user who shares one of the sender's
//! rooms as this node knows them (rooms carry their members on every node), or any user
//! (`all`). A direct message is not stored: the sender is told `recipient_offline` when no
//! session here took it and the cluster's directory knows none elsewhere. Recipients take
//! direct messages only while their queue is under half full, so nobody can push a user out
//! as a slow consumer with them.

use std::sync::Arc;

use tracing::debug;

use super::{Answer, Handled, Refusal, Session, State};
use crate::broker::directory::Cluster;
use crate::broker::Notice;
use crate::config::DirectMessages;
use crate::metrics::labels::{DropReason, RateLimit};
use crate::protocol::{CloseCode, DirectMessage, ErrorCode};

impl Session {
    pub(super) async fn on_direct(&mut self, to: &str, body: &str) -> Handled {
        let State::Authed { identity, .. } = &self.state else {
            return Err(self.out_of_state("direct").into());
        };
        let policy = self.gateway.session.direct_messages;
        if policy == DirectMessages::Off {
            return Err(Refusal::Error(ErrorCode::DirectOff));
        }
        let direct = DirectMessage {
            to: Arc::from(to),
            from: Arc::clone(&identity.user_id),
            username: Arc::clone(&identity.display_name),
            body: Arc::from(body),
        };
        self.spend_message(&direct.from)?;
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
        if policy == DirectMessages::SharedRoom {
            self.shares_a_room(&direct.to)?;
        }
        let broker = Arc::clone(self.gateway.hub.broker());
        broker.count_message(&direct.from);
        self.gateway.metrics.messages_received.inc();
        let here = self.gateway.sessions.deliver_direct(&direct, Some(self.id));
        self.gateway.metrics.messages_delivered.inc_by(here as u64);
        if here == 0 {
            self.elsewhere(&direct.to).await?;
        }
        broker.announce(Notice::Direct(direct));
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

    /// Nobody here took the message: whether the recipient has a session on another node, as
    /// the cluster's directory says (it counts GarinChat's sessions too, which cannot take
    /// it: the sender is then answered `ok` for a message nobody gets).
    async fn elsewhere(&self, to: &Arc<str>) -> Result<(), Refusal> {
        let here = self.gateway.sessions.user_count(to);
        match self.gateway.hub.broker().user_sessions(to).await {
            Cluster::Known(sessions)
                if sessions.iter().map(|(_, count)| count).sum::<usize>() > here =>
            {
                Ok(())
            }
            Cluster::Known(_) | Cluster::Alone => Err(Refusal::Error(ErrorCode::RecipientOffline)),
            Cluster::Unreachable => Err(Refusal::Error(ErrorCode::Unavailable)),
        }
    }
}
