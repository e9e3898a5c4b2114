//! What both file engines share: opening the disk, its geometry, and checking requests against it.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use squib_host::block_io;

use crate::block::backend::{BackendError, SECTOR_SIZE};

/// Bytes written per call when zeroes have to be written out: bounds the time one request holds
/// an I/O thread and the static buffer's size.
const ZERO_CHUNK: usize = 64 * 1024;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// Opens a disk image: read-only opens `O_RDONLY`, so a read-only disk cannot be written even by
/// a bug in the engine.
pub(super) fn open(path: &Path, read_only: bool) -> io::Result<File> {
    File::options().read(true).write(!read_only).open(path)
}

/// The size and mode of a disk, fixed when the engine is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Capacity exposed to the guest: the file's length rounded down to whole sectors.
    size: u64,
    /// Length of the underlying file (`size` plus any trailing partial sector).
    file_len: u64,
    read_only: bool,
}

impl Geometry {
    /// Measures `file` (seeking to its end also sizes block devices, whose metadata length is 0)
    /// and checks that a writable disk was opened for writing.
    pub(super) fn probe(file: &File, read_only: bool) -> io::Result<Self> {
        if !read_only && !block_io::is_writable(file)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a writable disk needs a file opened for writing",
            ));
        }
        let file_len = (&*file).seek(SeekFrom::End(0))?;
        Ok(Self {
            size: file_len - file_len % SECTOR_SIZE,
            file_len,
            read_only,
        })
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    pub(super) fn file_len(&self) -> u64 {
        self.file_len
    }

    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Refuses a byte range that does not lie inside the disk.
    pub(super) fn check_range(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BackendError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Refuses a modification of a read-only disk, then checks the range.
    pub(super) fn check_write(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        if self.read_only {
            return Err(BackendError::ReadOnly);
        }
        self.check_range(offset, len)
    }
}

/// How `discard` and `write_zeroes` clear a range without writing it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Clear {
    /// Deallocate it (`discard`): `fallocate(PUNCH_HOLE)`.
    PunchHole,
    /// Zero it, keeping it allocated (`write_zeroes`): `fallocate(ZERO_RANGE)`.
    ZeroRange,
}

/// Clears `len` bytes at `offset` of `file` the cheap way, or, where the filesystem cannot,
/// with `write_zeroes` (the engine's own way of writing zeroes out). The caller has checked the
/// range.
pub(super) fn clear(
    file: &File,
    how: Clear,
    offset: u64,
    len: u64,
    write_zeroes: impl FnOnce() -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    if len == 0 {
        return Ok(());
    }
    let cleared = match how {
        Clear::PunchHole => block_io::punch_hole(file, offset, len),
        Clear::ZeroRange => block_io::zero_range(file, offset, len),
    };
    match cleared {
        Err(e) if is_unsupported(&e) => {
            tracing::debug!("{how:?} unsupported ({e}), writing zeroes");
            write_zeroes()
        }
        other => Ok(other?),
    }
}

/// Whether a failed `fallocate` means "not supported here", so that writing zeroes is the way on.
fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Unsupported | io::ErrorKind::InvalidInput
    )
}

/// Writes `len` zero bytes at `offset` through the page cache, in bounded chunks.
pub(super) fn write_zeroes_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let chunk = (len - done).min(ZERO_CHUNK as u64);
        // `chunk` <= ZERO_CHUNK, so the cast and the slice are in bounds.
        file.write_all_at(&ZEROES[..chunk as usize], offset + done)?;
        done += chunk;
    }
    Ok(())
}
