//! The in-flight executor: what lets one virtio-blk worker keep several requests in flight.
//!
//! The worker stays the only thread that touches the virtqueue: it pops, parses, validates and
//! charges the rate limiter, parses each request into a [`Slot`] taken from the executor, and
//! hands the slot over with [`Executor::submit`]; the executor performs the disk work while the
//! worker goes on, signals its [`Executor::event`] (in the worker's epoll set) when requests
//! finish, and gives their completions back through [`Executor::reap`]. Two implementations:
//! - [`IoPool`]: `squib-blk-io` threads doing blocking positioned I/O, for any backend whose
//!   [`BlockBackend::concurrent_io`] is above 1;
//! - [`RingExecutor`]: an io_uring on the backend's file ([`BlockBackend::uring_target`]): the
//!   kernel does the I/O, no thread in between.
//!
//! Which one a worker gets is decided once, at activation, by [`Executor::start`]; a ring the
//! kernel refuses falls back to the pool (or to serving one request at a time), with a log line.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::backend::BlockBackend;
use super::config::ServeConfig;
use super::drive_state::DriveState;
use super::engine::uring::RingExecutor;
use super::io_pool::{IoPool, MAX_IO_THREADS};
use super::request::{Completion, ParsedRequest, RequestKind, SegmentBuf};
use crate::GuestMemory;

/// One request in flight and everything it needs, travelling to wherever it executes.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Which I/O thread or ring slot this slot belongs to.
    pub(super) index: usize,
    /// The request's data segments, parsed straight into the slot.
    pub(crate) segments: SegmentBuf,
    pub(super) request: Option<ParsedRequest>,
    /// The backend the request was validated against (a reference count, not an allocation):
    /// a backend swapped meanwhile does not change where an in-flight request goes.
    pub(super) backend: Option<Arc<dyn BlockBackend>>,
    pub(super) capacity: u64,
    pub(super) started: Instant,
    pub(super) completion: Completion,
}

impl Slot {
    pub(super) fn new(index: usize) -> Self {
        Self {
            index,
            segments: SegmentBuf::new(),
            request: None,
            backend: None,
            capacity: 0,
            started: Instant::now(),
            completion: Completion {
                head_index: 0,
                used_len: 0,
            },
        }
    }

    /// The request of a slot that [`Executor::submit`] could not hand over.
    pub(crate) fn take_request(&mut self) -> Option<ParsedRequest> {
        self.backend = None;
        self.request.take()
    }
}

/// The requests a worker keeps in flight, and where they execute.
#[derive(Debug)]
pub(crate) enum Executor {
    Pool(IoPool),
    /// Boxed: the ring's state is large, and allocated once per activation.
    Ring(Box<RingExecutor>),
}

impl Executor {
    /// The executor `backend` gains from, if any: its io_uring when it has one and the kernel
    /// allows it, else I/O threads when it asks for concurrency. `None`: the worker executes
    /// every request itself.
    pub(crate) fn start(
        backend: &Arc<dyn BlockBackend>,
        mem: &GuestMemory,
        serve: ServeConfig,
        shared: &Arc<DriveState>,
    ) -> Option<Self> {
        // Said at the first activation; later ones (a guest may reset in a loop) at debug.
        let loud = shared.first_executor_announcement();
        if let Some(target) = backend.uring_target() {
            match RingExecutor::new(backend, target, mem, serve, shared) {
                Ok(ring) => {
                    let (slots, fixed_buffers) = (ring.slots(), ring.has_fixed_buffers());
                    if loud {
                        info!(slots, fixed_buffers, "virtio-blk io_uring engine started");
                    } else {
                        debug!(slots, fixed_buffers, "virtio-blk io_uring engine started");
                    }
                    return Some(Self::Ring(Box::new(ring)));
                }
                Err(error) if loud => {
                    warn!(%error, "virtio-blk: cannot use io_uring; falling back to I/O threads");
                }
                Err(error) => {
                    debug!(%error, "virtio-blk: cannot use io_uring; falling back to I/O threads");
                }
            }
        }
        let threads = backend.concurrent_io().min(MAX_IO_THREADS);
        if threads <= 1 {
            return None;
        }
        match IoPool::spawn(threads, mem, serve, shared) {
            Ok(pool) => {
                debug!(threads, "virtio-blk I/O threads started");
                Some(Self::Pool(pool))
            }
            Err(error) => {
                warn!(%error, "cannot start virtio-blk I/O threads; serving one request at a time");
                None
            }
        }
    }

