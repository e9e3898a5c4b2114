//! The virtio-blk worker thread: one per active device, spawned at DRIVER_OK, stopped at reset
//! or drop. It sleeps in `epoll_wait` on the queue's notification `EventFd` (the ioeventfd the
//! guest's QueueNotify write signals) and a stop `EventFd`, so block I/O never runs on a vCPU.
//!
//! Rate limiting: before a parsed request executes, [`Worker::drain`] charges the limiter one
//! operation and the request's data bytes. When the limiter refuses, the chain is put back on
//! the ring (`VirtQueue::undo_pop`: a cursor step, no copy, no allocation), completed requests
//! are signalled, and the drain stops with guest notifications left disabled: nothing can be
//! served before the limiter's timer fd, which has an epoll token of its own, fires and resumes
//! the drain. The stop event stays in the same epoll set, so a throttled worker still stops at
//! once on reset; the limiter outlives the worker (parked in [`Shared`]), so a reset does not
//! refill the buckets. Runtime updates arrive through a slot in [`Shared`] and an event that
//! wakes the worker even while it waits for the timer.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{debug, error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::BlockBackend;
use super::device::ServeConfig;
use super::handle::{Shared, usable_capacity};
use super::request::{ParsedRequest, RequestContext, SegmentBuf};
use crate::GuestMemory;
use crate::interrupt::Interrupt;
use crate::queue::{QueueError, VirtQueue};
use crate::rate_limiter::{RateLimiter, RateLimiterSpec};

/// epoll tokens.
const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_LIMITER_TIMER: u64 = 2;
const TOKEN_LIMITER_UPDATE: u64 = 3;

/// Everything the worker thread owns.
#[derive(Debug)]
pub(crate) struct Worker {
    mem: GuestMemory,
    queue: VirtQueue,
    queue_event: EventFd,
    interrupt: Arc<Interrupt>,
    shared: Arc<Shared>,
    serve: ServeConfig,
    backend: Arc<dyn BlockBackend>,
    backend_epoch: u64,
    capacity: u64,
    /// Taken from [`Shared`] for the worker's life and parked there again on drop.
    limiter: Option<RateLimiter>,
    /// Reused by every request: no allocation per request.
    segments: SegmentBuf,
    /// The driver broke the ring protocol: serve nothing until reset.
    broken: bool,
}

impl Worker {
    pub(crate) fn new(
        mem: GuestMemory,
        queue: VirtQueue,
        queue_event: EventFd,
        interrupt: Arc<Interrupt>,
        shared: Arc<Shared>,
        serve: ServeConfig,
    ) -> Self {
        let (backend_epoch, backend) = shared.backend();
        Self {
            mem,
            queue,
            queue_event,
            interrupt,
            capacity: usable_capacity(backend.as_ref()),
            backend,
            backend_epoch,
            limiter: shared.take_limiter(),
            shared,
            serve,
            segments: SegmentBuf::new(),
            broken: false,
        }
    }

    fn run(mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let fixed = [
            (self.queue_event.as_raw_fd(), TOKEN_QUEUE),
            (stop.as_raw_fd(), TOKEN_STOP),
            (
                self.shared.limiter_event().as_raw_fd(),
                TOKEN_LIMITER_UPDATE,
            ),
        ];
        for (fd, token) in fixed {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        if let Some(limiter) = &self.limiter {
            watch_timer(&epoll, limiter)?;
        }
        // An update may have been queued while no worker ran.
        self.apply_limiter_update(&epoll);
        // The driver may have published requests before we started listening.
        self.serve_queue();
        let mut events = [EpollEvent::default(); 4];
        loop {
            let ready = match epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            // Stop first, whatever else is ready: a reset must not wait for a batch of I/O.
            if events[..ready].iter().any(|e| e.data() == TOKEN_STOP) {
                return Ok(());
            }
            for event in &events[..ready] {
                match event.data() {
                    TOKEN_QUEUE => {
                        // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
                        let _ = self.queue_event.read();
                    }
                    TOKEN_LIMITER_TIMER => {
                        if let Some(limiter) = self.limiter.as_mut() {
                            limiter.on_timer()?;
                        }
                    }
                    TOKEN_LIMITER_UPDATE => {
                        let _ = self.shared.limiter_event().read();
                        self.apply_limiter_update(&epoll);
                    }
                    other => warn!(token = other, "unexpected epoll token in virtio-blk worker"),
                }
            }
            self.serve_queue();
        }
    }

    /// Applies a pending `update_rate_limiter`, creating the limiter if the drive had none. A
    /// failure (the host refusing a timerfd) keeps the previous limits: the device serves on.
    fn apply_limiter_update(&mut self, epoll: &Epoll) {
        let Some(spec) = self.shared.take_limiter_update() else {
            return;
        };
        let RateLimiterSpec { bandwidth, ops } = spec;
        let applied = match self.limiter.as_mut() {
            Some(limiter) => limiter.update(bandwidth, ops),
            // A limiter whose timer is not watched would strand the queue: install it only once
            // epoll has its fd.
            None => RateLimiter::from_spec(spec).and_then(|limiter| {
                watch_timer(epoll, &limiter)?;
                self.limiter = Some(limiter);
                Ok(())
            }),
        };
        match applied {
            Ok(()) => debug!(?spec, "virtio-blk rate limiter updated"),
            Err(error) => error!(%error, ?spec, "virtio-blk rate limiter update failed"),
        }
    }

    /// Serves every available request the limiter allows, then interrupts the driver if it
    /// asked for it.
    fn serve_queue(&mut self) {
        if self.broken {
            return;
        }
        // Waiting for the limiter's timer: a guest kick changes nothing until it fires.
        if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return;
        }
        self.adopt_swapped_backend();
        if let Err(error) = self.drain() {
            error!(%error, "virtio-blk queue stopped; the device needs a reset");
            self.broken = true;
            self.interrupt.signal_needs_reset();
        }
    }

