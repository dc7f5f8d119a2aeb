//! The read side of a socket: bytes in, whole messages and control events out.
//!
//! Readiness-driven and cancel-safe: [`FrameReader::poll_next`] reads into a buffer lent for
//! that one read (on the polling thread's stack) and keeps, between reads, only bytes it could
//! not use yet: the start of a frame that has not fully arrived, or frames behind the one it
//! returned. An idle socket holds no read buffer at all, and because nothing is lost when a
//! poll is dropped, the session polls it in the same `select!` as everything else, with no
//! task of its own.
//!
//! It enforces RFC 6455 as a server must: the header rules ([`head`]), the message size across
//! fragments, a fragment-count cap, continuation rules, UTF-8 across fragments, and valid close
//! payloads.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, ReadBuf};

use super::head::{self, Head, MAX_CONTROL_PAYLOAD};
use crate::protocol::{is_valid_peer_close_code, CloseCode};

/// The most one read takes from the socket. Lent from the stack of the thread that polls, so
/// it costs an idle socket nothing.
const READ_CHUNK: usize = 8192;

/// What the reader hands to the session. Boxed payloads keep it small.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A whole text message, valid UTF-8, within the size limit.
    Text(Box<str>),
    /// A whole binary message (the gateway refuses it; the conformance echo returns it).
    Binary(Box<[u8]>),
    /// A ping, with its payload to echo.
    Ping(Box<[u8]>),
    /// A pong, with its payload (which must echo our ping's to count as an answer).
    Pong(Box<[u8]>),
    /// The client's close frame: its code, or `None` for an empty close payload.
    Close(Option<u16>),
    /// The client broke a framing rule; the session closes with this code.
    Violation(CloseCode),
    /// The connection ended without a close frame (EOF, reset, I/O error).
    Gone,
}

impl Inbound {
    /// After these, nothing more is parsed from the socket.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Inbound::Close(_) | Inbound::Violation(_) | Inbound::Gone
        )
    }
}

/// Limits the reader enforces.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// The largest message, summed over its fragments.
    pub max_message_bytes: usize,
    /// The most fragments in one message.
    pub max_fragments: usize,
}

/// Reads frames and assembles messages from a stream it is lent at each poll.
pub(crate) struct FrameReader {
    /// Bytes read and not yet used, from `start` on. Unallocated whenever all were used.
    buffered: Vec<u8>,
    start: usize,
    assembler: Assembler,
}

impl FrameReader {
    /// A reader enforcing `limits`, starting with `early`: bytes that arrived with the upgrade
    /// request (a client may send its first frames without waiting for the 101).
    pub(crate) fn new(limits: ReadLimits, early: Vec<u8>) -> Self {
        Self {
            buffered: early,
            start: 0,
            assembler: Assembler {
                limits,
                partial: None,
            },
        }
    }

    /// Bytes held for frames that have not fully arrived (or not been returned yet).
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.len() - self.start
    }

    /// The next event, reading from `stream` when the bytes held do not make one. Cancel-safe:
    /// whatever was read is kept. After a terminal event the caller stops polling.
    pub(crate) fn poll_next<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<Inbound> {
        loop {
            match self.next_buffered() {
                Ok(Some(event)) => return Poll::Ready(event),
                Ok(None) => {}
                Err(code) => return Poll::Ready(Inbound::Violation(code)),
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            if ready!(Pin::new(&mut *stream).poll_read(cx, &mut read)).is_err()
                || read.filled().is_empty()
            {
                return Poll::Ready(Inbound::Gone);
            }
            match self.take_read(read.filled_mut()) {
                Ok(Some(event)) => return Poll::Ready(event),
                Ok(None) => {}
                Err(code) => return Poll::Ready(Inbound::Violation(code)),
            }
        }
    }

    /// The next event from the bytes held, if they make one.
    fn next_buffered(&mut self) -> Result<Option<Inbound>, CloseCode> {
        while self.start < self.buffered.len() {
            let (event, used) = self.assembler.step(&mut self.buffered[self.start..])?;
            if used == 0 {
                break;
            }
            self.start += used;
            if event.is_some() {
                self.release_used();
                return Ok(event);
            }
        }
        self.release_used();
        Ok(None)
    }

    /// Uses a fresh read. When nothing was held (the usual case) its frames are parsed where
    /// they lie, and only what they leave over is copied.
    fn take_read(&mut self, read: &mut [u8]) -> Result<Option<Inbound>, CloseCode> {
        if self.buffered() > 0 {
            self.buffered.drain(..self.start);
            self.start = 0;
            self.buffered.extend_from_slice(read);
            return self.next_buffered();
        }
        let mut at = 0;
        let mut event = None;
        while event.is_none() && at < read.len() {
            let (next, used) = self.assembler.step(&mut read[at..])?;
            if used == 0 {
                break;
            }
            at += used;
            event = next;
        }
        self.hold(&read[at..]);
        Ok(event)
    }

    /// Keeps bytes for later, with room reserved for the rest of their frame when its header
    /// is in and within the budget (so a large frame grows its buffer once, not by doubling).
    /// These bytes may follow a frame that was returned before they were looked at: their
    /// header is judged here against the budget, never trusted.
    fn hold(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        let frame_len = match head::parse(rest, self.assembler.data_budget()) {
            Ok(Some(head)) => head.frame_len(),
            // Incomplete, or refused (which the next step reports): only what arrived.
            Ok(None) | Err(_) => rest.len(),
        };
        self.buffered.reserve_exact(frame_len.max(rest.len()));
        self.buffered.extend_from_slice(rest);
    }

    /// Frees the buffer once all of it is used (an idle socket holds none). A used front is
    /// left in place until more bytes come ([`FrameReader::take_read`] moves the rest down
    /// once per read), so returning many small frames from one read costs no copying each.
    fn release_used(&mut self) {
        if self.start == self.buffered.len() {
            self.buffered = Vec::new();
            self.start = 0;
        }
    }
}

