//! A Redis Cluster of the test's own: three masters with one replica each, six `redis-server`
//! processes on free ports, with a node timeout short enough that killing a master promotes
//! its replica in a few seconds; and the slot arithmetic and resharding a test needs to put a
//! key where it wants it, or move it while the gateway uses it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::http::free_port;
use super::redis::RedisServer;
use super::tls::TestCa;

/// The hash slots a key can fall in (`0..SLOTS`).
pub(crate) const SLOTS: u16 = 16384;

/// How long a node may not answer before the others call it failing
/// (`cluster-node-timeout`): a killed master's replica takes over two to three of these later
/// (the timeout, the failure report, the replica's election delay of half a second or more).
pub(crate) const NODE_TIMEOUT_MS: u64 = 1000;

/// How long the cluster may take to form, or to agree again after a migration: a loaded
/// two-core machine runs six servers and the tests.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// How long a promotion may take before the test fails.
const PROMOTION_LIMIT: Duration = Duration::from_secs(20);

/// The keys one `MIGRATE` moves.
const MIGRATE_BATCH: usize = 100;

pub(crate) struct RedisCluster {
    /// Declared before `dir`: dropping them kills the processes before their directories go.
    nodes: Vec<RedisServer>,
    /// The ports of the nodes a test killed.
    killed: HashSet<u16>,
    /// With TLS: the CA that signed every node's certificate.
    ca: Option<TestCa>,
    /// A connection to each node asked something, kept: a TLS handshake costs tens of
    /// milliseconds in a debug build, and the waits ask every node ten times a second.
    connections: Mutex<HashMap<u16, redis::aio::MultiplexedConnection>>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three masters and their replicas, plain TCP, and waits until every node says
    /// the cluster is ok and every slot is served. Fails (never skips) without `redis-server`
    /// or `redis-cli`.
    pub(crate) async fn start() -> RedisCluster {
        Self::start_with(false).await
    }

    /// Like [`start`](Self::start), speaking TLS only, to clients, replicas and on the cluster
    /// bus, with certificates from a test CA (see [`ca_file`](Self::ca_file)). Clients need
    /// no certificate of their own.
    pub(crate) async fn start_tls() -> RedisCluster {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls.then(TestCa::new);
        let tls_args = ca
            .as_ref()
            .map(|ca| tls_args(ca, dir.path()))
            .unwrap_or_default();
        let mut nodes = Vec::new();
        for n in 1..=6 {
            let node_dir = dir.path().join(format!("node-{n}"));
            std::fs::create_dir(&node_dir).unwrap();
            let mut args = node_args(&node_dir);
            args.extend_from_slice(&tls_args);
            nodes.push(if tls {
                RedisServer::start_tls(&args).await
            } else {
                RedisServer::start_with(&args).await
            });
        }
        let cluster = RedisCluster {
            nodes,
            killed: HashSet::new(),
            ca,
            connections: Mutex::default(),
            dir,
        };
        cluster.create().await;
        cluster
            .wait_for("the cluster to form", SETTLE_LIMIT, formed)
            .await;
        cluster
    }

    /// `REDIS_CLUSTER_NODES`: every node's `127.0.0.1:port`, killed ones too (the list a
    /// deployment configures once, whatever has happened to the nodes since).
    pub(crate) fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// With TLS, a file holding the CA's certificate (a `REDIS_TLS_CA_FILE`).
    pub(crate) fn ca_file(&self) -> PathBuf {
        assert!(self.ca.is_some(), "a TLS cluster (RedisCluster::start_tls)");
        self.dir.path().join("ca.crt")
    }

