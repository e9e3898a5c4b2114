//! glibc's allocator: fix its arena limit up front.
//!
//! The first time a glibc process needs more than eight malloc arenas (one per thread that
//! allocates, up to a limit), glibc computes the limit from the CPU count, which it reads by
//! opening `/sys/devices/system/cpu/online` — on whatever thread needs the arena, possibly one
//! whose seccomp filter forbids `openat` (squib's I/O threads). Setting `M_ARENA_MAX` before any
//! filter is installed makes glibc use that number instead, so no thread opens a file for it.

use std::io;

/// Sets glibc's arena limit to `arenas` (glibc's own default is 8 per CPU on 64-bit).
#[cfg(target_env = "gnu")]
pub fn set_arena_limit(arenas: usize) -> io::Result<()> {
    let arenas = libc::c_int::try_from(arenas.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only changes an allocator tunable; M_ARENA_MAX takes any positive count.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } == 1 {
        Ok(())
    } else {
        Err(io::Error::other("mallopt(M_ARENA_MAX) refused"))
    }
}

/// Other C libraries do not read files from the allocator: nothing to do.
#[cfg(not(target_env = "gnu"))]
pub fn set_arena_limit(_arenas: usize) -> io::Result<()> {
    Ok(())
}
