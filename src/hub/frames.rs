//! The room frames whose shape depends on who gets them: GarinChat's bytes for a member without
//! the room extensions, the same frame with offsets and positions for a member with them.

use bytes::Bytes;

use super::Member;
use crate::history::{Discontinuity, Entry, Replay, Request};
use crate::protocol::{notice, ServerFrame};

/// A chat message as it happens (its offset dropped for GarinChat's dialect).
pub(super) fn live(entry: &Entry) -> ServerFrame<'_> {
    let mut frame = ServerFrame::message(&entry.body, &entry.username, &entry.user_id);
    frame.offset = Some(entry.offset);
    frame
}

/// A chat message sent before the member joined, marked as history.
fn past(entry: &Entry) -> ServerFrame<'_> {
    let mut frame = live(entry);
    frame.ts = Some(entry.sent_at_ms);
    frame.history = true;
    frame
}

/// Who joins, and how its acknowledgement answers.
pub(super) struct Joiner<'a> {
    pub member: &'a Member,
    pub room: &'a str,
    /// The join request's id (protocol v2), echoed by the acknowledgement.
    pub id: Option<&'a str>,
}

/// What a joiner is sent, in order: its acknowledgement (the `join` frame every member gets,
/// with the room's position for a member with the extensions, and the request's id in v2),
/// then the past messages it is given.
///
/// Past messages go through the joiner's outbound queue like any frame, so they are held to
/// half of its budget (`OUTBOUND_QUEUE_FRAMES`, `MAX_OUTBOUND_BYTES`), leaving the rest for
/// live traffic: the newest that fit are sent, and a recovery that does not fit says it did
/// not recover rather than send part of what was missed.
pub(super) fn welcome(
    joiner: &Joiner<'_>,
    total: usize,
    replay: Replay,
    request: &Request,
    seen: Option<u64>,
) -> Vec<Bytes> {
    let Joiner { member, room, id } = *joiner;
    let dialect = member.dialect;
    let mut past: Vec<Bytes> = replay
        .entries
        .iter()
        .map(|entry| past(entry).shaped(dialect, room).encode())
        .collect();
    let (spare_frames, spare_bytes) = member.outbox.spare();
    let (room_frames, room_bytes) = (spare_frames.saturating_sub(2) / 2, spare_bytes / 2);
    let mut fitting = 0;
    let mut bytes = 0;
    for frame in past.iter().rev() {
        if fitting == room_frames || bytes + frame.len() > room_bytes {
            break;
        }
        fitting += 1;
        bytes += frame.len();
    }
    let mut recovered = replay.recovered;
    if fitting < past.len() {
        if recovered == Some(true) {
            recovered = Some(false);
            fitting = fitting.min(request.history);
        }
        past.drain(..past.len() - fitting);
    }
    let mut ack = ServerFrame::join(&member.display_name, &member.user_id, total);
    if let Some(position) = &replay.position {
        ack = ack.at(&position.epoch, position.offset);
        ack.seen = seen;
    }
    ack.recovered = recovered;
    let mut frames = Vec::with_capacity(1 + past.len());
    frames.push(ack.shaped(dialect, room).answering(id).encode());
    frames.extend(past);
    frames
}

/// The notice that tells members with the extensions where the room now stands.
pub(super) fn discontinuity(what: &Discontinuity) -> ServerFrame<'_> {
    let (code, position) = match what {
        Discontinuity::Gap(position) => (notice::HISTORY_GAP, position),
        Discontinuity::Reset(position) => (notice::HISTORY_RESET, position),
    };
    ServerFrame::notice(code).at(&position.epoch, position.offset)
}
