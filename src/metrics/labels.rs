//! Label values: every one comes from a closed enum written in this crate, never from a room
//! name, user id or address, so the number of series cannot grow with traffic.
//!
//! Each label enum implements [`LabelValue`] (its label name, and its values' snake_case
//! names from strum), so a family pre-creates every series from the enum itself: there is no
//! list of values to keep equal to the code by hand.

use std::fmt::Debug;
use std::hash::Hash;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use strum::IntoEnumIterator;

/// An enum whose values are one label's values.
pub trait LabelValue:
    Copy + Eq + Hash + Debug + Send + Sync + 'static + IntoEnumIterator + Into<&'static str>
{
    /// The label's name.
    const KEY: &'static str;
}

/// A label set of one label, from a [`LabelValue`] enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label<T>(pub T);

impl<T: LabelValue> EncodeLabelSet for Label<T> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let value: &'static str = self.0.into();
        [(T::KEY, value)].encode(encoder)
    }
}

/// Declares label enums: `name => [Variant, …]` under the label `key`.
macro_rules! label_enums {
    ($($(#[$doc:meta])* $name:ident($key:literal) { $($(#[$vdoc:meta])* $variant:ident,)+ })+) => {$(
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumIter, strum::Display,
        )]
        #[strum(serialize_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant,)+ }

        impl LabelValue for $name {
            const KEY: &'static str = $key;
        }
    )+};
}

label_enums! {
    /// Why a connection did not become a session, or `upgraded`.
    Outcome("outcome") {
        Upgraded,
        Busy,
        Origin,
        Handshake,
        Banned,
        TooFast,
        TooManyFromIp,
        /// Shed above `MEMORY_HIGH_WATERMARK`.
        Memory,
    }

    /// Where an open session is in the protocol.
    SessionState("state") {
        AwaitAuth,
        AwaitJoin,
        InRoom,
    }

    /// Why a frame was not delivered.
    DropReason("reason") {
        /// The recipient's queue was full: a slow consumer.
        QueueFull,
        /// An empty chat message, dropped as GarinChat did.
        Empty,
    }

    /// Which rate a socket went over.
    RateLimit("kind") {
        Message,
        UserMessage,
        Control,
        Typing,
        /// Direct messages (protocol v2).
        Direct,
    }

    /// Where a room's members could not simply be given the next message.
    Discontinuity("kind") {
        /// Messages a node missed were fetched from Redis and delivered in order.
        GapFilled,
        /// Messages were lost for good: members were sent `history_gap`.
        GapLost,
        /// The room's history was lost (its epoch changed): members were sent `history_reset`.
        Reset,
    }

    /// Who a ban is against.
    BanKind("kind") {
        Ip,
        User,
    }

    /// How a key set fetch went.
    FetchResult("result") {
        Ok,
        Error,
    }

    /// What failed in the broker's dealings with Redis.
    BrokerFailure("kind") {
        Connect,
        Subscribe,
        Publish,
        /// A heartbeat's commands failed (the name is from when a PING probed the subscriber).
        Probe,
        /// A canary did not come back through Pub/Sub: the subscriber was silent.
        Canary,
        /// Sentinel announced a new master (`+switch-master`).
        Failover,
        /// An envelope or presence entry that does not parse.
        Decode,
    }

    /// Why an event did not go to the other nodes.
    BrokerDrop("reason") {
        /// Redis is unreachable.
        Down,
        /// The publish queue is full.
        Backlog,
    }

    /// What became of a webhook event.
    WebhookOutcome("outcome") {
        /// Accepted by the receiver (a 2xx).
        Sent,
        /// Dropped: the queue (`WEBHOOK_QUEUE`) was full.
        QueueFull,
        /// Dropped: its batch failed `WEBHOOK_MAX_ATTEMPTS` times.
        GaveUp,
    }

    /// How a webhook POST went.
    WebhookPost("result") {
        /// A 2xx.
        Ok,
        /// Another status.
        Refused,
        /// No answer: connect error, timeout.
        Failed,
    }

    /// Who closed a session: `none` when the connection dropped without a close frame.
    Initiator("initiator") {
        Server,
        Client,
        None,
    }
}

/// The labels of `palisade_closes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseLabel {
    pub initiator: Initiator,
    pub code: u16,
}

impl EncodeLabelSet for CloseLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let initiator: &'static str = self.initiator.into();
        let code = self.code.to_string();
        [(Initiator::KEY, initiator), ("code", code.as_str())].encode(encoder)
    }
}
