//! Wall-clock time as the gateway writes it everywhere (history, bans, revocations, Redis
//! envelopes, webhook events): Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now.
pub(crate) fn unix_ms() -> u64 {
    unix_ms_at(SystemTime::now())
}

/// Unix milliseconds at `time` (0 before the epoch).
pub(crate) fn unix_ms_at(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `bytes` in lowercase hex (digests, signatures, random ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}
