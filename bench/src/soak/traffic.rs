//! The soak's load, all of it on real sockets spread over the nodes: rooms with members that
//! check every message by offset and senders that chat, sessions that come and go (churn),
//! joins that ask for the last messages (history), and clients that break the rules (abuse).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::offsets::{ack_offset, history_whole, OffsetCheck};
use crate::client::{Dialer, Ws};
use crate::tokens::Signer;

/// Past messages a history join asks for.
const HISTORY_ASKED: u64 = 20;

/// Where the load goes: one dialer per node, and the signer they all accept.
#[derive(Clone)]
pub struct Load {
    pub dialers: Vec<Arc<Dialer>>,
    pub signer: Signer,
}

impl Load {
    fn dialer(&self, n: usize) -> &Dialer {
        &self.dialers[n % self.dialers.len()]
    }
}

pub fn room_name(room: usize) -> String {
    format!("soak{room}")
}

/// How the side traffic goes (everything but the checked chat), counted as it runs.
#[derive(Debug, Default)]
pub struct SideCounts {
    pub churn_sessions: AtomicU64,
    pub churn_failed: AtomicU64,
    pub history_joins: AtomicU64,
    /// History joins whose past messages were not consecutive up to the acknowledgement.
    pub history_broken: AtomicU64,
    pub history_failed: AtomicU64,
    pub abuse_sent: AtomicU64,
    /// Abusive clients the server answered with a close (or an error frame).
    pub abuse_answered: AtomicU64,
}

/// [`SideCounts`] at the end.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SideTotals {
    pub churn_sessions: u64,
    pub churn_failed: u64,
    pub history_joins: u64,
    pub history_broken: u64,
    pub history_failed: u64,
    pub abuse_sent: u64,
    pub abuse_answered: u64,
}

impl SideCounts {
    pub fn totals(&self) -> SideTotals {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SideTotals {
            churn_sessions: read(&self.churn_sessions),
            churn_failed: read(&self.churn_failed),
            history_joins: read(&self.history_joins),
            history_broken: read(&self.history_broken),
            history_failed: read(&self.history_failed),
            abuse_sent: read(&self.abuse_sent),
            abuse_answered: read(&self.abuse_answered),
        }
    }
}

/// A room member that reads until stopped and checks what it gets.
pub struct Member {
    pub room: usize,
    check: OffsetCheck,
    stream: SplitStream<Ws>,
}

/// What a member saw, when stopped.
#[derive(Clone, Debug)]
pub struct MemberReport {
    pub room: usize,
    pub check: OffsetCheck,
    /// The server closed this member's socket.
    pub closed: bool,
}

/// Joins `count` checking members to each of `rooms` rooms, alternating over the nodes, and
/// one sender per node in each room. Returns the members and each room's senders.
pub async fn join_rooms(
    load: &Load,
    rooms: usize,
    count: usize,
) -> anyhow::Result<(Vec<Member>, Vec<Vec<SplitSink<Ws, Message>>>)> {
    let mut members = Vec::new();
    let mut senders = Vec::new();
    for room in 0..rooms {
        for index in 0..count {
            let user = format!("soak{room}m{index}");
            let token = load.signer.token(&user);
            let (ws, ack) = load
                .dialer(index)
                .joined_with(&user, &token, &room_name(room), Some(0))
                .await?;
            let (_, stream) = ws.split();
            members.push(Member {
                room,
                check: OffsetCheck::new(ack_offset(&ack)),
                stream,
            });
        }
        let mut room_senders = Vec::new();
        for node in 0..load.dialers.len() {
            let user = format!("soak{room}s{node}");
            let token = load.signer.token(&user);
            let ws = load
                .dialer(node)
                .joined(&user, &token, &room_name(room))
                .await?;
            let (sink, stream) = ws.split();
            // A sender reads too (the other sender's messages), or it would be evicted as a
            // slow consumer; what it reads is not checked.
            tokio::spawn(stream.for_each(|_| async {}));
            room_senders.push(sink);
        }
        senders.push(room_senders);
    }
    Ok((members, senders))
}

impl Member {
    pub fn spawn(mut self, stop: CancellationToken) -> JoinHandle<MemberReport> {
        tokio::spawn(async move {
            let closed = loop {
                let frame = tokio::select! {
                    _ = stop.cancelled() => break false,
                    frame = self.stream.next() => frame,
                };
                match frame {
                    Some(Ok(Message::Text(text))) => self.check.frame(&text),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    Some(Ok(_)) => {}
                }
            };
            MemberReport {
                room: self.room,
                check: self.check,
                closed,
            }
        })
    }
}

