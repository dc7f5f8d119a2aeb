//! Bans and revocations through the server API, in force on every node within a second
//! (they travel on the control channel and are kept in Redis until they end).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use super::request::{json, present, reply};
use super::Call;
use crate::auth::revoked::Revoked;
use crate::bans::Offender;
use crate::client_ip::IpKey;
use crate::clock;
use crate::http::Body;

/// A ban to make: a user or an address, for a while.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewBan {
    #[serde(default, deserialize_with = "present")]
    user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ip: Option<String>,
    duration_secs: u64,
}

/// A revocation to make: a token id or a user, for a while.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewRevocation {
    #[serde(default, deserialize_with = "present")]
    token_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    user: Option<String>,
    duration_secs: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BanJson {
    offender: String,
    until_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RevocationJson {
    revoked: String,
    until_ms: u64,
}

impl Call<'_> {
    fn duration(&self, secs: u64) -> Result<Duration, Problem> {
        let max = self.api.settings.max_ban.as_secs();
        if secs == 0 || secs > max {
            return Err(Problem::invalid(format!(
                "durationSecs: 1 to {max} (API_MAX_BAN_SECS)"
            )));
        }
        Ok(Duration::from_secs(secs))
    }

    /// `POST /bans`.
    pub(super) fn ban(&self) -> Result<Response<Body>, Problem> {
        let ban: NewBan = json(self.headers, &self.body)?;
        let offender = match (ban.user, ban.ip) {
            (Some(user), None) => {
                self.check_user(&user)?;
                Offender::User(Arc::from(user))
            }
            (None, Some(ip)) => Offender::Ip(
                ip.parse()
                    .map(IpKey::of)
                    .map_err(|_| Problem::invalid("ip: not an IP address"))?,
            ),
            _ => return Err(Problem::invalid("exactly one of user and ip")),
        };
        let duration = self.duration(ban.duration_secs)?;
        let until_ms = self.gateway.moderation.ban(offender.clone(), duration);
        let body = BanJson {
            offender: offender.to_string(),
            until_ms,
        };
        Ok(reply(StatusCode::CREATED, &body))
    }

    /// `GET /bans`: every ban in force, by offender.
    pub(super) fn bans(&self) -> Response<Body> {
        let now = SystemTime::now();
        let mut bans: Vec<BanJson> = self
            .gateway
            .moderation
            .bans()
            .in_force()
            .into_iter()
            .map(|(offender, left)| BanJson {
                offender: offender.to_string(),
                until_ms: clock::unix_ms_at(now + left),
            })
            .collect();
        bans.sort_unstable_by(|a, b| a.offender.cmp(&b.offender));
        #[derive(Serialize)]
        struct Bans {
            bans: Vec<BanJson>,
        }
        reply(StatusCode::OK, &Bans { bans })
    }

    /// `DELETE /bans/{offender}` (`user:ID` or `ip:ADDRESS`).
    pub(super) fn unban(&self, offender: &str) -> Result<Response<Body>, Problem> {
        let offender = Offender::parse(offender)
            .ok_or_else(|| Problem::invalid("offender: user:ID or ip:ADDRESS"))?;
        if self
            .gateway
            .moderation
            .bans()
            .remaining(&offender)
            .is_none()
        {
            return Err(Problem::not_found(format!("{offender} is not banned")));
        }
        self.gateway.moderation.unban(offender);
        Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::default())
            .expect("a valid response"))
    }

    /// `POST /revocations`.
    pub(super) fn revoke(&self) -> Result<Response<Body>, Problem> {
        let revocation: NewRevocation = json(self.headers, &self.body)?;
        let revoked = match (revocation.token_id, revocation.user) {
            (Some(id), None) => {
                super::users::check_user_id("tokenId", &id)?;
                Revoked::TokenId(Arc::from(id))
            }
            (None, Some(user)) => {
                self.check_user(&user)?;
                Revoked::User(Arc::from(user))
            }
            _ => return Err(Problem::invalid("exactly one of tokenId and user")),
        };
        let duration = self.duration(revocation.duration_secs)?;
        let until_ms = clock::unix_ms_at(SystemTime::now() + duration);
        self.gateway
            .moderation
            .revoke(revoked.clone(), until_ms)
            .map_err(|_| {
                Problem::too_many(
                    "too many revocations in force (API_MAX_REVOCATIONS)",
                    Duration::from_secs(60),
                )
            })?;
        let body = RevocationJson {
            revoked: revoked.to_string(),
            until_ms,
        };
        Ok(reply(StatusCode::CREATED, &body))
    }

    /// `GET /revocations`: every revocation made at run time that is in force.
    pub(super) fn revocations(&self) -> Response<Body> {
        let mut revocations: Vec<RevocationJson> = self
            .gateway
            .moderation
            .revocations()
            .into_iter()
            .map(|(revoked, until_ms)| RevocationJson {
                revoked: revoked.to_string(),
                until_ms,
            })
            .collect();
        revocations.sort_unstable_by(|a, b| a.revoked.cmp(&b.revoked));
        #[derive(Serialize)]
        struct Revocations {
            revocations: Vec<RevocationJson>,
        }
        reply(StatusCode::OK, &Revocations { revocations })
    }
}