    /// The hash slot of `key`, as Redis computes it: CRC16 (XMODEM) modulo [`SLOTS`] of the
    /// key, or of its hash tag (what is between its first `{` and the next `}`, if anything
    /// is). Local, so that a test can choose keys before the cluster exists.
    pub(crate) fn slot_of(key: &str) -> u16 {
        let key = key.as_bytes();
        let hashed = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let tag = &key[open + 1..];
                let close = tag.iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &tag[..close])
            })
            .unwrap_or(key);
        crc16(hashed) % SLOTS
    }

    /// The port of the master serving `slot`, as a live node sees it.
    pub(crate) async fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.any_view().await;
        view.owner(slot)
            .unwrap_or_else(|| panic!("node {} knows no master for slot {slot}", view.port))
    }

    /// The ports of the masters serving slots, in order, as a live node sees them.
    pub(crate) async fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .any_view()
            .await
            .nodes
            .iter()
            .filter(|node| node.is_master() && !node.is_failing() && !node.slots.is_empty())
            .map(|node| node.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// Runs one command on the node on `port` (to look at where a key is, or break
    /// something); panics if it fails.
    pub(crate) async fn command<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        self.run(port, &cmd)
            .await
            .unwrap_or_else(|e| panic!("{args:?} on {port}: {e}"))
    }

    /// Kills the master serving `slot` (SIGKILL) and waits for its replica to take over (see
    /// [`wait_for_promotion`](Self::wait_for_promotion)); how long that took from the kill.
    pub(crate) async fn kill_master_of_slot(&mut self, slot: u16) -> Duration {
        let port = self.master_of_slot(slot).await;
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .expect("the master is one of ours")
            .kill();
        self.killed.insert(port);
        self.wait_for_promotion(slot).await
    }

    /// Waits until every live node says the cluster is ok and that the same live node now
    /// serves `slot` as master; how long that took. Panics after 20 s, with what the nodes
    /// last said.
    pub(crate) async fn wait_for_promotion(&self, slot: u16) -> Duration {
        let live: HashSet<u16> = self.live().collect();
        self.wait_for(
            &format!("a live master for slot {slot}"),
            PROMOTION_LIMIT,
            |views| {
                let owners: HashSet<Option<u16>> = views.iter().map(|v| v.owner(slot)).collect();
                views.iter().all(View::ok)
                    && owners.len() == 1
                    && owners
                        .iter()
                        .all(|owner| owner.is_some_and(|p| live.contains(&p)))
            },
        )
        .await
    }

    /// Moves `slot`, keys included, from its master to the master on `to` as
    /// `redis-cli --cluster reshard` would (which cannot be told which slot): the target
    /// imports, the source migrates, `MIGRATE` moves the keys in batches, then every master
    /// is told the new owner. Returns once every live node agrees and no slot is left open;
    /// how long it took.
    pub(crate) async fn migrate_slot(&self, slot: u16, to: u16) -> Duration {
        let started = Instant::now();
        let from = self.master_of_slot(slot).await;
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let from_id = self.id_of(from).await;
        let to_id = self.id_of(to).await;
        let slot_arg = slot.to_string();
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(&slot_arg).arg(state).arg(id);
            cmd
        };
        self.must::<()>(to, &setslot("IMPORTING", &from_id)).await;
        self.must::<()>(from, &setslot("MIGRATING", &to_id)).await;
        loop {
            let mut getkeys = redis::cmd("CLUSTER");
            getkeys.arg("GETKEYSINSLOT").arg(slot).arg(MIGRATE_BATCH);
            let keys: Vec<Vec<u8>> = self.must(from, &getkeys).await;
            if keys.is_empty() {
                break;
            }
            // Destination db 0 (the only one a cluster has), 5 s timeout; with `tls-cluster`
            // the source reaches the target over TLS.
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000);
            migrate.arg("KEYS").arg(keys);
            let _: redis::Value = self.must(from, &migrate).await;
        }
        // The target first (it takes a new epoch), then the source, then everyone else; the
        // replicas hear of it from their masters.
        let others = self
            .masters()
            .await
            .into_iter()
            .filter(|m| ![to, from].contains(m));
        let told: Vec<u16> = [to, from].into_iter().chain(others).collect();
        for master in told {
            self.must::<()>(master, &setslot("NODE", &to_id)).await;
        }
        self.wait_for(
            &format!("slot {slot} to move to {to}"),
            SETTLE_LIMIT,
            |views| {
                views
                    .iter()
                    .all(|v| v.ok() && v.owner(slot) == Some(to) && !v.has_open_slots())
            },
        )
        .await;
        started.elapsed()
    }

    /// `redis-cli --cluster create` on the six nodes: the first three become masters (slots in
    /// three equal ranges), each of the others a replica of one of them.
    async fn create(&self) {
        let mut args: Vec<String> = Vec::new();
        if self.ca.is_some() {
            args.extend(["--tls".to_owned(), "--cacert".to_owned()]);
            args.push(self.ca_file().display().to_string());
        }
        args.extend(["--cluster", "create"].map(str::to_owned));
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let output = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(&args)
                .stdin(Stdio::null())
                .output()
        })
        .await
        .unwrap()
        .expect("redis-cli is installed (apt install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    /// The ports of the nodes not killed.
    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .map(RedisServer::port)
            .filter(|port| !self.killed.contains(port))
    }

    async fn id_of(&self, port: u16) -> String {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("MYID");
        self.must(port, &cmd).await
    }

    /// Asks every live node what it sees until `settled` holds of all their answers; how
    /// long that took. Panics naming `what`, with what the nodes last said, after `limit`.
    async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        settled: impl Fn(&[View]) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let last = match self.views().await {
                Ok(views) if settled(&views) => return started.elapsed(),
                Ok(views) => views
                    .iter()
                    .map(View::summary)
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(error) => error,
            };
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; the nodes last said: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every live node's view, or why one could not be had.
    async fn views(&self) -> Result<Vec<View>, String> {
        let mut views = Vec::new();
        for port in self.live() {
            views.push(self.view(port).await?);
        }
        Ok(views)
    }

    /// The view of the first live node that answers.
    async fn any_view(&self) -> View {
        for port in self.live() {
            if let Ok(view) = self.view(port).await {
                return view;
            }
        }
        panic!("no live node of the cluster answers");
    }

    /// What the node on `port` says of the cluster.
    async fn view(&self, port: u16) -> Result<View, String> {
        let view = self.ask_view(port).await;
        if view.is_err() {
            self.forget(port);
        }
        view
    }

    async fn ask_view(&self, port: u16) -> Result<View, String> {
        let mut conn = self.connection(port).await?;
        let text = |args: &[&str]| {
            let mut cmd = redis::cmd(args[0]);
            cmd.arg(&args[1..]);
            cmd
        };
        let info: String = timed(port, text(&["CLUSTER", "INFO"]).query_async(&mut conn)).await?;
        let nodes: String = timed(port, text(&["CLUSTER", "NODES"]).query_async(&mut conn)).await?;
        let replication: String =
            timed(port, text(&["INFO", "replication"]).query_async(&mut conn)).await?;
        Ok(View {
            port,
            info,
            nodes: nodes.lines().filter_map(NodeEntry::parse).collect(),
            synced: !replication.contains("role:slave")
                || replication.contains("master_link_status:up"),
        })
    }

    /// Runs `cmd` on the node on `port`, panicking with the node's answer if it fails.
    async fn must<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        self.run(port, cmd).await.unwrap_or_else(|e| {
            let args: Vec<String> = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "<cursor>".to_owned(),
                })
                .collect();
            panic!("{} on {port}: {e}", args.join(" "))
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        port: u16,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut conn = self.connection(port).await?;
        let result = timed(port, cmd.query_async(&mut conn)).await;
        if result.is_err() {
            // The node may be dead, or the connection broken: the next command makes a new one.
            self.forget(port);
        }
        result
    }

    fn forget(&self, port: u16) {
        self.connections.lock().unwrap().remove(&port);
    }

    /// A connection to the node on `port` (over TLS, trusting the test CA alone, for a TLS
    /// cluster): a plain one, which follows no redirection. The one kept, or a new one.
    async fn connection(&self, port: u16) -> Result<redis::aio::MultiplexedConnection, String> {
        if let Some(conn) = self.connections.lock().unwrap().get(&port) {
            return Ok(conn.clone());
        }
        let conn = self.connect(port).await?;
        self.connections.lock().unwrap().insert(port, conn.clone());
        Ok(conn)
    }

    async fn connect(&self, port: u16) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}/"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem().into_bytes()),
                },
            ),
            None => redis::Client::open(format!("redis://127.0.0.1:{port}/")),
        }
        .map_err(|e| e.to_string())?;
        timed(port, client.get_multiplexed_async_connection()).await
    }
}

