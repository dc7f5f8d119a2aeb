//! Rooms through the server API: posting messages (to one room or several), listing rooms,
//! a room's members, a page of its history.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::idempotency;
use super::problem::Problem;
use super::request::{json, limit, offset, present, replayed, reply};
use super::users::check_user_id;
use super::Call;
use crate::broker::{Cluster, KeyClaim, RoomCount};
use crate::http::Body;
use crate::hub::{page_after, Posted, Sender};
use crate::names::{validate_room, validate_username};

/// Items in a page when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

/// The sender a message from the API is shown as, unless the request names one.
const SYSTEM_NAME: &str = "System";
const SYSTEM_ID: &str = "system";

/// A message to post.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Message {
    body: String,
    #[serde(default, deserialize_with = "present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "present")]
    user_id: Option<String>,
}

/// A message to post to several rooms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Broadcast {
    rooms: Vec<String>,
    body: String,
    #[serde(default, deserialize_with = "present")]
    username: Option<String>,
    #[serde(default, deserialize_with = "present")]
    user_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostedJson {
    room: String,
    delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// A checked sender and body.
struct Checked {
    body: String,
    username: Arc<str>,
    user_id: Arc<str>,
}

impl Call<'_> {
    fn check_room(&self, room: &str) -> Result<(), Problem> {
        validate_room(room, self.gateway.session.names.room_max_chars)
            .map_err(|err| Problem::invalid(format!("room: {err}")))
    }

    fn check_message(
        &self,
        body: String,
        username: Option<String>,
        user_id: Option<String>,
    ) -> Result<Checked, Problem> {
        if body.is_empty() {
            return Err(Problem::invalid("body: empty"));
        }
        let max = self.gateway.session.max_message_bytes;
        if body.len() > max {
            return Err(Problem::invalid(format!(
                "body: longer than {max} bytes (MAX_MESSAGE_BYTES)"
            )));
        }
        let username = username.unwrap_or_else(|| SYSTEM_NAME.to_owned());
        validate_username(&username, self.gateway.session.names.username_max_chars)
            .map_err(|err| Problem::invalid(format!("username: {err}")))?;
        let user_id = user_id.unwrap_or_else(|| SYSTEM_ID.to_owned());
        check_user_id("userId", &user_id)?;
        Ok(Checked {
            body,
            username: Arc::from(username),
            user_id: Arc::from(user_id),
        })
    }

    /// Posts `message` to `room` as its sender.
    fn post(&self, room: &str, message: &Checked) -> PostedJson {
        let sender = Sender {
            session: None,
            username: &message.username,
            user_id: &message.user_id,
        };
        let posted = self.gateway.hub.post(room, sender, &message.body);
        let (delivered, epoch, offset) = match posted {
            Posted::Numbered { epoch, offset } => (true, Some(epoch), Some(offset)),
            Posted::Queued | Posted::Unnumbered => (true, None, None),
            Posted::Undelivered => (false, None, None),
        };
        PostedJson {
            room: room.to_owned(),
            delivered,
            epoch,
            offset,
        }
    }

    /// Runs a publish once per `Idempotency-Key`: a repeat gets the first answer.
    async fn once(
        &self,
        publish: impl FnOnce() -> Result<String, Problem>,
    ) -> Result<Response<Body>, Problem> {
        let Some(key) = idempotency::key(self.headers)? else {
            return Ok(replayed_or_fresh(publish()?, false));
        };
        let broker = self.gateway.hub.broker().as_ref();
        let fingerprint = idempotency::fingerprint("POST", self.path, &self.body);
        match self
            .api
            .idempotency
            .claim(broker, &key, &fingerprint)
            .await?
        {
            KeyClaim::Claimed => {}
            KeyClaim::InFlight => return Err(Problem::key_in_use()),
            KeyClaim::Reused => return Err(Problem::key_reused()),
            KeyClaim::Done(response) => return Ok(replayed_or_fresh(response, true)),
        }
        let outcome = publish();
        let response = outcome.as_ref().ok().map(String::as_str);
        self.api
            .idempotency
            .settle(broker, &key, &fingerprint, response)
            .await;
        Ok(replayed_or_fresh(outcome?, false))
    }

    /// `POST /rooms/{room}/messages`.
    pub(super) async fn publish(&self, room: &str) -> Result<Response<Body>, Problem> {
        self.check_room(room)?;
        let message: Message = json(self.headers, &self.body)?;
        let message = self.check_message(message.body, message.username, message.user_id)?;
        self.once(|| {
            let posted = self.post(room, &message);
            if !posted.delivered {
                return Err(Problem::unavailable(
                    "the room has no members here and the other nodes are out of reach",
                ));
            }
            Ok(serde_json::to_string(&posted).expect("serializes"))
        })
        .await
    }

    /// `POST /messages`: one message to several rooms.
    pub(super) async fn broadcast(&self) -> Result<Response<Body>, Problem> {
        let broadcast: Broadcast = json(self.headers, &self.body)?;
        let max = self.api.settings.max_rooms_per_publish;
        if broadcast.rooms.is_empty() || broadcast.rooms.len() > max {
            return Err(Problem::invalid(format!(
                "rooms: 1 to {max} rooms (API_MAX_ROOMS_PER_PUBLISH)"
            )));
        }
        let mut rooms = broadcast.rooms;
        rooms.sort_unstable();
        rooms.dedup();
        for room in &rooms {
            self.check_room(room)?;
        }
        let message = self.check_message(broadcast.body, broadcast.username, broadcast.user_id)?;
        self.once(|| {
            #[derive(Serialize)]
            struct Results {
                results: Vec<PostedJson>,
            }
            let results = rooms.iter().map(|room| self.post(room, &message)).collect();
            Ok(serde_json::to_string(&Results { results }).expect("serializes"))
        })
        .await
    }

    /// `GET /rooms`: rooms with members on any node, a page at a time.
    pub(super) async fn list(&self) -> Result<Response<Body>, Problem> {
        let limit = limit(&self.params, DEFAULT_PAGE, self.api.settings.max_page)?;
        let cursor = self.params.get("cursor").map(String::as_str);
        let broker = self.gateway.hub.broker();
        let (rooms, next) = match broker.rooms_page(cursor, limit).await {
            Cluster::Known(page) => page,
            Cluster::Unreachable => return Err(unavailable()),
            Cluster::Alone => self.gateway.hub.rooms_after(cursor, limit),
        };
        #[derive(Serialize)]
        struct Page {
            rooms: Vec<RoomJson>,
            next: Option<String>,
        }
        #[derive(Serialize)]
        struct RoomJson {
            room: String,
            members: usize,
        }
        let rooms = rooms
            .into_iter()
            .map(|RoomCount { room, members }| RoomJson { room, members })
            .collect();
        Ok(reply(StatusCode::OK, &Page { rooms, next }))
    }

    /// `GET /rooms/{room}/members`: one entry per user, sorted by user id, paged by `after`.
    pub(super) async fn members(&self, room: &str) -> Result<Response<Body>, Problem> {
        self.check_room(room)?;
        let limit = limit(&self.params, DEFAULT_PAGE, self.api.settings.max_page)?;
        let after = self.params.get("after").map(String::as_str);
        let users: BTreeMap<String, String> =
            match self.gateway.hub.broker().room_members(room).await {
                Cluster::Known(members) => members
                    .into_iter()
                    .map(|(_, member)| (member.user_id.to_string(), member.username.to_string()))
                    .collect(),
                Cluster::Unreachable => return Err(unavailable()),
                Cluster::Alone => self
                    .gateway
                    .hub
                    .listed(room)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|listed| (listed.user_id, listed.username))
                    .collect(),
            };
        if users.is_empty() {
            return Err(Problem::not_found(format!("room {room} has no members")));
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct MemberJson {
            user_id: String,
            username: String,
        }
        #[derive(Serialize)]
        struct Page {
            room: String,
            total: usize,
            members: Vec<MemberJson>,
            next: Option<String>,
        }
        let total = users.len();
        let listed = users
            .into_iter()
            .map(|(user_id, username)| MemberJson { user_id, username });
        let (members, next) = page_after(listed, after, limit, |member| &member.user_id);
        let page = Page {
            room: room.to_owned(),
            total,
            members,
            next,
        };
        Ok(reply(StatusCode::OK, &page))
    }

    /// `GET /rooms/{room}/history`: messages after `after`, oldest first.
    pub(super) async fn history(&self, room: &str) -> Result<Response<Body>, Problem> {
        self.check_room(room)?;
        if !self.gateway.hub.history_settings().enabled() {
            return Err(Problem::not_found("history is off (HISTORY_SIZE=0)"));
        }
        let limit = limit(&self.params, DEFAULT_PAGE, self.api.settings.max_page)?;
        let after = offset(&self.params, "after")?;
        let page = match self
            .gateway
            .hub
            .broker()
            .history_page(room, after, limit)
            .await
        {
            Cluster::Known(page) => page,
            Cluster::Unreachable => return Err(unavailable()),
            Cluster::Alone => self.gateway.hub.history_after(room, after, limit),
        };
        let Some((position, entries)) = page else {
            return Err(Problem::not_found(format!("room {room} has no history")));
        };
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct MessageJson<'a> {
            offset: u64,
            ts: u64,
            username: &'a str,
            user_id: &'a str,
            body: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Page<'a> {
            room: &'a str,
            epoch: &'a str,
            last_offset: u64,
            messages: Vec<MessageJson<'a>>,
            next: Option<u64>,
        }
        let messages: Vec<MessageJson<'_>> = entries
            .iter()
            .map(|entry| MessageJson {
                offset: entry.offset,
                ts: entry.sent_at_ms,
                username: &entry.username,
                user_id: &entry.user_id,
                body: &entry.body,
            })
            .collect();
        let next = messages
            .last()
            .map(|last| last.offset)
            .filter(|last| *last < position.offset && messages.len() == limit);
        let page = Page {
            room,
            epoch: &position.epoch,
            last_offset: position.offset,
            messages,
            next,
        };
        Ok(reply(StatusCode::OK, &page))
    }
}

fn replayed_or_fresh(response: String, replay: bool) -> Response<Body> {
    if replay {
        replayed(StatusCode::ACCEPTED, response)
    } else {
        crate::http::with_type(StatusCode::ACCEPTED, response, "application/json")
    }
}

pub(super) fn unavailable() -> Problem {
    Problem::unavailable("Redis is out of reach")
}
