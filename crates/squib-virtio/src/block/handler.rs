//! The virtio-blk [`DeviceHandler`]: what the device's worker (`crate::runtime`) runs for its
//! one queue.
//!
//! Polling: after a batch that served requests, the handler signals the completions, then spins
//! on the avail ring for an adaptive window ([`PollWindow`]) with guest notifications still
//! suppressed, so a driver that resubmits at once pays neither a notification nor the worker's
//! wake-up. Only when the window expires empty does it re-enable notifications, re-check the
//! ring and sleep. It never spins after an idle wake-up or while throttled, and work found by
//! polling goes back to the worker as [`Pending`], which looks at its other events first.
//!
//! Rate limiting: before a parsed request executes, [`BlockHandler::drain`] charges the limiter
//! one operation and the request's data bytes. When the limiter refuses, the chain is put back on
//! the ring (`VirtQueue::undo_pop`: a cursor step, no copy, no allocation), completed requests are
//! signalled, and the drain stops with guest notifications left disabled: nothing can be served
//! before the limiter's timer fd fires and resumes the drain. The limiter outlives the handler
//! (parked in [`DriveState`]), so a reset does not refill the buckets. Runtime updates arrive
//! through a slot in [`DriveState`] and an event that wakes the worker even while it waits for
//! the timer.
//!
//! Requests in flight: when the backend has an io_uring target or gains from concurrency
//! ([`BlockBackend::concurrent_io`] above 1), the handler starts an in-flight [`Executor`] (an
//! io_uring, or a pool of I/O threads) and hands it every validated request that reaches the
//! disk, popping more while fewer than its limit are in flight (the others wait on the avail
//! ring); the virtqueue, the limiter and the interrupt stay the worker's alone. Completions come
//! back through the executor's event. A FLUSH waits until the requests in flight are done, so it
//! never overtakes a write completed before it; a request that touches no disk (GET_ID, a
//! refused one) completes at once. A pause waits for the requests in flight and publishes them;
//! a reset drops the handler: the pool's threads finish their requests first, the ring cancels
//! what it can and waits for the rest.
//!
//! Every request checks [`WorkerContext::should_stop`] first: a guest that keeps the ring full
//! holds up a reset or a pause by one request at most.

use std::hint;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error, warn};
use vmm_sys_util::epoll::EventSet;

use crate::guest_error;

use super::backend::BlockBackend;
use super::config::ServeConfig;
use super::drive_state::{DriveState, usable_capacity};
use super::executor::{Executor, Slot};
use super::request::{ParsedRequest, RequestContext, RequestKind, SegmentBuf};
use crate::GuestMemory;
use crate::queue::{QueueError, VirtQueue};
use crate::rate_limiter::{RateLimiter, RateLimiterSpec};
use crate::runtime::poll::PollWindow;
use crate::runtime::{DeviceHandler, EventRegistry, Pending, StopSignal, WorkerContext};

/// The handler's own event tokens.
const TOKEN_LIMITER_TIMER: u32 = 0;
const TOKEN_LIMITER_UPDATE: u32 = 1;
const TOKEN_COMPLETIONS: u32 = 2;
/// virtio-blk has one queue.
const QUEUE: usize = 0;

/// What one activation of a virtio-blk device serves requests with.
#[derive(Debug)]
pub(crate) struct BlockHandler {
    mem: GuestMemory,
    shared: Arc<DriveState>,
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
}

impl BlockHandler {
    pub(crate) fn new(mem: GuestMemory, shared: Arc<DriveState>, serve: ServeConfig) -> Self {
        let (backend_epoch, backend) = shared.backend();
        Self {
            mem,
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
        }
    }

