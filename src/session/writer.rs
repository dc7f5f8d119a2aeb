//! The write side of a socket: the one writer, draining the socket's [`Outbox`] queue.
//!
//! Whatever is queued when the writer wakes goes out in one write: under load a socket's
//! frames leave in one system call instead of one each, and an idle socket holds no buffer
//! (each batch's is freed once written). Frames are laid out by fastwebsockets
//! ([`Frame::fmt_head`]); a server's frames are not masked, so header and payload are all
//! there is. The close frame is requested through a oneshot rather than the queue, because the
//! queue may be full (a slow consumer). After the close frame the writer shuts down its side
//! of the TCP connection: the server is the one to close TCP, as RFC 6455 prefers, while the
//! reader still hears the client's answer.
//!
//! [`Outbox`]: crate::outbox::Outbox

use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::outbox::{Outbound, OutboxReceiver};

/// Frames written together at most (the queue holds `OUTBOUND_QUEUE_FRAMES`).
const BATCH_FRAMES: usize = 64;
/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask (unused by a server).
const MAX_HEAD: usize = 14;

/// The close frame the session wants sent.
#[derive(Clone, Copy, Debug)]
pub struct CloseRequest {
    /// `None` sends an empty close payload (the echo of a client's empty close).
    pub code: Option<u16>,
    /// The close reason: static, never derived from input.
    pub reason: &'static str,
    /// Write what is already queued first (false for a slow consumer, whose queue is the
    /// problem).
    pub drain: bool,
}

/// Writes until the close frame; `metrics`, when given, observes queue depth and fan-out delay.
pub async fn run<S: AsyncWrite + Unpin>(
    mut stream: S,
    outbox: OutboxReceiver,
    close: oneshot::Receiver<CloseRequest>,
    metrics: Option<Arc<Metrics>>,
) -> Result<(), WebSocketError> {
    if write_until_closed(&mut stream, outbox, close, metrics.as_deref()).await? {
        stream.shutdown().await?;
    }
    Ok(())
}

/// Writes queued frames until a close is requested; true once the close frame is written.
async fn write_until_closed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut outbox: OutboxReceiver,
    mut close: oneshot::Receiver<CloseRequest>,
    metrics: Option<&Metrics>,
) -> Result<bool, WebSocketError> {
    let request = loop {
        tokio::select! {
            biased;
            request = &mut close => break request,
            first = outbox.recv() => {
                let Some(first) = first else {
                    // Every sender is gone, but the session may still be about to ask for the
                    // close frame: wait for its word rather than end without one.
                    break (&mut close).await;
                };
                if let Some(metrics) = metrics {
                    metrics
                        .outbound_queue_depth
                        .observe((outbox.len() + 1) as f64);
                }
                let queued = std::iter::from_fn(|| outbox.try_recv());
                let batch = std::iter::once(first).chain(queued.take(BATCH_FRAMES - 1));
                let written = write_batch(stream, batch, metrics).await?;
                outbox.written(written);
            }
        }
    };
    let Ok(request) = request else {
        return Ok(false);
    };
    if request.drain {
        let queued = std::iter::from_fn(|| outbox.try_recv());
        write_batch(stream, queued, metrics).await?;
    }
    let mut frame = match request.code {
        Some(code) => Frame::close(code, request.reason.as_bytes()),
        None => Frame::close_raw(Payload::Borrowed(&[])),
    };
    let mut bytes = Vec::with_capacity(MAX_HEAD + frame.payload.len());
    append(&mut bytes, &mut frame);
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(true)
}

/// Lays the frames out one after the other and writes them at once; returns their payload
/// bytes, for the outbox's budget.
async fn write_batch<S: AsyncWrite + Unpin>(
    stream: &mut S,
    items: impl Iterator<Item = Outbound>,
    metrics: Option<&Metrics>,
) -> Result<usize, WebSocketError> {
    let mut bytes = Vec::new();
    let mut payload = 0;
    for item in items {
        payload += item.len();
        if let (Outbound::Text(text), Some(metrics)) = (&item, metrics) {
            // Observed as the frame is handed to the socket: queueing included, the kernel not.
            metrics.observe_fanout(text.created.elapsed());
        }
        let mut frame = match &item {
            Outbound::Text(text) => Frame::text(Payload::Borrowed(&text.bytes)),
            Outbound::Pong(pong) => Frame::pong(Payload::Borrowed(&pong.bytes)),
            Outbound::Ping(ping) => {
                Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&ping.bytes))
            }
            Outbound::Binary(binary) => Frame::binary(Payload::Borrowed(&binary.bytes)),
        };
        append(&mut bytes, &mut frame);
    }
    if !bytes.is_empty() {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
    }
    Ok(payload)
}

/// Appends a server frame (unmasked: its header, then its payload) to `bytes`.
fn append(bytes: &mut Vec<u8>, frame: &mut Frame<'_>) {
    let mut head = [0u8; MAX_HEAD];
    let head_len = frame.fmt_head(&mut head);
    bytes.reserve(head_len + frame.payload.len());
    bytes.extend_from_slice(&head[..head_len]);
    bytes.extend_from_slice(&frame.payload);
}