/// The arguments every node starts with (beyond RedisServer's port, bind and no persistence).
fn node_args(dir: &Path) -> Vec<String> {
    [
        ("cluster-enabled", "yes".to_owned()),
        // Each node rewrites its own; `dir` keeps anything else it writes out of the cwd.
        (
            "cluster-config-file",
            dir.join("nodes.conf").display().to_string(),
        ),
        ("dir", dir.display().to_string()),
        // The bus's default port (the client port + 10 000) can pass 65 535 from the
        // ephemeral range free ports come from.
        ("cluster-port", free_port().to_string()),
        ("cluster-node-timeout", NODE_TIMEOUT_MS.to_string()),
        // A replica may take over however long ago it last heard from its master.
        ("cluster-replica-validity-factor", "0".to_owned()),
        // The topology stays the one the test made: no replica moves to another master.
        ("cluster-allow-replica-migration", "no".to_owned()),
        // A replica's first sync at once (the default waits 5 s for more replicas).
        ("repl-diskless-sync-delay", "0".to_owned()),
    ]
    .into_iter()
    .flat_map(|(key, value)| [format!("--{key}"), value])
    .collect()
}

/// The TLS arguments of every node, with its certificate, key and the CA written to `dir`
/// (the CA as `ca.crt`, which [`RedisCluster::ca_file`] names).
fn tls_args(ca: &TestCa, dir: &Path) -> Vec<String> {
    let (cert, _, key) = ca.leaf("redis");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    [
        ("tls-cert-file", write("redis.crt", &cert)),
        ("tls-key-file", write("redis.key", &key)),
        ("tls-ca-cert-file", write("ca.crt", &ca.pem())),
        ("tls-auth-clients", "no".to_owned()),
        ("tls-replication", "yes".to_owned()),
        // The bus too; there nodes present their certificate to each other as clients.
        ("tls-cluster", "yes".to_owned()),
    ]
    .into_iter()
    .flat_map(|(key, value)| [format!("--{key}"), value])
    .collect()
}