    /// Starts the in-flight executor the backend gains from (see [`Executor::start`]) and watches
    /// its completions, once per activation (a resumed worker keeps it) and again for a swapped
    /// backend. Without one the worker executes every request itself.
    fn start_executor(&mut self, events: &mut EventRegistry<'_>) -> io::Result<()> {
        if self.pool.is_none() {
            self.pool = Executor::start(&self.backend, &self.mem, self.serve, &self.shared);
        }
        self.max_in_flight = self
            .pool
            .as_ref()
            .map_or(1, |pool| pool.max_in_flight(&self.backend));
        if let Some(pool) = &self.pool {
            // Edge-triggered: the ring's eventfd is never read (no system call per batch); every
            // completion signal is a new edge, so none is missed.
            events.add(
                pool.event().as_raw_fd(),
                TOKEN_COMPLETIONS,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            )?;
        }
        Ok(())
    }

    /// Applies a pending `update_rate_limiter`, creating the limiter if the drive had none. A
    /// failure (the host refusing a timerfd) keeps the previous limits: the device serves on.
    fn apply_limiter_update(&mut self, events: &mut EventRegistry<'_>) {
        let Some(spec) = self.shared.take_limiter_update() else {
            return;
        };
        let RateLimiterSpec { bandwidth, ops } = spec;
        let applied = match self.limiter.as_mut() {
            Some(limiter) => limiter.update(bandwidth, ops),
            // A limiter whose timer is not watched would strand the queue: install it only once
            // epoll has its fd.
            None => RateLimiter::from_spec(spec).and_then(|limiter| {
                watch_timer(events, &limiter)?;
                self.limiter = Some(limiter);
                Ok(())
            }),
        };
        match applied {
            Ok(()) => debug!(?spec, "virtio-blk rate limiter updated"),
            Err(error) => error!(%error, ?spec, "virtio-blk rate limiter update failed"),
        }
    }

    /// Ends a drain: poll the ring (only after work, never while throttled), and if nothing came,
    /// re-enable notifications and re-check the ring before sleeping.
    fn after_drain(
        &mut self,
        drained: Drained,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        match drained {
            // Notifications stay disabled: a kick could not make the request go any sooner, and
            // a completion (the pool's event) or the limiter's timer wakes us to serve on. A stop
            // is the worker's to act on.
            Drained::Throttled | Drained::Full | Drained::Stopped => return Ok(Pending::NONE),
            Drained::Served if self.poll_ring(cx)? => return Ok(Pending::queue(QUEUE)),
            Drained::Served | Drained::Idle => {}
        }
        // Re-check after re-enabling notifications: a request published in between would
        // otherwise wait forever, because the driver saw notifications disabled.
        Ok(if cx.rearm(QUEUE)? {
            Pending::queue(QUEUE)
        } else {
            Pending::NONE
        })
    }

    /// Spins on `avail.idx` for the adaptive window; true when a request arrived. Guest
    /// notifications stay suppressed meanwhile (with EVENT_IDX, `avail_event` is not advanced), so
    /// a driver resubmitting within the window does not exit to notify us, and we do not pay the
    /// wake-up from `epoll_wait`.
    fn poll_ring(&mut self, cx: &mut WorkerContext<'_>) -> Result<bool, QueueError> {
        let Some(queue) = cx.queues.get(QUEUE) else {
            return Ok(false);
        };
        let window = self.poll.window();
        let start = Instant::now();
        // A request that came in without a kick since the last miss says nothing about it.
        self.missed_poll = None;
        loop {
            if queue.has_available(cx.mem)?
                || self.pool.as_mut().is_some_and(Executor::has_completions)
            {
                self.poll.hit();
                return Ok(true);
            }
            if start.elapsed() >= window || cx.should_stop() {
                self.missed_poll = Some(start);
                return Ok(false);
            }
            hint::spin_loop();
        }
    }