/// A [`FrameReader`] that owns its stream: for tests, the fuzz targets and the conformance
/// echo, which read and nothing else.
pub struct MessageReader<S> {
    stream: S,
    frames: FrameReader,
}

impl<S: AsyncRead + Unpin> MessageReader<S> {
    /// A reader of `stream` (after the handshake), enforcing `limits`.
    pub fn new(stream: S, limits: ReadLimits) -> Self {
        Self {
            stream,
            frames: FrameReader::new(limits, Vec::new()),
        }
    }

    /// The next event. After a terminal one the caller stops reading.
    pub async fn next(&mut self) -> Inbound {
        poll_fn(|cx| self.frames.poll_next(cx, &mut self.stream)).await
    }
}

/// A message being reassembled from fragments.
struct Partial {
    is_text: bool,
    data: Vec<u8>,
    fragments: usize,
    /// How much of `data` is known to be valid UTF-8, so each fragment is checked once.
    utf8_checked: usize,
}

/// The framing rules and fragment reassembly, apart from the bytes (so a frame's borrow of
/// the buffer and this state do not overlap).
struct Assembler {
    limits: ReadLimits,
    /// Boxed: an idle socket carries a pointer, not the whole record.
    partial: Option<Box<Partial>>,
}

impl Assembler {
    /// Parses and applies the frame at the front of `bytes`: what it yields (`None` inside a
    /// fragmented message) and the bytes it used (0: the frame has not fully arrived).
    fn step(&mut self, bytes: &mut [u8]) -> Result<(Option<Inbound>, usize), CloseCode> {
        let Some(head) = head::parse(bytes, self.data_budget())? else {
            return Ok((None, 0));
        };
        let Some(frame) = bytes.get_mut(head.head_len..head.frame_len()) else {
            return Ok((None, 0));
        };
        fastwebsockets::unmask(frame, head.mask);
        Ok((self.accept(&head, frame), head.frame_len()))
    }

    /// What a data frame may still carry: the message budget less what its earlier fragments
    /// used.
    fn data_budget(&self) -> usize {
        let used = self
            .partial
            .as_ref()
            .map_or(0, |partial| partial.data.len());
        self.limits.max_message_bytes - used
    }

    /// Applies the rules that need the payload or the message so far.
    fn accept(&mut self, head: &Head, payload: &[u8]) -> Option<Inbound> {
        match head.opcode {
            OpCode::Close => Some(close_event(payload)),
            OpCode::Ping => Some(Inbound::Ping(Box::from(payload))),
            OpCode::Pong => Some(Inbound::Pong(Box::from(payload))),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    // A new data frame before the previous message finished.
                    return Some(Inbound::Violation(CloseCode::ProtocolError));
                }
                let is_text = head.opcode == OpCode::Text;
                if head.fin {
                    return Some(finish(is_text, payload.to_vec()));
                }
                self.partial = Some(Box::new(Partial {
                    is_text,
                    data: Vec::with_capacity(payload.len()),
                    fragments: 0,
                    utf8_checked: 0,
                }));
                self.append(payload, false)
            }
            OpCode::Continuation => {
                if self.partial.is_none() {
                    return Some(Inbound::Violation(CloseCode::ProtocolError));
                }
                self.append(payload, head.fin)
            }
        }
    }

    fn append(&mut self, payload: &[u8], fin: bool) -> Option<Inbound> {
        let partial = self
            .partial
            .as_mut()
            .expect("append needs a partial message");
        partial.fragments += 1;
        if partial.data.len() + payload.len() > self.limits.max_message_bytes
            || partial.fragments > self.limits.max_fragments
        {
            return Some(Inbound::Violation(CloseCode::MessageTooBig));
        }
        partial.data.extend_from_slice(payload);
        if partial.is_text && !fin {
            // Fail fast on invalid UTF-8 instead of after the last fragment; an incomplete
            // sequence at the end is fine until the next fragment arrives.
            match std::str::from_utf8(&partial.data[partial.utf8_checked..]) {
                Ok(_) => partial.utf8_checked = partial.data.len(),
                Err(err) if err.error_len().is_none() => partial.utf8_checked += err.valid_up_to(),
                Err(_) => return Some(Inbound::Violation(CloseCode::InvalidPayload)),
            }
        }
        if !fin {
            return None;
        }
        let partial = self.partial.take().expect("checked above");
        Some(finish(partial.is_text, partial.data))
    }
}

