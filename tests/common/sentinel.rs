//! A Sentinel deployment of the test's own: a master, a replica, and three Sentinels that
//! watch the master under the name `test-master`, all on free ports, with failover periods
//! short enough that killing the master promotes the replica in a few seconds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::free_port;
use super::redis::RedisServer;
use super::tls::TestCa;

/// The master's name the Sentinels monitor.
pub(crate) const MASTER: &str = "test-master";

/// How long the Sentinels wait before calling the master down.
pub(crate) const DOWN_AFTER_MS: u64 = 1000;

/// The passwords of a trio that wants them.
#[derive(Clone, Copy)]
pub(crate) struct Passwords {
    /// `requirepass` on the master and the replica (and `masterauth` between them).
    pub redis: &'static str,
    /// `requirepass` on the Sentinels (and `sentinel-pass` between them).
    pub sentinel: &'static str,
}

pub(crate) struct SentinelTrio {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    passwords: Option<Passwords>,
    /// With TLS: the CA that signed every server's certificate.
    ca: Option<TestCa>,
    dir: tempfile::TempDir,
}

impl SentinelTrio {
    pub(crate) async fn start() -> SentinelTrio {
        Self::start_with(None, false).await
    }

    /// A trio whose Redis servers and Sentinels all want a password, and with `tls` speak TLS
    /// only (to each other too), with certificates from a test CA.
    pub(crate) async fn start_with(passwords: Option<Passwords>, tls: bool) -> SentinelTrio {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls.then(TestCa::new);
        let tls_conf: Vec<(String, String)> = ca
            .as_ref()
            .map(|ca| {
                let (cert, _, key) = ca.leaf("redis");
                let write = |name: &str, pem: &str| {
                    let path = dir.path().join(name);
                    std::fs::write(&path, pem).unwrap();
                    path.display().to_string()
                };
                vec![
                    ("tls-cert-file".to_owned(), write("redis.crt", &cert)),
                    ("tls-key-file".to_owned(), write("redis.key", &key)),
                    ("tls-ca-cert-file".to_owned(), write("ca.crt", &ca.pem())),
                    ("tls-auth-clients".to_owned(), "no".to_owned()),
                    ("tls-replication".to_owned(), "yes".to_owned()),
                ]
            })
            .unwrap_or_default();
        let tls_args: Vec<String> = tls_conf
            .iter()
            .flat_map(|(key, value)| [format!("--{key}"), value.clone()])
            .collect();
        let start = |args: Vec<String>| async move {
            if tls {
                RedisServer::start_tls(&args).await
            } else {
                RedisServer::start_with(&args).await
            }
        };
        let mut auth: Vec<String> = passwords
            .map(|p| {
                ["--requirepass", p.redis, "--masterauth", p.redis]
                    .map(str::to_owned)
                    .to_vec()
            })
            .unwrap_or_default();
        auth.extend(tls_args);
        // The replica's first sync at once (the default waits 5 s for more replicas).
        auth.extend(["--repl-diskless-sync-delay".to_owned(), "0".to_owned()]);
        let master = start(auth.clone()).await;
        let mut replica_args = auth;
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ]);
        let replica = start(replica_args).await;
        let listen: String = if tls {
            tls_conf
                .iter()
                .map(|(key, value)| format!("{key} {value}\n"))
                .collect()
        } else {
            String::new()
        };
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let port = free_port();
            // Sentinel rewrites its file: each gets its own, in the test's directory.
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "{ports}bind 127.0.0.1\ndir {dir}\n{listen}\
                     sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n{auth}",
                    ports = if tls {
                        format!("port 0\ntls-port {port}\n")
                    } else {
                        format!("port {port}\n")
                    },
                    dir = dir.path().display(),
                    master = master.port(),
                    auth = passwords
                        .map(|p| format!(
                            "sentinel auth-pass {MASTER} {}\nrequirepass {}\nsentinel sentinel-pass {}\n",
                            p.redis, p.sentinel, p.sentinel
                        ))
                        .unwrap_or_default(),
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
            passwords,
            ca,
            dir,
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

    /// With TLS, a file holding the CA's certificate (a `REDIS_TLS_CA_FILE`).
    pub(crate) fn ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("trusted-ca.crt");
        std::fs::write(&path, self.ca.as_ref().expect("a TLS trio").pem()).unwrap();
        path
    }

    /// A connection to the Sentinel on `port`.
    async fn sentinel(&self, port: u16) -> Option<redis::aio::MultiplexedConnection> {
        self.connection(port, self.passwords.map(|p| p.sentinel))
            .await
    }

    /// A connection to the server on `port` (a Sentinel, the master, the replica).
    async fn connection(
        &self,
        port: u16,
        password: Option<&str>,
    ) -> Option<redis::aio::MultiplexedConnection> {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        let client = match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://{auth}127.0.0.1:{port}/"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem().into_bytes()),
                },
            ),
            None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")),
        }
        .ok()?;
        client.get_multiplexed_async_connection().await.ok()
    }

    /// Asks a Sentinel to fail over now, the master alive (it becomes a replica).
    pub(crate) async fn fail_over(&self) {
        let mut conn = self
            .sentinel(self.sentinels[0].0)
            .await
            .expect("a Sentinel");
        let _: () = redis::cmd("SENTINEL")
            .arg("failover")
            .arg(MASTER)
            .query_async(&mut conn)
            .await
            .expect("the Sentinel starts a failover");
    }

    /// The master's port as the first Sentinel that answers reports it.
    pub(crate) async fn master_port(&self) -> Option<u16> {
        for (port, _) in &self.sentinels {
            let Some(mut conn) = self.sentinel(*port).await else {
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

    /// Waits until the replica is in sync and every Sentinel knows it and the other two, so
    /// that a failover can promote it with the data.
    async fn wait_until_watched(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        'wait: loop {
            assert!(
                Instant::now() < deadline,
                "the replica never synced, or the Sentinels never saw it and each other"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let replica = self
                .connection(self.replica.port(), self.passwords.map(|p| p.redis))
                .await;
            let Some(mut replica) = replica else {
                continue 'wait;
            };
            let info: Result<String, _> = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica)
                .await;
            if !info.is_ok_and(|info| info.contains("master_link_status:up")) {
                continue 'wait;
            }
            for (port, _) in &self.sentinels {
                let Some(mut conn) = self.sentinel(*port).await else {
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
