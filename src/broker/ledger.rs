//! Presence as the webhooks count it: which users and rooms each node has, so that a user's
//! first session anywhere (and last), and a room's first member anywhere (and last), are each
//! reported once for the whole cluster. Items are `user:ID` and `room:NAME`.

use std::sync::Arc;

/// Names a change (or a rewrite, or a sweep) this node asks the ledger, counted from 1 at
/// every start; with the node's id, which is new at every start too, it names it everywhere.
/// The ledger keeps an item's recent flips under the change that made them, so a change sent
/// again after its answer was lost (a timeout, a dropped connection) is told what it did the
/// first time, instead of finding the item flipped already and reporting nothing.
pub(crate) type Stamp = u64;

/// A change of this node's presence, or a question about an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PresenceChange {
    /// This node has the item now: flipped if the cluster had not reported it on.
    Here(Arc<str>),
    /// This node no longer has the item.
    Gone(Arc<str>),
    /// Whether the item is gone from every live node: flipped if this call reports it off.
    Settle(Arc<str>),
}

/// What became of a recorded change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Nothing to report: the item did not flip (or a departure, which never does).
    Kept,
    /// The item flipped (on for `Here`, off for `Settle`): this node reports it.
    Flipped,
    /// A settle too early: a departure's grace (on this node or another) still runs for this
    /// long; settle again then.
    Wait(std::time::Duration),
}

/// What a full rewrite of this node's items reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Items now on that were not.
    pub on: Vec<String>,
    /// Items this node had, no longer has, and no live node has.
    pub off: Vec<String>,
}

/// A node that died with presence left to report, as a sweep found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeadNode {
    pub node: Arc<str>,
    /// The items it was listed as holding.
    pub items: Vec<String>,
}