    /// Picks up a backend swapped by the API (one atomic load when nothing changed): the
    /// requests in flight on the old one finish and are published, the old one is flushed, then
    /// the new one serves, on an executor of its own: an io_uring is bound to its backend's file
    /// (and keeps it open), so the old one is closed and the new backend gets the engine it
    /// would have got at activation.
    fn adopt_swapped_backend(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemory,
        events: &mut EventRegistry<'_>,
    ) -> Result<(), QueueError> {
        if self.shared.backend_epoch() == self.backend_epoch {
            return Ok(());
        }
        if let Some(mut pool) = self.pool.take() {
            pool.wait_all(|completion| {
                queue.complete(mem, completion.head_index, completion.used_len)
            })?;
            if let Err(error) = events.remove(pool.event().as_raw_fd()) {
                warn!(%error, "virtio-blk: cannot stop watching the old backend's completions");
            }
        }
        // Logged where it fails; a FLUSH on the new backend cannot cover the old one, so the
        // error is as visible as a failed guest FLUSH would be.
        let _ = self.shared.flush_retired();
        let (epoch, backend) = self.shared.backend();
        self.capacity = usable_capacity(backend.as_ref());
        self.backend = backend;
        self.backend_epoch = epoch;
        if let Err(error) = self.start_executor(events) {
            // Without its completion event the executor could strand requests: serve them on
            // the worker instead.
            error!(%error, "virtio-blk: cannot watch the new backend's completions; serving one request at a time");
            self.pool = None;
            self.max_in_flight = 1;
        }
        Ok(())
    }

    /// Serves the requests on the ring until it is empty, the limiter refuses one, the I/O
    /// threads are all busy or the worker is asked to stop, then interrupts the driver if it
    /// asked for it: before any polling, so an interrupt-driven driver is not kept waiting by it.
    fn drain(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemory,
        stop: StopSignal<'_>,
    ) -> Result<Drained, QueueError> {
        let mut drained = if self.reap(queue, mem)? > 0 {
            Drained::Served
        } else {
            Drained::Idle
        };
        queue.disable_notification(mem)?;
        loop {
            if stop.is_set() {
                drained = Drained::Stopped;
                break;
            }
            // Requests handed to the I/O threads and not yet reaped.
            let in_flight = self.pool.as_ref().map_or(0, Executor::in_flight);
            // With I/O threads, the request is parsed into the slot it will travel in.
            let mut slot = match self.pool.as_mut() {
                None => None,
                Some(_) if in_flight >= self.max_in_flight => {
                    // A thread may have finished meanwhile: no need to sleep to find out.
                    if self.reap(queue, mem)? > 0 {
                        continue;
                    }
                    drained = Drained::Full;
                    break;
                }
                Some(pool) => pool.take_slot(),
            };
            let Some(chain) = queue.pop(mem)? else {
                self.put_back(slot);
                break;
            };
            let ctx = RequestContext {
                mem,
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
                queue.undo_pop();
                self.put_back(slot);
                drained = Drained::Full;
                break;
            }
            if let (Some(limiter), Some(bytes)) = (self.limiter.as_mut(), request.throttle_bytes())
                && !admit(limiter, bytes)
            {
                // Re-read from the ring when the timer fires.
                queue.undo_pop();
                ctx.metrics.record_throttled();
                self.put_back(slot);
                drained = Drained::Throttled;
                break;
            }
            drained = Drained::Served;
            let slot = match (slot, self.pool.as_mut()) {
                (Some(slot), Some(pool)) if pool.accepts(kind) => {
                    match pool.submit(slot, request, &self.backend, self.capacity) {
                        Ok(()) if pool.batch_full() => {
                            pool.commit();
                            self.reap(queue, mem)?;
                            continue;
                        }
                        Ok(()) => continue,
                        // The thread is gone, or the ring cannot take this request as it is:
                        // execute it here rather than lose it.
                        Err(mut slot) => {
                            if let Some(request) = slot.take_request() {
                                let completion = request.execute(&ctx, &slot.segments);
                                queue.complete(mem, completion.head_index, completion.used_len)?;
                            }
                            slot
                        }
                    }
                }
                (Some(slot), _) => {
                    let completion = request.execute(&ctx, &slot.segments);
                    queue.complete(mem, completion.head_index, completion.used_len)?;
                    slot
                }
                (None, _) => {
                    let completion = request.execute(&ctx, &self.segments);
                    queue.complete(mem, completion.head_index, completion.used_len)?;
                    continue;
                }
            };
            self.put_back(Some(slot));
        }
        // One system call starts the whole batch on a ring; what the kernel completed inside it
        // (page-cached reads) joins this batch's interrupt instead of waiting for the next.
        if let Some(pool) = self.pool.as_mut() {
            pool.commit();
            if self.reap(queue, mem)? > 0 && drained == Drained::Idle {
                drained = Drained::Served;
            }
        }
        Ok(drained)
    }

