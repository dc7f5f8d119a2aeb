//! The ceiling: the least a broadcast server can do over hyper and fastwebsockets. No auth, no
//! JSON, no limits: a socket joins the room named in its path (`/room/{name}`), and every text
//! frame it sends goes, as is, to the room's other members through a bounded per-socket queue
//! (a full queue drops the frame). Its writer sends everything queued in one write, as
//! Palisade's does, so that the ceiling is the same I/O without the protocol. Whatever
//! Palisade costs on top is measured against this.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Frames queued per socket (as Palisade's default `OUTBOUND_QUEUE_FRAMES`).
const QUEUE: usize = 256;

#[derive(Default)]
struct Rooms {
    rooms: RwLock<HashMap<String, HashMap<u64, mpsc::Sender<Bytes>>>>,
    next_id: AtomicU64,
}

impl Rooms {
    fn join(&self, room: &str, queue: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.rooms.write().expect("never poisoned");
        rooms.entry(room.to_owned()).or_default().insert(id, queue);
        id
    }

    fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.write().expect("never poisoned");
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn broadcast(&self, room: &str, sender: u64, frame: &Bytes) {
        let rooms = self.rooms.read().expect("never poisoned");
        if let Some(members) = rooms.get(room) {
            for (id, queue) in members {
                if *id != sender {
                    let _ = queue.try_send(frame.clone());
                }
            }
        }
    }
}

/// Serves until the process is killed.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let rooms = Arc::new(Rooms::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, most likely: wait for some to close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let rooms = Arc::clone(&rooms);
        tokio::spawn(async move {
            let service = service_fn(move |request| upgrade(request, Arc::clone(&rooms)));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn upgrade(
    mut request: Request<Incoming>,
    rooms: Arc<Rooms>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let room = request
        .uri()
        .path()
        .strip_prefix("/room/")
        .unwrap_or("default")
        .to_owned();
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        if let Ok(ws) = upgrade.await {
            member(ws, room, rooms).await;
        }
    });
    Ok(response)
}

async fn member(
    ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    room: String,
    rooms: Arc<Rooms>,
) {
    let (queue, mut outgoing) = mpsc::channel::<Bytes>(QUEUE);
    let id = rooms.join(&room, queue);
    let (mut read, mut write_half) = tokio::io::split(ws.into_inner());
    let writer = tokio::spawn(async move {
        let mut head = [0u8; 14];
        while let Some(first) = outgoing.recv().await {
            let mut bytes = Vec::new();
            let queued = std::iter::from_fn(|| outgoing.try_recv().ok()).take(63);
            for frame in std::iter::once(first).chain(queued) {
                let mut frame = Frame::text(Payload::Borrowed(&frame));
                let head_len = frame.fmt_head(&mut head);
                bytes.extend_from_slice(&head[..head_len]);
                bytes.extend_from_slice(&frame.payload);
            }
            if write_half.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let (mut read, _) = fastwebsockets::after_handshake_split(
        &mut read,
        tokio::io::sink(),
        fastwebsockets::Role::Server,
    );
    loop {
        let frame = read
            .read_frame(&mut |_| async { Ok::<(), Infallible>(()) })
            .await;
        match frame {
            Ok(frame) if frame.opcode == OpCode::Text => {
                rooms.broadcast(&room, id, &Bytes::copy_from_slice(&frame.payload));
            }
            Ok(frame) if frame.opcode == OpCode::Close => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    rooms.leave(&room, id);
    writer.abort();
}