/// `future`, or an error if the node on `port` has not answered within 2 s (a paused one).
async fn timed<T>(
    port: u16,
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(2), future).await {
        Ok(result) => result.map_err(|e| format!("{port}: {e}")),
        Err(_) => Err(format!("{port}: no answer within 2 s")),
    }
}

/// CRC16-XMODEM (polynomial 0x1021, initial 0), the checksum of Redis Cluster's key slots.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

/// What one node says of the cluster.
struct View {
    port: u16,
    /// `CLUSTER INFO`.
    info: String,
    /// `CLUSTER NODES`: every node it knows, itself included.
    nodes: Vec<NodeEntry>,
    /// A master, or a replica whose link to its master is up (in sync).
    synced: bool,
}

impl View {
    /// It says the cluster is ok, every slot served.
    fn ok(&self) -> bool {
        let says = |line: &str| self.info.lines().any(|l| l.trim() == line);
        says("cluster_state:ok") && says(&format!("cluster_slots_ok:{SLOTS}"))
    }

    /// The port of the node it says serves `slot`, failing or not.
    fn owner(&self, slot: u16) -> Option<u16> {
        self.nodes
            .iter()
            .find(|node| node.is_master() && node.serves(slot))
            .map(|node| node.port)
    }

    /// It is importing or migrating a slot.
    fn has_open_slots(&self) -> bool {
        self.nodes.iter().any(|node| node.open_slots)
    }

    fn summary(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}{:?}", n.port, n.flags.join(","), n.slots))
            .collect();
        let state = self
            .info
            .lines()
            .find(|l| l.starts_with("cluster_state:"))
            .unwrap_or("cluster_state:?")
            .trim();
        format!(
            "{} ({state}, synced {}): {}",
            self.port,
            self.synced,
            nodes.join(" ")
        )
    }
}

/// The cluster as started: every node ok, knowing all six, none failing, three masters with
/// slots and three replicas in sync.
fn formed(views: &[View]) -> bool {
    views.iter().all(|view| {
        let masters = view.nodes.iter().filter(|n| n.is_master()).count();
        view.ok()
            && view.synced
            && view.nodes.len() == 6
            && masters == 3
            && view
                .nodes
                .iter()
                .all(|n| !n.is_failing() && n.is_master() != n.slots.is_empty())
    })
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@bus-port[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slots>…`
struct NodeEntry {
    port: u16,
    flags: Vec<String>,
    /// Ranges of slots, inclusive.
    slots: Vec<(u16, u16)>,
    /// It has a slot being imported or migrated (`[slot->-id]`, `[slot-<-id]`).
    open_slots: bool,
}

impl NodeEntry {
    fn parse(line: &str) -> Option<NodeEntry> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields.get(1)?.split(['@', ',']).next()?;
        let port = address.rsplit_once(':')?.1.parse().ok()?;
        let flags = fields.get(2)?.split(',').map(str::to_owned).collect();
        let mut slots = Vec::new();
        let mut open_slots = false;
        for field in fields.iter().skip(8) {
            if field.starts_with('[') {
                open_slots = true;
            } else if let Some((first, last)) = field.split_once('-') {
                slots.push((first.parse().ok()?, last.parse().ok()?));
            } else {
                let slot = field.parse().ok()?;
                slots.push((slot, slot));
            }
        }
        Some(NodeEntry {
            port,
            flags,
            slots,
            open_slots,
        })
    }

    fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Flagged failing by this view (`fail`), or suspected of it (`fail?`).
    fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("fail"))
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}
