//! The write side of a socket: the one writer, draining the socket's [`Outbox`] queue.
//!
//! Frames are written into a buffer and flushed once the queue is momentarily empty, so a
//! burst of fan-out costs one syscall rather than one per frame. The close frame is requested
//! through a oneshot rather than the queue, because the queue may be full (a slow consumer).
//!
//! [`Outbox`]: crate::outbox::Outbox

use fastwebsockets::{
    after_handshake_split, Frame, OpCode, Payload, Role, WebSocketError, WebSocketWrite,
};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use crate::outbox::{Outbound, OutboxReceiver};

/// Frames written between two flushes at most, so a busy room cannot starve a close request.
const MAX_BATCH: usize = 64;

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

pub async fn run<S: AsyncWrite + Unpin>(
    stream: S,
    mut outbox: OutboxReceiver,
    mut close: oneshot::Receiver<CloseRequest>,
) -> Result<(), WebSocketError> {
    // fastwebsockets makes a write half only together with a read half; ours is separate (see
    // `reader`), so this one reads from nothing and is dropped.
    let (_, mut ws) = after_handshake_split(tokio::io::empty(), stream, Role::Server);
    loop {
        tokio::select! {
            biased;
            request = &mut close => {
                let Ok(request) = request else { return Ok(()) };
                if request.drain {
                    while let Ok(item) = outbox.queue.try_recv() {
                        write(&mut ws, item).await?;
                    }
                }
                let frame = match request.code {
                    Some(code) => Frame::close(code, request.reason.as_bytes()),
                    None => Frame::close_raw(Payload::Borrowed(&[])),
                };
                ws.write_frame(frame).await?;
                return ws.flush().await;
            }
            item = outbox.queue.recv() => {
                let Some(item) = item else { return Ok(()) };
                write(&mut ws, item).await?;
                for _ in 1..MAX_BATCH {
                    match outbox.queue.try_recv() {
                        Ok(item) => write(&mut ws, item).await?,
                        Err(_) => break,
                    }
                }
                ws.flush().await?;
            }
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(
    ws: &mut WebSocketWrite<S>,
    item: Outbound,
) -> Result<(), WebSocketError> {
    let frame = match &item {
        Outbound::Text(bytes) => Frame::text(Payload::Borrowed(bytes)),
        Outbound::Pong(bytes) => Frame::pong(Payload::Borrowed(bytes)),
        Outbound::Ping => Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])),
        Outbound::Binary(bytes) => Frame::binary(Payload::Borrowed(bytes)),
    };
    ws.write_frame(frame).await
}