    /// Picks up a backend swapped by the API (one atomic load when nothing changed).
    fn adopt_swapped_backend(&mut self) {
        if self.shared.backend_epoch() != self.backend_epoch {
            let (epoch, backend) = self.shared.backend();
            self.capacity = usable_capacity(backend.as_ref());
            self.backend = backend;
            self.backend_epoch = epoch;
        }
    }

    fn drain(&mut self) -> Result<(), QueueError> {
        let ctx = RequestContext {
            mem: &self.mem,
            backend: self.backend.as_ref(),
            capacity: self.capacity,
            serve: &self.serve,
            metrics: &self.shared.metrics,
        };
        'drain: loop {
            self.queue.disable_notification(&self.mem)?;
            while let Some(chain) = self.queue.pop(&self.mem)? {
                let request = ParsedRequest::parse(chain, &ctx, &mut self.segments);
                if let (Some(limiter), Some(bytes)) =
                    (self.limiter.as_mut(), request.throttle_bytes())
                    && !admit(limiter, bytes)
                {
                    // Re-read from the ring when the timer fires. Notifications stay disabled:
                    // a kick could not make this request go any sooner.
                    self.queue.undo_pop();
                    ctx.metrics.record_throttled();
                    break 'drain;
                }
                let completion = request.execute(&ctx);
                self.queue
                    .complete(&self.mem, completion.head_index, completion.used_len)?;
            }
            // Re-check after re-enabling notifications: a request published in between would
            // otherwise wait forever, because the driver saw notifications disabled.
            if !self.queue.enable_notification(&self.mem)? {
                break;
            }
        }
        if self.queue.needs_notification(&self.mem)? {
            self.interrupt.signal_used_buffer();
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The buckets' state belongs to the device, not to one activation.
        self.shared.park_limiter(self.limiter.take());
    }
}

/// Charges `limiter` for one request moving `bytes`; false when the request must wait.
///
/// A request larger than a bucket is not refused forever: the limiter lets it through once the
/// bucket is full, emptying it and leaving the excess as a debt that later refills repay first
/// (see [`crate::rate_limiter`]). If the timer cannot be armed the request is let through rather
/// than stranded with nothing to resume the queue.
fn admit(limiter: &mut RateLimiter, bytes: u64) -> bool {
    match limiter.consume(bytes) {
        Ok(Ok(())) => true,
        Ok(Err(_throttled)) => false,
        Err(error) => {
            error!(%error, "virtio-blk rate limiter cannot arm its timer; not throttling");
            true
        }
    }
}

fn watch_timer(epoll: &Epoll, limiter: &RateLimiter) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        limiter.as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_LIMITER_TIMER),
    )
}

/// The running worker thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub(crate) fn spawn(worker: Worker) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_for_thread = stop.try_clone()?;
        let thread = thread::Builder::new()
            .name("squib-blk".into())
            .spawn(move || {
                if let Err(error) = worker.run(&stop_for_thread) {
                    error!(%error, "virtio-blk worker cannot wait for events; it stopped");
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Err(error) = self.stop.write(1) {
            // Without the stop event the join below would hang: leave the thread detached.
            error!(%error, "cannot stop the virtio-blk worker; detaching it");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the virtio-blk worker panicked");
        }
    }
}
