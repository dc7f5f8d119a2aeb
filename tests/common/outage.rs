//! What a member hears across a broker outage (a failover, a silent subscriber): the
//! `delivery_interrupted` / `delivery_restored` notices and numbered chat messages, in order,
//! and the checks every such test makes on them.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::Client;

/// One thing a member heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    Notice(String),
    /// A chat message whose body is a number.
    Message(u64),
}

/// Sends `n` as a chat message.
pub(crate) async fn say(client: &mut Client, n: u64) {
    client
        .send_json(json!({"type": "message", "body": n.to_string()}))
        .await;
}

/// Listens until message `last` arrives (or `wait` passes: the test fails), recording the
/// notices and messages heard on the way, each with when it arrived.
pub(crate) async fn listen_until(
    client: &mut Client,
    last: u64,
    wait: Duration,
) -> Vec<(Instant, Heard)> {
    let deadline = Instant::now() + wait;
    let mut heard = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "message {last} never came; heard {heard:?}"
        );
        let frame = client.recv_within(left).await;
        let event = match frame["type"].as_str() {
            Some("notice") => Heard::Notice(frame["body"].as_str().unwrap().to_owned()),
            Some("message") => Heard::Message(frame["body"].as_str().unwrap().parse().unwrap()),
            _ => continue,
        };
        let done = event == Heard::Message(last);
        heard.push((Instant::now(), event));
        if done {
            return heard;
        }
    }
}

/// When `notice` was heard, if it was.
pub(crate) fn heard_at(heard: &[(Instant, Heard)], notice: &str) -> Option<Instant> {
    heard
        .iter()
        .find(|(_, event)| *event == Heard::Notice(notice.to_owned()))
        .map(|(at, _)| *at)
}

/// The member was told (interrupted, then restored, once each) and got every message in
/// `expected` exactly once and in order: nothing silently missed, duplicated or reordered.
pub(crate) fn assert_told_and_complete(
    heard: &[(Instant, Heard)],
    expected: std::ops::RangeInclusive<u64>,
) {
    let events: Vec<&Heard> = heard.iter().map(|(_, event)| event).collect();
    let notices: Vec<&Heard> = events
        .iter()
        .copied()
        .filter(|event| matches!(event, Heard::Notice(_)))
        .collect();
    assert_eq!(
        notices,
        [
            &Heard::Notice("delivery_interrupted".into()),
            &Heard::Notice("delivery_restored".into())
        ],
        "told once each, in order: {events:?}"
    );
    let messages: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            Heard::Message(n) => Some(*n),
            Heard::Notice(_) => None,
        })
        .collect();
    assert_eq!(
        messages,
        expected.collect::<Vec<_>>(),
        "every message once, in order: {events:?}"
    );
}