    /// Adds the requests the I/O threads finished to the used ring; returns how many.
    fn reap(&mut self, queue: &mut VirtQueue, mem: &GuestMemory) -> Result<usize, QueueError> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(0);
        };
        pool.reap(|completion| queue.complete(mem, completion.head_index, completion.used_len))
    }

    fn put_back(&mut self, slot: Option<Box<Slot>>) {
        if let (Some(slot), Some(pool)) = (slot, self.pool.as_mut()) {
            pool.put_back(slot);
        }
    }
}

impl DeviceHandler for BlockHandler {
    fn register(&mut self, events: &mut EventRegistry<'_>) -> io::Result<()> {
        events.add(
            self.shared.limiter_event().as_raw_fd(),
            TOKEN_LIMITER_UPDATE,
            EventSet::IN,
        )?;
        if let Some(limiter) = &self.limiter {
            watch_timer(events, limiter)?;
        }
        self.start_executor(events)?;
        // An update may have been queued while no worker ran.
        self.apply_limiter_update(events);
        Ok(())
    }

    /// Serves every available request the limiter allows, interrupts the driver if it asked for
    /// it, then polls the ring for a while if that batch did any work.
    fn process_queue(
        &mut self,
        index: usize,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        if index != QUEUE {
            return Ok(Pending::NONE);
        }
        if let Some(start) = self.missed_poll.take() {
            self.poll.woke_after_miss(start.elapsed());
        }
        let mem = cx.mem;
        let stop = cx.stop_signal();
        let Some(queue) = cx.queues.get_mut(QUEUE) else {
            return Ok(Pending::NONE);
        };
        if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            // Waiting for the limiter's timer: a guest kick changes nothing until it fires, but
            // requests already in flight still complete.
            if self.reap(queue, mem)? > 0 {
                cx.notify_used(QUEUE)?;
            }
            return Ok(Pending::NONE);
        }
        self.adopt_swapped_backend(queue, mem, &mut cx.events)?;
        let drained = if stop.is_set() {
            Drained::Stopped
        } else {
            let drained = self.drain(queue, mem, stop)?;
            cx.notify_used(QUEUE)?;
            drained
        };
        self.after_drain(drained, cx)
    }

    fn process_event(
        &mut self,
        token: u32,
        _events: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        // Not a guest kick: the poll miss it would measure is not over.
        match token {
            TOKEN_LIMITER_TIMER => {
                if let Some(limiter) = self.limiter.as_mut()
                    && let Err(error) = limiter.on_timer()
                {
                    guest_error!(%error, "virtio-blk rate limiter timer failed");
                }
            }
            TOKEN_LIMITER_UPDATE => {
                let _ = self.shared.limiter_event().read();
                self.apply_limiter_update(&mut cx.events);
            }
            // `process_queue` reaps them.
            TOKEN_COMPLETIONS => {}
            other => warn!(
                token = other,
                "unexpected event token in the virtio-blk handler"
            ),
        }
        Ok(Pending::queue(QUEUE))
    }

    /// Waits for the requests in flight and puts them on the used ring.
    fn quiesce(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        let mem = cx.mem;
        let Some(queue) = cx.queues.get_mut(QUEUE) else {
            return Ok(());
        };
        if let Some(pool) = self.pool.as_mut() {
            pool.wait_all(|completion| {
                queue.complete(mem, completion.head_index, completion.used_len)
            })?;
        }
        cx.notify_used(QUEUE)
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
    /// The worker was asked to stop or pause; the rest stays on the ring.
    Stopped,
}

impl Drop for BlockHandler {
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

fn watch_timer(events: &mut EventRegistry<'_>, limiter: &RateLimiter) -> io::Result<()> {
    events.add(limiter.as_raw_fd(), TOKEN_LIMITER_TIMER, EventSet::IN)
}
