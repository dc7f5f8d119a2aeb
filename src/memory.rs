//! Giving freed memory back to the operating system.
//!
//! The `palisade` binary allocates with jemalloc (see `main.rs`), which returns freed pages
//! itself within a second; what follows matters where the library runs on glibc's malloc (the
//! in-process tests, or an embedding program).
//!
//! glibc's malloc keeps memory freed by other threads in per-thread arenas: after a burst of
//! 10 000 sockets has come and gone, the process would keep their ~180 MiB resident for ever
//! (measured in `tests/memory.rs`). `malloc_trim(0)` returns every free page of every arena;
//! the housekeeping timer calls it, so RSS follows the load back down.

/// Returns free heap pages to the system (glibc); a no-op elsewhere.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
