//! `MemDisk`: a `BlockBackend` over a `Vec<u8>`, for tests that do not need a file.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use vm_memory::Bytes;

use crate::GuestMemory;
use crate::block::backend::{BackendError, BlockBackend, Segment};

/// An in-memory disk. Can be told to fail every operation, to test the device's IOERR path.
#[derive(Debug)]
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    failing: AtomicBool,
    flushes: AtomicU64,
}

impl MemDisk {
    /// A zero-filled read-write disk of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self::with_contents(vec![0; size], false)
    }

    /// A disk holding `contents`.
    pub fn with_contents(contents: Vec<u8>, read_only: bool) -> Self {
        Self {
            data: Mutex::new(contents),
            read_only,
            failing: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        }
    }

    /// A copy of the disk's bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Makes every later operation fail with an I/O error (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// How many flushes reached the disk.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the failure switch, read-only-ness and the range; returns the range as indexes.
    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(usize, usize), BackendError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(BackendError::Io(std::io::Error::other(
                "MemDisk told to fail",
            )));
        }
        if write && self.read_only {
            return Err(BackendError::ReadOnly);
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok((offset as usize, end as usize)),
            _ => Err(BackendError::OutOfRange { offset, len, size }),
        }
    }
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let (mut pos, _) = self.check(offset, total_len(segments), false)?;
        let data = self.lock();
        for s in segments {
            let end = pos + s.len as usize;
            mem.write_slice(&data[pos..end], s.addr)
                .map_err(|_| BackendError::GuestMemory {
                    addr: s.addr.0,
                    len: s.len,
                })?;
            pos = end;
        }
        Ok(())
    }

    fn write_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let (mut pos, _) = self.check(offset, total_len(segments), true)?;
        let mut data = self.lock();
        for s in segments {
            let end = pos + s.len as usize;
            mem.read_slice(&mut data[pos..end], s.addr)
                .map_err(|_| BackendError::GuestMemory {
                    addr: s.addr.0,
                    len: s.len,
                })?;
            pos = end;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.check(0, 0, false)?;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        let (start, end) = self.check(offset, len, true)?;
        self.lock()[start..end].fill(0);
        Ok(())
    }
}
