//! The io_uring implementation of the in-flight [`Executor`](crate::block::executor::Executor).
//!
//! One ring per worker, on the file of the backend the worker started with
//! ([`BlockBackend::uring_target`]), driven through `squib_host::uring::FileRing`, which owns
//! every buffer the kernel may touch and waits for in-flight requests when dropped. Each of the
//! ring's slots has a [`Slot`] (segment buffer and request); a request is parsed into a free
//! slot, turned into one submission entry (readv/writev, their fixed-buffer forms for one segment
//! in registered memory, fdatasync, fallocate), and the worker's drain submits the batch with one
//! system call. When every slot is busy the worker stops popping: requests wait on the avail
//! ring (back-pressure), never in a queue of ours.
//!
//! A completion that is not a full success (an error, a short transfer, `fallocate` unsupported
//! by the filesystem) is executed again synchronously through the backend's own methods, which
//! carry the fallbacks and the error reporting; its outcome is final.

use std::sync::Arc;
use std::time::Instant;

use squib_host::block_io::DirectIoAlignment;
use squib_host::uring::{FileRing, RingCompletion, RingConfig, RingError, RingOp};
use tracing::{debug, error};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;
use crate::block::SEG_MAX;
use crate::block::backend::{BlockBackend, UringTarget};
use crate::block::config::ServeConfig;
use crate::block::drive_state::DriveState;
use crate::block::executor::Slot;
use crate::block::request::{Completion, DiskOp, ParsedRequest, RequestContext};

/// `ENOSYS`: what `io_uring_setup` returns on a kernel built without io_uring.
const ENOSYS: i32 = 38;

/// How many requests the worker queues on the ring before it starts them, rather than only at
/// the end of a drain. A page-cached read completes inside the `io_uring_enter` that starts it,
/// so a batch started as a whole at the end published nothing while the worker popped: at
/// QD 32 an interrupt-driven driver found its used ring empty, slept, and paid an interrupt per
/// batch (≈ 0.35× the IOPS of starting every 8; per request cost a polling driver 0.7× instead:
/// one system call each). Starting every 8 was within noise of the best for both (interleaved
/// runs, 2026-12-04, docs/perf/uring-2026-12-04.md); with O_DIRECT it starts the disk sooner.
const START_EVERY: usize = 8;

/// The ring of one worker and the slots of the requests it can hold.
#[derive(Debug)]
pub(crate) struct RingExecutor {
    /// First field: dropped first, it waits for the kernel to finish every request in flight.
    ring: FileRing,
    /// Idle slots; never grows past the ring's slots, so pushes do not allocate.
    free: Vec<Box<Slot>>,
    /// Busy slots, by slot number.
    busy: Box<[Option<Box<Slot>>]>,
    /// The backend whose file the ring registered: requests validated against another one (the
    /// API swapped the disk) execute through the backend instead.
    backend: Arc<dyn BlockBackend>,
    direct: Option<DirectIoAlignment>,
    mem: GuestMemory,
    serve: ServeConfig,
    shared: Arc<DriveState>,
}

impl RingExecutor {
    pub(crate) fn new(
        backend: &Arc<dyn BlockBackend>,
        target: UringTarget<'_>,
        mem: &GuestMemory,
        serve: ServeConfig,
        shared: &Arc<DriveState>,
    ) -> Result<Self, RingError> {
        let config = RingConfig {
            slots: target.slots,
            segments_per_slot: SEG_MAX,
            fixed_buffers: target.fixed_buffers,
            fixed_file: true,
            never_wait: false,
            simulate_unavailable: target.simulate_unavailable.then_some(ENOSYS),
        };
        let ring = FileRing::new(target.file, mem, config)?;
        let slots = ring.slots();
        Ok(Self {
            ring,
            free: (0..slots)
                .rev()
                .map(|index| Box::new(Slot::new(index)))
                .collect(),
            busy: (0..slots).map(|_| None).collect(),
            direct: target.direct,
            backend: Arc::clone(backend),
            mem: mem.clone(),
            serve,
            shared: Arc::clone(shared),
        })
    }

    pub(crate) fn slots(&self) -> usize {
        self.ring.slots()
    }

    pub(crate) fn has_fixed_buffers(&self) -> bool {
        self.ring.has_fixed_buffers()
    }

