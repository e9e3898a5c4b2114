//! The virtio-blk worker thread: one per active device, spawned at DRIVER_OK, stopped at reset
//! or drop. It sleeps in `epoll_wait` on the queue's notification `EventFd` (the ioeventfd the
//! guest's QueueNotify write signals) and a stop `EventFd`, so block I/O never runs on a vCPU.
//!
//! Polling: after a batch that served requests, the worker signals the completions, then spins
//! on the avail ring for an adaptive window ([`super::poll`]) with guest notifications still
//! suppressed, so a driver that resubmits at once pays neither a notification nor the worker's
//! wake-up. Only when the window expires empty does it re-enable notifications, re-check the
//! ring and sleep. It never spins after an idle wake-up or while throttled, and work found by
//! polling goes through a non-blocking `epoll_wait` first, so stop and limiter events wait at
//! most one window.
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
//!
//! Requests in flight: when the backend has an io_uring target or gains from concurrency
//! ([`BlockBackend::concurrent_io`] above 1), the worker starts an in-flight [`Executor`] (an
//! io_uring, or a pool of I/O threads) and hands it every validated request that reaches the
//! disk, popping more while fewer than its limit are in flight (the others wait on the avail
//! ring); the virtqueue, the limiter and the interrupt stay the worker's alone. Completions come
//! back through the executor's event, and the worker adds them to the used ring and interrupts
//! per batch, as for requests it executes itself. A FLUSH waits until the requests in flight are done, so it never overtakes a write
//! completed before it; a request that touches no disk (GET_ID, a refused one) completes at
//! once. A stop drops the executor: the pool's threads finish their requests first, the ring
//! cancels what it can and waits for the rest.

