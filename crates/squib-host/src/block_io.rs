//! Host-side block I/O controls: cache bypass, direct-I/O alignment and blocking mode.
//!
//! The disk engines in `squib-virtio` cannot call `fcntl`, `statx` or `fallocate` themselves
//! (that crate forbids `unsafe`), so each call lives here behind a function that takes a `&File`:
//! the borrow guarantees the descriptor stays open for the duration of the call.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Offset alignment assumed when the kernel does not report one: the classic sector size.
pub const FALLBACK_OFFSET_ALIGN: usize = 512;
/// Memory alignment assumed when the kernel does not report one: a page satisfies every device.
pub const FALLBACK_MEMORY_ALIGN: usize = 4096;

/// What cache-bypassing I/O on a file must respect. Both fields are powers of two (enforced at
/// construction: the kernel's answer is only used when it is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectIoAlignment {
    memory: usize,
    offset: usize,
}

impl DirectIoAlignment {
    /// The conservative alignment used when the kernel or filesystem does not report one.
    pub const FALLBACK: Self = Self {
        memory: FALLBACK_MEMORY_ALIGN,
        offset: FALLBACK_OFFSET_ALIGN,
    };

    /// An alignment of `memory` bytes for buffers and `offset` bytes for file offsets and
    /// lengths; `None` unless both are non-zero powers of two.
    pub fn new(memory: usize, offset: usize) -> Option<Self> {
        (memory.is_power_of_two() && offset.is_power_of_two()).then_some(Self { memory, offset })
    }

    /// Required alignment of a buffer's address.
    pub fn memory(&self) -> usize {
        self.memory
    }

    /// Required alignment of a file offset and of every transfer length.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// Turns on cache bypass for `file`: `O_DIRECT` on Linux, `F_NOCACHE` on macOS.
///
/// # Errors
/// The `fcntl` error; a filesystem that cannot bypass the cache answers `EINVAL`. The caller
/// decides whether running cached is acceptable.
pub fn set_f_nocache(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let flags = status_flags(file)?;
        if flags & libc::O_DIRECT != 0 {
            return Ok(());
        }
        // SAFETY: F_SETFL takes an int argument and only changes the status flags of the open
        // file description behind `fd`, which the `&File` borrow keeps open for the whole call.
        // No memory is passed to the kernel.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(target_os = "macos")]
    {
        // SAFETY: F_NOCACHE takes an int argument and only sets a flag on the open file behind
        // `fd`, which the `&File` borrow keeps open for the whole call. No memory is passed.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = file;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Makes `file`'s I/O blocking again (clears `O_NONBLOCK`).
///
/// Host files are opened non-blocking so that a FIFO or a device cannot hang the opener; once
/// `fstat` shows a regular file or a block device the flag is cleared, because io_uring turns a
/// read of an `O_NONBLOCK` file that misses the page cache into `EAGAIN` instead of waiting.
///
/// # Errors
/// The `fcntl` error.
pub fn clear_nonblocking(file: &File) -> io::Result<()> {
    let flags = status_flags(file)?;
    if flags & libc::O_NONBLOCK == 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL takes an int argument and only changes the status flags of the open file
    // description behind `fd`, which the `&File` borrow keeps open for the whole call. No
    // memory is passed to the kernel.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file`'s I/O bypasses the page cache with alignment constraints (`O_DIRECT`).
///
/// macOS's `F_NOCACHE` is a hint without alignment rules and cannot be read back, so there this
/// is always `false`.
///
/// # Errors
/// The `fcntl(F_GETFL)` error.
pub fn is_direct(file: &File) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        Ok(status_flags(file)? & libc::O_DIRECT != 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        status_flags(file).map(|_| false)
    }
}

/// Whether `file` was opened for writing.
///
/// # Errors
/// The `fcntl(F_GETFL)` error.
pub fn is_writable(file: &File) -> io::Result<bool> {
    Ok(status_flags(file)? & libc::O_ACCMODE != libc::O_RDONLY)
}

/// The alignment cache-bypassing I/O on `file` needs, from `statx(STATX_DIOALIGN)`; the
/// [`DirectIoAlignment::FALLBACK`] when the kernel or filesystem does not report it.
pub fn direct_io_alignment(file: &File) -> DirectIoAlignment {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        statx_dio_alignment(file).unwrap_or(DirectIoAlignment::FALLBACK)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = file;
        DirectIoAlignment::FALLBACK
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn statx_dio_alignment(file: &File) -> Option<DirectIoAlignment> {
    // SAFETY: `statx` is a plain C struct of integers, for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated empty string and AT_EMPTY_PATH makes statx describe
    // `fd` itself, which the `&File` borrow keeps open; `stx` is a live, exclusively borrowed
    // `statx` the kernel fills and nothing else aliases during the call.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    // Zero means "direct I/O is not supported on this file": no alignment to report.
    DirectIoAlignment::new(
        usize::try_from(stx.stx_dio_mem_align).ok()?,
        usize::try_from(stx.stx_dio_offset_align).ok()?,
    )
}

/// Deallocates `len` bytes at `offset` without changing the file size; later reads of the range
/// return zeroes.
///
/// # Errors
/// The `fallocate` error: `EOPNOTSUPP` where the filesystem cannot punch holes.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        fallocate(
            file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Makes `len` bytes at `offset` read as zeroes, preferably without writing them.
///
/// # Errors
/// The `fallocate` error: `EOPNOTSUPP` where the filesystem cannot zero ranges (writing zeroes
/// instead is the caller's business).
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        fallocate(
            file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "range exceeds off_t");
    let offset = libc::off_t::try_from(offset).map_err(invalid)?;
    let len = libc::off_t::try_from(len).map_err(invalid)?;
    loop {
        // SAFETY: fallocate takes only integers; it acts on the file behind `fd`, which the
        // `&File` borrow keeps open for the whole call. No memory is passed to the kernel.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn status_flags(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument and only reads the status flags of the open file
    // description behind `fd`, which the `&File` borrow keeps open for the whole call.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_rejects_non_powers_of_two() {
        assert!(DirectIoAlignment::new(0, 512).is_none());
        assert!(DirectIoAlignment::new(4096, 0).is_none());
        assert!(DirectIoAlignment::new(4096, 600).is_none());
        let align = DirectIoAlignment::new(4, 512).unwrap();
        assert_eq!((align.memory(), align.offset()), (4, 512));
    }

    #[test]
    fn read_only_file_is_not_writable() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let ro = File::open(tmp.path()).unwrap();
        assert!(!is_writable(&ro).unwrap());
        let rw = File::options()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        assert!(is_writable(&rw).unwrap());
    }
}
