//! A TCP proxy between a gateway and Redis that a test can make deaf: the connections it
//! carries stay open and answer every command (`PING` included), but Pub/Sub messages from
//! Redis are no longer passed on. That is a subscriber that "works" and receives nothing, as
//! after a proxy or failover that lost the subscription.
//!
//! It can also lose one answer: armed with the words of a command, it holds the replies on the
//! connection that sends it for a while, past the gateway's `REDIS_TIMEOUT_MS`, as a timeout or
//! a dropped connection would after Redis had done what was asked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct DeafeningProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Connections are numbered from 1 as they are accepted.
    accepted: AtomicU64,
    /// Connections numbered up to this one drop Pub/Sub messages.
    deaf_up_to: AtomicU64,
    /// The words a command must carry to have its replies held, and for how long.
    hold: Mutex<Option<(Vec<Vec<u8>>, Duration)>>,
    /// How many times replies were held.
    held: AtomicU64,
}

impl DeafeningProxy {
    /// Listens on a free port and forwards to `redis`.
    pub(crate) async fn start(redis: SocketAddr) -> DeafeningProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(redis).await else {
                    continue;
                };
                tokio::spawn(carry(client, server, number, Arc::clone(&shared)));
            }
        });
        DeafeningProxy { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Every connection, open now or later, drops Pub/Sub messages.
    pub(crate) fn deafen_every_connection(&self) {
        self.state.deaf_up_to.store(u64::MAX, Ordering::SeqCst);
    }

    /// Every connection passes everything on again.
    pub(crate) fn hear_again(&self) {
        self.state.deaf_up_to.store(0, Ordering::SeqCst);
    }

    /// The next command sent with all of `words` has the replies on its connection held for
    /// `hold`: its answer is lost to the gateway, not its effect.
    pub(crate) fn hold_replies_after(&self, words: &[&str], hold: Duration) {
        let words = words.iter().map(|word| word.as_bytes().to_vec()).collect();
        *self.state.hold.lock().unwrap() = Some((words, hold));
    }

    /// How many times replies were held.
    pub(crate) fn holds(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Every connection open now stops passing Pub/Sub messages on; later ones are healthy.
    pub(crate) fn deafen_open_connections(&self) {
        let accepted = self.state.accepted.load(Ordering::SeqCst);
        self.state.deaf_up_to.store(accepted, Ordering::SeqCst);
    }
}

impl Drop for DeafeningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    /// If one command in `sent` carries all the armed words: disarms, counts, and says how
    /// long to hold.
    fn fire(&self, mut sent: &[u8]) -> Option<Duration> {
        let mut hold = self.hold.lock().unwrap();
        let (words, _) = hold.as_ref()?;
        let mut armed = false;
        while !sent.is_empty() && !armed {
            // A command cut by the read is looked at as far as it came.
            let command = &sent[..frame_len(sent).unwrap_or(sent.len())];
            armed = words
                .iter()
                .all(|word| command.windows(word.len()).any(|at| at == &word[..]));
            sent = &sent[command.len()..];
        }
        if !armed {
            return None;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        hold.take().map(|(_, duration)| duration)
    }
}

async fn carry(client: TcpStream, server: TcpStream, number: u64, state: Arc<State>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Until when this connection's replies are held, once a command armed for sets it.
    let held_until: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let upstream = tokio::spawn({
        let (state, held_until) = (Arc::clone(&state), Arc::clone(&held_until));
        async move {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(read) = client_read.read(&mut chunk).await {
                if read == 0 {
                    break;
                }
                let sent = &chunk[..read];
                if let Some(duration) = state.fire(sent) {
                    *held_until.lock().unwrap() = Some(tokio::time::Instant::now() + duration);
                }
                if server_write.write_all(sent).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(read) = server_read.read(&mut chunk).await {
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..read]);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(len) = frame_len(&pending[at..]) {
            let frame = &pending[at..at + len];
            let deaf = number <= state.deaf_up_to.load(Ordering::SeqCst);
            if !(deaf && is_message(frame)) {
                out.extend_from_slice(frame);
            }
            at += len;
        }
        pending.drain(..at);
        let until = *held_until.lock().unwrap();
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        if client_write.write_all(&out).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// Whether a RESP frame is a Pub/Sub message push (`message`, `pmessage`, `smessage`).
fn is_message(frame: &[u8]) -> bool {
    [
        &b"*3\r\n$7\r\nmessage\r\n"[..],
        b">3\r\n$7\r\nmessage\r\n",
        b"*4\r\n$8\r\npmessage\r\n",
        b">4\r\n$8\r\npmessage\r\n",
        b"*3\r\n$8\r\nsmessage\r\n",
        b">3\r\n$8\r\nsmessage\r\n",
    ]
    .iter()
    .any(|start| frame.starts_with(start))
}

/// The length of the complete RESP2/RESP3 frame at the start of `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after_line = line_end + 2;
    match buf.first()? {
        b'$' | b'!' | b'=' => {
            let len: i64 = header.parse().ok()?;
            if len < 0 {
                return Some(after_line);
            }
            let end = after_line + len as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        kind @ (b'*' | b'>' | b'~' | b'%' | b'|') => {
            let count: i64 = header.parse().ok()?;
            let items = if matches!(kind, b'%' | b'|') {
                count * 2
            } else {
                count
            };
            let mut at = after_line;
            for _ in 0..items.max(0) {
                at += frame_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => Some(after_line),
    }
}
