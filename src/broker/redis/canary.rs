//! The canary: proof that Pub/Sub still delivers to this node, not only that its connections
//! answer.
//!
//! A subscriber can stay connected, answer `PING` and yet receive nothing: a proxy or a
//! failover that lost the subscription, a server that stopped sending to it. Every
//! `REDIS_CANARY_INTERVAL_MS` the driver publishes a numbered canary on this node's own canary
//! channel, which its subscriber connection listens to beside the rooms, and checks that the
//! previous one came back. One that did not is a silent subscriber: the connected period ends,
//! members are told delivery is interrupted, and the reconnect resubscribes, resyncs and
//! recovers the rooms from history. A subscriber that goes silent just after a canary came back
//! is caught at the second tick after: within two intervals.
//!
//! On one Redis there is one canary channel. On a cluster, rooms' channels are sharded, and a
//! shard can stop delivering while the others go on, so there is one canary channel per shard,
//! each named into that shard's first slot by a hash tag ([`tag_for`]); the shards are read
//! again at every heartbeat, so a slot migration or a new shard gets its canary.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::conn::{slot, Shard, SLOTS};

/// The canaries of one subscriber connection.
#[derive(Debug, Default)]
pub(super) struct Canary {
    /// The number of the last canary published.
    sent: u64,
    /// The highest number that came back.
    echoed: u64,
}

/// The previous canary did not come back within an interval.
#[derive(Debug)]
pub(super) struct Silent;

impl Canary {
    /// At each interval: the number of the next canary to publish, unless the previous one
    /// is still missing.
    pub(super) fn next(&mut self) -> Result<u64, Silent> {
        if self.echoed < self.sent {
            return Err(Silent);
        }
        self.sent += 1;
        Ok(self.sent)
    }

    /// A canary came back; true if it is one we sent (anything else is ignored).
    pub(super) fn on_echo(&mut self, payload: &[u8]) -> bool {
        let Some(number) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|number| (1..=self.sent).contains(number))
        else {
            return false;
        };
        self.echoed = self.echoed.max(number);
        true
    }
}

/// The canaries of every canary channel a node has.
#[derive(Debug, Default)]
pub(super) struct Canaries {
    by_channel: HashMap<String, Canary>,
}

impl Canaries {
    /// Makes the channels exactly `channels`, keeping the count of those it has; returns the
    /// ones to subscribe and the ones to unsubscribe.
    pub(super) fn set_channels(&mut self, channels: Vec<String>) -> (Vec<String>, Vec<String>) {
        let gone: Vec<String> = self
            .by_channel
            .keys()
            .filter(|channel| !channels.contains(channel))
            .cloned()
            .collect();
        for channel in &gone {
            self.by_channel.remove(channel);
        }
        let new: Vec<String> = channels
            .into_iter()
            .filter(|channel| !self.by_channel.contains_key(channel))
            .collect();
        for channel in &new {
            self.by_channel.insert(channel.clone(), Canary::default());
        }
        (new, gone)
    }

    pub(super) fn owns(&self, channel: &str) -> bool {
        self.by_channel.contains_key(channel)
    }

    /// At each interval: every channel's next canary, unless one is still missing.
    pub(super) fn next(&mut self) -> Result<Vec<(String, u64)>, Silent> {
        if self
            .by_channel
            .values()
            .any(|canary| canary.echoed < canary.sent)
        {
            return Err(Silent);
        }
        Ok(self
            .by_channel
            .iter_mut()
            .map(|(channel, canary)| (channel.clone(), canary.next().expect("none is missing")))
            .collect())
    }

    /// A canary came back on `channel`; true once every channel's last one is back.
    pub(super) fn on_echo(&mut self, channel: &str, payload: &[u8]) -> bool {
        if let Some(canary) = self.by_channel.get_mut(channel) {
            canary.on_echo(payload);
        }
        !self.by_channel.is_empty()
            && self
                .by_channel
                .values()
                .all(|canary| canary.sent > 0 && canary.echoed == canary.sent)
    }
}

/// A shard's canary tag: the smallest number whose decimal name hashes to the shard's first
/// slot.
pub(super) fn tag_for(shard: &Shard) -> String {
    TAGS[usize::from(shard.first_slot())].to_string()
}

/// For each slot, the smallest number whose decimal name hashes to it: made once (about
/// 110 000 hashes, a few milliseconds), then looked up at every heartbeat.
static TAGS: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut tags = vec![u32::MAX; usize::from(SLOTS)];
    let mut missing = tags.len();
    for n in 0u32.. {
        let tag = &mut tags[usize::from(slot(n.to_string().as_bytes()))];
        if *tag == u32::MAX {
            *tag = n;
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    tags
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_that_does_not_come_back_by_the_next_interval_is_silence() {
        let mut canary = Canary::default();
        assert_eq!(canary.next().unwrap(), 1);
        assert!(canary.on_echo(b"1"));
        assert_eq!(canary.next().unwrap(), 2);
        assert!(!canary.on_echo(b"3"), "never sent");
        assert!(!canary.on_echo(b"garbage"));
        assert!(canary.next().is_err(), "2 is missing");
        assert!(canary.on_echo(b"2"), "late is still back");
        assert_eq!(canary.next().unwrap(), 3);
    }

    #[test]
    fn every_shard_must_echo_before_delivery_is_ok() {
        let mut canaries = Canaries::default();
        let (new, gone) = canaries.set_channels(vec!["a".into(), "b".into()]);
        assert_eq!((new.len(), gone.len()), (2, 0));
        let sent = canaries.next().unwrap();
        assert_eq!(sent.len(), 2);
        assert!(!canaries.on_echo("a", b"1"), "b is still out");
        assert!(canaries.on_echo("b", b"1"));
        canaries.next().unwrap();
        assert!(!canaries.on_echo("a", b"2"));
        assert!(canaries.next().is_err(), "b's second is missing");
        let (new, gone) = canaries.set_channels(vec!["a".into(), "c".into()]);
        assert_eq!((new, gone), (vec!["c".to_owned()], vec!["b".to_owned()]));
    }

    #[test]
    fn a_shards_tag_hashes_into_its_first_slot() {
        for first in [0, 100, 9000, SLOTS - 1] {
            let shard = Shard {
                id: "n".into(),
                slots: vec![(first, first), (first.saturating_add(1), SLOTS - 1)],
            };
            assert_eq!(slot(tag_for(&shard).as_bytes()), first);
        }
    }
}
