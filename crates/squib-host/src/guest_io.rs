//! Vectored positioned I/O between a file and guest memory, without an intermediate buffer.
//!
//! vm-memory reads files into guest memory only at the file's current position (`read(2)`), and
//! squib's block engines share one descriptor between I/O threads, so they need `preadv(2)` /
//! `pwritev(2)` straight into [`VolatileSlice`]s. The iovecs are built on the stack, at most
//! [`IOVECS_PER_CALL`] per system call: no request allocates.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::PtrGuardMut;

/// Most buffers handed to one `preadv`/`pwritev`. The kernel's limit (`IOV_MAX`) is 1024 on Linux
/// and macOS; 64 keeps the stack arrays small and exceeds what a virtio-blk request carries
/// (squib advertises fewer segments per request).
pub const IOVECS_PER_CALL: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// File to memory.
    Read,
    /// Memory to file.
    Write,
}

/// Reads from `file` at `offset` into `bufs`, in order, with one `preadv` covering the first
/// [`IOVECS_PER_CALL`] buffers. Returns the number of bytes read, which may be short (end of
/// file, a signal, more buffers than one call takes); 0 at end of file.
///
/// # Errors
/// The `preadv` error; `InvalidInput` when `offset` does not fit the platform's `off_t`.
pub fn read_volatile_at<B: BitmapSlice>(
    file: &File,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<usize> {
    transfer_once(file.as_fd(), bufs, 0, Some(offset), Direction::Read)
}

/// Writes `bufs`, in order, to `file` at `offset` with one `pwritev` covering the first
/// [`IOVECS_PER_CALL`] buffers. Returns the number of bytes written, which may be short.
///
/// # Errors
/// The `pwritev` error; `InvalidInput` when `offset` does not fit the platform's `off_t`.
pub fn write_volatile_at<B: BitmapSlice>(
    file: &File,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<usize> {
    transfer_once(file.as_fd(), bufs, 0, Some(offset), Direction::Write)
}

/// Fills every byte of `bufs` from `file` at `offset`, retrying short reads and `EINTR`.
///
/// # Errors
/// `UnexpectedEof` when the file ends first (the buffers are then partly filled); otherwise the
/// `preadv` error.
pub fn read_exact_volatile_at<B: BitmapSlice>(
    file: &File,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<()> {
    transfer_all(file, bufs, offset, Direction::Read)
}

/// Writes every byte of `bufs` to `file` at `offset`, retrying short writes and `EINTR`.
///
/// # Errors
/// `WriteZero` when the kernel accepts no more bytes; otherwise the `pwritev` error.
pub fn write_all_volatile_at<B: BitmapSlice>(
    file: &File,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
) -> io::Result<()> {
    transfer_all(file, bufs, offset, Direction::Write)
}

/// Reads from `fd` at its current position (a TAP device, a socket) into `bufs`, in order, with
/// one `readv` covering the first [`IOVECS_PER_CALL`] buffers. Returns what `readv` returned: for
/// a TAP device that is the frame's full length even when `bufs` were too short to hold it.
///
/// # Errors
/// The `readv` error (`WouldBlock` on an empty non-blocking descriptor).
pub fn readv_volatile<B: BitmapSlice>(
    fd: &impl AsFd,
    bufs: &[VolatileSlice<'_, B>],
) -> io::Result<usize> {
    transfer_once(fd.as_fd(), bufs, 0, None, Direction::Read)
}

/// Writes `bufs`, in order, to `fd` at its current position with one `writev` covering the first
/// [`IOVECS_PER_CALL`] buffers (one frame, for a TAP device). Returns the bytes written.
///
/// # Errors
/// The `writev` error.
pub fn writev_volatile<B: BitmapSlice>(
    fd: &impl AsFd,
    bufs: &[VolatileSlice<'_, B>],
) -> io::Result<usize> {
    transfer_once(fd.as_fd(), bufs, 0, None, Direction::Write)
}

fn transfer_all<B: BitmapSlice>(
    file: &File,
    bufs: &[VolatileSlice<'_, B>],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(VolatileSlice::len).sum();
    let mut done = 0;
    while done < total {
        let position = offset
            .checked_add(done as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflows"))?;
        match transfer_once(file.as_fd(), bufs, done, Some(position), direction) {
            Ok(0) => {
                return Err(match direction {
                    Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                    Direction::Write => io::ErrorKind::WriteZero.into(),
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One system call moving the bytes of `bufs` that follow the first `skip` bytes: positioned at
/// `offset`, or at the descriptor's current position (`readv`/`writev`) when it is `None`.
fn transfer_once<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    bufs: &[VolatileSlice<'_, B>],
    skip: usize,
    offset: Option<u64>,
    direction: Direction,
) -> io::Result<usize> {
    let offset = offset
        .map(libc::off_t::try_from)
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset exceeds off_t"))?;
    if let [only] = bufs
        && skip < only.len()
    {
        return transfer_one(fd, only, skip, offset, direction);
    }

    // The guards keep each slice's host pointer valid until the call returns (vm-memory may map
    // memory on demand behind them); the iovecs point into the guarded ranges.
    let mut guards: [Option<PtrGuardMut>; IOVECS_PER_CALL] = [const { None }; IOVECS_PER_CALL];
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; IOVECS_PER_CALL];
    // Which slice, from which byte, each iovec covers: to mark the bytes a read dirtied.
    let mut spans = [(0usize, 0usize); IOVECS_PER_CALL];

    let mut count = 0;
    let mut to_skip = skip;
    for (index, buf) in bufs.iter().enumerate() {
        if to_skip >= buf.len() {
            to_skip -= buf.len();
            continue;
        }
        if count == IOVECS_PER_CALL {
            break;
        }
        let start = to_skip;
        to_skip = 0;
        let guard = guards[count].insert(buf.ptr_guard_mut());
        iovecs[count] = libc::iovec {
            // `start < guard.len()`, so the pointer stays inside the slice.
            iov_base: guard.as_ptr().wrapping_add(start).cast(),
            iov_len: guard.len() - start,
        };
        spans[count] = (index, start);
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // `count` <= IOVECS_PER_CALL = 64, which fits a c_int.
    let iovcnt = count as libc::c_int;

    let fd = fd.as_raw_fd();
    let rc = match (direction, offset) {
        // SAFETY: each of the `count` iovecs points at `iov_len` bytes inside a VolatileSlice,
        // which guarantees its memory stays valid for `len` bytes while borrowed (`bufs` is
        // borrowed for this whole call) and whose pointer guard is alive in `guards`. The kernel
        // writes only within those ranges. No Rust reference to guest memory exists: vm-memory
        // only ever accesses it through raw pointers, so the guest (or another vCPU) changing it
        // concurrently is not a data race in the language's sense. `fd` is kept open by the
        // `BorrowedFd` this function holds.
        (Direction::Read, Some(offset)) => unsafe {
            libc::preadv(fd, iovecs.as_ptr(), iovcnt, offset)
        },
        // SAFETY: as for `preadv` above, at the descriptor's own position.
        (Direction::Read, None) => unsafe { libc::readv(fd, iovecs.as_ptr(), iovcnt) },
        // SAFETY: as for the reads, with the kernel only reading the iovecs' ranges.
        (Direction::Write, Some(offset)) => unsafe {
            libc::pwritev(fd, iovecs.as_ptr(), iovcnt, offset)
        },
        // SAFETY: as for the reads, with the kernel only reading the iovecs' ranges.
        (Direction::Write, None) => unsafe { libc::writev(fd, iovecs.as_ptr(), iovcnt) },
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // `rc` is non-negative here. It is at most the sum of the iovec lengths, except for a TAP
    // read, which reports a truncated frame's full length: `mark_dirty` stops at the iovecs' end.
    let transferred = rc as usize;
    if direction == Direction::Read {
        mark_dirty(bufs, &spans[..count], &iovecs[..count], transferred);
    }
    Ok(transferred)
}

/// The common one-buffer case as a plain `pread`/`pwrite`: no iovec arrays to set up.
fn transfer_one<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    buf: &VolatileSlice<'_, B>,
    start: usize,
    offset: Option<libc::off_t>,
    direction: Direction,
) -> io::Result<usize> {
    let guard = buf.ptr_guard_mut();
    // `start < guard.len()` (checked by the caller), so the pointer stays inside the slice.
    let ptr = guard.as_ptr().wrapping_add(start).cast::<libc::c_void>();
    let len = guard.len() - start;
    let fd = fd.as_raw_fd();
    let rc = match (direction, offset) {
        // SAFETY: `ptr` points at `len` bytes inside a VolatileSlice, whose memory stays valid
        // while it is borrowed (for this whole call) and whose pointer guard is alive; the kernel
        // writes only there. No Rust reference to that memory exists (vm-memory reaches guest
        // memory through raw pointers only). `fd` is kept open by the `BorrowedFd` held here.
        (Direction::Read, Some(offset)) => unsafe { libc::pread(fd, ptr, len, offset) },
        // SAFETY: as for `pread` above, at the descriptor's own position.
        (Direction::Read, None) => unsafe { libc::read(fd, ptr, len) },
        // SAFETY: as for the reads, with the kernel only reading the range.
        (Direction::Write, Some(offset)) => unsafe { libc::pwrite(fd, ptr, len, offset) },
        // SAFETY: as for the reads, with the kernel only reading the range.
        (Direction::Write, None) => unsafe { libc::write(fd, ptr, len) },
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Non-negative here; at most `len` except for a TAP read of a truncated frame, which reports
    // the frame's full length (only `len` bytes were written, so only those are marked).
    let transferred = rc as usize;
    if direction == Direction::Read {
        buf.bitmap().mark_dirty(start, transferred.min(len));
    }
    Ok(transferred)
}

/// Records in each slice's dirty bitmap the bytes a read of `transferred` bytes wrote.
fn mark_dirty<B: BitmapSlice>(
    bufs: &[VolatileSlice<'_, B>],
    spans: &[(usize, usize)],
    iovecs: &[libc::iovec],
    mut transferred: usize,
) {
    for (&(index, start), iovec) in spans.iter().zip(iovecs) {
        if transferred == 0 {
            break;
        }
        let len = iovec.iov_len.min(transferred);
        bufs[index].bitmap().mark_dirty(start, len);
        transferred -= len;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn reads_scatter_in_order() {
        let data = pattern(1000);
        let file = file_with(&data);
        let mut a = [0u8; 3];
        let mut b = [0u8; 100];
        let mut c = [0u8; 7];
        let bufs = [
            VolatileSlice::from(&mut a[..]),
            VolatileSlice::from(&mut b[..]),
            VolatileSlice::from(&mut c[..]),
        ];
        read_exact_volatile_at(&file, &bufs, 17).unwrap();
        assert_eq!(a[..], data[17..20]);
        assert_eq!(b[..], data[20..120]);
        assert_eq!(c[..], data[120..127]);
    }

    #[test]
    fn writes_gather_in_order() {
        let file = file_with(&[0xee; 64]);
        let mut a = *b"hello";
        let mut b = *b", world";
        let bufs = [
            VolatileSlice::from(&mut a[..]),
            VolatileSlice::from(&mut b[..]),
        ];
        write_all_volatile_at(&file, &bufs, 3).unwrap();
        let mut back = [0u8; 16];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"\xee\xee\xeehello, world\xee");
    }

    #[test]
    fn more_buffers_than_one_call_takes() {
        let count = IOVECS_PER_CALL * 2 + 5;
        let data = pattern(count * 3);
        let file = file_with(&data);
        let mut storage = vec![0u8; count * 3];
        let bufs: Vec<VolatileSlice<'_>> = storage.chunks_mut(3).map(VolatileSlice::from).collect();
        // One call moves at most IOVECS_PER_CALL buffers...
        assert_eq!(
            read_volatile_at(&file, &bufs, 0).unwrap(),
            IOVECS_PER_CALL * 3
        );
        // ...the exact variant loops over all of them.
        read_exact_volatile_at(&file, &bufs, 0).unwrap();
        drop(bufs);
        assert_eq!(storage, data);
    }

    #[test]
    fn end_of_file_is_an_error_for_exact_reads() {
        let file = file_with(&pattern(10));
        let mut buf = [0u8; 8];
        let bufs = [VolatileSlice::from(&mut buf[..])];
        assert_eq!(read_volatile_at(&file, &bufs, 6).unwrap(), 4);
        assert_eq!(read_volatile_at(&file, &bufs, 10).unwrap(), 0);
        let err = read_exact_volatile_at(&file, &bufs, 6).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn offset_beyond_off_t_is_rejected() {
        let file = file_with(&pattern(10));
        let mut buf = [0u8; 1];
        let bufs = [VolatileSlice::from(&mut buf[..])];
        let err = read_volatile_at(&file, &bufs, u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn datagrams_gather_and_scatter_at_the_descriptor_position() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut head = *b"head:";
        let mut body = *b"one frame";
        let out = [
            VolatileSlice::from(&mut head[..]),
            VolatileSlice::from(&mut body[..]),
        ];
        assert_eq!(writev_volatile(&a, &out).unwrap(), 14);
        let mut x = [0u8; 3];
        let mut y = [0u8; 20];
        let into = [
            VolatileSlice::from(&mut x[..]),
            VolatileSlice::from(&mut y[..]),
        ];
        assert_eq!(readv_volatile(&b, &into).unwrap(), 14);
        b.set_nonblocking(true).unwrap();
        let err = readv_volatile(&b, &into).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(&x, b"hea");
        assert_eq!(&y[..11], b"d:one frame");
    }

    #[test]
    fn empty_buffers_move_nothing() {
        let file = file_with(&pattern(10));
        let bufs: [VolatileSlice<'_>; 0] = [];
        assert_eq!(read_volatile_at(&file, &bufs, 0).unwrap(), 0);
        read_exact_volatile_at(&file, &bufs, 0).unwrap();
        write_all_volatile_at(&file, &bufs, 0).unwrap();
    }
}
