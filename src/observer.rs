//! What the gateway tells the outside about itself as it happens, for the webhooks: a user's
//! first and last session on this node, a room's first and last member on this node, and chat
//! messages posted here.
//!
//! The hub and the session registry report these as they apply them, under the lock that
//! orders them, so the webhooks see each user's and each room's changes in order. They only
//! queue (never wait); the webhooks decide, with every node's state in Redis, whether a change
//! here is a fact for the whole cluster. Without webhooks the observer is off and costs one
//! branch.

use std::sync::Arc;

use tokio::sync::mpsc;

/// A change seen on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The user's sessions on this node went from none to one (`here`), or from one to none.
    User { user: Arc<str>, here: bool },
    /// The room's members on this node went from none to one (`here`), or from one to none.
    Room { room: Arc<str>, here: bool },
    /// A chat message was posted here (by a member or the server API).
    Message(Arc<Posted>),
}

/// A chat message posted on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Posted {
    pub room: Arc<str>,
    pub username: Arc<str>,
    pub user_id: Arc<str>,
    pub body: Box<str>,
    /// Unix milliseconds.
    pub sent_at_ms: u64,
    /// The room's epoch and the message's offset, when this node numbered it.
    pub position: Option<(Arc<str>, u64)>,
}

/// Where changes are reported; cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observer {
    sender: Option<mpsc::UnboundedSender<Observed>>,
    messages: bool,
}

impl Observer {
    /// An observer that reports nothing.
    pub(crate) fn off() -> Observer {
        Observer::default()
    }

    /// An observer and the receiving end of what it reports; chat messages only if
    /// `messages`.
    pub(crate) fn new(messages: bool) -> (Observer, mpsc::UnboundedReceiver<Observed>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let observer = Observer {
            sender: Some(sender),
            messages,
        };
        (observer, receiver)
    }

    /// Reports a change; never waits. (Presence changes are few per session; the channel is
    /// drained by one task that batches them.)
    pub(crate) fn observe(&self, observed: Observed) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(observed);
        }
    }

    /// Whether chat messages are wanted (so the hub builds them only then).
    pub(crate) fn wants_messages(&self) -> bool {
        self.sender.is_some() && self.messages
    }
}
