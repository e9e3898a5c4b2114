//! What a device plugs into the runtime: a [`DeviceHandler`] that serves its queues and its own
//! event sources, and the [`WorkerContext`] the worker lends it for each call.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::GuestMemory;
use crate::interrupt::VirtioInterrupt;
use crate::queue::{QueueError, VirtQueue};

/// The most queues one device may have: [`Pending`] is a bit per queue.
pub const MAX_QUEUES: usize = 64;

/// Queues a handler wants served again, without waiting for a notification: after a poll found
/// work, a completion arrived, or a timer fired. The worker first takes a non-blocking look at
/// its events, so stop and pause are never starved by a busy device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Pending(u64);

impl Pending {
    /// Nothing to do until an event arrives.
    pub const NONE: Self = Self(0);
    /// Every queue of the device.
    pub const ALL: Self = Self(u64::MAX);

    /// Queue `index` (indices past [`MAX_QUEUES`] are ignored).
    pub fn queue(index: usize) -> Self {
        Self(
            1u64.checked_shl(u32::try_from(index).unwrap_or(u32::MAX))
                .unwrap_or(0),
        )
    }

    /// Whether queue `index` is included.
    pub fn contains(self, index: usize) -> bool {
        self.0 & Self::queue(index).0 != 0
    }

    /// Whether no queue is included.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Pending {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Pending {
    fn bitor_assign(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

/// What the control side asked the worker for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Request {
    /// Keep serving.
    Run = 0,
    /// Finish the requests in flight, publish them, and return the queues (VM pause, snapshot).
    Pause = 1,
    /// Stop as soon as possible (device reset, shutdown): requests in flight finish, but nothing
    /// new is taken from the rings.
    Stop = 2,
}

/// The control word shared by a worker and its owner: read between requests, so a busy device
/// sees a stop or pause after at most the request it is serving.
#[derive(Debug, Default)]
pub(crate) struct ControlWord(AtomicU8);

impl ControlWord {
    pub(crate) fn set(&self, request: Request) {
        self.0.store(request as u8, Ordering::Release);
    }

    pub(crate) fn get(&self) -> Request {
        match self.0.load(Ordering::Acquire) {
            0 => Request::Run,
            1 => Request::Pause,
            _ => Request::Stop,
        }
    }
}

/// Everything a handler may touch during one call, lent by the worker.
#[derive(Debug)]
pub struct WorkerContext<'a> {
    /// Guest memory, where the rings and buffers live.
    pub mem: &'a GuestMemory,
    /// The device's queues, in index order.
    pub queues: &'a mut [VirtQueue],
    /// The device's interrupt.
    pub interrupt: &'a dyn VirtioInterrupt,
    /// The worker's epoll set, for the handler's own descriptors.
    pub events: EventRegistry<'a>,
    pub(crate) control: &'a ControlWord,
}

/// A copyable view of the worker's stop request, for loops that borrow a queue out of the
/// [`WorkerContext`].
#[derive(Clone, Copy, Debug)]
pub struct StopSignal<'a>(&'a ControlWord);

impl StopSignal<'_> {
    /// See [`WorkerContext::should_stop`].
    pub fn is_set(self) -> bool {
        self.0.get() != Request::Run
    }
}

impl<'a> WorkerContext<'a> {
    /// Whether the worker has been asked to stop or pause: a handler checks it between requests
    /// and returns, leaving the rest on the ring, so a guest that keeps its queue full cannot hold
    /// up a reset, a pause or shutdown.
    pub fn should_stop(&self) -> bool {
        self.control.get() != Request::Run
    }

    /// The stop request, detached from the borrow of the context.
    pub fn stop_signal(&self) -> StopSignal<'a> {
        StopSignal(self.control)
    }

    /// Interrupts the driver for queue `index` if the chains completed since the last call ask
    /// for it (always without EVENT_IDX; with it, per the driver's `used_event`).
    pub fn notify_used(&mut self, index: usize) -> Result<(), QueueError> {
        let Some(queue) = self.queues.get_mut(index) else {
            return Ok(());
        };
        if queue.needs_notification(self.mem)? {
            // The index is below MAX_QUEUES, far below u16::MAX.
            self.interrupt
                .signal_used(u16::try_from(index).unwrap_or(u16::MAX));
        }
        Ok(())
    }

    /// Re-enables notifications on queue `index` before the worker sleeps; returns whether
    /// chains were published meanwhile, which the caller must serve now (the driver saw
    /// notifications off and will not kick for them).
    pub fn rearm(&mut self, index: usize) -> Result<bool, QueueError> {
        match self.queues.get_mut(index) {
            Some(queue) => queue.enable_notification(self.mem),
            None => Ok(false),
        }
    }
}

/// Adds a handler's own file descriptors (backend completions, TAP, sockets, timers) to the
/// worker's epoll set; each fires [`DeviceHandler::process_event`] with its token.
#[derive(Debug)]
pub struct EventRegistry<'a> {
    pub(crate) epoll: &'a Epoll,
}

impl EventRegistry<'_> {
    /// Watches `fd` for `events`; `token` comes back to [`DeviceHandler::process_event`].
    pub fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.control(ControlOperation::Add, fd, token, events)
    }

    /// Changes what `fd` is watched for (e.g. stop reading a socket the guest cannot take more
    /// from, start watching for writability).
    pub fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.control(ControlOperation::Modify, fd, token, events)
    }

    /// Stops watching `fd`.
    pub fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    fn control(
        &mut self,
        op: ControlOperation,
        fd: RawFd,
        token: u32,
        events: EventSet,
    ) -> io::Result<()> {
        self.epoll.ctl(
            op,
            fd,
            EpollEvent::new(events, super::worker::handler_token(token)),
        )
    }
}

/// A device's queue processing, run on its worker thread.
///
/// The worker calls [`process_queue`](Self::process_queue) when the driver notifies a queue (or
/// a previous call returned it as [`Pending`]) and [`process_event`](Self::process_event) when
/// one of the handler's own descriptors fires. A [`QueueError`] from either means the driver
/// broke the ring protocol: the worker stops serving and signals DEVICE_NEEDS_RESET.
pub trait DeviceHandler: Send + 'static {
    /// Registers the handler's own descriptors; called on the worker thread before serving.
    fn register(&mut self, events: &mut EventRegistry<'_>) -> io::Result<()> {
        let _ = events;
        Ok(())
    }

    /// Serves queue `index`.
    fn process_queue(
        &mut self,
        index: usize,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError>;

    /// One of the handler's descriptors is ready (`events`: what it is ready for).
    fn process_event(
        &mut self,
        token: u32,
        events: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        let _ = (token, events, cx);
        Ok(Pending::NONE)
    }

    /// The worker is pausing: finish the requests in flight and put them on the used rings, so
    /// the queues can be saved. Called on the worker thread; the default has nothing in flight.
    fn quiesce(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        let _ = cx;
        Ok(())
    }
}
