//! One node on its own: every member is local, so there is nothing to carry.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::{BoxFuture, Broker, LocalControl, LocalRooms, MessageOrder, Notice, RoomEvent};

/// The default broker, used when `REDIS_URL` is not set.
#[derive(Debug, Default)]
pub(crate) struct LocalBroker;

impl Broker for LocalBroker {
    fn start(
        self: Arc<Self>,
        _rooms: Arc<dyn LocalRooms>,
        _control: Arc<dyn LocalControl>,
        _tasks: &TaskTracker,
    ) {
    }

    fn announce(&self, _notice: Notice) {}

    fn open_room<'a>(&'a self, _room: &'a str) -> BoxFuture<'a> {
        Box::pin(std::future::ready(()))
    }

    fn publish(&self, _room: &str, _event: RoomEvent<'_>) -> bool {
        true
    }

    fn message_order(&self) -> MessageOrder {
        MessageOrder::Here
    }

    fn room_closed(&self, _room: &str) {}

    fn is_connected(&self) -> bool {
        true
    }

    fn stop(&self) -> BoxFuture<'_> {
        Box::pin(std::future::ready(()))
    }
}
