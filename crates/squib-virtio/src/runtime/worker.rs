//! The device worker thread: one per active device, running any [`DeviceHandler`].
//!
//! The worker sleeps in `epoll_wait` on the queues' notification `EventFd`s (the ioeventfds the
//! guest's QueueNotify writes signal, so the vCPU never runs device code), a wake-up `EventFd` for
//! its owner, and whatever the handler registered. Queue work goes to the handler; a handler that
//! has more to do returns it as [`Pending`], and the worker takes a non-blocking look at its events
//! before serving it, so stop and pause wait for at most one batch — and, because handlers check
//! [`WorkerContext::should_stop`] between requests, at most one request.
//!
//! A [`QueueError`] from the handler means the driver broke the ring protocol: the worker signals
//! DEVICE_NEEDS_RESET and serves nothing more until its owner stops it (the device reset).
//!
//! Stopping returns the handler and the queues to the owner ([`WorkerExit`]): a pause keeps them
//! (their state is what a snapshot saves, and resuming spawns a new worker on them); a reset
//! drops them.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::handler::{
    ControlWord, DeviceHandler, EventRegistry, MAX_QUEUES, Pending, Request, WorkerContext,
};
use crate::GuestMemory;
use crate::interrupt::VirtioInterrupt;
use crate::queue::{QueueError, VirtQueue};

/// Worker threads run device code only (no deep recursion, no large stack buffers).
const WORKER_STACK: usize = 256 * 1024;
/// epoll tokens: queue `i` is `i`; the owner's wake-up and the handler's descriptors live above.
const TOKEN_WAKE: u64 = 1 << 32;
const TOKEN_HANDLER: u64 = 2 << 32;

pub(crate) fn handler_token(token: u32) -> u64 {
    TOKEN_HANDLER | u64::from(token)
}

/// What a worker serves: guest memory, the queues with their notification events, and the
/// interrupt. Handed to the worker at activation and back when it stops.
#[derive(Debug)]
pub struct QueueParts {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues, in index order.
    pub queues: Vec<VirtQueue>,
    /// One notification `EventFd` per queue (the VMM's ioeventfds signal them).
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A stopped worker's handler and queues.
#[derive(Debug)]
pub struct WorkerExit<H> {
    /// The handler, with whatever state it kept.
    pub handler: H,
    /// The queues, as far as the device got through them.
    pub parts: QueueParts,
    /// Whether the driver broke a ring (the device needs a reset before serving again).
    pub broken: bool,
}

/// A running worker thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct DeviceWorker<H: DeviceHandler> {
    control: Arc<ControlWord>,
    wake: EventFd,
    thread: Option<JoinHandle<WorkerExit<H>>>,
}

impl<H: DeviceHandler + std::fmt::Debug> DeviceWorker<H> {
    /// Starts a worker named `name` serving `parts` with `handler`. Queues whose bit is set in
    /// `disabled` (the driver stopped them) are not served.
    pub fn spawn(name: &str, handler: H, parts: QueueParts, disabled: u64) -> io::Result<Self> {
        let control = Arc::new(ControlWord::default());
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker {
            handler,
            parts,
            disabled,
            control: Arc::clone(&control),
            wake: wake.try_clone()?,
        };
        let thread = thread::Builder::new()
            .name(name.into())
            .stack_size(WORKER_STACK)
            .spawn(move || {
                crate::threads::on_thread_start(crate::threads::WorkerThread::Device);
                worker.run()
            })?;
        Ok(Self {
            control,
            wake,
            thread: Some(thread),
        })
    }

    /// Finishes the requests in flight, publishes them, and returns the handler and queues.
    /// `None` if the worker panicked.
    pub fn pause(mut self) -> Option<WorkerExit<H>> {
        self.finish(Request::Pause)
    }

    /// Stops as soon as the request being served is done. `None` if the worker panicked.
    pub fn stop(mut self) -> Option<WorkerExit<H>> {
        self.finish(Request::Stop)
    }

    fn finish(&mut self, request: Request) -> Option<WorkerExit<H>> {
        self.control.set(request);
        if let Err(error) = self.wake.write(1) {
            // The worker still sees the control word at its next event or request; without a
            // wake-up an idle worker would never look, so do not wait for it.
            error!(%error, "cannot wake the device worker; detaching it");
            return None;
        }
        match self.thread.take()?.join() {
            Ok(exit) => Some(exit),
            Err(_) => {
                error!("a device worker panicked");
                None
            }
        }
    }
}