use std::hint;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tracing::{debug, error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::BlockBackend;
use super::device::ServeConfig;
use super::executor::{Executor, Slot};
use super::handle::{Shared, usable_capacity};
use super::poll::PollWindow;
use super::request::{ParsedRequest, RequestContext, RequestKind, SegmentBuf};
use crate::GuestMemory;
use crate::interrupt::Interrupt;
use crate::queue::{QueueError, VirtQueue};
use crate::rate_limiter::{RateLimiter, RateLimiterSpec};

/// epoll tokens.
const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_LIMITER_TIMER: u64 = 2;
const TOKEN_LIMITER_UPDATE: u64 = 3;
const TOKEN_COMPLETIONS: u64 = 4;

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
    /// Reused by every request executed on the worker: no allocation per request.
    segments: SegmentBuf,
    /// Where requests in flight execute (I/O threads or an io_uring), when the backend gains
    /// from more than one at once.
    pool: Option<Executor>,
    /// How many requests the executor may hold for the current backend.
    max_in_flight: usize,
    /// How long to poll the ring after a batch.
    poll: PollWindow,
    /// When the last poll that expired empty began: the next kick tells how late it was.
    missed_poll: Option<Instant>,
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
            pool: None,
            max_in_flight: 1,
            poll: PollWindow::new(),
            missed_poll: None,
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
        self.spawn_pool(&epoll);
        // An update may have been queued while no worker ran.
        self.apply_limiter_update(&epoll);
        // The driver may have published requests before we started listening.
        let mut next = self.serve_queue();
        let mut events = [EpollEvent::default(); 5];
        loop {
            // Work found by polling: look at the other events without sleeping, so a stop or a
            // limiter update is seen after at most one window even while the guest keeps us busy.
            let timeout = match next {
                Next::Sleep => -1,
                Next::Serve => 0,
            };
            let ready = match epoll.wait(timeout, &mut events) {
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
                        if let Some(start) = self.missed_poll.take() {
                            self.poll.woke_after_miss(start.elapsed());
                        }
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
                    // `serve_queue` below reaps them.
                    TOKEN_COMPLETIONS => {}
                    other => warn!(token = other, "unexpected epoll token in virtio-blk worker"),
                }
            }
            next = self.serve_queue();
        }
    }

    /// Starts the in-flight executor the backend gains from (see [`Executor::start`]). Without
    /// one the worker executes every request itself.
    fn spawn_pool(&mut self, epoll: &Epoll) {
        let Some(executor) = Executor::start(&self.backend, &self.mem, self.serve, &self.shared)
        else {
            return;
        };
        let watched = epoll.ctl(
            ControlOperation::Add,
            executor.event().as_raw_fd(),
            // Edge-triggered: the ring's eventfd is never read (no system call per batch); every
            // completion signal is a new edge, so none is missed.
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TOKEN_COMPLETIONS),
        );
        match watched {
            Ok(()) => {
                self.max_in_flight = executor.max_in_flight(&self.backend);
                self.pool = Some(executor);
            }
            Err(error) => {
                warn!(%error, "cannot watch virtio-blk completions; serving one request at a time");
            }
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

    /// Serves every available request the limiter allows, interrupts the driver if it asked for
    /// it, then polls the ring for a while if that batch did any work. Returns what the worker
    /// should do next.
    fn serve_queue(&mut self) -> Next {
        if self.broken {
            // Nothing goes on a broken ring; the slots are free for after the reset.
            if let Some(pool) = self.pool.as_mut() {
                let _ = pool.reap(|_| Ok::<(), QueueError>(()));
            }
            return Next::Sleep;
        }
        let served = if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            // Waiting for the limiter's timer: a guest kick changes nothing until it fires, but
            // requests already in flight still complete.
            self.complete_in_flight().map(|()| Next::Sleep)
        } else {
            self.adopt_swapped_backend();
            self.drain().and_then(|drained| self.after_drain(drained))
        };
        match served {
            Ok(next) => next,
            Err(error) => {
                error!(%error, "virtio-blk queue stopped; the device needs a reset");
                self.broken = true;
                self.interrupt.signal_needs_reset();
                Next::Sleep
            }
        }
    }

    /// Ends a drain: poll the ring (only after work, never while throttled), and if nothing came,
    /// re-enable notifications and re-check the ring before sleeping.
    fn after_drain(&mut self, drained: Drained) -> Result<Next, QueueError> {
        match drained {
            // Notifications stay disabled: a kick could not make the request go any sooner, and
            // a completion (the pool's event) or the limiter's timer wakes us to serve on.
            Drained::Throttled | Drained::Full => return Ok(Next::Sleep),
            Drained::Served if self.poll_ring()? => return Ok(Next::Serve),
            Drained::Served | Drained::Idle => {}
        }
        // Re-check after re-enabling notifications: a request published in between would
        // otherwise wait forever, because the driver saw notifications disabled.
        Ok(if self.queue.enable_notification(&self.mem)? {
            Next::Serve
        } else {
            Next::Sleep
        })
    }

    /// Spins on `avail.idx` for the adaptive window; true when a request arrived. Guest
    /// notifications stay suppressed meanwhile (with EVENT_IDX, `avail_event` is not advanced), so
    /// a driver resubmitting within the window does not exit to notify us, and we do not pay the
    /// wake-up from `epoll_wait`.
    fn poll_ring(&mut self) -> Result<bool, QueueError> {
        let window = self.poll.window();
        let start = Instant::now();
        // A request that came in without a kick since the last miss says nothing about it.
        self.missed_poll = None;
        loop {
            if self.queue.has_available(&self.mem)?
                || self.pool.as_mut().is_some_and(Executor::has_completions)
            {
                self.poll.hit();
                return Ok(true);
            }
            if start.elapsed() >= window {
                self.missed_poll = Some(start);
                return Ok(false);
            }
            hint::spin_loop();
        }
    }

    /// Picks up a backend swapped by the API (one atomic load when nothing changed).
    fn adopt_swapped_backend(&mut self) {
        if self.shared.backend_epoch() != self.backend_epoch {
            let (epoch, backend) = self.shared.backend();
            self.capacity = usable_capacity(backend.as_ref());
            if let Some(pool) = &self.pool {
                self.max_in_flight = pool.max_in_flight(&backend);
            }
            self.backend = backend;
            self.backend_epoch = epoch;
        }
    }

    /// Serves the requests on the ring until it is empty, the limiter refuses one or the I/O
    /// threads are all busy, then interrupts the driver if it asked for it: before any polling,
    /// so an interrupt-driven driver is not kept waiting by it.
    fn drain(&mut self) -> Result<Drained, QueueError> {
        let mut drained = if self.reap()? > 0 {
            Drained::Served
        } else {
            Drained::Idle
        };
        self.queue.disable_notification(&self.mem)?;
        loop {
            // Requests handed to the I/O threads and not yet reaped.
            let in_flight = self.pool.as_ref().map_or(0, Executor::in_flight);
            // With I/O threads, the request is parsed into the slot it will travel in.
            let mut slot = match self.pool.as_mut() {
                None => None,
                Some(_) if in_flight >= self.max_in_flight => {
                    // A thread may have finished meanwhile: no need to sleep to find out.
                    if self.reap()? > 0 {
                        continue;
                    }
                    drained = Drained::Full;
                    break;
                }
                Some(pool) => pool.take_slot(),
            };
            let Some(chain) = self.queue.pop(&self.mem)? else {
                self.put_back(slot);
                break;
            };
            let ctx = RequestContext {
                mem: &self.mem,
                backend: self.backend.as_ref(),
                capacity: self.capacity,
                serve: &self.serve,
                metrics: &self.shared.metrics,
            };
            let segments = match slot.as_mut() {
                Some(slot) => &mut slot.segments,
                None => &mut self.segments,
            };
            let request = ParsedRequest::parse(chain, &ctx, segments);
            let kind = request.kind();
            if kind == RequestKind::Barrier && in_flight > 0 {
                // Re-read once the requests in flight are done: their completions wake us.
                self.queue.undo_pop();
                self.put_back(slot);
                drained = Drained::Full;
                break;
            }
            if let (Some(limiter), Some(bytes)) = (self.limiter.as_mut(), request.throttle_bytes())
                && !admit(limiter, bytes)
            {
                // Re-read from the ring when the timer fires.
                self.queue.undo_pop();
                ctx.metrics.record_throttled();
                self.put_back(slot);
                drained = Drained::Throttled;
                break;
            }
            drained = Drained::Served;
            let slot = match (slot, self.pool.as_mut()) {
                (Some(slot), Some(pool)) if pool.accepts(kind) => {
                    match pool.submit(slot, request, &self.backend, self.capacity) {
                        Ok(()) => continue,
                        // The thread is gone, or the ring cannot take this request as it is:
                        // execute it here rather than lose it.
                        Err(mut slot) => {
                            if let Some(request) = slot.take_request() {
                                let completion = request.execute(&ctx, &slot.segments);
                                self.queue.complete(
                                    &self.mem,
                                    completion.head_index,
                                    completion.used_len,
                                )?;
                            }
                            slot
                        }
                    }
                }
                (Some(slot), _) => {
                    let completion = request.execute(&ctx, &slot.segments);
                    self.queue
                        .complete(&self.mem, completion.head_index, completion.used_len)?;
                    slot
                }
                (None, _) => {
                    let completion = request.execute(&ctx, &self.segments);
                    self.queue
                        .complete(&self.mem, completion.head_index, completion.used_len)?;
                    continue;
                }
            };
            self.put_back(Some(slot));
        }
        // One system call starts the whole batch on a ring; what the kernel completed inside it
        // (page-cached reads) joins this batch's interrupt instead of waiting for the next.
        if let Some(pool) = self.pool.as_mut() {
            pool.commit();
            if self.reap()? > 0 && drained == Drained::Idle {
                drained = Drained::Served;
            }
        }
        if self.queue.needs_notification(&self.mem)? {
            self.interrupt.signal_used_buffer();
        }
        Ok(drained)
    }

    /// Adds the requests the I/O threads finished to the used ring; returns how many.
    fn reap(&mut self) -> Result<usize, QueueError> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(0);
        };
        let (queue, mem) = (&mut self.queue, &self.mem);
        pool.reap(|completion| queue.complete(mem, completion.head_index, completion.used_len))
    }

    /// Completes the finished requests in flight and interrupts the driver if it asked for it.
    fn complete_in_flight(&mut self) -> Result<(), QueueError> {
        if self.reap()? > 0 && self.queue.needs_notification(&self.mem)? {
            self.interrupt.signal_used_buffer();
        }
        Ok(())
    }

    fn put_back(&mut self, slot: Option<Box<Slot>>) {
        if let (Some(slot), Some(pool)) = (slot, self.pool.as_mut()) {
            pool.put_back(slot);
        }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// The ring was empty: nothing was served.
    Idle,
    /// Requests were served and the ring is empty.
    Served,
    /// The limiter refused a request; it waits on the ring for the limiter's timer.
    Throttled,
    /// Requests in flight must finish first (every I/O thread is busy, or a FLUSH waits for
    /// them); their completions wake the worker.
    Full,
}

/// What the worker does after serving the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Sleep until an event arrives.
    Sleep,
    /// Serve the queue again after a non-blocking look at the events.
    Serve,
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