/// Chats at `per_sec` messages per second in all, the rooms' senders in turn; counts what each
/// room was sent. Stops when `stop` is cancelled.
pub fn spawn_chat(
    mut senders: Vec<Vec<SplitSink<Ws, Message>>>,
    per_sec: f64,
    sent: Arc<Vec<AtomicU64>>,
    failed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let senders_per_room = senders.first().map_or(1, Vec::len);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let room = seq as usize % senders.len();
            let sender = (seq as usize / senders.len()) % senders_per_room;
            let body = format!("soak {room} {seq}");
            let frame = serde_json::json!({"type": "message", "body": body}).to_string();
            seq += 1;
            match senders[room][sender].send(Message::text(frame)).await {
                Ok(()) => {
                    sent[room].fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Runs `step` about `per_sec` times a second (one at a time) until stopped.
fn every<F, Fut>(per_sec: f64, stop: CancellationToken, mut step: F) -> JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = step(n) => {}
            }
            n += 1;
        }
    })
}

/// Sessions that connect, join one of the chat rooms as a GarinChat client, stay a moment and
/// close.
pub fn spawn_churn(
    load: Load,
    rooms: usize,
    per_sec: f64,
    counts: Arc<SideCounts>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    every(per_sec, stop, move |n| {
        let (load, counts) = (load.clone(), Arc::clone(&counts));
        async move {
            let user = format!("soakchurn{}", n % 64);
            let token = load.signer.token(&user);
            let room = room_name(n as usize % rooms);
            match load.dialer(n as usize).joined(&user, &token, &room).await {
                Ok(mut ws) => {
                    counts.churn_sessions.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
                    let _ = ws.close(None).await;
                }
                Err(_) => {
                    counts.churn_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Joins that ask for the last messages of a chat room: they must come whole, consecutive up
/// to the acknowledgement's offset.
pub fn spawn_history(
    load: Load,
    rooms: usize,
    per_sec: f64,
    counts: Arc<SideCounts>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    every(per_sec, stop, move |n| {
        let (load, counts) = (load.clone(), Arc::clone(&counts));
        async move {
            let user = format!("soakhistory{}", n % 16);
            let token = load.signer.token(&user);
            let room = room_name(n as usize % rooms);
            let dialer = load.dialer(n as usize);
            let Ok((mut ws, ack)) = dialer
                .joined_with(&user, &token, &room, Some(HISTORY_ASKED))
                .await
            else {
                counts.history_failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let ack = ack_offset(&ack);
            let wanted = ack.min(HISTORY_ASKED) as usize;
            let mut offsets = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while offsets.len() < wanted {
                    let Some(Ok(Message::Text(text))) = ws.next().await else {
                        break;
                    };
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if frame["type"] == "message" && frame["history"] == true {
                        offsets.extend(frame["offset"].as_u64());
                    }
                }
            })
            .await;
            counts.history_joins.fetch_add(1, Ordering::Relaxed);
            if !history_whole(&offsets, ack, HISTORY_ASKED) {
                counts.history_broken.fetch_add(1, Ordering::Relaxed);
            }
            let _ = ws.close(None).await;
        }
    })
}

/// Clients that break the rules in turn: a forged token, a frame that is not JSON after auth,
/// a message past `MAX_MESSAGE_BYTES`, a message before any join. Each must be answered
/// (closed, or refused with an error frame) without touching anyone else.
pub fn spawn_abuse(
    load: Load,
    per_sec: f64,
    counts: Arc<SideCounts>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    every(per_sec, stop, move |n| {
        let (load, counts) = (load.clone(), Arc::clone(&counts));
        async move {
            let user = format!("soakabuse{}", n % 16);
            let token = load.signer.token(&user);
            let dialer = load.dialer(n as usize);
            counts.abuse_sent.fetch_add(1, Ordering::Relaxed);
            if abuse(dialer, &user, &token, n % 4).await.unwrap_or(false) {
                counts.abuse_answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// One abusive client of kind `kind`; true if the server answered it within 5 s.
async fn abuse(dialer: &Dialer, user: &str, token: &str, kind: u64) -> anyhow::Result<bool> {
    let auth = |token: &str| serde_json::json!({"type": "auth", "body": token}).to_string();
    let mut ws = match kind {
        0 => {
            let mut ws = dialer.raw().await?;
            ws.send(Message::text(auth("eyJhbGciOiJIUzI1NiJ9.e30.forged")))
                .await?;
            ws
        }
        1 => {
            let mut ws = dialer.raw().await?;
            ws.send(Message::text(auth(token))).await?;
            ws.send(Message::text("{not json")).await?;
            ws
        }
        2 => {
            let mut ws = dialer.joined(user, token, "soakabuse").await?;
            let body = "x".repeat(8 * 1024);
            let frame = serde_json::json!({"type": "message", "body": body}).to_string();
            ws.send(Message::text(frame)).await?;
            ws
        }
        _ => {
            let mut ws = dialer.raw().await?;
            ws.send(Message::text(auth(token))).await?;
            ws.send(Message::text(r#"{"type":"message","body":"early"}"#))
                .await?;
            ws
        }
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"error""#) => return true,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    Ok(answered)
}