impl<H: DeviceHandler> Drop for DeviceWorker<H> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.control.set(Request::Stop);
            if self.wake.write(1).is_ok() && thread.join().is_err() {
                error!("a device worker panicked");
            }
        }
    }
}

/// What the worker thread owns.
struct Worker<H> {
    handler: H,
    parts: QueueParts,
    disabled: u64,
    control: Arc<ControlWord>,
    wake: EventFd,
}

impl<H: DeviceHandler> Worker<H> {
    fn run(mut self) -> WorkerExit<H> {
        let broken = match self.serve() {
            Ok(broken) => broken,
            Err(error) => {
                // Without epoll the device cannot serve: the driver must reset it.
                error!(%error, "device worker cannot wait for events; the device needs a reset");
                self.parts.interrupt.signal_needs_reset();
                true
            }
        };
        if broken {
            self.wait_for_owner();
        }
        WorkerExit {
            handler: self.handler,
            parts: self.parts,
            broken,
        }
    }

    /// Serves until the owner asks to stop or pause; returns whether the driver broke a ring.
    fn serve(&mut self) -> io::Result<bool> {
        let epoll = self.listen()?;
        // The driver may have published chains before the worker listened.
        let mut pending = Pending::ALL;
        while self.control.get() == Request::Run {
            let timeout = if pending.is_empty() { -1 } else { 0 };
            match self.step(&epoll, timeout, pending)? {
                Some((_, next)) => pending = next,
                None => return Ok(true),
            }
        }
        Ok(self.wind_down(&epoll))
    }

