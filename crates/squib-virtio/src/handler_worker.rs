//! A minimal device worker for handler-shaped devices (virtio-rng, virtio-vsock), shaped like the
//! shared device runtime planned on `wip/runtime` so that porting onto it is mechanical: the
//! worker owns the queues, their notification `EventFd`s, the stop event and the thread; a
//! [`DeviceHandler`] owns the device's per-activation state and sees guest memory, the queues
//! and the interrupt through a [`WorkerContext`].
//!
//! Temporary: replaced by `squib_virtio::runtime` when it lands.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::GuestMemory;
use crate::interrupt::Interrupt;
use crate::queue::{QueueError, VirtQueue};

/// epoll data of a queue's notification: the queue index in the low bits.
const QUEUE_BASE: u64 = 1 << 32;
const STOP: u64 = 2 << 32;
/// Events fetched per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;

/// The device's own fds in the worker's epoll set, under `u32` tokens of the handler's choosing.
#[derive(Debug)]
pub(crate) struct EventRegistry<'a> {
    epoll: &'a Epoll,
}

impl EventRegistry<'_> {
    /// Watches `fd` for `events`, reported to [`DeviceHandler::process_event`] as `token`.
    pub(crate) fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, u64::from(token)),
        )
    }

    /// Changes what `fd` is watched for.
    pub(crate) fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, u64::from(token)),
        )
    }

    /// Stops watching `fd` (closing it also does).
    pub(crate) fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// What a handler sees while it serves.
#[derive(Debug)]
pub(crate) struct WorkerContext<'a> {
    /// Guest memory.
    pub(crate) mem: &'a GuestMemory,
    /// The device's queues, in index order.
    pub(crate) queues: &'a mut [VirtQueue],
    /// The device's interrupt line.
    pub(crate) interrupt: &'a Interrupt,
    /// The worker's epoll set, for the handler's own fds.
    pub(crate) events: EventRegistry<'a>,
}

/// A device's queue and event processing, run by the worker thread.
pub(crate) trait DeviceHandler: Send + 'static {
    /// Registers the handler's own fds (timers, sockets) at activation.
    fn register(&mut self, fds: &mut EventRegistry<'_>) -> io::Result<()>;
    /// The driver notified `queue`.
    fn process_queue(&mut self, queue: usize, cx: &mut WorkerContext<'_>)
    -> Result<(), QueueError>;
    /// One of the handler's fds is ready.
    fn process_event(
        &mut self,
        token: u32,
        events: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<(), QueueError>;
}

/// The running worker; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct HandlerWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl HandlerWorker {
    /// Starts `handler` on its own thread over `queues`.
    pub(crate) fn spawn<H: DeviceHandler>(
        name: &str,
        mut handler: H,
        mem: GuestMemory,
        mut queues: Vec<VirtQueue>,
        queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        for (index, event) in queue_events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, QUEUE_BASE | index as u64),
            )?;
        }
        handler.register(&mut EventRegistry { epoll: &epoll })?;
        let thread_name = format!("squib-{name}");
        let thread = thread::Builder::new().name(thread_name).spawn(move || {
            let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
            let mut broken = false;
            loop {
                let count = match epoll.wait(-1, &mut events) {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        error!(%error, "device worker cannot wait for events; it stopped");
                        return;
                    }
                };
                for event in &events[..count] {
                    let data = event.data();
                    if data == STOP {
                        return;
                    }
                    if broken {
                        continue;
                    }
                    let mut cx = WorkerContext {
                        mem: &mem,
                        queues: &mut queues,
                        interrupt: &interrupt,
                        events: EventRegistry { epoll: &epoll },
                    };
                    let served = if data & QUEUE_BASE != 0 {
                        let index = (data & 0xffff_ffff) as usize;
                        if let Some(event) = queue_events.get(index) {
                            let _ = event.read();
                        }
                        handler.process_queue(index, &mut cx)
                    } else if let Ok(token) = u32::try_from(data) {
                        handler.process_event(token, event.event_set(), &mut cx)
                    } else {
                        warn!(data, "unexpected epoll data in a device worker");
                        Ok(())
                    };
                    if let Err(error) = served {
                        error!(%error, "virtio queue stopped; the device needs a reset");
                        broken = true;
                        interrupt.signal_needs_reset();
                    }
                }
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HandlerWorker {
    fn drop(&mut self) {
        if let Err(error) = self.stop.write(1) {
            error!(%error, "cannot stop a device worker; detaching it");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("a device worker panicked");
        }
    }
}
