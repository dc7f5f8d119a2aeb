//! A socket's outbound queue: bounded in frames and in bytes, never awaited by anyone but the
//! socket itself, and the way anyone outside a session asks it to close.
//!
//! Fan-out calls [`Outbox::deliver`], which never blocks: when the queue is full, in frames
//! (`OUTBOUND_QUEUE_FRAMES`) or in bytes (`MAX_OUTBOUND_BYTES`), the socket is a slow consumer,
//! and instead of waiting (which would slow the whole room) the outbox is closed with
//! [`CloseCode::SlowConsumer`]. Bytes count every frame whole, though a broadcast's payload is
//! shared: it is what the socket keeps alive, and HTML-safe escaping can make a frame six times
//! its message. A ban or a kick closes the outbox with its own code the same way; the socket is
//! woken, sees it ([`OutboxReceiver::close_requested`]) and its session ends with that code.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::protocol::CloseCode;

/// What a socket writes, in order. Small (a pointer and a tag): a busy socket's queue holds up
/// to `OUTBOUND_QUEUE_FRAMES` of them.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text frame, shared between all recipients of a broadcast.
    Text(Arc<SharedPayload>),
    /// The reply to a client's ping (at most 125 bytes).
    Pong(Arc<SharedPayload>),
    /// A keepalive ping, with the payload its pong must echo.
    Ping(Arc<SharedPayload>),
    /// A binary frame (the gateway sends none; the framing layer supports them for its
    /// conformance tests).
    Binary(Arc<SharedPayload>),
}

impl Outbound {
    /// A text frame made now.
    pub fn text(bytes: impl Into<Bytes>) -> Outbound {
        Outbound::Text(SharedPayload::new(bytes))
    }

    /// The payload's length: what the frame costs the socket's byte budget.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Text(payload)
            | Outbound::Pong(payload)
            | Outbound::Ping(payload)
            | Outbound::Binary(payload) => payload.bytes.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame's payload and the moment it was made (for the fan-out delay metric).
#[derive(Debug)]
pub struct SharedPayload {
    /// The frame's payload.
    pub bytes: Bytes,
    /// When it was made.
    pub created: Instant,
}

impl SharedPayload {
    /// A payload made now.
    pub fn new(bytes: impl Into<Bytes>) -> Arc<SharedPayload> {
        Arc::new(SharedPayload {
            bytes: bytes.into(),
            created: Instant::now(),
        })
    }
}

/// What the sending and receiving sides share: one allocation per socket.
///
/// The queue is a `VecDeque` under a mutex rather than a channel: tokio's bounded channel
/// allocates two cache-padded halves and a block of 32 slots up front, over a kilobyte that
/// every idle socket would carry, where an empty `VecDeque` allocates nothing. The lock is
/// held for a push or a pop only, and contended only by two rooms delivering to one socket at
/// the same instant.
#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    max_frames: usize,
    /// Wakes the socket when a frame is queued.
    socket: AtomicWaker,
    /// Payload bytes queued and not yet written.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// The code the session must close with, once asked to (0 until then); the socket is
    /// woken to see it.
    close_code: AtomicU16,
    /// The receiving side is gone: frames are dropped rather than queued.
    receiver_gone: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        // A panic while holding the lock cannot leave a VecDeque half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of a socket's queue, cheap to clone into a room.
#[derive(Clone, Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The receiving side, owned by the session's socket.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl Outbox {
    /// A queue of `frames` frames and `max_bytes` payload bytes: the sending side for rooms, the
    /// receiving side for the socket.
    pub fn new(frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            max_frames: frames,
            socket: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            close_code: AtomicU16::new(0),
            receiver_gone: AtomicBool::new(false),
        });
        let receiver = OutboxReceiver {
            shared: Arc::clone(&shared),
        };
        (Outbox { shared }, receiver)
    }

    /// Queues a frame without waiting. A full queue (in frames or bytes) closes the socket as
    /// a slow consumer; a closed one (the session already ended) drops the frame silently.
    pub fn deliver(&self, frame: Outbound) -> bool {
        let len = frame.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if queued + len > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        let mut queue = self.shared.queue();
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            drop(queue);
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        if queue.len() >= self.shared.max_frames {
            drop(queue);
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        queue.push_back(frame);
        drop(queue);
        self.shared.socket.wake();
        true
    }

    /// Queues a frame only while the queue is less than half full (in frames and bytes),
    /// never closing the socket: for what others send a user unasked (direct messages), which
    /// must not be able to push the user out as a slow consumer. False: dropped.
    pub(crate) fn offer(&self, frame: Outbound) -> bool {
        let (spare_frames, spare_bytes) = self.spare();
        let (frames, bytes) = (self.shared.max_frames, self.shared.max_bytes);
        if spare_frames <= frames / 2 || spare_bytes < bytes / 2 + frame.len() {
            return false;
        }
        self.deliver(frame)
    }

    /// Asks the session to close with `code`; the first code asked for wins.
    pub(crate) fn close(&self, code: CloseCode) {
        let _ = self.shared.close_code.compare_exchange(
            0,
            code.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.shared.socket.wake();
    }

    /// The code the session was asked to close with, if it was.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        code_of(self.shared.close_code.load(Ordering::Acquire))
    }

    /// Room left in the queue: frames, and payload bytes.
    pub(crate) fn spare(&self) -> (usize, usize) {
        let queued = self.shared.queued_bytes.load(Ordering::Acquire);
        (
            self.shared
                .max_frames
                .saturating_sub(self.shared.queue().len()),
            self.shared.max_bytes.saturating_sub(queued),
        )
    }

    /// Whether a delivery found the queue full.
    pub fn is_evicted(&self) -> bool {
        self.close_code() == Some(CloseCode::SlowConsumer)
    }
}

