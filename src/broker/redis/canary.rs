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
//! There is one canary per subscriber connection. Today a node has one; with sharded Pub/Sub
//! (Redis Cluster) it would have one per shard it subscribes on, each canary channel named into
//! that shard's slots.

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
}
