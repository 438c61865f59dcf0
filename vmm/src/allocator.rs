//! Keeps glibc's allocator inside what the seccomp filters allow, on every thread.
//!
//! glibc gives each new thread its own arena (up to 8 per core). A non-main arena lives in
//! `mmap`ed "heaps", and when `free` trims one (`shrink_heap`), glibc first asks
//! `check_may_shrink_heap()`, which opens `/proc/sys/vm/overcommit_memory` the first time any
//! thread gets there. That `openat` is outside the api and vCPU filters: a dozen API connections
//! closing were enough to trim the api thread's arena and kill the VMM with SIGSYS (issue 10).
//!
//! Limiting the process to one arena (the main one, grown and trimmed with `brk`, large blocks
//! with `mmap`/`munmap`) means no thread ever uses a heap `shrink_heap` would trim, whatever it
//! allocates and frees. Priming glibc's cached answer before the filters instead would need a
//! heap trim to happen on purpose before any filter is installed, which glibc offers no call
//! for; and allowing `openat` on the api and vCPU threads would widen the filters for every
//! request. The cost is one arena lock shared by a handful of threads (api, VMM, vCPUs, the
//! page server) that rarely allocate at the same time: measured here, 300 concurrent API
//! connections took the same time and left the same resident memory with one arena as with
//! glibc's default.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AllocatorError {
    #[error("Cannot limit the allocator to one arena (mallopt(M_ARENA_MAX) failed)")]
    ArenaMax,
}

/// Makes every thread allocate from glibc's main arena. Call before any thread is spawned (a
/// thread that has already attached to an arena keeps it).
pub fn use_single_arena() -> Result<(), AllocatorError> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only sets one of the allocator's parameters; it takes the arena lock
        // itself and has no memory-safety preconditions.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok != 1 {
            return Err(AllocatorError::ArenaMax);
        }
    }
    Ok(())
}
