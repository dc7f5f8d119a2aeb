//! A `palisade` child process, measured from outside through /proc.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raises this process's soft open-file limit to the hard limit (children inherit it).
pub(crate) fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid resource and a properly initialised struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        limit.rlim_cur
    }
}

pub(crate) struct Gateway {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl Gateway {
    pub(crate) async fn start(extra: &[(&str, &str)]) -> Gateway {
        Self::start_with_output(extra, Stdio::null(), Stdio::null()).await
    }

    /// Like [`start`](Self::start), writing what it logs (stdout and stderr) to `log`.
    pub(crate) async fn start_logging(extra: &[(&str, &str)], log: std::fs::File) -> Gateway {
        let err = log.try_clone().unwrap();
        Self::start_with_output(extra, Stdio::from(log), Stdio::from(err)).await
    }

    async fn start_with_output(extra: &[(&str, &str)], out: Stdio, err: Stdio) -> Gateway {
        let port = super::http::free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_palisade"));
        command
            .env_clear()
            .current_dir(dir.path())
            .envs(palisade::testing::NO_LIMITS.iter().copied())
            .envs([
                ("PORT", port.to_string().as_str()),
                ("BIND_ADDR", "127.0.0.1"),
                ("ALLOWED_ORIGINS", super::ORIGIN),
                ("JWT_DECODE_SECRET", super::SECRET),
                ("CLOSE_TIMEOUT_MS", "500"),
                ("LOG_LEVEL", "warn"),
                ("METRICS_PORT", "0"),
                ("HOUSEKEEPING_INTERVAL_MS", "500"),
            ])
            .envs(extra.iter().copied())
            .stdout(out)
            .stderr(err);
        let child = command.spawn().unwrap();
        let addr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Gateway { child, addr }
    }

    fn proc_path(&self, what: &str) -> String {
        format!("/proc/{}/{what}", self.child.id())
    }

    /// Resident memory in KiB.
    /// Waits until its `/readyz` answers 200 (within ten seconds).
    pub(crate) async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::http::get(self.addr, "/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "the node never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(self.proc_path("status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(Path::new(&self.proc_path("fd")))
            .unwrap()
            .count()
    }

    /// Waits until the gateway holds at most `fds` descriptors.
    pub(crate) async fn wait_fds_at_most(&self, fds: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.open_fds() > fds {
            assert!(
                Instant::now() < deadline,
                "gateway still holds {} fds, expected <= {fds}",
                self.open_fds()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
