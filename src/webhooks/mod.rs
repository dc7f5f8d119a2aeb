//! Webhooks: signed events POSTed to the product's backend (`WEBHOOK_URL`) as the cluster's
//! presence changes (users online and offline, rooms occupied and empty) and, if asked,
//! for every chat message. `docs/WEBHOOKS.md` describes them for receivers.
//!
//! - [`tracker`] decides which changes observed here are facts for the whole cluster;
//! - [`delivery`] queues, batches, signs and sends events, retrying failures;
//! - [`event`] is what a receiver gets, and the signature.

mod delivery;
mod event;
pub(crate) mod settings;
mod tracker;

use std::sync::Arc;

pub(crate) use settings::WebhookSettings;

use crate::observer::Observations;
use crate::state::Gateway;

/// Starts the tracker and the sender on the gateway's tasks.
pub(crate) fn start(gateway: &Arc<Gateway>, settings: &WebhookSettings, observed: Observations) {
    let (queue, events) = delivery::Queue::new(settings.queue, Arc::clone(&gateway.metrics));
    let tracker = tracker::Tracker::new(settings.clone(), Arc::clone(gateway.hub.broker()), queue);
    let sender = delivery::Sender::new(settings.clone(), Arc::clone(&gateway.metrics));
    gateway
        .tasks
        .spawn(tracker.run(observed.presence, gateway.stopping.clone()));
    gateway
        .tasks
        .spawn(sender.run(events, observed.messages, gateway.stopping.clone()));
}