/// The close code stored as `code`, if any (0: none asked for).
fn code_of(code: u16) -> Option<CloseCode> {
    CloseCode::ALL
        .into_iter()
        .find(|known| known.code() == code)
}

impl OutboxReceiver {
    /// The next frame, or `Pending` (waking the task when one is queued). Cancel-safe.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Outbound> {
        if let Some(frame) = self.try_recv() {
            return Poll::Ready(frame);
        }
        self.shared.socket.register(cx.waker());
        // A frame queued between the look and the registration woke nobody: look again.
        let mut queue = self.shared.queue();
        match queue.pop_front() {
            Some(frame) => Poll::Ready(frame),
            None => {
                // An idle socket keeps no room from its last burst.
                *queue = VecDeque::new();
                Poll::Pending
            }
        }
    }

    /// Wakes this task when a frame is queued or a close is asked for.
    pub fn register(&self, waker: &std::task::Waker) {
        self.shared.socket.register(waker);
    }

    /// The code the session was asked to close with, if it was.
    pub fn close_requested(&self) -> Option<CloseCode> {
        code_of(self.shared.close_code.load(Ordering::Acquire))
    }

    /// A frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.queue().pop_front()
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.shared.queue().len()
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives `bytes` of payload back to the budget once written.
    pub fn written(&self, bytes: usize) {
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Drop for OutboxReceiver {
    /// Frames for a socket that is gone are dropped as they come, not kept by the rooms'
    /// handles until those let go.
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.queue().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_closes_a_slow_consumer_and_refills_as_frames_are_written() {
        let (outbox, mut rx) = Outbox::new(100, 1000);
        assert!(outbox.deliver(Outbound::text(vec![b'x'; 600])));
        assert!(
            outbox.deliver(Outbound::text(vec![b'x'; 400])),
            "at the budget"
        );
        assert!(outbox.close_code().is_none());
        assert!(!outbox.deliver(Outbound::text(vec![b'x'; 1])), "past it");
        assert_eq!(outbox.close_code(), Some(CloseCode::SlowConsumer));
        let first = rx.try_recv().unwrap();
        rx.written(first.len());
        assert!(
            outbox.deliver(Outbound::text(vec![b'x'; 600])),
            "room again"
        );
    }

    #[test]
    fn an_offer_stops_at_half_the_queue_and_never_closes() {
        let (outbox, _rx) = Outbox::new(4, 1000);
        assert!(outbox.offer(Outbound::text(vec![b'x'; 400])), "under half");
        assert!(
            !outbox.offer(Outbound::text(vec![b'x'; 200])),
            "past half the bytes"
        );
        assert!(outbox.offer(Outbound::text(vec![b'x'; 10])));
        assert!(
            !outbox.offer(Outbound::text(vec![b'x'; 10])),
            "half the frames"
        );
        assert_eq!(outbox.close_code(), None, "refused, never evicted");
        assert!(outbox.deliver(Outbound::text(vec![b'x'; 10])));
    }

    #[test]
    fn the_first_close_code_wins() {
        let (outbox, _rx) = Outbox::new(4, 1000);
        outbox.close(CloseCode::Banned);
        outbox.close(CloseCode::SlowConsumer);
        assert_eq!(outbox.close_code(), Some(CloseCode::Banned));
        assert!(!outbox.is_evicted());
    }
}
