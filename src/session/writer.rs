//! The write side of a socket: the one writer, draining the socket's [`Outbox`] queue.
//!
//! Each frame is one write on the socket (fastwebsockets writes a frame at a time; `flush` is
//! there for buffered transports). The close frame is requested through a oneshot rather than
//! the queue, because the queue may be full (a slow consumer). After the close frame the
//! writer shuts down its side of the TCP connection: the server is the one to close TCP, as
//! RFC 6455 prefers, while the reader still hears the client's answer.
//!
//! [`Outbox`]: crate::outbox::Outbox

use fastwebsockets::{
    after_handshake_split, Frame, OpCode, Payload, Role, WebSocketError, WebSocketWrite,
};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::outbox::{Outbound, OutboxReceiver};

/// The close frame the session wants sent.
#[derive(Clone, Copy, Debug)]
pub struct CloseRequest {
    /// `None` sends an empty close payload (the echo of a client's empty close).
    pub code: Option<u16>,
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
    let closed = {
        // fastwebsockets makes a write half only together with a read half; ours is separate
        // (see `reader`), so this one reads from nothing and is dropped.
        let (_, ws) = after_handshake_split(tokio::io::empty(), &mut stream, Role::Server);
        write_until_closed(ws, outbox, close, metrics.as_deref()).await?
    };
    if closed {
        stream.shutdown().await?;
    }
    Ok(())
}

/// Writes queued frames until a close is requested; true once the close frame is written.
async fn write_until_closed<S: AsyncWrite + Unpin>(
    mut ws: WebSocketWrite<S>,
    mut outbox: OutboxReceiver,
    mut close: oneshot::Receiver<CloseRequest>,
    metrics: Option<&Metrics>,
) -> Result<bool, WebSocketError> {
    let request = loop {
        tokio::select! {
            biased;
            request = &mut close => break request,
            item = outbox.queue.recv() => match item {
                Some(item) => {
                    if let Some(metrics) = metrics {
                        metrics.outbound_queue_depth.observe((outbox.queue.len() + 1) as f64);
                    }
                    write(&mut ws, item, metrics).await?;
                    if outbox.queue.is_empty() {
                        ws.flush().await?;
                    }
                }
                // Every sender is gone, but the session may still be about to ask for the
                // close frame: wait for its word rather than end without one.
                None => break (&mut close).await,
            },
        }
    };
    let Ok(request) = request else {
        return Ok(false);
    };
    if request.drain {
        while let Ok(item) = outbox.queue.try_recv() {
            write(&mut ws, item, metrics).await?;
        }
    }
    let frame = match request.code {
        Some(code) => Frame::close(code, request.reason.as_bytes()),
        None => Frame::close_raw(Payload::Borrowed(&[])),
    };
    ws.write_frame(frame).await?;
    ws.flush().await?;
    Ok(true)
}

async fn write<S: AsyncWrite + Unpin>(
    ws: &mut WebSocketWrite<S>,
    item: Outbound,
    metrics: Option<&Metrics>,
) -> Result<(), WebSocketError> {
    if let (Outbound::Text(_, created), Some(metrics)) = (&item, metrics) {
        // Observed as the frame is handed to the socket: queueing included, the kernel not.
        metrics.observe_fanout(created.elapsed());
    }
    let frame = match &item {
        Outbound::Text(bytes, _) => Frame::text(Payload::Borrowed(bytes)),
        Outbound::Pong(bytes) => Frame::pong(Payload::Borrowed(bytes)),
        Outbound::Ping => Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])),
        Outbound::Binary(bytes) => Frame::binary(Payload::Borrowed(bytes)),
    };
    ws.write_frame(frame).await
}
