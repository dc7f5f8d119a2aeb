//! Many rooms per user: what a user in `rooms_per_user` rooms costs the server when one
//! protocol v2 socket carries them all, against one GarinChat socket per room (what a
//! frontend pays without v2). Each layout runs on a fresh Palisade, the same users in the same
//! rooms, every socket idle once joined.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::Ws;
use crate::procfs;
use crate::progress::Progress;
use crate::target::Target;

#[derive(Clone, Debug, Serialize)]
pub struct RoomsConfig {
    pub users: usize,
    pub rooms_per_user: usize,
    /// Members of each room.
    pub room_size: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    pub settle_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoomsResult {
    /// `v2` (one socket per user) or `v1` (one socket per room).
    pub layout: &'static str,
    pub users: usize,
    pub sockets_held: usize,
    pub memberships: usize,
    pub failed: usize,
    /// Server RSS growth per user, from before the first socket to all joined.
    pub rss_per_user_kib: f64,
    /// Kernel memory per user: queued buffers and socket structures per socket (as in
    /// capacity: the growth over every socket opened, both ends counted), times the user's
    /// sockets.
    pub kernel_per_user_kib: Option<f64>,
}

impl RoomsConfig {
    /// The rooms of user `user`: `rooms_per_user` distinct rooms, each shared with
    /// `room_size - 1` other users.
    fn rooms_of(&self, user: usize) -> Vec<String> {
        (0..self.rooms_per_user)
            .map(|k| format!("mr{}", (k * self.users + user) / self.room_size))
            .collect()
    }
}

/// Holds every user's rooms on `target` in `layout` and measures what they cost.
pub async fn run(
    target: &Target,
    config: &RoomsConfig,
    v2: bool,
    progress: &Progress,
) -> anyhow::Result<RoomsResult> {
    let layout = if v2 { "v2" } else { "v1" };
    let baseline = target.sample().unwrap_or_default();
    let kernel_baseline = procfs::KernelSockets::now().await;
    let held = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let sockets_per_user = if v2 { 1 } else { config.rooms_per_user };
    let sockets = config.users * sockets_per_user;
    let mut tasks = Vec::with_capacity(sockets);
    for user in 0..config.users {
        let name = format!("mr{user}");
        let token = target.signer.token(&name);
        let rooms = config.rooms_of(user);
        let groups: Vec<Vec<String>> = if v2 {
            vec![rooms]
        } else {
            rooms.into_iter().map(|room| vec![room]).collect()
        };
        for group in groups {
            let permit = Arc::clone(&permits).acquire_owned().await?;
            let (dialer, token, user) = (Arc::clone(&target.dialer), token.clone(), name.clone());
            let (held, failed, stop) = (Arc::clone(&held), Arc::clone(&failed), stop.clone());
            tasks.push(tokio::spawn(async move {
                let joined = if v2 {
                    dialer.joined_v2(&user, &token, &group).await
                } else {
                    dialer.joined(&user, &token, &group[0]).await
                };
                drop(permit);
                let Ok(ws) = joined else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                held.fetch_add(1, Ordering::Relaxed);
                idle(ws, stop).await;
            }));
        }
        progress.set(format!(
            "rooms {layout}: {} of {sockets} sockets joined",
            held.load(Ordering::Relaxed)
        ));
    }
    while held.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < sockets {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(config.settle_secs)).await;
    let top = target.sample().unwrap_or_default();
    let kernel = procfs::KernelSockets::now()
        .await
        .per_socket_since(&kernel_baseline);
    let sockets_held = held.load(Ordering::Relaxed);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let per_user = |total: u64| total as f64 / config.users.max(1) as f64;
    Ok(RoomsResult {
        layout,
        users: config.users,
        sockets_held,
        memberships: sockets_held * if v2 { config.rooms_per_user } else { 1 },
        failed: failed.load(Ordering::Relaxed),
        rss_per_user_kib: per_user(top.rss_kib.saturating_sub(baseline.rss_kib)),
        kernel_per_user_kib: kernel
            .buffers_kib
            .zip(kernel.slab_kib)
            .map(|(buffers, slab)| (buffers + slab) * sockets_per_user as f64),
    })
}

/// Keeps a socket open and answering pings until `stop`.
async fn idle(mut ws: Ws, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) {
                return;
            },
        }
    }
}
