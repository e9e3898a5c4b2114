//! Transmit frames queued on an io_uring and written to the TAP with one system call per batch.
//!
//! Per MTU frame, the kernel's own TAP write (building the packet, the host's network stack)
//! costs about 1.1 µs of CPU on the test machine, and a `writev` per frame adds 0.45 µs of
//! system-call overhead on top: a bare loop writing 1514-byte frames to a TAP took 1.53 µs of
//! CPU per frame with `writev` and 1.07 µs with 32 writes per `io_uring_enter`. That overhead was
//! more than all of squib's own per-frame work. A TAP write never waits (a full host queue drops
//! the frame, as a NIC would), so every write completes while it is submitted: when
//! [`TxBatch::flush`] returns, the ring is empty again, and no state outlives a drain (pause,
//! reset and snapshots never find a write in flight).
//!
//! The handler builds a batch the first time it sends, in the worker, so activation and
//! snapshot restore do not pay for the ring. Without io_uring (an old kernel,
//! `kernel.io_uring_disabled`), or for a backend without a descriptor (the tests' in-memory
//! TAP), frames go one `writev` each.

use std::io;
use std::os::fd::BorrowedFd;

use squib_host::guest_io::IOVECS_PER_CALL;
use squib_host::uring::{FileRing, PushError, RingConfig, RingError, RingOp};
use tracing::debug;
use vm_memory::GuestAddress;

use super::metrics::{Counter, NetMetrics};
use crate::GuestMemory;
use crate::queue::{QueueError, VirtQueue};

/// Frames per `io_uring_enter`. 32 took the bare loop from 1.53 to 1.07 µs per frame; 64 only
/// to 1.06.
const SLOTS: usize = 32;

/// Frames waiting to be written, and the ring that writes them.
#[derive(Debug)]
pub(crate) struct TxBatch {
    /// `None` once the ring failed: [`TxBatch::push`] then refuses every frame.
    ring: Option<FileRing>,
    /// Per queued frame, in push order (= slot order): the chain's head and the frame's bytes
    /// without the header.
    frames: [(u16, u64); SLOTS],
    queued: usize,
    /// Per slot, whether its write succeeded (filled while reaping).
    sent: [bool; SLOTS],
}

impl TxBatch {
    /// A ring writing to `backend` from `mem`.
    pub(crate) fn new(backend: BorrowedFd<'_>, mem: &GuestMemory) -> Result<Self, RingError> {
        let config = RingConfig {
            slots: SLOTS as u16,
            segments_per_slot: IOVECS_PER_CALL,
            // Pinning all of guest memory buys nothing for writes of a few KiB.
            fixed_buffers: false,
            // Unregistered: at exit the TAP must be free for the next VMM at once (see the field).
            fixed_file: false,
            simulate_unavailable: None,
        };
        Ok(Self {
            ring: Some(FileRing::new(backend, mem, config)?),
            frames: [(0, 0); SLOTS],
            queued: 0,
            sent: [false; SLOTS],
        })
    }

    /// Whether frames can still be queued (the ring works).
    pub(crate) fn is_usable(&self) -> bool {
        self.ring.is_some()
    }

    /// Whether the next frame must wait for a [`flush`](Self::flush).
    pub(crate) fn is_full(&self) -> bool {
        self.queued == SLOTS
    }

    /// Queues the frame of chain `head` (`bytes` without the header) from `segments`, guest
    /// ranges each inside one memory region. Nothing is queued on error.
    pub(crate) fn push(
        &mut self,
        head: u16,
        bytes: u64,
        segments: &[(GuestAddress, usize)],
    ) -> Result<(), PushError> {
        let slot = self.queued;
        let ring = self
            .ring
            .as_mut()
            .ok_or(PushError::NoSuchSlot(slot as u16))?;
        let (Some(frame), Ok(number)) = (self.frames.get_mut(slot), u16::try_from(slot)) else {
            return Err(PushError::SlotBusy(slot as u16));
        };
        ring.push(
            number,
            RingOp::Write { offset: 0 },
            segments.iter().copied(),
            None,
        )?;
        *frame = (head, bytes);
        self.queued += 1;
        Ok(())
    }

    /// Writes every queued frame with one `io_uring_enter`, counts each as sent or failed, and
    /// completes their chains in the order they were queued; returns how many it completed.
    ///
    /// # Errors
    /// The queue's error when the used ring cannot be written (the device then needs a reset).
    pub(crate) fn flush(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemory,
        metrics: &NetMetrics,
    ) -> Result<usize, QueueError> {
        let queued = std::mem::take(&mut self.queued);
        if queued == 0 {
            return Ok(0);
        }
        self.sent = [false; SLOTS];
        if let Err(error) = self.write_all(queued) {
            // Nothing better to do than what a failed `writev` gets: the frames are lost and
            // counted, and the rest of this activation writes frame by frame. Dropping the ring
            // cancels and waits for whatever it still had in flight, before the chains go back.
            debug!(%error, "virtio-net: the TAP's io_uring failed; writing frame by frame");
            self.ring = None;
        }
        for (&(head, bytes), &sent) in self.frames[..queued].iter().zip(&self.sent) {
            if sent {
                metrics.tx_sent(bytes);
            } else {
                metrics.count(Counter::TapWriteFails);
                metrics.count(Counter::TxFails);
            }
            queue.complete(mem, head, 0)?;
        }
        Ok(queued)
    }

    /// Submits the queued writes and reaps all of their completions into `self.sent`.
    fn write_all(&mut self, queued: usize) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        let sent = &mut self.sent;
        let mut reaped = 0;
        while reaped < queued {
            // A TAP write completes during submission, so this returns with every completion
            // posted; only a signal can end it early (then the loop waits for the rest).
            ring.submit_and_wait(queued - reaped)?;
            reaped += ring.reap(|done| {
                if let Some(ok) = sent.get_mut(usize::from(done.slot)) {
                    *ok = done.result.is_ok();
                }
                if let Err(error) = done.result {
                    debug!(%error, "virtio-net: the TAP refused a frame");
                }
            });
        }
        Ok(())
    }
}
