//! A WebSocket connection after its handshake: frames in, queued frames out, and the close
//! handshake, all driven from the one task of its session.
//!
//! Both directions are readiness-driven and cancel-safe ([`reader`], [`writer`]), so one
//! future, [`Socket::next`], writes what the [`Outbox`](crate::outbox::Outbox) holds as the
//! socket takes it and returns the next thing the client sent, or the close someone asked for
//! through the outbox; while the session handles a request, [`Socket::writing_while`] keeps
//! the writes going. The session awaits it in its
//! `select!` beside its timers and signals; an idle socket costs that one task, a parked
//! waker, and no buffer in either direction.

mod head;
pub(crate) mod reader;
pub(crate) mod writer;

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;
use crate::outbox::{Outbound, OutboxReceiver};
use crate::protocol::CloseCode;
use reader::{FrameReader, Inbound, ReadLimits};
use writer::{CloseRequest, FrameWriter};

/// Frames written together at most (the queue holds `OUTBOUND_QUEUE_FRAMES`).
const BATCH_FRAMES: usize = 64;

/// The bytes discarded per read after a framing violation, lent from the stack.
const DISCARD_CHUNK: usize = 4096;

/// What a socket has for its session.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Something the client sent.
    Client(Inbound),
    /// Someone asked the session to close with this code (a ban, a kick, a slow consumer's
    /// full queue, the gateway shutting down).
    Closing(CloseCode),
}

/// One upgraded connection.
pub struct Socket<S> {
    stream: S,
    reader: FrameReader,
    writer: FrameWriter,
    outbox: OutboxReceiver,
    /// Observes queue depth and fan-out delay, when given.
    metrics: Option<Arc<Metrics>>,
    /// The client broke a framing rule: what it sends cannot be parsed any more.
    violated: bool,
    /// A write failed: nothing more is written.
    write_failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A socket over `stream`, which may have sent `early` bytes with its upgrade request,
    /// writing what `outbox` receives.
    pub fn new(
        stream: S,
        early: Vec<u8>,
        limits: ReadLimits,
        outbox: OutboxReceiver,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            stream,
            reader: FrameReader::new(limits, early),
            writer: FrameWriter::default(),
            outbox,
            metrics,
            violated: false,
            write_failed: false,
        }
    }

    /// The next thing the client sent or a request to close, writing queued frames meanwhile.
    /// Cancel-safe. After a terminal event ([`Inbound::is_terminal`]) or `Closing`, only
    /// [`Socket::close`] may follow.
    pub async fn next(&mut self) -> Event {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // Registered first, whatever the socket does below: a close asked for while the
        // writer waits on a client that does not read must still wake the session.
        self.outbox.register(cx.waker());
        if let Some(code) = self.outbox.close_requested() {
            return Poll::Ready(Event::Closing(code));
        }
        // A failed write ends nothing by itself: what the client sent before it went (its close
        // frame, say) is still read, and the read then finds the connection gone.
        let _ = self.poll_send(cx);
        let event = std::task::ready!(self.reader.poll_next(cx, &mut self.stream));
        self.violated = matches!(event, Inbound::Violation(_));
        Poll::Ready(Event::Client(event))
    }

    /// Runs `work` (a request's handling, which may wait on other nodes or an identity
    /// provider) while writing what is queued meanwhile: the socket must not stop draining its
    /// queue, or a busy room would push a client that reads fine out as a slow consumer. What
    /// the client sends waits; a write error is left for the next read to find.
    pub async fn writing_while<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            let _ = self.poll_send(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// Writes queued frames until the queue is empty or the socket would block (its
    /// writability then wakes the task).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.write_failed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        loop {
            if !self.writer.is_idle() {
                match self.writer.poll_write(cx, &mut self.stream) {
                    Poll::Ready(Ok(written)) => self.outbox.written(written),
                    Poll::Ready(Err(err)) => {
                        self.write_failed = true;
                        return Err(err);
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            match self.outbox.poll_recv(cx) {
                Poll::Ready(first) => self.lay_out(first),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Lays out `first` and what is queued behind it, up to a batch.
    fn lay_out(&mut self, first: Outbound) {
        if let Some(metrics) = &self.metrics {
            metrics
                .outbound_queue_depth
                .observe((self.outbox.len() + 1) as f64);
        }
        let queued = std::iter::from_fn(|| self.outbox.try_recv());
        for item in std::iter::once(first).chain(queued.take(BATCH_FRAMES - 1)) {
            if let (Outbound::Text(text), Some(metrics)) = (&item, &self.metrics) {
                // Observed as the frame is laid out for the socket: queueing included, the
                // kernel not.
                metrics.observe_fanout(text.created.elapsed());
            }
            self.writer.push(&item);
        }
    }

    /// The close handshake, within `timeout`: the close frame (after what is queued, if
    /// `request.drain`), our side of TCP shut down (the server is the one to close TCP, as RFC
    /// 6455 prefers); then, when `await_answer` (the server closed first), the client's answer
    /// is awaited. After a framing violation nothing can be parsed: input is read and dropped
    /// until the client closes, because closing with unread input makes the kernel send a
    /// reset, which can destroy our close frame before the client reads it.
    pub async fn close(&mut self, request: CloseRequest, await_answer: bool, timeout: Duration) {
        let handshake = async {
            if request.drain {
                while let Some(item) = self.outbox.try_recv() {
                    self.writer.push(&item);
                }
            }
            self.writer.push_close(&request);
            if poll_fn(|cx| self.writer.poll_write(cx, &mut self.stream))
                .await
                .is_err()
            {
                return;
            }
            let _ = poll_fn(|cx| Pin::new(&mut self.stream).poll_shutdown(cx)).await;
            if !await_answer {
                return;
            }
            if self.violated {
                poll_fn(|cx| self.poll_discard(cx)).await;
                return;
            }
            while !poll_fn(|cx| self.reader.poll_next(cx, &mut self.stream))
                .await
                .is_terminal()
            {}
        };
        let _ = tokio::time::timeout(timeout, handshake).await;
    }

    /// Reads and drops input until EOF or an error.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut chunk = [MaybeUninit::<u8>::uninit(); DISCARD_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => {}
                _ => return Poll::Ready(()),
            }
        }
    }
}
