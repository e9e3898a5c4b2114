//! `SyncFileBackend`: the simple engine, every request serialised through one `Mutex<File>`.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vm_memory::{ReadVolatile, VolatileMemoryError, WriteVolatile};

use super::disk::{self, Clear, Geometry};
use super::segments::GuestSegments;
use crate::GuestMemory;
use crate::block::backend::{BackendError, BlockBackend, Segment};

/// File-backed [`BlockBackend`] that seeks and reads/writes under one lock.
///
/// Each request holds the file's mutex from its seek to its last byte, so requests never overlap:
/// easy to reason about, and capped at one request at a time however many I/O threads share it.
/// [`AsyncFileBackend`](super::AsyncFileBackend) is the lockless engine for the high-IOPS path.
///
/// It does not handle cache bypass: on an `O_DIRECT` descriptor, requests that are not aligned
/// to the device fail with `EINVAL` (use `AsyncFileBackend` there).
#[derive(Debug)]
pub struct SyncFileBackend {
    file: Mutex<File>,
    geometry: Geometry,
}

impl SyncFileBackend {
    /// Opens the disk image at `path`, `O_RDONLY` when `read_only`.
    ///
    /// # Errors
    /// The error opening or measuring the file.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        Self::from_file(disk::open(path, read_only)?, read_only)
    }

    /// Wraps an already-open `file`.
    ///
    /// # Errors
    /// `InvalidInput` when `read_only` is false but `file` was not opened for writing; the error
    /// measuring the file.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let geometry = Geometry::probe(&file, read_only)?;
        Ok(Self {
            file: Mutex::new(file),
            geometry,
        })
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // Every request seeks before it moves data, so a panicked holder leaves no state behind.
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BlockBackend for SyncFileBackend {
    fn size(&self) -> u64 {
        self.geometry.size()
    }

    fn is_read_only(&self) -> bool {
        self.geometry.read_only()
    }

    fn read_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let request = GuestSegments::new(mem, segments)?;
        self.geometry.check_range(offset, request.len())?;
        let mut file = self.lock();
        file.seek(SeekFrom::Start(offset))?;
        request.for_each_batch(|slices, _| {
            for slice in slices {
                file.read_exact_volatile(&mut slice.clone())
                    .map_err(volatile_error)?;
            }
            Ok(())
        })
    }

    fn write_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let request = GuestSegments::new(mem, segments)?;
        self.geometry.check_write(offset, request.len())?;
        let mut file = self.lock();
        file.seek(SeekFrom::Start(offset))?;
        request.for_each_batch(|slices, _| {
            for slice in slices {
                file.write_all_volatile(slice).map_err(volatile_error)?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<(), BackendError> {
        if self.geometry.read_only() {
            return Ok(());
        }
        Ok(self.lock().sync_data()?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.geometry.check_write(offset, len)?;
        let file = self.lock();
        disk::clear(&file, Clear::PunchHole, offset, len, || {
            Ok(disk::write_zeroes_cached(&file, offset, len)?)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.geometry.check_write(offset, len)?;
        let file = self.lock();
        disk::clear(&file, Clear::ZeroRange, offset, len, || {
            Ok(disk::write_zeroes_cached(&file, offset, len)?)
        })
    }
}

/// vm-memory wraps the file's error; the disk's own error is what the caller needs.
fn volatile_error(err: VolatileMemoryError) -> io::Error {
    match err {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}
