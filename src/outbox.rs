//! A socket's outbound queue: bounded, never awaited by anyone but the socket's own writer.
//!
//! Fan-out calls [`Outbox::deliver`], which never blocks: when the queue is full the socket is
//! a slow consumer, and instead of waiting (which would slow the whole room) the outbox is
//! marked evicted; the socket's session sees that and closes it with
//! [`CloseCode::SlowConsumer`](crate::protocol::CloseCode::SlowConsumer).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the writer task writes, in order. Small (a pointer and a tag), because every socket's
/// queue holds a block of them from the start.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text frame, shared between all recipients of a broadcast.
    Text(Arc<SharedPayload>),
    /// The reply to a client's ping (at most 125 bytes).
    Pong(Arc<SharedPayload>),
    /// A keepalive ping.
    Ping,
    /// A binary frame (the gateway sends none; the framing layer supports them for its
    /// conformance tests).
    Binary(Arc<SharedPayload>),
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

impl Outbound {
    /// A text frame made now.
    pub fn text(bytes: impl Into<Bytes>) -> Outbound {
        Outbound::Text(SharedPayload::new(bytes))
    }
}

/// The sending side of a socket's queue, cheap to clone into a room.
#[derive(Clone, Debug)]
pub struct Outbox {
    queue: mpsc::Sender<Outbound>,
    evicted: CancellationToken,
}

/// The receiving side, owned by the writer task.
pub struct OutboxReceiver {
    pub queue: mpsc::Receiver<Outbound>,
}

impl Outbox {
    /// A queue of `capacity` frames: the sending side for rooms, the receiving side for the writer.
    pub fn new(capacity: usize) -> (Outbox, OutboxReceiver) {
        let (queue, receiver) = mpsc::channel(capacity);
        let outbox = Outbox {
            queue,
            evicted: CancellationToken::new(),
        };
        (outbox, OutboxReceiver { queue: receiver })
    }

    /// Queues a frame without waiting. A full queue evicts the socket; a closed one (the
    /// session already ended) drops the frame silently.
    pub fn deliver(&self, frame: Outbound) -> bool {
        match self.queue.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.evicted.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Resolves once a delivery found the queue full.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Whether a delivery found the queue full.
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }
}
