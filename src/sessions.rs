//! The sessions open on this node, by user, by client address and by token id: the per-user
//! caps (`MAX_SESSIONS_PER_USER`, and `MAX_ROOMS_PER_USER` over a user's v2 sockets), closing
//! sessions from outside (a ban, a kick, a revocation) with a code, and direct messages to a
//! user's v2 sessions.
//!
//! A session registers its address when it starts and its user once authenticated; both
//! registrations are guards that remove it when dropped, so every exit path forgets it. A
//! close from outside goes through the session's [`Outbox`], which the session already
//! watches: it costs no task and no channel per session.

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;

use crate::client_ip::IpKey;
use crate::ids::SessionId;
use crate::observer::{Observed, Observer};
use crate::outbox::{Outbound, Outbox, SharedPayload};
use crate::protocol::{CloseCode, DirectMessage};

/// One registered session.
#[derive(Clone)]
struct Entry {
    id: SessionId,
    outbox: Outbox,
    /// It takes direct messages (it speaks protocol v2).
    direct: bool,
}

/// Sessions by some key, each list only as long as the sessions it holds.
pub(crate) struct Index<K: Eq + Hash> {
    sessions: DashMap<K, Vec<Entry>>,
}

impl<K: Eq + Hash + Clone> Index<K> {
    fn new() -> Self {
        Index {
            sessions: DashMap::new(),
        }
    }

    /// Adds a session under `key`, unless `key` already has `max`; `first` is called (under
    /// the lock) when it is the key's first session.
    fn add(&self, key: &K, entry: Entry, max: usize, first: impl FnOnce()) -> bool {
        let mut list = self.sessions.entry(key.clone()).or_default();
        if list.len() >= max {
            return false;
        }
        if list.is_empty() {
            first();
        }
        list.push(entry);
        true
    }

    /// Removes a session; `last` is called (under the lock) when it was the key's last.
    fn remove(&self, key: &K, id: SessionId, last: impl FnOnce()) {
        if let Some(mut list) = self.sessions.get_mut(key) {
            list.retain(|entry| entry.id != id);
        }
        // Under the shard lock: a concurrent add either sees the entry or makes a new one.
        self.sessions.remove_if(key, |_, list| {
            let empty = list.is_empty();
            if empty {
                last();
            }
            empty
        });
    }

    fn close(&self, key: &K, code: CloseCode) -> usize {
        let Some(list) = self.sessions.get(key) else {
            return 0;
        };
        for entry in list.iter() {
            entry.outbox.close(code);
        }
        list.len()
    }

    fn count(&self, key: &K) -> usize {
        self.sessions.get(key).map_or(0, |list| list.len())
    }
}

/// Every session open on this node.
pub(crate) struct Sessions {
    /// Told of each user's first and last session here (for the webhooks).
    observer: Observer,
    by_user: Index<Arc<str>>,
    by_ip: Index<IpKey>,
    by_token: Index<TokenId>,
    max_per_user: usize,
    /// Rooms each user is in over its v2 sockets here.
    rooms_by_user: DashMap<Arc<str>, usize>,
}

/// Why a user's session was not registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooManySessions;

impl Sessions {
    pub(crate) fn new(max_per_user: usize, observer: Observer) -> Arc<Sessions> {
        Arc::new(Sessions {
            observer,
            by_user: Index::new(),
            by_ip: Index::new(),
            by_token: Index::new(),
            max_per_user,
            rooms_by_user: DashMap::new(),
        })
    }

    /// Registers a session from `ip`; it is forgotten when the guard drops.
    pub(crate) fn register_ip(
        self: &Arc<Self>,
        ip: IpKey,
        id: SessionId,
        outbox: &Outbox,
    ) -> Registration<IpKey> {
        let entry = Entry {
            id,
            outbox: outbox.clone(),
            direct: false,
        };
        self.by_ip.add(&ip, entry, usize::MAX, || {});
        Registration {
            sessions: Arc::clone(self),
            key: ip,
            id,
        }
    }

    /// Registers an authenticated session of `user`, unless the user already has
    /// `MAX_SESSIONS_PER_USER` here; `direct`: it takes direct messages.
    pub(crate) fn register_user(
        self: &Arc<Self>,
        user: &Arc<str>,
        id: SessionId,
        outbox: &Outbox,
        direct: bool,
    ) -> Result<Registration<Arc<str>>, TooManySessions> {
        let entry = Entry {
            id,
            outbox: outbox.clone(),
            direct,
        };
        let first_here = || {
            self.observer.observe(Observed::User {
                user: Arc::clone(user),
                here: true,
            })
        };
        if !self.by_user.add(user, entry, self.max_per_user, first_here) {
            return Err(TooManySessions);
        }
        Ok(Registration {
            sessions: Arc::clone(self),
            key: Arc::clone(user),
            id,
        })
    }

