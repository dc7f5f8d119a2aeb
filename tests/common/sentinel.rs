//! A Sentinel deployment of the test's own: a master, a replica, and three Sentinels that
//! watch the master under the name `test-master`, all on free ports, with failover periods
//! short enough that killing the master promotes the replica in a few seconds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::free_port;
use super::redis::RedisServer;

/// The master's name the Sentinels monitor.
pub(crate) const MASTER: &str = "test-master";

/// How long the Sentinels wait before calling the master down.
pub(crate) const DOWN_AFTER_MS: u64 = 1000;

pub(crate) struct SentinelTrio {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

impl SentinelTrio {
    pub(crate) async fn start() -> SentinelTrio {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with(&[
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let port = free_port();
            // Sentinel rewrites its file: each gets its own, in the test's directory.
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display(),
                    master = master.port(),
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (it runs Sentinels too)");
            sentinels.push((port, child));
        }
        let trio = SentinelTrio {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        trio.wait_until_watched().await;
        trio
    }

    /// `REDIS_SENTINELS`: every Sentinel's `host:port`.
    pub(crate) fn addresses(&self) -> String {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the first Sentinel that answers reports it.
    pub(crate) async fn master_port(&self) -> Option<u16> {
        for (port, _) in &self.sentinels {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let reply: Result<Vec<String>, _> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query_async(&mut conn)
                .await;
            if let Some(port) = reply.ok().and_then(|addr| addr.get(1)?.parse().ok()) {
                return Some(port);
            }
        }
        None
    }

    /// Waits until every Sentinel knows the replica and the other two, so that a failover can
    /// promote it.
    async fn wait_until_watched(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "the Sentinels never saw the replica and each other"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (port, _) in &self.sentinels {
                let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                    continue 'wait;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    continue 'wait;
                };
                let replicas: Result<Vec<redis::Value>, _> = redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg(MASTER)
                    .query_async(&mut conn)
                    .await;
                let peers: Result<Vec<redis::Value>, _> = redis::cmd("SENTINEL")
                    .arg("sentinels")
                    .arg(MASTER)
                    .query_async(&mut conn)
                    .await;
                if replicas.map_or(true, |replicas| replicas.is_empty())
                    || peers.map_or(true, |peers| peers.len() < 2)
                {
                    continue 'wait;
                }
            }
            return;
        }
    }
}

impl Drop for SentinelTrio {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