    /// How many requests to keep in flight on `backend`.
    pub(crate) fn max_in_flight(&self, backend: &Arc<dyn BlockBackend>) -> usize {
        match self {
            Self::Pool(pool) => backend.concurrent_io().clamp(1, pool.threads()),
            Self::Ring(ring) => ring.max_in_flight(backend),
        }
    }

    /// Whether a request of `kind` goes to the executor (the others execute on the worker).
    pub(crate) fn accepts(&self, kind: RequestKind) -> bool {
        match self {
            Self::Pool(_) => kind == RequestKind::DiskIo,
            // A FLUSH is only handed over with nothing in flight, so an fsync cannot overtake.
            Self::Ring(_) => matches!(kind, RequestKind::DiskIo | RequestKind::Barrier),
        }
    }

    /// Requests handed over and not yet taken back by [`Self::reap`].
    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Self::Pool(pool) => pool.in_flight(),
            Self::Ring(ring) => ring.in_flight(),
        }
    }

    /// Signalled when completions are waiting.
    pub(crate) fn event(&self) -> &EventFd {
        match self {
            Self::Pool(pool) => pool.event(),
            Self::Ring(ring) => ring.event(),
        }
    }

    /// Whether a completion is waiting, without a system call.
    pub(crate) fn has_completions(&mut self) -> bool {
        match self {
            Self::Pool(pool) => pool.has_completions(),
            Self::Ring(ring) => ring.has_completions(),
        }
    }

    /// An idle slot to parse the next request into.
    pub(crate) fn take_slot(&mut self) -> Option<Box<Slot>> {
        match self {
            Self::Pool(pool) => pool.take_slot(),
            Self::Ring(ring) => ring.take_slot(),
        }
    }

    /// Returns a slot whose request was not submitted.
    pub(crate) fn put_back(&mut self, slot: Box<Slot>) {
        match self {
            Self::Pool(pool) => pool.put_back(slot),
            Self::Ring(ring) => ring.put_back(slot),
        }
    }

    /// Hands `request`, parsed into `slot`, over. Gives the slot back when the executor cannot
    /// take it, for the caller to execute [`Slot::take_request`] itself.
    pub(crate) fn submit(
        &mut self,
        slot: Box<Slot>,
        request: ParsedRequest,
        backend: &Arc<dyn BlockBackend>,
        capacity: u64,
    ) -> Result<(), Box<Slot>> {
        match self {
            Self::Pool(pool) => pool.submit(slot, request, backend, capacity),
            Self::Ring(ring) => ring.submit(slot, request, backend, capacity),
        }
    }

    /// Starts the requests submitted since the last call (the ring submits a batch with one
    /// system call; the pool's threads started each at once).
    pub(crate) fn commit(&mut self) {
        if let Self::Ring(ring) = self {
            ring.commit();
        }
    }

    /// Whether the requests submitted so far should start now, before the drain ends (see
    /// [`RingExecutor::batch_full`]); the pool's threads start each at once.
    pub(crate) fn batch_full(&self) -> bool {
        match self {
            Self::Pool(_) => false,
            Self::Ring(ring) => ring.batch_full(),
        }
    }

    /// Waits until every request in flight is done, passing each completion to `complete`.
    pub(crate) fn wait_all<E>(
        &mut self,
        complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Self::Pool(pool) => pool.wait_all(complete),
            Self::Ring(ring) => ring.wait_all(complete),
        }
    }

    /// Takes back every finished request, passing each completion to `complete`.
    pub(crate) fn reap<E>(
        &mut self,
        complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<usize, E> {
        match self {
            Self::Pool(pool) => pool.reap(complete),
            Self::Ring(ring) => ring.reap(complete),
        }
    }
}
