//! Measuring a process from outside, through /proc.

use std::fs;

/// A process's memory and CPU time at one moment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProcSample {
    /// Resident set size.
    pub rss_kib: u64,
    /// Peak resident set size.
    pub hwm_kib: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // space-separated, starting with field 3 (state). utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> u64 {
        fields
            .get(index - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_secs: (ticks(14) + ticks(15)) as f64 / per_sec,
    })
}

/// Whether `pid` runs: it exists and is not a zombie (a child that died but is not reaped yet
/// keeps its /proc entry, with no memory).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Open descriptors of `pid`.
pub fn descriptors(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(Iterator::count)
}

/// OS threads of `pid`.
pub fn threads(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
}

/// The TCP line of `/proc/net/sockstat`: sockets in use in this network namespace, and the
/// kernel memory their buffers hold. Both are the machine's (the namespace's), not one
/// process's: a measurement takes their change across its own sockets, and `inuse` counts
/// both ends of a loopback connection, the load generator's too.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TcpSockstat {
    pub inuse: u64,
    pub mem_kib: u64,
}

/// Reads the TCP line of `/proc/net/sockstat` (`TCP: inuse N orphan N tw N alloc N mem N`,
/// `mem` in pages).
pub fn tcp_sockstat() -> TcpSockstat {
    let Ok(text) = fs::read_to_string("/proc/net/sockstat") else {
        return TcpSockstat::default();
    };
    // SAFETY: sysconf has no preconditions.
    let page_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) / 1024) as u64;
    let words: Vec<&str> = text
        .lines()
        .find_map(|line| line.strip_prefix("TCP:"))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |name: &str| {
        words
            .windows(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].parse::<u64>().ok())
            .unwrap_or(0)
    };
    TcpSockstat {
        inuse: field("inuse"),
        mem_kib: field("mem") * page_kib,
    }
}

/// Kernel memory for TCP sockets at one moment: sockstat's counters and the unreclaimable
/// slab (`SUnreclaim` in /proc/meminfo), where each socket's own structures live (sockstat's
/// `mem` counts only the pages its queues hold, which an idle socket returns).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct KernelSockets {
    pub inuse: u64,
    pub buffers_kib: u64,
    pub slab_unreclaimable_kib: u64,
}

/// What each socket added to kernel memory between two [`KernelSockets`] readings.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct KernelPerSocket {
    /// TCP sockets opened in between, both ends of each loopback connection (the load
    /// generator's and the server's, which the kernel charges alike).
    pub sockets: i64,
    /// Queued data (sockstat `mem`) per socket: near zero for idle sockets whose queues are
    /// empty; a page each while data sits unread.
    pub buffers_kib: Option<f64>,
    /// The finest step of `buffers_kib`: the kernel charges socket memory to the global
    /// counter in per-CPU batches of 1 MiB, so one batch over 500 sockets reads as 2 KiB each
    /// (an old figure of 2.04 KiB for the ceiling against 0.00 for Palisade was one batch).
    pub buffers_resolution_kib: Option<f64>,
    /// Unreclaimable slab per socket: the socket structures themselves.
    pub slab_kib: Option<f64>,
}

impl KernelSockets {
    /// The median of five readings 20 ms apart: the counters are machine-wide and `mem` moves
    /// in per-CPU batches of a megabyte, so one reading can land on a batch's edge.
    pub async fn now() -> KernelSockets {
        let mut readings = Vec::with_capacity(5);
        for _ in 0..5 {
            let stat = tcp_sockstat();
            readings.push(KernelSockets {
                inuse: stat.inuse,
                buffers_kib: stat.mem_kib,
                slab_unreclaimable_kib: meminfo_kib("SUnreclaim:"),
            });
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let median = |pick: fn(&KernelSockets) -> u64| {
            let mut values: Vec<u64> = readings.iter().map(pick).collect();
            values.sort_unstable();
            values[values.len() / 2]
        };
        KernelSockets {
            inuse: median(|k| k.inuse),
            buffers_kib: median(|k| k.buffers_kib),
            slab_unreclaimable_kib: median(|k| k.slab_unreclaimable_kib),
        }
    }

    /// Per socket opened since `before`; no figure when fewer than 100 sockets were opened (a
    /// machine-wide counter's noise would be all there is to divide).
    pub fn per_socket_since(&self, before: &KernelSockets) -> KernelPerSocket {
        let sockets = self.inuse as i64 - before.inuse as i64;
        let per = |now: u64, then: u64| {
            (sockets >= 100).then(|| (now as f64 - then as f64) / sockets as f64)
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        KernelPerSocket {
            sockets,
            buffers_resolution_kib: (sockets >= 100).then(|| 1024.0 * cpus / sockets as f64),
            buffers_kib: per(self.buffers_kib, before.buffers_kib),
            slab_kib: per(self.slab_unreclaimable_kib, before.slab_unreclaimable_kib),
        }
    }
}

fn meminfo_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's open-file soft limit to the hard limit (children inherit it); returns
/// the new limit.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and an initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// What the machine is, for the results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub nofile_limit: u64,
}

pub fn machine(nofile_limit: u64) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        nofile_limit,
    }
}