    /// Every slot for the ring's own backend; one at a time (executed on the worker) for a
    /// backend swapped in since.
    pub(crate) fn max_in_flight(&self, backend: &Arc<dyn BlockBackend>) -> usize {
        if Arc::ptr_eq(backend, &self.backend) {
            self.slots()
        } else {
            1
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.ring.in_flight()
    }

    pub(crate) fn event(&self) -> &EventFd {
        self.ring.event()
    }

    pub(crate) fn has_completions(&mut self) -> bool {
        self.ring.has_completions()
    }

    pub(crate) fn take_slot(&mut self) -> Option<Box<Slot>> {
        self.free.pop()
    }

    pub(crate) fn put_back(&mut self, slot: Box<Slot>) {
        self.free.push(slot);
    }

    /// Queues the request on the ring (started by the next [`Self::commit`]). Gives the slot
    /// back, request inside, when the ring cannot take it as it is.
    pub(crate) fn submit(
        &mut self,
        mut slot: Box<Slot>,
        request: ParsedRequest,
        backend: &Arc<dyn BlockBackend>,
        capacity: u64,
    ) -> Result<(), Box<Slot>> {
        let op = request.disk_op();
        slot.request = Some(request);
        slot.backend = Some(Arc::clone(backend));
        slot.capacity = capacity;
        let (Some(op), true) = (op, Arc::ptr_eq(backend, &self.backend)) else {
            return Err(slot);
        };
        let op = match op {
            DiskOp::Read { offset, .. } => RingOp::Read { offset },
            DiskOp::Write { offset, .. } => RingOp::Write { offset },
            DiskOp::Flush => RingOp::SyncData,
            DiskOp::Discard { offset, len } => RingOp::PunchHole { offset, len },
            DiskOp::WriteZeroes { offset, len } => RingOp::ZeroRange { offset, len },
        };
        let (Ok(number), Some(busy)) = (u16::try_from(slot.index), self.busy.get_mut(slot.index))
        else {
            return Err(slot);
        };
        let segments = slot
            .segments
            .as_slice()
            .iter()
            .map(|segment| (segment.addr, segment.len as usize));
        match self.ring.push(number, op, segments, self.direct) {
            Ok(()) => {
                slot.started = Instant::now();
                *busy = Some(slot);
                Ok(())
            }
            Err(reason) => {
                // Misaligned direct I/O, a segment across memory regions: the backend copes.
                debug!(%reason, "virtio-blk request executed off the io_uring");
                Err(slot)
            }
        }
    }

    /// Whether the requests queued so far should start now rather than at the end of the
    /// drain: every [`START_EVERY`] of them.
    pub(crate) fn batch_full(&self) -> bool {
        self.ring.queued() >= START_EVERY
    }

    /// Hands the requests queued since the last call to the kernel.
    pub(crate) fn commit(&mut self) {
        if let Err(error) = self.ring.submit() {
            // They stay queued: the next commit retries.
            error!(%error, "virtio-blk cannot submit to its io_uring");
        }
    }

    /// Waits until every request in flight is done, passing each completion to `complete` (a
    /// pause publishes everything before the queues are saved; unlike dropping the ring, nothing
    /// is cancelled).
    pub(crate) fn wait_all<E>(
        &mut self,
        mut complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<(), E> {
        self.commit();
        while self.ring.in_flight() > 0 {
            if self.reap(&mut complete)? > 0 {
                continue;
            }
            if let Err(error) = self.ring.submit_and_wait(1) {
                // Without a way to wait, dropping the ring later cancels and waits instead.
                error!(%error, "virtio-blk cannot wait for its io_uring requests");
                break;
            }
        }
        Ok(())
    }

    /// Takes back every finished request, passing each completion to `complete`.
    pub(crate) fn reap<E>(
        &mut self,
        mut complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<usize, E> {
        let Self {
            ring,
            free,
            busy,
            mem,
            serve,
            shared,
            ..
        } = self;
        let mut failed = None;
        let reaped = ring.reap(|done: RingCompletion| {
            let Some(mut slot) = busy.get_mut(usize::from(done.slot)).and_then(Option::take) else {
                return;
            };
            let completion = finish(&mut slot, done, mem, serve, shared);
            free.push(slot);
            if failed.is_none()
                && let Err(error) = complete(completion)
            {
                failed = Some(error);
            }
        });
        match failed {
            Some(error) => Err(error),
            None => Ok(reaped),
        }
    }
}

/// Writes the status of the request in `slot`, which the ring finished with `done`.
fn finish(
    slot: &mut Slot,
    done: RingCompletion,
    mem: &GuestMemory,
    serve: &ServeConfig,
    shared: &DriveState,
) -> Completion {
    let (Some(request), Some(backend)) = (slot.request.take(), slot.backend.take()) else {
        return slot.completion;
    };
    let ctx = RequestContext {
        mem,
        backend: backend.as_ref(),
        capacity: slot.capacity,
        serve,
        metrics: &shared.metrics,
    };
    let expected = match request.disk_op() {
        Some(DiskOp::Read { len, .. } | DiskOp::Write { len, .. }) => len,
        _ => 0,
    };
    slot.completion = match done.result {
        Ok(moved) if moved as u64 == expected => request.complete_performed(&ctx, slot.started),
        outcome => {
            debug!(
                ?outcome,
                expected, "io_uring request retried through the backend"
            );
            request.execute(&ctx, &slot.segments)
        }
    };
    slot.completion
}
