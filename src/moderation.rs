//! Bans, kicks and revocations, enforced on every node: a ban (from strikes, or from the
//! server API) is recorded, every open session it concerns on this node is closed with 4009,
//! and the other nodes are told through the broker so they do the same; a refresh checks bans
//! too. A revocation (server API) is recorded with the token verifier and closes the sessions
//! of the token or user with 4016.
//!
//! What travels is a [`Notice`]; a node that receives one enforces it exactly as if it had
//! decided it (without announcing it again). Direct messages (protocol v2) ride the same
//! channel, so the node that hears them here hands them to the recipient's sessions.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::warn;

use crate::auth::revoked::{Revoked, RuntimeRevocations, TooManyRevocations};
use crate::bans::{Bans, Offender, StrikeOutcome};
use crate::broker::{Broker, LocalControl, Notice};
use crate::clock;
use crate::metrics::labels::BanKind;
use crate::metrics::Metrics;
use crate::protocol::CloseCode;
use crate::sessions::{Sessions, TokenId};

pub(crate) struct Moderation {
    bans: Bans,
    revoked: Arc<RuntimeRevocations>,
    sessions: Arc<Sessions>,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

impl Moderation {
    pub(crate) fn new(
        bans: Bans,
        revoked: Arc<RuntimeRevocations>,
        sessions: Arc<Sessions>,
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Moderation {
        Moderation {
            bans,
            revoked,
            sessions,
            broker,
            metrics,
        }
    }

    pub(crate) fn bans(&self) -> &Bans {
        &self.bans
    }

    /// Counts an abusive close against `offender`; a ban that follows is enforced everywhere.
    pub(crate) fn strike(&self, offender: &Offender, reason: CloseCode) {
        match self.bans.strike(offender) {
            StrikeOutcome::Banned { until_ms } => {
                warn!(%offender, reason = reason.reason(), "banned after repeated abuse");
                self.enforce(offender, CloseCode::Banned);
                self.count_ban(offender);
                self.broker.announce(Notice::Ban {
                    offender: offender.clone(),
                    until_ms,
                });
            }
            StrikeOutcome::NotTracked => warn!(
                reason = reason.reason(),
                "strike not recorded: too many tracked clients"
            ),
            StrikeOutcome::Counted => {}
        }
    }

    /// Bans `offender` for `duration`, on every node, closing its open sessions; when the ban
    /// ends (Unix milliseconds).
    pub(crate) fn ban(&self, offender: Offender, duration: Duration) -> u64 {
        let until_ms = self.bans.ban(offender.clone(), duration);
        self.enforce(&offender, CloseCode::Banned);
        self.count_ban(&offender);
        self.broker.announce(Notice::Ban { offender, until_ms });
        until_ms
    }

    /// Lifts a ban on every node; whether this node knew of it.
    pub(crate) fn unban(&self, offender: Offender) -> bool {
        let known = self.bans.unban(&offender);
        self.broker.announce(Notice::Unban { offender });
        known
    }

    /// Closes every session of `user`, on every node, with `code`; how many were on this
    /// node.
    pub(crate) fn kick(&self, user: Arc<str>, code: CloseCode) -> usize {
        let closed = self.sessions.close_user(&user, code);
        self.broker.announce(Notice::Kick { user, code });
        closed
    }

    /// Revokes a token id or a user until `until_ms` on every node, closing its sessions.
    pub(crate) fn revoke(&self, revoked: Revoked, until_ms: u64) -> Result<(), TooManyRevocations> {
        self.revoked
            .revoke(revoked.clone(), until_ms, clock::unix_ms())?;
        self.close_revoked(&revoked);
        self.broker.announce(Notice::Revoke { revoked, until_ms });
        Ok(())
    }

    /// The revocations in force.
    pub(crate) fn revocations(&self) -> Vec<(Revoked, u64)> {
        self.revoked.in_force(clock::unix_ms())
    }

    fn close_revoked(&self, revoked: &Revoked) {
        match revoked {
            Revoked::User(user) => self.sessions.close_user(user, CloseCode::TokenRevoked),
            Revoked::TokenId(id) => self
                .sessions
                .close_token(&TokenId(Arc::clone(id)), CloseCode::TokenRevoked),
        };
    }

    /// Closes the offender's open sessions on this node.
    fn enforce(&self, offender: &Offender, code: CloseCode) {
        match offender {
            Offender::User(user) => self.sessions.close_user(user, code),
            Offender::Ip(ip) => self.sessions.close_ip(ip, code),
        };
    }

    fn count_ban(&self, offender: &Offender) {
        self.metrics.ban(match offender {
            Offender::Ip(_) => BanKind::Ip,
            Offender::User(_) => BanKind::User,
        });
    }
}

impl LocalControl for Moderation {
    fn on_notice(&self, notice: Notice) {
        match notice {
            Notice::Ban { offender, until_ms } => {
                self.bans.ban_until(offender.clone(), until_ms);
                if self.bans.remaining(&offender).is_some() {
                    self.enforce(&offender, CloseCode::Banned);
                }
            }
            Notice::Unban { offender } => {
                self.bans.unban(&offender);
            }
            Notice::Kick { user, code } => {
                self.sessions.close_user(&user, code);
            }
            Notice::Direct(direct) => {
                self.sessions.deliver_direct(&direct, None);
            }
            Notice::Revoke { revoked, until_ms } => {
                self.revoked.learn(revoked.clone(), until_ms);
                if until_ms > clock::unix_ms() {
                    self.close_revoked(&revoked);
                }
            }
        }
    }

    fn revocations_in_force(&self) -> Vec<(Revoked, u64)> {
        self.revocations()
    }

    fn local_sessions(&self) -> Vec<(Arc<str>, usize)> {
        self.sessions.users()
    }

    fn bans_in_force(&self) -> Vec<(Offender, u64)> {
        let now = SystemTime::now();
        self.bans
            .in_force()
            .into_iter()
            .map(|(offender, left)| (offender, clock::unix_ms_at(now + left)))
            .collect()
    }
}