fn finish(is_text: bool, data: Vec<u8>) -> Inbound {
    if !is_text {
        return Inbound::Binary(data.into_boxed_slice());
    }
    match String::from_utf8(data) {
        Ok(text) => Inbound::Text(text.into_boxed_str()),
        Err(_) => Inbound::Violation(CloseCode::InvalidPayload),
    }
}

fn close_event(payload: &[u8]) -> Inbound {
    match payload {
        [] => Inbound::Close(None),
        [_] => Inbound::Violation(CloseCode::ProtocolError),
        _ if payload.len() > MAX_CONTROL_PAYLOAD => Inbound::Violation(CloseCode::ProtocolError),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !is_valid_peer_close_code(code) {
                Inbound::Violation(CloseCode::ProtocolError)
            } else if std::str::from_utf8(reason).is_err() {
                Inbound::Violation(CloseCode::InvalidPayload)
            } else {
                Inbound::Close(Some(code))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Poll;

    use tokio::io::AsyncWriteExt;

    use super::*;

    const LIMITS: ReadLimits = ReadLimits {
        max_message_bytes: 1 << 20,
        max_fragments: 16,
    };

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut bytes = vec![first];
        match payload.len() {
            len @ 0..=125 => bytes.push(0x80 | len as u8),
            len => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        bytes
    }

    /// One poll: the event, or `None` if the reader waits for bytes.
    async fn poll_once<S: AsyncRead + Unpin>(
        reader: &mut FrameReader,
        stream: &mut S,
    ) -> Option<Inbound> {
        poll_fn(|cx| {
            Poll::Ready(match reader.poll_next(cx, stream) {
                Poll::Ready(event) => Some(event),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_bytes_and_a_partial_frame_only_until_it_completes() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(LIMITS, Vec::new());
        let big = frame(0x81, &[b'x'; 40_000]);
        client.write_all(&big[..1000]).await.unwrap();
        assert_eq!(poll_once(&mut reader, &mut server).await, None);
        assert_eq!(reader.buffered(), 1000, "the frame's start is kept");
        assert!(
            reader.buffered.capacity() >= big.len(),
            "room for the whole frame is reserved once"
        );
        client.write_all(&big[1000..]).await.unwrap();
        let mut event = None;
        while event.is_none() {
            event = poll_once(&mut reader, &mut server).await;
        }
        assert_eq!(event, Some(Inbound::Text("x".repeat(40_000).into())));
        assert_eq!(
            reader.buffered.capacity(),
            0,
            "nothing held once it is whole"
        );

        // Two frames in one read: the second is kept until asked for, then released.
        let mut two = frame(0x89, b"p");
        two.extend(frame(0x81, b"hi"));
        client.write_all(&two).await.unwrap();
        assert_eq!(
            poll_once(&mut reader, &mut server).await,
            Some(Inbound::Ping(Box::from(&b"p"[..])))
        );
        assert!(reader.buffered() > 0);
        assert_eq!(
            poll_once(&mut reader, &mut server).await,
            Some(Inbound::Text("hi".into()))
        );
        assert_eq!(reader.buffered.capacity(), 0);
        assert_eq!(poll_once(&mut reader, &mut server).await, None, "idle");
        assert_eq!(reader.buffered.capacity(), 0);
    }

    #[tokio::test]
    async fn a_header_behind_a_returned_frame_is_judged_before_anything_is_reserved() {
        // An empty ping, then a header promising 2^50 bytes, in one read: the ping is returned
        // first, and the header must not be taken at its word while it waits.
        let mut bytes = frame(0x89, b"");
        bytes.extend_from_slice(&[0x82, 0xFF, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        let mut reader = FrameReader::new(LIMITS, Vec::new());
        let mut stream: &[u8] = &bytes;
        assert_eq!(
            poll_once(&mut reader, &mut stream).await,
            Some(Inbound::Ping(Box::from(&b""[..])))
        );
        assert!(
            reader.buffered.capacity() < 64,
            "nothing reserved on its word"
        );
        assert_eq!(
            poll_once(&mut reader, &mut stream).await,
            Some(Inbound::Violation(CloseCode::MessageTooBig))
        );
    }

    #[tokio::test]
    async fn bytes_that_came_with_the_upgrade_are_read_first() {
        let early = frame(0x81, b"early");
        let mut reader = FrameReader::new(LIMITS, early);
        let mut stream: &[u8] = &frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(
            poll_once(&mut reader, &mut stream).await,
            Some(Inbound::Text("early".into()))
        );
        assert_eq!(
            poll_once(&mut reader, &mut stream).await,
            Some(Inbound::Close(Some(1000)))
        );
    }
}