    /// Registers the token id (`jti`) a session authenticated with; forgotten when the guard
    /// drops (at the session's end, or when a refresh brings another token).
    pub(crate) fn register_token(
        self: &Arc<Self>,
        token: TokenId,
        id: SessionId,
        outbox: &Outbox,
    ) -> Registration<TokenId> {
        let entry = Entry {
            id,
            outbox: outbox.clone(),
            direct: false,
        };
        self.by_token.add(&token, entry, usize::MAX, || {});
        Registration {
            sessions: Arc::clone(self),
            key: token,
            id,
        }
    }

    /// Closes every session that authenticated with `token` on this node with `code`.
    pub(crate) fn close_token(&self, token: &TokenId, code: CloseCode) -> usize {
        self.by_token.close(token, code)
    }

    /// Closes every session of `user` on this node with `code`; how many there were.
    pub(crate) fn close_user(&self, user: &Arc<str>, code: CloseCode) -> usize {
        self.by_user.close(user, code)
    }

    /// Closes every session from `ip` on this node with `code`; how many there were.
    pub(crate) fn close_ip(&self, ip: &IpKey, code: CloseCode) -> usize {
        self.by_ip.close(ip, code)
    }

    /// Closes every session on this node with `code` (the gateway is shutting down); how many
    /// there were. Every session is registered under its address from its start, so none is
    /// missed; one that registers after this call sees the gateway stopping and closes itself.
    pub(crate) fn close_all(&self, code: CloseCode) -> usize {
        let mut closed = 0;
        for list in self.by_ip.sessions.iter() {
            for entry in list.value().iter() {
                entry.outbox.close(code);
            }
            closed += list.value().len();
        }
        closed
    }

    /// Users with a session on this node, with how many each has.
    pub(crate) fn users(&self) -> Vec<(Arc<str>, usize)> {
        self.by_user
            .sessions
            .iter()
            .map(|entry| (Arc::clone(entry.key()), entry.value().len()))
            .collect()
    }

    /// `MAX_SESSIONS_PER_USER`.
    pub(crate) fn max_per_user(&self) -> usize {
        self.max_per_user
    }

    /// Sessions of `user` on this node.
    pub(crate) fn user_count(&self, user: &Arc<str>) -> usize {
        self.by_user.count(user)
    }

    /// Offers a direct message to every v2 session of its recipient on this node but the
    /// sender's (`except`); how many took it. A session with its queue half full does not:
    /// direct messages, which anyone may send, must never push a user out as a slow consumer.
    pub(crate) fn deliver_direct(
        &self,
        direct: &DirectMessage,
        except: Option<SessionId>,
    ) -> usize {
        let Some(list) = self.by_user.sessions.get(&direct.to) else {
            return 0;
        };
        let frame = SharedPayload::new(direct.encode());
        list.iter()
            .filter(|entry| entry.direct && Some(entry.id) != except)
            .filter(|entry| entry.outbox.offer(Outbound::Text(Arc::clone(&frame))))
            .count()
    }

    /// Claims a place for one more room of `user`'s under `max`: `None` when it is in that
    /// many already. The place is given back when the slot drops.
    pub(crate) fn claim_room(self: &Arc<Self>, user: &Arc<str>, max: usize) -> Option<RoomSlot> {
        let mut rooms = self.rooms_by_user.entry(Arc::clone(user)).or_insert(0);
        if *rooms >= max {
            return None;
        }
        *rooms += 1;
        Some(RoomSlot {
            sessions: Arc::clone(self),
            user: Arc::clone(user),
        })
    }
}

/// One of a user's places under `MAX_ROOMS_PER_USER`; dropping it gives the place back.
pub(crate) struct RoomSlot {
    sessions: Arc<Sessions>,
    user: Arc<str>,
}

impl Drop for RoomSlot {
    fn drop(&mut self) {
        if let Some(mut rooms) = self.sessions.rooms_by_user.get_mut(&self.user) {
            *rooms -= 1;
        }
        // Under the shard lock: a concurrent claim either sees the count or makes a new one.
        self.sessions
            .rooms_by_user
            .remove_if(&self.user, |_, rooms| *rooms == 0);
    }
}

