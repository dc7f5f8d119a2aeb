//! Following a Sentinel failover as it is announced: each connected period listens to one
//! Sentinel's `+switch-master` notices and ends when one names our master, so the node leaves
//! an old master that still answers (a manual failover, a healed partition) at once. Without
//! the notice a failover is still followed, later: a dead master's connections drop, and a
//! demoted one refuses writes with `-READONLY`; both end the period, and the reconnect asks
//! the Sentinels again.

use futures_util::StreamExt;
use redis::aio::PubSubStream;
use tracing::warn;

use super::endpoint::Endpoint;
use super::RedisBroker;

/// The next `+switch-master` notice, if the Sentinels are listened to; never otherwise. A
/// Sentinel that goes away only stops the notices: reconnects and the canary still follow a
/// failover, and the next connected period listens again.
pub(super) async fn next_switch(switches: &mut Option<PubSubStream>) -> Option<String> {
    let Some(stream) = switches else {
        return std::future::pending().await;
    };
    match stream.next().await {
        Some(message) => Some(message.get_payload::<String>().unwrap_or_default()),
        None => {
            *switches = None;
            std::future::pending().await
        }
    }
}

impl RedisBroker {
    /// With Sentinel, a subscription to a Sentinel's `+switch-master` notices, so a failover
    /// is followed at once even while the old master still answers (it would refuse writes
    /// with `-READONLY`, which ends the period too, but only at the next write).
    pub(super) async fn switch_notices(&self) -> Option<PubSubStream> {
        let Endpoint::Sentinel(sentinel) = &self.settings.endpoint else {
            return None;
        };
        let listen = async {
            let client = sentinel.sentinel().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match self.within(listen).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                // The kind only, as for every Redis failure: never an address or a password.
                warn!(node = %self.node, %error, "no Sentinel to hear failovers from; following them on reconnect");
                None
            }
        }
    }

    /// Whether a `+switch-master` notice (`name old-ip old-port new-ip new-port`) moves our
    /// master away from `server`, the one we are connected to. Each Sentinel announces a
    /// failover as it learns of it: one that does so after this node already followed it
    /// names the server we are on, and is ignored.
    pub(super) fn moves_our_master(&self, notice: &str, server: &str) -> bool {
        let Endpoint::Sentinel(sentinel) = &self.settings.endpoint else {
            return false;
        };
        match notice.split(' ').collect::<Vec<_>>()[..] {
            [name, _, _, host, port] => {
                name == sentinel.master && format!("{host}:{port}") != server
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::{RedisBroker, RedisSettings};
    use crate::config::tests::env;
    use crate::metrics::Metrics;

    #[test]
    fn only_a_switch_of_our_master_away_from_our_server_counts() {
        let settings = RedisSettings::from_env(&env(&[
            ("REDIS_SENTINELS", "127.0.0.1:26379"),
            ("REDIS_SENTINEL_MASTER", "chat"),
        ]))
        .unwrap()
        .unwrap();
        let broker = RedisBroker::new(&settings, Arc::new(Metrics::new()), (3.0, 5));
        let on = "10.0.0.1:6379";
        assert!(broker.moves_our_master("chat 10.0.0.1 6379 10.0.0.2 6379", on));
        assert!(
            !broker.moves_our_master("chat 10.0.0.2 6379 10.0.0.1 6379", on),
            "already followed"
        );
        assert!(!broker.moves_our_master("other 10.0.0.1 6379 10.0.0.2 6379", on));
        assert!(!broker.moves_our_master("garbage", on));
    }
}
