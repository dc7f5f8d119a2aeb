//! The write side of a socket: frames laid out into one buffer and written as the socket
//! takes them.
//!
//! Whatever is queued when the socket is polled goes out in one write: under load a socket's
//! frames leave in one system call instead of one each. The buffer exists only while bytes
//! wait for the kernel; an idle socket holds none. Frames are laid out by fastwebsockets
//! ([`Frame::fmt_head`]); a server's frames are not masked, so header and payload are all
//! there is.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWrite;

use super::head::MAX_HEAD;
use crate::outbox::Outbound;

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

/// Frames laid out and not yet written.
#[derive(Default)]
pub(crate) struct FrameWriter {
    /// Unwritten bytes, from `written` on. Unallocated whenever all were written.
    bytes: Vec<u8>,
    written: usize,
    /// The payload bytes of the frames in `bytes`: what the outbox's budget gets back once
    /// they are written.
    payload: usize,
    /// Written but maybe not yet flushed out of a TLS layer.
    unflushed: bool,
}

impl FrameWriter {
    /// Whether bytes wait to be written.
    pub(crate) fn is_idle(&self) -> bool {
        self.bytes.is_empty() && !self.unflushed
    }

    /// Lays a frame out behind those waiting.
    pub(crate) fn push(&mut self, item: &Outbound) {
        self.payload += item.len();
        let mut frame = match item {
            Outbound::Text(text) => Frame::text(Payload::Borrowed(&text.bytes)),
            Outbound::Pong(pong) => Frame::pong(Payload::Borrowed(&pong.bytes)),
            Outbound::Ping(ping) => {
                Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&ping.bytes))
            }
            Outbound::Binary(binary) => Frame::binary(Payload::Borrowed(&binary.bytes)),
        };
        self.append(&mut frame);
    }

    /// Lays the close frame out behind those waiting.
    pub(crate) fn push_close(&mut self, request: &CloseRequest) {
        let mut frame = match request.code {
            Some(code) => Frame::close(code, request.reason.as_bytes()),
            None => Frame::close_raw(Payload::Borrowed(&[])),
        };
        self.append(&mut frame);
    }

    fn append(&mut self, frame: &mut Frame<'_>) {
        let mut head = [0u8; MAX_HEAD];
        let head_len = frame.fmt_head(&mut head);
        self.bytes.reserve(head_len + frame.payload.len());
        self.bytes.extend_from_slice(&head[..head_len]);
        self.bytes.extend_from_slice(&frame.payload);
    }

    /// Writes what waits until the socket would block (`Pending`) or all of it is out and
    /// flushed: then the payload bytes written since the last time, for the outbox's budget.
    /// Cancel-safe: what was written is remembered.
    pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<std::io::Result<usize>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *stream).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        if !self.bytes.is_empty() {
            self.bytes = Vec::new();
            self.written = 0;
        }
        if self.unflushed {
            ready!(Pin::new(&mut *stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(std::mem::take(&mut self.payload)))
    }
}
