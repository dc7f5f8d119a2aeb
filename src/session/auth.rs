//! The `auth` frame: the first authenticates the session (once the user is neither banned nor
//! over `MAX_SESSIONS_PER_USER`), a later one refreshes its token.

use std::sync::Arc;

use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::timers::far_future;
use super::{Session, State};
use crate::auth::jwt::unix_now;
use crate::auth::{AuthError, Identity};
use crate::bans::Offender;
use crate::broker::SessionClaim;
use crate::metrics::labels::SessionState;
use crate::protocol::{CloseCode, Version};
use crate::sessions::TokenId;

impl Session {
    /// The first `auth` authenticates; a later one refreshes the token (same user only).
    pub(super) async fn on_auth(&mut self, token: &str) -> Result<(), CloseCode> {
        let first = matches!(self.state, State::AwaitAuth);
        if !first {
            self.spend_control()?;
        }
        let gateway = Arc::clone(&self.gateway);
        let metrics = &gateway.metrics;
        let verifying = Instant::now();
        // Verifying may wait for an identity provider's keys: the state's deadline and
        // shutdown still apply meanwhile.
        let deadline = self.deadline;
        let verified = tokio::select! {
            verified = gateway.verifier.verify(token) => verified,
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                return Err(self.deadline_code());
            }
            _ = gateway.stopping.cancelled() => return Err(CloseCode::GoingAway),
        };
        metrics
            .auth_duration
            .observe(verifying.elapsed().as_secs_f64());
        let identity = verified.map_err(|err| self.refuse_auth(err))?;
        if !first {
            return self.refresh(identity);
        }
        self.check_ban(&identity)?;
        let Ok(registration) = self.gateway.sessions.register_user(
            &identity.user_id,
            self.id,
            &self.outbox,
            self.version == Version::V2,
        ) else {
            return Err(self.refuse_auth(AuthError::TooManySessions));
        };
        // The cap counted on every node: one round trip to Redis, within its timeout.
        let max = self.gateway.sessions.max_per_user();
        let Some(claim) =
            SessionClaim::claim(self.gateway.hub.broker(), &identity.user_id, max).await
        else {
            return Err(self.refuse_auth(AuthError::TooManySessions));
        };
        self._claim = Some(claim);
        debug!(session = self.id, user_id = %identity.user_id, "authenticated");
        self.set_token_expiry(&identity);
        self.register_token(&identity);
        self.user = Some(registration);
        self.enter(
            SessionState::AwaitAuth,
            State::Authed {
                identity,
                rooms: Vec::new(),
            },
        );
        self.deadline = Some(Instant::now() + self.gateway.session.deadlines.join);
        Ok(())
    }

    /// Refuses a banned user (4009).
    fn check_ban(&self, identity: &Identity) -> Result<(), CloseCode> {
        let user = Offender::User(Arc::clone(&identity.user_id));
        if self.gateway.moderation.bans().remaining(&user).is_some() {
            return Err(self.refuse_auth(AuthError::BannedUser));
        }
        Ok(())
    }

    /// Logs and counts a refused authentication; the close code that goes with it.
    fn refuse_auth(&self, err: AuthError) -> CloseCode {
        debug!(session = self.id, %err, "auth refused");
        self.gateway.metrics.auth_failure(err);
        match err {
            AuthError::TooManySessions => CloseCode::TooManySessions,
            AuthError::BannedUser => CloseCode::Banned,
            _ => CloseCode::AuthFailed,
        }
    }

    /// Files the session under its token's id, if it has one (replacing the previous token's).
    fn register_token(&mut self, identity: &Identity) {
        // The previous registration goes first: a refresh with the same token id would
        // otherwise be forgotten with it (both entries share this session's id).
        self.token = None;
        self.token = identity.token_id.as_deref().map(|id| {
            self.gateway
                .sessions
                .register_token(TokenId(Arc::from(id)), self.id, &self.outbox)
        });
    }

    /// The session ends when its token stops being good.
    fn set_token_expiry(&mut self, identity: &Identity) {
        self.timers
            .set_token_expiry(identity.valid_until, unix_now());
    }

    /// A fresh token for the same user extends the session to its expiry; one for anybody
    /// else is refused.
    fn refresh(&mut self, fresh: Identity) -> Result<(), CloseCode> {
        let Some(current) = self.state.identity() else {
            unreachable!("refresh happens only after auth");
        };
        if current.user_id != fresh.user_id {
            return Err(self.refuse_auth(AuthError::WrongSubject));
        }
        // A banned user's session does not live on by refreshing its token.
        self.check_ban(&fresh)?;
        debug!(session = self.id, user_id = %fresh.user_id, "token refreshed");
        self.set_token_expiry(&fresh);
        self.register_token(&fresh);
        let current = self.state.identity_mut().expect("checked above");
        current.valid_until = fresh.valid_until;
        current.token_id = fresh.token_id;
        current.rooms = fresh.rooms;
        Ok(())
    }
}
