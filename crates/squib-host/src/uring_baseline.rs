//! A bare io_uring loop: 4 KiB reads or writes at a fixed queue depth on one file, into plain
//! buffers, with nothing of squib around it (no guest memory, no slots, no request parsing).
//! It exists only as the limit the backend benchmark compares squib's ring with (`benches/
//! backend.rs`); the VMM never uses it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

/// Bytes per request.
pub const BLOCK: usize = 4096;

/// A ring with `depth` 4 KiB buffers (4 KiB aligned, as O_DIRECT needs).
pub struct BareRing {
    ring: IoUring,
    /// `depth` blocks plus room to align the first.
    storage: Vec<u8>,
    start: usize,
    depth: usize,
    in_flight: usize,
    /// Slots freed by one batch of completions (capacity `depth`, reused).
    freed: Vec<usize>,
    _file: File,
}

impl BareRing {
    /// Sets up a ring of `depth` entries on a duplicate of `file`, registered as fixed file 0.
    ///
    /// # Errors
    /// The `io_uring_setup` or registration error.
    pub fn new(file: &File, depth: usize) -> io::Result<Self> {
        let depth = depth.max(1);
        let entries = u32::try_from(depth.next_power_of_two())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ring = IoUring::new(entries)?;
        let file = file.try_clone()?;
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        let storage = vec![0x5a; (depth + 1) * BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        Ok(Self {
            ring,
            storage,
            start,
            depth,
            in_flight: 0,
            freed: Vec::with_capacity(depth),
            _file: file,
        })
    }

    /// Runs `count` requests (reads, or writes when `write`) at the offsets `offsets` yields,
    /// keeping `depth` in flight; returns when all have completed.
    ///
    /// # Errors
    /// A failed or short request, or the `io_uring_enter` error.
    pub fn run(
        &mut self,
        count: u64,
        write: bool,
        mut offsets: impl FnMut() -> u64,
    ) -> io::Result<()> {
        let mut issued = 0;
        let mut done = 0;
        for slot in 0..self.depth {
            if issued == count {
                break;
            }
            self.push(slot, write, offsets())?;
            issued += 1;
        }
        while done < count {
            self.ring.submit_and_wait(1)?;
            self.freed.clear();
            let mut failed = None;
            for cqe in self.ring.completion() {
                self.in_flight -= 1;
                done += 1;
                if usize::try_from(cqe.result()).ok() != Some(BLOCK) {
                    failed = Some(cqe.result());
                }
                self.freed.push(cqe.user_data() as usize);
            }
            if let Some(result) = failed {
                return Err(io::Error::other(format!("request result {result}")));
            }
            for index in 0..self.freed.len() {
                if issued < count {
                    self.push(self.freed[index], write, offsets())?;
                    issued += 1;
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, slot: usize, write: bool, offset: u64) -> io::Result<()> {
        let at = self.start + slot * BLOCK;
        let buf = self.storage[at..at + BLOCK].as_mut_ptr();
        let entry = if write {
            opcode::Write::new(types::Fixed(0), buf, BLOCK as u32)
                .offset(offset)
                .build()
        } else {
            opcode::Read::new(types::Fixed(0), buf, BLOCK as u32)
                .offset(offset)
                .build()
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: `buf` points at this slot's BLOCK bytes of `self.storage`, which is never
        // resized or touched by Rust code while the ring lives, and each slot has one request in
        // flight at a time (`run` pushes a slot again only after reaping it, and waits for every
        // request before returning). `Drop` below waits for the ring to be idle before freeing.
        // The fd is the registered duplicate kept open by `self._file`.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        self.in_flight += 1;
        Ok(())
    }
}

impl std::fmt::Debug for BareRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareRing")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Drop for BareRing {
    fn drop(&mut self) {
        // A `run` that failed may leave requests in flight: wait for them before the buffers go.
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                // The kernel may still write the buffers: leak them rather than free them.
                std::mem::forget(std::mem::take(&mut self.storage));
                return;
            }
            self.in_flight -= self.ring.completion().count().min(self.in_flight);
        }
    }
}
