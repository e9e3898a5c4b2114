//! A TAP's io_uring: frames written or read in batches, one system call per batch.
//!
//! Per MTU frame, the kernel's own TAP write (building the packet, the host's network stack)
//! costs about 1.1 µs of CPU on the test machine, and a `writev` per frame adds 0.45 µs of
//! system-call overhead on top: a bare loop writing 1514-byte frames to a TAP took 1.53 µs of
//! CPU per frame with `writev` and 1.07 µs with 32 writes per `io_uring_enter`. That overhead was
//! more than all of squib's own per-frame work, and reads pay it too.
//!
//! A TAP write never waits (a full host queue drops the frame, as a NIC would), and a read of
//! the non-blocking TAP returns `EAGAIN` at once when no frame waits, so every request completes
//! while it is submitted: when [`TapRing::run`] returns, the ring is empty again and no state
//! outlives a drain (pause, reset and snapshots never find a request in flight). Requests run in
//! the order they were pushed.
//!
//! The handler builds its rings the first time it moves a frame, in the worker, so activation
//! and snapshot restore do not pay for them. Without io_uring (an old kernel,
//! `kernel.io_uring_disabled`), or for a backend without a descriptor (the tests' in-memory
//! TAP), frames go one `readv`/`writev` each.

use std::io;
use std::os::fd::BorrowedFd;

use squib_host::guest_io::IOVECS_PER_CALL;
use squib_host::uring::{FileRing, PushError, RingConfig, RingError, RingOp};
use tracing::debug;
use vm_memory::GuestAddress;

use crate::GuestMemory;

/// Requests per `io_uring_enter`. 32 took the bare write loop from 1.53 to 1.07 µs per frame;
/// 64 only to 1.06.
pub(crate) const SLOTS: usize = 32;

/// Up to [`SLOTS`] requests on one TAP, each with the caller's `tag` (which chain it serves).
#[derive(Debug)]
pub(crate) struct TapRing<T> {
    /// `None` once the ring failed: [`TapRing::push`] then refuses every request.
    ring: Option<FileRing>,
    /// Per queued request, in push order (= slot order): its tag and, after [`run`](Self::run),
    /// its result (bytes, or the kind of error).
    requests: [(T, Result<usize, io::ErrorKind>); SLOTS],
    queued: usize,
}

impl<T: Copy + Default> TapRing<T> {
    /// A ring on `backend` moving frames to and from `mem`.
    pub(crate) fn new(backend: BorrowedFd<'_>, mem: &GuestMemory) -> Result<Self, RingError> {
        let config = RingConfig {
            slots: SLOTS as u16,
            segments_per_slot: IOVECS_PER_CALL,
            // Pinning all of guest memory buys nothing for frames of a few KiB.
            fixed_buffers: false,
            // Unregistered: at exit the TAP must be free for the next VMM at once (see the field).
            fixed_file: false,
            // A read of an empty TAP must come back with EAGAIN, not wait for a frame.
            never_wait: true,
            simulate_unavailable: None,
        };
        Ok(Self {
            ring: Some(FileRing::new(backend, mem, config)?),
            requests: [(T::default(), Ok(0)); SLOTS],
            queued: 0,
        })
    }

    /// Whether requests can still be queued (the ring works).
    pub(crate) fn is_usable(&self) -> bool {
        self.ring.is_some()
    }

    /// Requests queued since the last [`run`](Self::run).
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the next request must wait for a [`run`](Self::run).
    pub(crate) fn is_full(&self) -> bool {
        self.queued == SLOTS
    }

    /// Queues `op` (a read or a write) on `segments`, guest ranges each inside one memory
    /// region, tagged `tag`. Nothing is queued on error.
    pub(crate) fn push(
        &mut self,
        tag: T,
        op: RingOp,
        segments: &[(GuestAddress, usize)],
    ) -> Result<(), PushError> {
        let slot = self.queued;
        let refused = || PushError::NoSuchSlot(u16::try_from(slot).unwrap_or(u16::MAX));
        let ring = self.ring.as_mut().ok_or_else(refused)?;
        let (Some(request), Ok(number)) = (self.requests.get_mut(slot), u16::try_from(slot)) else {
            return Err(refused());
        };
        ring.push(number, op, segments.iter().copied(), None)?;
        *request = (tag, Err(io::ErrorKind::Interrupted));
        self.queued += 1;
        Ok(())
    }

    /// Submits every queued request with one `io_uring_enter` and waits for all of them; returns
    /// them in push order with their results. The ring is empty afterwards. If the ring itself
    /// fails, the requests it could not finish report `Interrupted` and the ring is dropped
    /// (waiting for anything in flight): later pushes are refused, and the caller moves frames
    /// one system call each, as without io_uring.
    pub(crate) fn run(&mut self) -> &[(T, Result<usize, io::ErrorKind>)] {
        let queued = std::mem::take(&mut self.queued);
        if queued > 0
            && let Err(error) = self.wait_all(queued)
        {
            debug!(%error, "virtio-net: the TAP's io_uring failed; one system call per frame");
            self.ring = None;
        }
        &self.requests[..queued]
    }

    fn wait_all(&mut self, queued: usize) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        let requests = &mut self.requests;
        let mut reaped = 0;
        while reaped < queued {
            // Every TAP request completes during submission, so this returns with all of them
            // posted; only a signal can end it early (then the loop waits for the rest).
            ring.submit_and_wait(queued - reaped)?;
            reaped += ring.reap(|done| {
                if let Some((_, result)) = requests.get_mut(usize::from(done.slot)) {
                    *result = done.result.map_err(|e| e.kind());
                }
            });
        }
        Ok(())
    }
}

/// How a direction of a device moves frames: decided at its first frame.
#[derive(Debug)]
pub(crate) enum TapPath<T> {
    /// Nothing moved yet.
    Undecided,
    /// Through a [`TapRing`] (boxed: the handler stays small without one).
    Batched(Box<TapRing<T>>),
    /// One system call per frame.
    Direct,
}

impl<T: Copy + Default> TapPath<T> {
    /// The ring, set up on the first call if `backend` has a descriptor and io_uring works;
    /// `None` for one system call per frame.
    pub(crate) fn ring(
        &mut self,
        backend: Option<BorrowedFd<'_>>,
        mem: &GuestMemory,
    ) -> Option<&mut TapRing<T>> {
        if matches!(self, Self::Undecided) {
            *self = match backend.map(|fd| TapRing::new(fd, mem)) {
                Some(Ok(ring)) => Self::Batched(Box::new(ring)),
                Some(Err(error)) => {
                    debug!(%error, "virtio-net: no io_uring for the TAP; one system call per frame");
                    Self::Direct
                }
                None => Self::Direct,
            };
        }
        match self {
            Self::Batched(ring) if ring.is_usable() => Some(ring),
            _ => None,
        }
    }
}
