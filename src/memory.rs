//! Memory: shedding new sockets above a watermark, and giving freed pages back.
//!
//! **Shedding.** Every [`SAMPLE_INTERVAL`] the gateway reads its memory use: the cgroup's
//! (`memory.current`, cgroup v2) where the cgroup has a limit, the process's RSS otherwise.
//! Above `MEMORY_HIGH_WATERMARK` (a size, or a percentage of the cgroup limit or, without
//! one, of the machine's memory) new upgrades are answered 503 with `Retry-After`, and every
//! open socket keeps being served: an OOM kill would drop them all.
//!
//! **Returning pages.** The `palisade` binary allocates with jemalloc (see `main.rs`), which
//! returns freed pages itself within a second; `malloc_trim` matters where the library runs on
//! glibc's malloc (the in-process tests, or an embedding program), whose per-thread arenas
//! would otherwise keep a burst's memory resident for ever.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{invalid, Config, ConfigError};

/// How often memory use is read.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// `MEMORY_HIGH_WATERMARK`: where shedding starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watermark {
    /// Never shed (`0`).
    Off,
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the memory limit (the cgroup's, or the machine's).
    Percent(u8),
}

impl Watermark {
    pub(crate) fn from_env(env: &Config) -> Result<Watermark, ConfigError> {
        parse(&env.memory_high_watermark).ok_or_else(|| {
            invalid(
                "MEMORY_HIGH_WATERMARK",
                "a size (1500MiB, 2GiB, 800000000), a percentage of the memory limit (1% to 100%), or 0 for none",
            )
        })
    }

    /// The watermark in bytes for a memory limit of `limit` bytes.
    fn bytes(self, limit: Option<u64>) -> Option<u64> {
        match self {
            Watermark::Off => None,
            Watermark::Bytes(bytes) => Some(bytes),
            Watermark::Percent(percent) => limit.map(|limit| limit / 100 * u64::from(percent)),
        }
    }
}

fn parse(text: &str) -> Option<Watermark> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let percent: u8 = percent.trim().parse().ok()?;
        return (1..=100)
            .contains(&percent)
            .then_some(Watermark::Percent(percent));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return None,
    };
    let bytes = number.checked_mul(scale)?;
    Some(if bytes == 0 {
        Watermark::Off
    } else {
        Watermark::Bytes(bytes)
    })
}

/// Whether new sockets are being shed, kept current by [`MemoryGuard::sample`].
#[derive(Debug)]
pub(crate) struct MemoryGuard {
    watermark: Watermark,
    shedding: AtomicBool,
    used: AtomicU64,
}

impl MemoryGuard {
    pub(crate) fn new(watermark: Watermark) -> MemoryGuard {
        MemoryGuard {
            watermark,
            shedding: AtomicBool::new(false),
            used: AtomicU64::new(0),
        }
    }

    /// Whether new upgrades are being shed.
    pub(crate) fn is_shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Reads memory use and decides whether to shed; returns the bytes used.
    pub(crate) fn sample(&self) -> u64 {
        let (used, limit) = usage();
        self.used.store(used, Ordering::Relaxed);
        let over = self
            .watermark
            .bytes(limit)
            .is_some_and(|watermark| used >= watermark);
        self.shedding.store(over, Ordering::Relaxed);
        used
    }
}

/// Memory used and the limit it counts against: the cgroup's where it has a limit, else the
/// process's RSS against the machine's memory.
fn usage() -> (u64, Option<u64>) {
    let cgroup = |file| std::fs::read_to_string(format!("/sys/fs/cgroup/{file}")).ok();
    let cgroup_limit = cgroup("memory.max").and_then(|max| max.trim().parse::<u64>().ok());
    if let (Some(limit), Some(current)) = (
        cgroup_limit,
        cgroup("memory.current").and_then(|text| text.trim().parse::<u64>().ok()),
    ) {
        return (current, Some(limit));
    }
    (rss_bytes(), total_memory())
}

/// The process's resident set, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The machine's memory, from `/proc/meminfo`.
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Returns free heap pages to the system (glibc); a no-op elsewhere.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{assert_names, env};

    #[test]
    fn watermarks_at_and_past_their_limits() {
        for (text, watermark) in [
            ("90%", Watermark::Percent(90)),
            ("1%", Watermark::Percent(1)),
            ("100%", Watermark::Percent(100)),
            ("0", Watermark::Off),
            ("1500MiB", Watermark::Bytes(1500 << 20)),
            ("2 GiB", Watermark::Bytes(2 << 30)),
            ("800000000", Watermark::Bytes(800_000_000)),
        ] {
            let parsed = Watermark::from_env(&env(&[("MEMORY_HIGH_WATERMARK", text)]));
            assert_eq!(parsed.unwrap(), watermark, "{text}");
        }
        for bad in ["0%", "101%", "lots", "5TB", "-1"] {
            assert_names(
                Watermark::from_env(&env(&[("MEMORY_HIGH_WATERMARK", bad)])),
                "MEMORY_HIGH_WATERMARK",
            );
        }
        assert_eq!(Watermark::Percent(50).bytes(Some(1000)), Some(500));
        assert_eq!(Watermark::Percent(50).bytes(None), None);
    }

    #[test]
    fn a_low_watermark_sheds_and_none_never_does() {
        let guard = MemoryGuard::new(Watermark::Bytes(1));
        assert!(guard.sample() > 1 && guard.is_shedding());
        let guard = MemoryGuard::new(Watermark::Off);
        guard.sample();
        assert!(!guard.is_shedding());
    }
}
