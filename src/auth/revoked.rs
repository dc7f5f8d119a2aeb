//! Revocations made at run time (by the server API, on any node): a token id or a user
//! refused until a time. Beside `REVOCATION_FILE`'s list, checked by the same verification;
//! unlike it, shared by every node through the broker and kept in Redis until they end.
//!
//! Bounded: at most `max` revocations are held at once (`API_MAX_REVOCATIONS`); ended ones
//! are swept by housekeeping.

use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

/// What a revocation applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Revoked {
    /// One token, by its `jti`.
    TokenId(Arc<str>),
    /// Every token of a user (the verified user id).
    User(Arc<str>),
}

impl Revoked {
    /// `jti:ID` or `sub:USER`: how a revocation is named between nodes.
    pub(crate) fn parse(text: &str) -> Option<Revoked> {
        match text.split_once(':')? {
            ("jti", id) if !id.is_empty() => Some(Revoked::TokenId(Arc::from(id))),
            ("sub", user) if !user.is_empty() => Some(Revoked::User(Arc::from(user))),
            _ => None,
        }
    }
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revoked::TokenId(id) => write!(f, "jti:{id}"),
            Revoked::User(user) => write!(f, "sub:{user}"),
        }
    }
}

/// The revocations in force, each with its end (Unix milliseconds).
pub(crate) struct RuntimeRevocations {
    until: DashMap<Revoked, u64>,
    max: usize,
}

/// A revocation refused because `API_MAX_REVOCATIONS` are already in force.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManyRevocations;

impl RuntimeRevocations {
    pub(crate) fn new(max: usize) -> RuntimeRevocations {
        RuntimeRevocations {
            until: DashMap::new(),
            max,
        }
    }

    /// Revokes until `until_ms` (a later end wins over an earlier one).
    pub(crate) fn revoke(
        &self,
        revoked: Revoked,
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), TooManyRevocations> {
        if !self.until.contains_key(&revoked) && self.until.len() >= self.max {
            self.housekeep(now_ms);
            if self.until.len() >= self.max {
                return Err(TooManyRevocations);
            }
        }
        self.learn(revoked, until_ms);
        Ok(())
    }

    /// Records a revocation decided on another node, whatever the bound: that node held it
    /// to its own, and every node must refuse what any node revoked.
    pub(crate) fn learn(&self, revoked: Revoked, until_ms: u64) {
        let mut end = self.until.entry(revoked).or_insert(until_ms);
        *end = (*end).max(until_ms);
    }

    /// Whether a token with this id, of this user, is revoked at `now_ms`.
    pub(crate) fn is_revoked(&self, token_id: Option<&str>, user: &str, now_ms: u64) -> bool {
        let active = |revoked: Revoked| {
            self.until
                .get(&revoked)
                .is_some_and(|until| now_ms < *until)
        };
        active(Revoked::User(Arc::from(user)))
            || token_id.is_some_and(|id| active(Revoked::TokenId(Arc::from(id))))
    }

    /// The revocations in force at `now_ms`, with their ends.
    pub(crate) fn in_force(&self, now_ms: u64) -> Vec<(Revoked, u64)> {
        self.until
            .iter()
            .filter(|entry| *entry.value() > now_ms)
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect()
    }

    /// Forgets revocations that ended.
    pub(crate) fn housekeep(&self, now_ms: u64) {
        self.until.retain(|_, until| *until > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_apply_until_their_end_and_are_bounded() {
        let revocations = RuntimeRevocations::new(2);
        revocations
            .revoke(Revoked::User("alice".into()), 1_000, 0)
            .unwrap();
        revocations
            .revoke(Revoked::TokenId("t1".into()), 500, 0)
            .unwrap();
        assert!(revocations.is_revoked(None, "alice", 999));
        assert!(!revocations.is_revoked(None, "alice", 1_000));
        assert!(revocations.is_revoked(Some("t1"), "bob", 499));
        assert!(!revocations.is_revoked(Some("t2"), "bob", 0));
        assert_eq!(
            revocations.revoke(Revoked::User("carol".into()), 2_000, 0),
            Err(TooManyRevocations),
            "at API_MAX_REVOCATIONS"
        );
        // Once one has ended, there is room again.
        revocations
            .revoke(Revoked::User("carol".into()), 2_000, 600)
            .unwrap();
        assert_eq!(revocations.in_force(600).len(), 2);
    }

    #[test]
    fn names_round_trip() {
        for revoked in [Revoked::User("a|b".into()), Revoked::TokenId("x:y".into())] {
            assert_eq!(Revoked::parse(&revoked.to_string()), Some(revoked));
        }
        assert_eq!(Revoked::parse("sub:"), None);
        assert_eq!(Revoked::parse("ip:1.2.3.4"), None);
    }
}