    /// The worker's epoll set: the queues' notifications, the owner's wake-up and the handler's
    /// own descriptors.
    fn listen(&mut self) -> io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let queue_count = self.parts.queues.len().min(MAX_QUEUES);
        for (index, event) in self.parts.queue_events.iter().take(queue_count).enumerate() {
            add(&epoll, event.as_raw_fd(), index as u64)?;
        }
        add(&epoll, self.wake.as_raw_fd(), TOKEN_WAKE)?;
        self.handler
            .register(&mut EventRegistry { epoll: &epoll })?;
        Ok(epoll)
    }

    /// Waits up to `timeout` ms for events, then serves them and the `pending` queues. Returns
    /// how many events were ready and the queues to serve again, or `None` when the driver broke
    /// a ring (DEVICE_NEEDS_RESET is signalled).
    fn step(
        &mut self,
        epoll: &Epoll,
        timeout: i32,
        pending: Pending,
    ) -> io::Result<Option<(usize, Pending)>> {
        let mut events = [EpollEvent::default(); 32];
        let ready = match epoll.wait(timeout, &mut events) {
            Ok(ready) => ready,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                return Ok(Some((0, pending)));
            }
            Err(error) => return Err(error),
        };
        if self.control.get() != Request::Run {
            return Ok(Some((ready, pending)));
        }
        let queue_count = self.parts.queues.len().min(MAX_QUEUES);
        match self.dispatch(epoll, &events[..ready], pending, queue_count) {
            Ok(next) => Ok(Some((ready, next))),
            Err(error) => {
                error!(%error, "virtio queue stopped; the device needs a reset");
                self.parts.interrupt.signal_needs_reset();
                Ok(None)
            }
        }
    }

    /// After the owner's stop or pause: a pause finishes and publishes the requests in flight.
    /// Returns whether the driver broke a ring meanwhile.
    fn wind_down(&mut self, epoll: &Epoll) -> bool {
        if self.control.get() == Request::Pause {
            let mut cx = Self::context_of(&mut self.parts, &self.control, epoll);
            if let Err(error) = self.handler.quiesce(&mut cx) {
                error!(%error, "virtio queue broke while pausing; the device needs a reset");
                self.parts.interrupt.signal_needs_reset();
                return true;
            }
        }
        false
    }

    /// Handles one batch of ready events, then serves the queues that were notified or left
    /// pending; returns the queues to serve again.
    fn dispatch(
        &mut self,
        epoll: &Epoll,
        ready: &[EpollEvent],
        mut pending: Pending,
        queue_count: usize,
    ) -> Result<Pending, QueueError> {
        for event in ready {
            match event.data() {
                TOKEN_WAKE => {
                    // Only wakes the loop: the control word says why.
                    let _ = self.wake.read();
                }
                token if token >= TOKEN_HANDLER => {
                    let token = u32::try_from(token - TOKEN_HANDLER).unwrap_or(u32::MAX);
                    let mut cx = Self::context_of(&mut self.parts, &self.control, epoll);
                    pending |= self
                        .handler
                        .process_event(token, event.event_set(), &mut cx)?;
                }
                index => {
                    let index = usize::try_from(index).unwrap_or(usize::MAX);
                    if let Some(queue_event) = self.parts.queue_events.get(index) {
                        // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
                        let _ = queue_event.read();
                        pending |= Pending::queue(index);
                    } else {
                        warn!(token = index, "unexpected epoll token in a device worker");
                    }
                }
            }
        }
        let mut next = Pending::NONE;
        for index in 0..queue_count {
            if !pending.contains(index) || self.disabled & (1 << index) != 0 {
                continue;
            }
            if self.control.get() != Request::Run {
                break;
            }
            let mut cx = Self::context_of(&mut self.parts, &self.control, epoll);
            next |= self.handler.process_queue(index, &mut cx)?;
        }
        Ok(next)
    }

    fn context_of<'a>(
        parts: &'a mut QueueParts,
        control: &'a ControlWord,
        epoll: &'a Epoll,
    ) -> WorkerContext<'a> {
        WorkerContext {
            mem: &parts.mem,
            queues: &mut parts.queues,
            interrupt: parts.interrupt.as_ref(),
            events: EventRegistry { epoll },
            control,
        }
    }

    /// After a broken ring: serve nothing, touch no fd of the handler, until the owner stops us.
    fn wait_for_owner(&self) {
        let waited = Epoll::new().and_then(|epoll| {
            add(&epoll, self.wake.as_raw_fd(), TOKEN_WAKE)?;
            let mut events = [EpollEvent::default(); 1];
            while self.control.get() == Request::Run {
                match epoll.wait(-1, &mut events) {
                    Ok(_) => {
                        let _ = self.wake.read();
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        });
        if let Err(error) = waited {
            // Spinning would be worse than leaving the owner's join to a later wake-up.
            error!(%error, "broken device worker cannot wait for its owner");
        }
    }
}

/// A worker without a thread (test support, `DeviceRuntime::set_inline`): the same epoll set,
/// dispatch and handler calls as a [`DeviceWorker`], run on the caller's thread when it asks, so
/// fuzzers and tests drive a device synchronously with no thread hand-off per request.
pub(crate) struct InlineWorker<H> {
    worker: Worker<H>,
    epoll: Epoll,
    pending: Pending,
    broken: bool,
}

impl<H> std::fmt::Debug for InlineWorker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineWorker")
            .field("pending", &self.pending)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<H: DeviceHandler> InlineWorker<H> {
    /// Listens on `parts`' events and `handler`'s; serves nothing until [`run`](Self::run).
    pub(crate) fn start(handler: H, parts: QueueParts, disabled: u64) -> io::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let mut worker = Worker {
            handler,
            parts,
            disabled,
            control: Arc::new(ControlWord::default()),
            wake,
        };
        let epoll = worker.listen()?;
        Ok(Self {
            worker,
            epoll,
            // As a thread does: chains published before activation are served.
            pending: Pending::ALL,
            broken: false,
        })
    }

    /// Serves what is ready now (notified queues, ready descriptors, work left pending) for at
    /// most `rounds` rounds; returns whether the device went idle (or broke) within them.
    #[cfg(feature = "test-util")]
    pub(crate) fn run(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            if self.broken {
                return true;
            }
            match self.worker.step(&self.epoll, 0, self.pending) {
                Ok(Some((ready, next))) => {
                    self.pending = next;
                    if ready == 0 && next.is_empty() {
                        return true;
                    }
                }
                Ok(None) => self.broken = true,
                Err(error) => {
                    error!(%error, "inline device worker cannot poll; the device needs a reset");
                    self.worker.parts.interrupt.signal_needs_reset();
                    self.broken = true;
                }
            }
        }
        self.broken
    }

    /// Stops (or pauses) as a [`DeviceWorker`] does and returns the handler and queues.
    pub(crate) fn finish(mut self, request: Request) -> WorkerExit<H> {
        self.worker.control.set(request);
        let broken = self.broken || self.worker.wind_down(&self.epoll);
        WorkerExit {
            handler: self.worker.handler,
            parts: self.worker.parts,
            broken,
        }
    }
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}
