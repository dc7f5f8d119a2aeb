//! What one member of a soak room received, checked by offset: with history on, every chat
//! message gets one more than the room's previous, and every member must see each offset once,
//! in order. A jump is a loss, an offset at or below the last one a duplicate or a reordering.

use serde_json::Value;

/// One member's running check.
#[derive(Clone, Debug, Default)]
pub struct OffsetCheck {
    /// The room's offset in the join acknowledgement: the messages before it are not this
    /// member's to receive.
    pub joined_at: u64,
    /// The highest offset received.
    pub last: u64,
    /// Messages received in order.
    pub delivered: u64,
    /// Offsets skipped over (messages that never came).
    pub skipped: u64,
    /// Offsets received at or below the last one.
    pub repeated: u64,
    /// `history_gap`, `history_reset` and `delivery_interrupted` notices: the server saying
    /// it lost something.
    pub loss_notices: u64,
}

impl OffsetCheck {
    /// A member that joined when the room's offset was `joined_at`.
    pub fn new(joined_at: u64) -> OffsetCheck {
        OffsetCheck {
            joined_at,
            last: joined_at,
            ..OffsetCheck::default()
        }
    }

    pub fn record(&mut self, offset: u64) {
        if offset <= self.last {
            self.repeated += 1;
            return;
        }
        self.skipped += offset - self.last - 1;
        self.last = offset;
        self.delivered += 1;
    }

    /// Checks one frame: live messages by offset, and the notices of loss.
    pub fn frame(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match frame["type"].as_str() {
            Some("message") if frame.get("history").is_none() => {
                if let Some(offset) = frame["offset"].as_u64() {
                    self.record(offset);
                }
            }
            Some("notice")
                if matches!(
                    frame["body"].as_str(),
                    Some("history_gap" | "history_reset" | "delivery_interrupted")
                ) =>
            {
                self.loss_notices += 1
            }
            _ => {}
        }
    }

    /// Messages this member should have had but did not: skipped offsets, and those after
    /// its last one when the room numbered `sent` messages since it joined.
    pub fn lost(&self, sent: u64) -> u64 {
        let tail = (self.joined_at + sent).saturating_sub(self.last);
        self.skipped + tail
    }

    /// Offsets beyond what was sent: messages numbered that nobody sent.
    pub fn unexpected(&self, sent: u64) -> u64 {
        self.last.saturating_sub(self.joined_at + sent)
    }
}

/// The offset of a join acknowledgement (0 when it has none).
pub fn ack_offset(ack: &str) -> u64 {
    serde_json::from_str::<Value>(ack)
        .ok()
        .and_then(|frame| frame["offset"].as_u64())
        .unwrap_or(0)
}

/// Whether the past messages a join with `"history": asked` received are whole: consecutive
/// offsets ending at the acknowledgement's, as many as asked for when the room had that many.
pub fn history_whole(offsets: &[u64], ack: u64, asked: u64) -> bool {
    let consecutive = offsets.windows(2).all(|pair| pair[1] == pair[0] + 1);
    let ends_at_ack = offsets.last().is_none_or(|&last| last == ack);
    let enough = ack < asked || offsets.len() as u64 == asked;
    consecutive && ends_at_ack && enough && (ack == 0 || !offsets.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_order_lose_nothing() {
        let mut check = OffsetCheck::new(4);
        for offset in 5..=9 {
            check.frame(&format!(
                r#"{{"type":"message","body":"x","username":"a","userId":"a","offset":{offset}}}"#
            ));
        }
        assert_eq!((check.delivered, check.lost(5), check.repeated), (5, 0, 0));
        assert_eq!(check.unexpected(5), 0);
    }

    #[test]
    fn a_gap_a_repeat_and_a_missing_tail_are_counted() {
        let mut check = OffsetCheck::new(0);
        for offset in [1, 2, 4, 4, 3, 5] {
            check.record(offset);
        }
        assert_eq!(check.skipped, 1);
        assert_eq!(check.repeated, 2);
        // Seven sent: 3 skipped over, 6 and 7 never came.
        assert_eq!(check.lost(7), 3);
    }

    #[test]
    fn past_messages_and_notices_are_told_apart_from_live_ones() {
        let mut check = OffsetCheck::new(0);
        check.frame(r#"{"type":"message","body":"x","offset":1,"ts":1,"history":true}"#);
        check.frame(r#"{"type":"notice","body":"history_gap","epoch":"e","offset":3}"#);
        check.frame(r#"{"type":"join","username":"b","totalUsers":2}"#);
        assert_eq!((check.delivered, check.loss_notices), (0, 1));
    }

    #[test]
    fn history_must_be_consecutive_and_reach_the_acknowledgement() {
        assert!(history_whole(&[8, 9, 10], 10, 3));
        assert!(history_whole(&[1, 2], 2, 20));
        assert!(history_whole(&[], 0, 20));
        assert!(!history_whole(&[8, 10], 10, 2));
        assert!(!history_whole(&[8, 9], 10, 2));
        assert!(!history_whole(&[9, 10], 30, 20));
        assert_eq!(ack_offset(r#"{"type":"join","offset":44,"epoch":"e"}"#), 44);
    }
}