/// A session's place in the registry, under one key; dropping it forgets the session.
pub(crate) struct Registration<K: RegistryKey> {
    sessions: Arc<Sessions>,
    key: K,
    id: SessionId,
}

/// The keys sessions are found by.
pub(crate) trait RegistryKey: Eq + Hash + Clone {
    fn index(sessions: &Sessions) -> &Index<Self>;

    /// The key's last session here ended.
    fn last_gone(&self, _sessions: &Sessions) {}
}

impl RegistryKey for Arc<str> {
    fn index(sessions: &Sessions) -> &Index<Self> {
        &sessions.by_user
    }

    fn last_gone(&self, sessions: &Sessions) {
        sessions.observer.observe(Observed::User {
            user: Arc::clone(self),
            here: false,
        });
    }
}

/// A token id (`jti`), as sessions are found by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenId(pub Arc<str>);

impl RegistryKey for TokenId {
    fn index(sessions: &Sessions) -> &Index<Self> {
        &sessions.by_token
    }
}

impl RegistryKey for IpKey {
    fn index(sessions: &Sessions) -> &Index<Self> {
        &sessions.by_ip
    }
}

impl<K: RegistryKey> Drop for Registration<K> {
    fn drop(&mut self) {
        let sessions = &self.sessions;
        let key = &self.key;
        K::index(sessions).remove(key, self.id, || key.last_gone(sessions));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_capped_closed_and_forgotten() {
        let sessions = Sessions::new(2, Observer::off());
        let (outbox, _rx) = Outbox::new(4, 1024);
        let alice: Arc<str> = "alice".into();
        let first = sessions.register_user(&alice, 1, &outbox, false).unwrap();
        let _second = sessions.register_user(&alice, 2, &outbox, false).unwrap();
        assert_eq!(
            sessions.register_user(&alice, 3, &outbox, false).err(),
            Some(TooManySessions)
        );
        assert_eq!(sessions.user_count(&alice), 2);
        assert_eq!(sessions.close_user(&alice, CloseCode::Banned), 2);
        assert_eq!(outbox.close_code(), Some(CloseCode::Banned));
        drop(first);
        assert_eq!(sessions.user_count(&alice), 1);
        assert!(sessions.register_user(&alice, 4, &outbox, false).is_ok());
    }

    #[test]
    fn a_users_first_and_last_session_here_are_observed() {
        let (observer, observations) = Observer::new(None);
        let mut observed = observations.presence;
        let sessions = Sessions::new(2, observer);
        let (outbox, _rx) = Outbox::new(4, 1024);
        let alice: Arc<str> = "alice".into();
        let first = sessions.register_user(&alice, 1, &outbox, false).unwrap();
        let second = sessions.register_user(&alice, 2, &outbox, false).unwrap();
        drop(first);
        drop(second);
        let change = |here| Observed::User {
            user: Arc::clone(&alice),
            here,
        };
        assert_eq!(observed.try_recv(), Ok(change(true)));
        assert_eq!(observed.try_recv(), Ok(change(false)));
        assert!(
            observed.try_recv().is_err(),
            "nothing for the second session"
        );
    }

    #[test]
    fn tokens_are_closed_and_forgotten() {
        let sessions = Sessions::new(1, Observer::off());
        let (outbox, _rx) = Outbox::new(4, 1024);
        let token = TokenId("t-1".into());
        let registration = sessions.register_token(token.clone(), 1, &outbox);
        assert_eq!(sessions.close_token(&token, CloseCode::TokenRevoked), 1);
        assert_eq!(outbox.close_code(), Some(CloseCode::TokenRevoked));
        drop(registration);
        assert_eq!(sessions.close_token(&token, CloseCode::TokenRevoked), 0);
        assert!(
            sessions.by_token.sessions.is_empty(),
            "no empty list is kept"
        );
    }

    #[test]
    fn addresses_are_closed_and_forgotten() {
        let sessions = Sessions::new(1, Observer::off());
        let (outbox, _rx) = Outbox::new(4, 1024);
        let ip = IpKey::of([10, 0, 0, 1].into());
        let registration = sessions.register_ip(ip, 1, &outbox);
        assert_eq!(sessions.close_ip(&ip, CloseCode::Banned), 1);
        drop(registration);
        assert_eq!(sessions.close_ip(&ip, CloseCode::Banned), 0);
        assert!(sessions.by_ip.sessions.is_empty(), "no empty list is kept");
    }
}
