//! The driver: a connected period after another, each serving what the subscriber hears,
//! the hub's opens and closes, the heartbeat, the canary and, with Sentinel, failovers.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;
use redis::RedisResult;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::{Batch, Conn};
use super::connection::{Connection, SUBSCRIBE_CHUNK};
use super::failover::next_switch;
use super::subscriber::Heard;
use super::{now_ms, Command, Link, RedisBroker, RedisFailure, RECONNECT_MIN};
use crate::broker::{Delivery, Envelope, LocalControl, LocalRooms, Ordered, RemoteEvent};
use crate::metrics::labels::BrokerFailure;

/// Why a connected period ended.
enum Ended {
    Stopped,
    Lost(BrokerFailure, RedisFailure),
}

/// What the driver remembers across connected periods.
struct Course {
    /// Members were told delivery is interrupted and not yet that it is restored. True before
    /// the first connection: sessions tell joiners themselves then.
    interrupted: bool,
    ever_connected: bool,
    /// When the current period became healthy, if it did.
    connected_since: Option<Instant>,
}

impl RedisBroker {
    /// Reconnects until stopped. Local members are told once when cross-node delivery stops and
    /// once when it is back.
    pub(super) async fn driver(
        self: Arc<Self>,
        local: Arc<dyn LocalRooms>,
        control: Arc<dyn LocalControl>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        publisher: tokio::task::JoinHandle<()>,
    ) {
        let mut backoff = RECONNECT_MIN;
        let mut course = Course {
            interrupted: true,
            ever_connected: false,
            connected_since: None,
        };
        info!(node = %self.node, "redis broker starting");
        loop {
            let (kind, error) = match self
                .connected_period(&*local, &*control, &mut commands, &mut course)
                .await
            {
                Ended::Stopped => break,
                Ended::Lost(kind, error) => (kind, error),
            };
            self.set_connected(false);
            self.set_delivery_ok(false);
            self.connection.send_replace(None);
            self.metrics.broker_error(kind);
            warn!(node = %self.node, %kind, %error, "redis unavailable; rooms are local until it is back");
            if !course.interrupted {
                course.interrupted = true;
                local.delivery_changed(Delivery::Interrupted);
            }
            // Opens waiting for a connection would only wait out their timeout; the rooms are
            // subscribed on reconnect.
            while commands.try_recv().is_ok() {}
            // Only a connection that stayed healthy for a heartbeat resets the backoff: one
            // that fails at once (a Redis refusing writes) is retried ever more slowly.
            if course
                .connected_since
                .take()
                .is_some_and(|since| since.elapsed() >= self.settings.heartbeat())
            {
                backoff = RECONNECT_MIN;
            }
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(jittered) => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        // The sessions are gone and their leaves are queued: flush them, then withdraw.
        let _ = tokio::time::timeout(self.settings.timeout * 2, publisher).await;
        self.withdraw().await;
        self.set_connected(false);
        self.set_delivery_ok(false);
        self.connection.send_replace(None);
        self.stopped.cancel();
        info!(node = %self.node, "redis broker stopped");
    }

    /// One connection's lifetime: connect, catch up, serve until it fails or we stop.
    async fn connected_period(
        &self,
        local: &dyn LocalRooms,
        control: &dyn LocalControl,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        course: &mut Course,
    ) -> Ended {
        let lost = |kind| move |err: RedisFailure| Ended::Lost(kind, err);
        let mut link = match self.connect().await {
            Ok(link) => link,
            Err(err) => return lost(BrokerFailure::Connect)(err),
        };
        if let Err(err) = self.subscribe_rooms(&mut link, &local.room_names()).await {
            return lost(BrokerFailure::Subscribe)(err);
        }
        // A key that had expired: another node may be pruning this node's presence right
        // now, after the resync below; the first heartbeat resyncs once more.
        let mut resync_again = match self.refresh_node_key(&mut link.conn, local).await {
            Ok(existed) => !existed,
            Err(err) => return lost(BrokerFailure::Connect)(err),
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.presence_epoch.fetch_add(1, Ordering::SeqCst);
        self.connection.send_replace(Some(Link {
            generation,
            conn: link.conn.clone(),
        }));
        // Connected before the resync is queued: an event after this point is queued behind
        // the resync of its room, one before it is superseded by that resync. Ready only once
        // the bans in force are learned, below.
        self.caught_up.store(false, Ordering::SeqCst);
        self.set_connected(true);
        let mut rooms: HashSet<String> = local.room_names().into_iter().collect();
        rooms.extend(self.take_dirty());
        self.resync(local, rooms);
        if let Err(err) = self.catch_up_notices(&mut link.conn, control).await {
            return lost(BrokerFailure::Connect)(err);
        }
        self.caught_up.store(true, Ordering::SeqCst);
        if let Err(err) = self.sync_sessions(&mut link.conn, control, true).await {
            return lost(BrokerFailure::Connect)(err);
        }
        // Rooms created while the first subscriptions were on their way.
        let rooms = local.room_names();
        if let Err(err) = self.subscribe_rooms(&mut link, &rooms).await {
            return lost(BrokerFailure::Subscribe)(err);
        }
        // Members hear that delivery is back before the `join`/`userleave` frames of what
        // changed elsewhere meanwhile, which the fresh views below bring.
        if std::mem::take(&mut course.interrupted) {
            local.delivery_changed(Delivery::Restored);
        }
        if let Err(err) = self.refresh_views(&mut link.conn, local, &rooms).await {
            return lost(BrokerFailure::Connect)(err);
        }
        // Messages sent while this node was away are delivered now, in order, or the members
        // are told what is lost.
        if let Err(err) = self
            .sync_history(&mut link.conn, local, &rooms, false)
            .await
        {
            return lost(BrokerFailure::Connect)(err);
        }
        if course.ever_connected {
            self.metrics.broker_reconnects.inc();
            info!(node = %self.node, rooms = rooms.len(), "redis back; rooms resubscribed");
        } else {
            info!(node = %self.node, "redis connected");
        }
        course.ever_connected = true;
        course.connected_since = Some(Instant::now());

        let mut heartbeat = tokio::time::interval(self.settings.heartbeat());
        let mut rate_sync = tokio::time::interval(self.settings.rate_sync);
        for timer in [&mut heartbeat, &mut rate_sync] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.reset();
        }
        // The first canary goes at once: the node is ready when it is back.
        let mut canary_timer = tokio::time::interval(self.settings.canary_interval);
        canary_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut canary_sent: Option<Pin<Box<dyn Future<Output = RedisResult<()>> + Send>>> = None;
        let mut switches = self.switch_notices().await;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                _ = self.publish_failed.notified() => {
                    // A failure from an earlier period left a permit behind: not ours.
                    if self.failed_generation.load(Ordering::SeqCst) == generation {
                        return lost(BrokerFailure::Publish)(RedisFailure::WriteFailed);
                    }
                }
                heard = link.subscriber.next() => {
                    let message = match heard {
                        Some(Heard::Message(message)) => message,
                        Some(Heard::Dropped(channels)) => {
                            if let Err(err) = self.subscribe_again(&mut link, channels, true).await {
                                return lost(BrokerFailure::Subscribe)(err);
                            }
                            continue;
                        }
                        None => return lost(BrokerFailure::Subscribe)(RedisFailure::SubscriptionClosed),
                    };
                    let (channel, payload) = (message.channel(), message.payload());
                    if link.canaries.owns(channel) {
                        if link.canaries.on_echo(channel, payload) {
                            self.set_delivery_ok(true);
                        }
                    } else if channel == self.control_channel {
                        self.on_notice(control, payload);
                    } else if let Some(room) = self.on_envelope(local, channel, payload) {
                        let rooms = [room];
                        if let Err(err) = self.sync_history(&mut link.conn, local, &rooms, false).await {
                            return lost(BrokerFailure::Subscribe)(err);
                        }
                    }
                }
                Some(command) = commands.recv() => {
                    if let Err(err) = self.on_commands(local, &mut link, commands, command).await {
                        return lost(BrokerFailure::Subscribe)(err);
                    }
                }
                _ = heartbeat.tick() => {
                    let rewrite = match self.heartbeat(local, &mut link, &mut resync_again).await {
                        Ok(rewrite) => rewrite,
                        Err(err) => return lost(BrokerFailure::Probe)(err),
                    };
                    if let Err(err) = self.sync_sessions(&mut link.conn, control, rewrite).await {
                        return lost(BrokerFailure::Probe)(err);
                    }
                }
                _ = rate_sync.tick() => {
                    if let Err(err) = self.sync_rates(&mut link.conn).await {
                        return lost(BrokerFailure::Publish)(err);
                    }
                }
                _ = canary_timer.tick() => {
                    // Not a PING: a subscriber can answer one and still receive nothing.
                    let Ok(canaries) = link.canaries.next() else {
                        return lost(BrokerFailure::Canary)(RedisFailure::Silent);
                    };
                    let mut publish = Batch::new();
                    for (channel, number) in canaries {
                        publish.cmd(self.publish_verb()).arg(channel).arg(number).ignore();
                    }
                    // Sent beside the loop, not awaited in it: a server that holds the publish
                    // (paused, failing over) must not hold the subscription's messages too, and
                    // the canary it keeps is missed at the next tick.
                    let mut conn = link.conn.clone();
                    canary_sent = Some(Box::pin(async move { publish.query::<()>(&mut conn).await }));
                }
                sent = async { canary_sent.as_mut()?.await.into() }, if canary_sent.is_some() => {
                    canary_sent = None;
                    if let Some(Err(err)) = sent {
                        return lost(BrokerFailure::Canary)(RedisFailure::Redis(err.kind()));
                    }
                }
                Some(notice) = next_switch(&mut switches) => {
                    if self.moves_our_master(&notice, &link.server) {
                        return lost(BrokerFailure::Failover)(RedisFailure::MasterSwitched);
                    }
                }
            }
        }
    }

    /// Applies an envelope from a room's channel. A numbered message (ours too: with history
    /// on, this node delivers its own messages as they come back, in the room's one order) is
    /// delivered if it is the room's next; if the room is behind it, the room is returned: its
    /// copy must be brought level from Redis first, so nothing is delivered out of order.
    fn on_envelope(&self, local: &dyn LocalRooms, channel: &str, payload: &[u8]) -> Option<String> {
        let room = self.keys.room_of_channel(channel)?;
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.metrics.broker_error(BrokerFailure::Decode);
                debug!(bytes = payload.len(), %err, "envelope refused");
                return None;
            }
        };
        let ours = *envelope.node == *self.node;
        if !ours {
            self.metrics.broker_received.inc();
            let delay_ms = now_ms().saturating_sub(envelope.sent_at_ms);
            self.metrics.broker_delay.observe(delay_ms as f64 / 1000.0);
        }
        if let RemoteEvent::Message {
            position: Some(_), ..
        } = envelope.event
        {
            let (epoch, entry) = self.entry(envelope)?;
            let behind = local.deliver_ordered(room, &epoch, entry) == Ordered::Behind;
            return behind.then(|| room.to_owned());
        }
        if ours {
            // Our own: its room heard it locally already.
            return None;
        }
        let node: Arc<str> = Arc::from(envelope.node);
        local.apply_remote(room, &node, envelope.seq, envelope.event);
        None
    }

    /// Handles `first` and every command already waiting behind it: opens are batched (one
    /// subscribe and one read for all their rooms), and opens nobody waits for any more are
    /// skipped unless the hub has the room.
    async fn on_commands(
        &self,
        local: &dyn LocalRooms,
        link: &mut Connection,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        first: Command,
    ) -> Result<(), RedisFailure> {
        let mut opens: Vec<String> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closed: Vec<String> = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Open { room, done } => match done {
                    Some(done) if !done.is_closed() => {
                        opens.push(room);
                        waiting.push(done);
                    }
                    Some(_) if !local.has_room(&room) => {}
                    _ => opens.push(room),
                },
                Command::Closed { room } => closed.push(room),
            }
            if opens.len() + closed.len() < SUBSCRIBE_CHUNK {
                next = commands.try_recv().ok();
            }
        }
        opens.sort();
        opens.dedup();
        self.subscribe_rooms(link, &opens).await?;
        self.refresh_views(&mut link.conn, local, &opens).await?;
        self.sync_history(&mut link.conn, local, &opens, false)
            .await?;
        for done in waiting {
            let _ = done.send(());
        }
        // A room closed and opened again in this batch is still in the hub: kept.
        let gone: Vec<String> = closed
            .into_iter()
            .filter(|room| !local.has_room(room) && link.subscribed.contains(room))
            .collect();
        self.unsubscribe_rooms(link, &gone).await
    }

    /// Keeps this node's keys alive (resyncing everything if they had expired, and once more
    /// at the heartbeat after), forgets nodes whose keys expired, resyncs rooms whose presence
    /// writes were lost, makes subscriptions follow the hub's rooms whatever raced with the
    /// open and close commands, and re-reads every room's members elsewhere (which repairs
    /// anything a lost envelope left wrong). True if the user session counts must be rewritten
    /// whole too.
    async fn heartbeat(
        &self,
        local: &dyn LocalRooms,
        link: &mut Connection,
        resync_again: &mut bool,
    ) -> Result<bool, RedisFailure> {
        let expired = !self.refresh_node_key(&mut link.conn, local).await?;
        let rewrite = expired || std::mem::take(resync_again);
        if expired {
            warn!(node = %self.node, "this node's key had expired; resyncing its presence");
            // Another node may be pruning this node's fields, or sweeping its webhook items,
            // right after the rewrite below.
            *resync_again = true;
        }
        if rewrite {
            self.resync(local, local.room_names());
            // Another node may have taken this node for dead and reported its users offline:
            // the webhooks rewrite this node's presence whole.
            self.presence_epoch.fetch_add(1, Ordering::SeqCst);
        }
        // Channels subscribed again after a shard dropped them, once more: a reply that a
        // shard's unasked `sunsubscribe` push stood in for may have hidden a refusal.
        let again: Vec<String> = std::mem::take(&mut link.subscribed_again)
            .into_iter()
            .collect();
        self.subscribe_again(link, again, false).await?;
        self.resync(local, self.take_dirty());
        let known: Vec<Arc<str>> = local.remote_nodes().into_iter().collect();
        for node in self.within(self.dead_nodes(&mut link.conn, &known)).await? {
            info!(node = %node, "a node's presence expired; its members left");
            local.forget_node(&node);
        }
        local.sweep_unjoined(self.settings.timeout * 2);
        let rooms = local.room_names();
        let stale: Vec<String> = link
            .subscribed
            .iter()
            .filter(|room| !local.has_room(room))
            .cloned()
            .collect();
        self.unsubscribe_rooms(link, &stale).await?;
        self.place_canaries(link).await?;
        self.subscribe_rooms(link, &rooms).await?;
        self.refresh_views(&mut link.conn, local, &rooms).await?;
        // A lost message that was the room's last shows only here.
        self.sync_history(&mut link.conn, local, &rooms, true)
            .await?;
        Ok(rewrite)
    }

    /// Sets this node's key and pushes back the expiry of its rooms' hashes. False if the key
    /// had expired (or Redis lost it): other nodes may have dropped this node's presence.
    async fn refresh_node_key(
        &self,
        conn: &mut Conn,
        local: &dyn LocalRooms,
    ) -> Result<bool, RedisFailure> {
        let ttl = self.settings.key_ttl.as_secs();
        let mut pipe = Batch::new();
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .arg("GET");
        for room in local.room_names() {
            pipe.cmd("EXPIRE")
                .arg(self.keys.members(&room))
                .arg(ttl)
                .ignore();
            self.keep_position(&mut pipe, &room);
        }
        let (previous,): (Option<String>,) = self.within(pipe.query(conn)).await?;
        Ok(previous.is_some())
    }

    /// Removes this node's key, so others forget it now rather than after it expires.
    async fn withdraw(&self) {
        let Some(Link { mut conn, .. }) = self.connection.borrow().clone() else {
            return;
        };
        let _: Result<(), RedisFailure> = self
            .within(
                redis::cmd("DEL")
                    .arg(self.keys.node(&self.node))
                    .query_async(&mut conn),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::broker::envelope::encode;
    use crate::broker::{RemoteEvent, RemoteMember};
    use crate::config::tests::env;
    use crate::history::{Entry, Position};
    use crate::metrics::Metrics;

    /// Rooms that record what the broker asks of them.
    #[derive(Default)]
    struct FakeRooms {
        applied: Mutex<Vec<(String, String, u64, RemoteEvent)>>,
    }

    impl LocalRooms for FakeRooms {
        fn apply_remote(&self, room: &str, node: &Arc<str>, seq: u64, event: RemoteEvent) {
            self.applied
                .lock()
                .unwrap()
                .push((room.to_owned(), node.to_string(), seq, event));
        }
        fn replace_remote(&self, _: &str, _: Vec<(Arc<str>, RemoteMember)>) {}
        fn forget_node(&self, _: &str) {}
        fn remote_nodes(&self) -> HashSet<Arc<str>> {
            HashSet::new()
        }
        fn room_names(&self) -> Vec<String> {
            Vec::new()
        }
        fn has_room(&self, _: &str) -> bool {
            true
        }
        fn with_local_members(&self, _: &str, f: &mut dyn FnMut(Vec<RemoteMember>)) {
            f(Vec::new())
        }
        fn sweep_unjoined(&self, _: Duration) {}
        fn delivery_changed(&self, _: Delivery) {}
        fn deliver_ordered(&self, _: &str, _: &Arc<str>, _: Entry) -> Ordered {
            Ordered::Behind
        }
        fn history_position(&self, _: &str) -> Option<Position> {
            None
        }
        fn reload_history(&self, _: &str, _: Position, _: Vec<Entry>) {}
        fn deliver_here(&self, _: &str, _: u64, _: &str, _: &str, _: &str) {}
    }

    fn broker() -> Arc<RedisBroker> {
        // Never connected: the test drives the envelope path alone.
        let settings =
            crate::broker::RedisSettings::from_env(&env(&[("REDIS_URL", "redis://127.0.0.1:1")]))
                .unwrap()
                .unwrap();
        RedisBroker::new(&settings, Arc::new(Metrics::new()), (3.0, 5))
    }

    #[test]
    fn envelopes_from_other_nodes_reach_the_rooms_and_ours_and_garbage_do_not() {
        let broker = broker();
        let rooms = FakeRooms::default();
        let hello = RemoteEvent::Message {
            session: 7,
            username: "Bob".into(),
            user_id: "bob".into(),
            body: "hi".into(),
            position: None,
        };
        let channel = broker.keys.channel("lobby");
        broker.on_envelope(&rooms, &channel, &encode("other", 3, 0, &hello));
        broker.on_envelope(&rooms, &channel, &encode(&broker.node, 4, 0, &hello));
        broker.on_envelope(&rooms, &channel, b"not an envelope");
        broker.on_envelope(
            &rooms,
            "elsewhere:room:lobby",
            &encode("other", 5, 0, &hello),
        );
        let numbered = RemoteEvent::Message {
            session: 7,
            username: "Bob".into(),
            user_id: "bob".into(),
            body: "hi".into(),
            position: Some(Position {
                epoch: "e".into(),
                offset: 9,
            }),
        };
        assert_eq!(
            broker.on_envelope(&rooms, &channel, &encode(&broker.node, 6, 0, &numbered)),
            Some("lobby".to_owned()),
            "a numbered message, ours too, goes to the room's order; behind it, the room catches up"
        );
        let applied = rooms.applied.lock().unwrap();
        assert_eq!(
            *applied,
            [("lobby".to_owned(), "other".to_owned(), 3, hello)],
            "only the other node's envelope on our channel"
        );
        assert!(broker
            .metrics
            .encode()
            .contains("palisade_broker_errors_total{kind=\"decode\"} 1"));
    }
}
