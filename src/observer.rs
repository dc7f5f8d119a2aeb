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

/// A presence change seen on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The user's sessions on this node went from none to one (`here`), or from one to none.
    User { user: Arc<str>, here: bool },
    /// The room's members on this node went from none to one (`here`), or from one to none.
    Room { room: Arc<str>, here: bool },
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
    presence: Option<mpsc::UnboundedSender<Observed>>,
    messages: Option<mpsc::Sender<Arc<Posted>>>,
}

/// The receiving ends of an [`Observer`].
pub(crate) struct Observations {
    pub presence: mpsc::UnboundedReceiver<Observed>,
    /// Chat messages, when wanted.
    pub messages: Option<mpsc::Receiver<Arc<Posted>>>,
}

impl Observer {
    /// An observer that reports nothing.
    pub(crate) fn off() -> Observer {
        Observer::default()
    }

    /// An observer and the receiving ends of what it reports. Presence changes are few per
    /// session and drained by one task as they come; chat messages, when `messages` gives
    /// their queue's capacity, are bounded like the webhook queue they feed.
    pub(crate) fn new(messages: Option<usize>) -> (Observer, Observations) {
        let (presence, presence_rx) = mpsc::unbounded_channel();
        let (messages, messages_rx) = match messages {
            Some(capacity) => {
                let (sender, receiver) = mpsc::channel(capacity);
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let observer = Observer {
            presence: Some(presence),
            messages,
        };
        let observations = Observations {
            presence: presence_rx,
            messages: messages_rx,
        };
        (observer, observations)
    }

    /// Reports a presence change; never waits.
    pub(crate) fn observe(&self, observed: Observed) {
        if let Some(sender) = &self.presence {
            let _ = sender.send(observed);
        }
    }

    /// Whether chat messages are wanted (so the hub builds them only then).
    pub(crate) fn wants_messages(&self) -> bool {
        self.messages.is_some()
    }

    /// Reports a chat message; false if its queue is full (it is dropped).
    pub(crate) fn posted(&self, posted: Posted) -> bool {
        match &self.messages {
            Some(sender) => sender.try_send(Arc::new(posted)).is_ok(),
            None => true,
        }
    }
}
