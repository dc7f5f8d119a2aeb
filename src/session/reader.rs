//! The read side of a socket: frames in, whole messages and control events out.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so it runs in its own task that owns the
//! read half and hands [`Inbound`] events to the session through a bounded channel (the session
//! only ever `select!`s over cancel-safe branches). Its automatic close and pong replies are off:
//! the session owns every write. On top of fastwebsockets this layer enforces what it leaves
//! open: the message size across fragments, a fragment-count cap, continuation rules, UTF-8
//! across fragments, control-frame sizes, and valid close codes.

use std::convert::Infallible;

use fastwebsockets::{after_handshake_split, Frame, OpCode, Role, WebSocketError, WebSocketRead};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::{is_valid_peer_close_code, CloseCode};

/// Control frames carry at most 125 bytes of payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// What the reader hands to the session. Boxed payloads keep it small: the queue between
/// reader and session holds a block of these for every socket.
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
    /// After these, nothing more is read from the socket.
    fn is_terminal(&self) -> bool {
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

/// A message being reassembled from fragments.
struct Partial {
    is_text: bool,
    data: Vec<u8>,
    fragments: usize,
    /// How much of `data` is known to be valid UTF-8, so each fragment is checked once.
    utf8_checked: usize,
}

/// Reads frames and assembles messages.
pub struct MessageReader<S> {
    ws: WebSocketRead<S>,
    assembler: Assembler,
}

/// The framing rules and fragment reassembly, apart from I/O (so the frame's borrow of the
/// read buffer and this state do not overlap).
struct Assembler {
    limits: ReadLimits,
    partial: Option<Partial>,
}

impl<S: AsyncRead + Unpin> MessageReader<S> {
    /// A reader of `stream` (after the handshake), enforcing `limits`.
    pub fn new(stream: S, limits: ReadLimits) -> Self {
        // fastwebsockets makes a read half only together with a write half; ours is separate
        // (see `writer`), so this one writes to nowhere and is dropped.
        let (mut ws, _) = after_handshake_split(stream, tokio::io::sink(), Role::Server);
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        Self {
            ws,
            assembler: Assembler {
                limits,
                partial: None,
            },
        }
    }

    /// The next event. After a terminal one ([`Inbound::Close`], `Violation`, `Gone`) the
    /// caller stops reading.
    pub async fn next(&mut self) -> Inbound {
        loop {
            // fastwebsockets refuses a frame whose declared length is `>=` this before it
            // buffers the payload; inside a fragmented message only what is left of the budget
            // may come (or a control frame, at most 125 bytes).
            let budget = match &self.assembler.partial {
                None => self.assembler.limits.max_message_bytes,
                Some(partial) => (self.assembler.limits.max_message_bytes - partial.data.len())
                    .max(MAX_CONTROL_PAYLOAD),
            };
            self.ws.set_max_message_size(budget.saturating_add(1));
            let frame = match self
                .ws
                .read_frame(&mut |_| async { Ok::<(), Infallible>(()) })
                .await
            {
                Ok(frame) => frame,
                Err(err) => return error_event(err),
            };
            if let Some(event) = self.assembler.accept(frame) {
                return event;
            }
        }
    }
}

impl Assembler {
    /// Applies the framing rules to one frame; `None` when a message is still incomplete.
    fn accept(&mut self, frame: Frame<'_>) -> Option<Inbound> {
        let payload: &[u8] = &frame.payload;
        match frame.opcode {
            OpCode::Close => Some(close_event(payload)),
            OpCode::Ping if payload.len() <= MAX_CONTROL_PAYLOAD => {
                Some(Inbound::Ping(Box::from(payload)))
            }
            OpCode::Pong if payload.len() <= MAX_CONTROL_PAYLOAD => {
                Some(Inbound::Pong(Box::from(payload)))
            }
            OpCode::Ping | OpCode::Pong => Some(Inbound::Violation(CloseCode::ProtocolError)),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    // A new data frame before the previous message finished.
                    return Some(Inbound::Violation(CloseCode::ProtocolError));
                }
                let is_text = frame.opcode == OpCode::Text;
                if frame.fin {
                    return Some(finish(is_text, payload.to_vec()));
                }
                self.partial = Some(Partial {
                    is_text,
                    data: Vec::with_capacity(payload.len()),
                    fragments: 0,
                    utf8_checked: 0,
                });
                self.append(payload, false)
            }
            OpCode::Continuation => {
                if self.partial.is_none() {
                    return Some(Inbound::Violation(CloseCode::ProtocolError));
                }
                self.append(payload, frame.fin)
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

fn error_event(err: WebSocketError) -> Inbound {
    match err {
        WebSocketError::FrameTooLarge => Inbound::Violation(CloseCode::MessageTooBig),
        WebSocketError::InvalidUTF8 => Inbound::Violation(CloseCode::InvalidPayload),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => Inbound::Gone,
        // Reserved bits, reserved opcodes, fragmented control frames, oversized pings.
        _ => Inbound::Violation(CloseCode::ProtocolError),
    }
}

/// The sending side of the queue from the reader to the session.
pub struct EventSender(futures_channel::mpsc::Sender<Inbound>);

/// The receiving side, the session's.
pub struct EventReceiver(futures_channel::mpsc::Receiver<Inbound>);

/// The queue from the reader to the session, holding `buffer` events ahead (plus one: futures'
/// channel keeps a slot per sender). futures' bounded channel rather than tokio's: it allocates per event, where tokio's allocates a block of 32
/// slots up front, which every idle socket would carry.
pub fn events(buffer: usize) -> (EventSender, EventReceiver) {
    let (sender, receiver) = futures_channel::mpsc::channel(buffer);
    (EventSender(sender), EventReceiver(receiver))
}

impl EventSender {
    /// Waits for room, then queues; `Err` once the session stopped listening.
    pub async fn send(&mut self, event: Inbound) -> Result<(), ()> {
        self.0.send(event).await.map_err(drop)
    }
}

impl EventReceiver {
    /// The next event; `None` once the reader is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.0.next().await
    }
}

/// Runs the reader until a terminal event or until the session stops listening.
///
/// After a framing violation the rest of the stream cannot be parsed, but it is still read
/// and discarded until the client closes TCP (the session aborts this task after
/// `CLOSE_TIMEOUT_MS` at most): closing a socket with unread input makes the kernel send a
/// reset, which can destroy our close frame before the client reads it.
pub async fn run<S: AsyncRead + Unpin>(mut stream: S, limits: ReadLimits, mut events: EventSender) {
    let mut reader = MessageReader::new(&mut stream, limits);
    let violated = loop {
        let event = reader.next().await;
        let terminal = event.is_terminal();
        let violated = matches!(event, Inbound::Violation(_));
        if events.send(event).await.is_err() {
            return;
        }
        if terminal {
            break violated;
        }
    };
    drop(reader);
    if violated {
        // On the heap: an array here would be part of this task's state for its whole life.
        let mut discard = vec![0u8; 4096];
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
        let _ = events.send(Inbound::Gone).await;
    }
}
