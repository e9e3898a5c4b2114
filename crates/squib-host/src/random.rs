//! Random bytes from the host kernel (`getrandom(2)`) written straight into guest memory, for the
//! virtio-rng device: no intermediate buffer, no file descriptor to keep open.

use std::io;

use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;

/// Fills `buf` with random bytes from the kernel's pool. Returns the number of bytes written,
/// which may be short (a signal, or more than the kernel hands out in one call: 32 MiB); never
/// blocks once the host's pool is initialised, which it is long before a VMM runs.
///
/// # Errors
/// The `getrandom` error (`EINTR` included: callers retry or give up as they see fit).
pub fn fill_volatile<B: BitmapSlice>(buf: &VolatileSlice<'_, B>) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let guard = buf.ptr_guard_mut();
    // SAFETY: `guard.as_ptr()` points at `guard.len()` bytes inside a VolatileSlice, whose memory
    // stays valid while it is borrowed (for this whole call) and whose pointer guard is alive; the
    // kernel writes only within that range. No Rust reference to guest memory exists (vm-memory
    // reaches it only through raw pointers), so a concurrent guest write is not a data race in
    // the language's sense.
    let rc = unsafe { libc::getrandom(guard.as_ptr().cast(), guard.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Non-negative and at most `guard.len()`.
    let filled = rc as usize;
    buf.bitmap().mark_dirty(0, filled);
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use vm_memory::VolatileMemory;

    use super::*;

    #[test]
    fn fills_the_whole_slice_with_bytes_that_differ_between_calls() {
        let mut first = [0u8; 256];
        let mut second = [0u8; 256];
        for buf in [&mut first, &mut second] {
            let slice = VolatileSlice::from(&mut buf[..]);
            assert_eq!(
                fill_volatile(&slice.get_slice(0, 256).unwrap()).unwrap(),
                256
            );
        }
        assert_ne!(first, second);
        assert!(first.iter().any(|&b| b != 0));
    }

    #[test]
    fn an_empty_slice_reads_nothing() {
        let mut empty = [0u8; 0];
        assert_eq!(
            fill_volatile(&VolatileSlice::from(&mut empty[..])).unwrap(),
            0
        );
    }
}
