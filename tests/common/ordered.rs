//! A member that checks what one steady sender says reaches it in order, with no duplicate
//! and no silent gap, through whatever a test does to Redis meanwhile (a failover, a
//! migration), and what it was told about delivery.

use std::time::Duration;

use serde_json::Value;

use super::{Client, PacedSender, Pacing};

/// A member that reads numbered messages from one sender and checks they only grow.
pub(crate) struct Reader {
    pub client: Client,
    pub last: Option<u64>,
    pub notices: Vec<String>,
    /// Each message's offset, for a reader that joined with the extensions; `None` where a
    /// `history_gap` or `history_reset` notice said the numbering moved on.
    positions: Vec<Option<u64>>,
}

impl Reader {
    pub(crate) fn new(client: Client) -> Reader {
        Reader {
            client,
            last: None,
            notices: Vec::new(),
            positions: Vec::new(),
        }
    }

    /// Reads one frame: a message must come after the last one (no duplicate, no reorder).
    pub(crate) async fn read(&mut self) -> Value {
        let frame = self.client.recv_within(Duration::from_secs(15)).await;
        if frame["type"] == "message" {
            let n: u64 = frame["body"].as_str().unwrap().parse().unwrap();
            assert!(
                self.last.is_none_or(|last| n > last),
                "{n} after {:?}",
                self.last
            );
            self.last = Some(n);
            if let Some(offset) = frame["offset"].as_u64() {
                self.positions.push(Some(offset));
            }
        } else if frame["type"] == "notice" {
            let body = frame["body"].as_str().unwrap();
            if body.starts_with("history_") {
                eprintln!("{frame}");
                self.positions.push(None);
            } else {
                self.notices.push(body.to_owned());
            }
        }
        frame
    }

    /// Reads until a message later than `after` arrives.
    pub(crate) async fn until_after(&mut self, after: Option<u64>) {
        while self.last <= after {
            self.read().await;
        }
    }

    /// Every numbered message reached this reader: offsets follow one another with no gap
    /// (what a node missed while away was delivered from history), but where the member was
    /// told otherwise (a failover that lost writes not yet replicated is a `history_reset`).
    pub(crate) fn assert_no_silent_gap(&self) {
        assert!(self.positions.iter().flatten().count() > 1);
        for pair in self.positions.windows(2) {
            if let [Some(offset), Some(next)] = pair {
                assert_eq!(*next, offset + 1, "a gap in {:?}", self.positions);
            }
        }
    }

    /// Reads until `notice`.
    pub(crate) async fn until_notice(&mut self, notice: &str) {
        while self.notices.last().map(String::as_str) != Some(notice) {
            self.read().await;
        }
    }
}

/// A sender of numbered messages, one every 20 ms.
pub(crate) fn talker(client: Client) -> PacedSender {
    PacedSender::start(
        client,
        Pacing {
            padding: 0,
            burst: 1,
            pause: Duration::from_millis(20),
            limit: 2000,
        },
    )
}
