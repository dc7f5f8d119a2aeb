//! Several Palisade nodes sharing rooms through a Redis the bench starts itself: a
//! `redis-server` child on a free loopback port (no persistence, its own scratch directory),
//! and gateways that join it with one shared token secret, so that a member may connect to any
//! node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::{self, Launch, Target};

/// A `redis-server` child process, killed (and its directory removed) when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<RedisServer> {
        let port = target::free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "palisade-bench-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start redis-server (is it installed and on PATH?)")?;
        let redis = RedisServer { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.command(&["PING"]).await.is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `used_memory` from `INFO memory`, in KiB: what Redis holds for the data, without the
    /// allocator's slack (its RSS is sampled beside it from /proc).
    pub async fn used_memory_kib(&self) -> anyhow::Result<u64> {
        let info = self.command(&["INFO", "memory"]).await?;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|bytes| bytes.trim().parse::<u64>().ok())
            .map(|bytes| bytes / 1024)
            .context("INFO memory has no used_memory")
    }

    /// Sends one command and returns its reply's text (a status or a bulk string; enough for
    /// PING and INFO, the only commands the bench sends).
    async fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .context("redis did not answer")??;
            if read == 0 {
                bail!("redis closed the connection");
            }
            reply.extend_from_slice(&buffer[..read]);
            if let Some(text) = complete_reply(&reply)? {
                return Ok(text);
            }
        }
    }
}

/// The text of a whole RESP status or bulk-string reply, or `None` while more is to come.
fn complete_reply(reply: &[u8]) -> anyhow::Result<Option<String>> {
    let Some(head_end) = reply.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&reply[..head_end])?;
    match head.as_bytes().first() {
        Some(b'+') => Ok(Some(head[1..].to_owned())),
        Some(b'-') => bail!("redis: {}", &head[1..]),
        Some(b'$') => {
            let len: usize = head[1..].parse()?;
            let body = &reply[head_end + 2..];
            Ok((body.len() >= len + 2).then(|| String::from_utf8_lossy(&body[..len]).into_owned()))
        }
        _ => bail!("unexpected redis reply {head:?}"),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Palisade nodes sharing one Redis the bench started. The nodes are dropped (killed) before
/// the Redis they use.
pub struct Nodes {
    pub nodes: Vec<Target>,
    pub redis: RedisServer,
}

impl Nodes {
    /// Starts a Redis, then `count` gateways as `launch` says, all joined to it and verifying
    /// tokens with one secret.
    pub async fn start(binary: &Path, count: usize, launch: &Launch<'_>) -> anyhow::Result<Nodes> {
        let redis = RedisServer::start().await?;
        let url = redis.url();
        let secret = target::random_secret();
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let launch = Launch {
                redis: Some(&url),
                secret: Some(&secret),
                ..launch.clone()
            };
            nodes.push(Target::palisade(binary, &launch).await?);
        }
        Ok(Nodes { nodes, redis })
    }

    pub fn refs(&self) -> Vec<&Target> {
        self.nodes.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_whole_only_with_its_last_byte() {
        assert_eq!(
            complete_reply(b"+PONG\r\n").unwrap().as_deref(),
            Some("PONG")
        );
        assert_eq!(complete_reply(b"$5\r\nab").unwrap(), None);
        assert_eq!(
            complete_reply(b"$5\r\nabcde\r\n").unwrap().as_deref(),
            Some("abcde")
        );
        assert!(complete_reply(b"-ERR no\r\n").is_err());
    }
}
