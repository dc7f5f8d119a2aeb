//! A redis-server of the test's own, on a free port, that the test may kill and restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Arguments beyond the port and persistence ones (TLS, replication).
    extra: Vec<String>,
    /// Serves TLS only (`--tls-port`, `--port 0`): readiness is a TCP connect, not a PING.
    tls: bool,
}

impl RedisServer {
    /// Starts `redis-server` (which must be installed: the test fails, never skips, without it).
    pub(crate) async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts one with these extra arguments (`--replicaof`, …).
    pub(crate) async fn start_with(extra: &[String]) -> RedisServer {
        let mut server = RedisServer {
            port: super::http::free_port(),
            child: None,
            extra: extra.to_vec(),
            tls: false,
        };
        server.restart().await;
        server
    }

    /// Starts one that speaks TLS only, with `--tls-*` arguments from the test
    /// (`--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`, `--tls-auth-clients`).
    pub(crate) async fn start_tls(tls_args: &[String]) -> RedisServer {
        let port = super::http::free_port();
        let mut extra = vec!["--tls-port".to_owned(), port.to_string()];
        extra.extend_from_slice(tls_args);
        let mut server = RedisServer {
            port,
            child: None,
            extra,
            tls: true,
        };
        server.restart().await;
        server
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server abruptly (SIGKILL): clients see their connections reset.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`; a paused server must be thawed to die.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and data stays, but nothing answers,
    /// as with a network partition or a stalled host.
    pub(crate) fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on a child we spawned, with a valid signal, has no memory effects.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    }

    /// Starts it again on the same port, empty (it keeps nothing on disk).
    pub(crate) async fn restart(&mut self) {
        self.kill();
        let plain_port = if self.tls { 0 } else { self.port };
        let child = Command::new("redis-server")
            .args(["--port", &plain_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping().await {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs one command on the server (to play a part Palisade's nodes would, or break one).
    pub(crate) async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis answers");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn)
            .await
            .expect("the command succeeds")
    }

    /// Waits until `count` members of `room` are written to its presence hash. A node writes
    /// its members' presence in the background, after their `join` is answered; another
    /// node's `totalUsers` (and room cap) counts what is written, or what it hears later.
    pub(crate) async fn wait_for_members(&self, room: &str, count: usize) {
        let key = format!("palisade:members:{room}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let written: usize = self.command(&["HLEN", &key]).await;
            if written >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{written} of {count} members of {room} written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if self.tls {
            return true;
        }
        // A server with `requirepass` answers `-NOAUTH…`: up all the same.
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").await.is_ok()
            && stream.read_exact(&mut reply).await.is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Short broker periods, so that outages and expiries play out in seconds.
pub(crate) fn broker_settings(redis: &RedisServer) -> Vec<(&'static str, String)> {
    let mut settings = vec![("REDIS_URL", redis.url())];
    settings.extend(short_periods());
    settings
}

/// The short broker periods alone, for a node that reaches Redis another way (a proxy,
/// Sentinel, TLS).
pub(crate) fn short_periods() -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_KEY_TTL_SECS", "3".into()),
        ("REDIS_TIMEOUT_MS", "500".into()),
        ("REDIS_CANARY_INTERVAL_MS", "200".into()),
        ("REDIS_RECONNECT_MAX_MS", "400".into()),
    ]
}

pub(crate) async fn node_with(redis: &RedisServer, extra: &[(&str, &str)]) -> super::TestServer {
    let settings = broker_settings(redis);
    let mut pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(extra);
    let node = super::TestServer::with(&pairs).await;
    node.wait_ready().await;
    node
}

/// Starts a gateway child process on the test's Redis (one a test can SIGKILL) and waits
/// until it is ready.
pub(crate) async fn child_node(
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> super::child::Gateway {
    let settings = broker_settings(redis);
    let mut pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pairs.extend_from_slice(extra);
    let node = super::child::Gateway::start(&pairs).await;
    node.wait_ready().await;
    node
}

pub(crate) async fn node(redis: &RedisServer) -> super::TestServer {
    node_with(redis, &[]).await
}

/// A node with the short periods and `pairs` (how it reaches Redis, and anything else), once
/// it is ready.
pub(crate) async fn node_reaching(pairs: &[(&str, &str)]) -> super::TestServer {
    let periods = short_periods();
    let mut all: Vec<(&str, &str)> = periods.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(pairs);
    let node = super::TestServer::with(&all).await;
    node.wait_ready().await;
    node
}
