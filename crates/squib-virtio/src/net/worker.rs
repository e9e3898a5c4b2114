//! The virtio-net worker thread: one per active device, spawned at DRIVER_OK, stopped at reset
//! or drop. It sleeps in `epoll_wait` on the two queue notifications, the backend's descriptor
//! (edge-triggered: the handler reads until it is empty or deliberately stops), the limiters'
//! timers, the limiter-update event and a stop event, and hands each to the [`NetHandler`].
//!
//! This is the device's private loop until the shared device runtime lands; its
//! [`WorkerContext`] has the runtime's shape so the handler ports over unchanged.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::handler::{
    NetHandler, TOKEN_BACKEND, TOKEN_LIMITER_UPDATE, TOKEN_RX_LIMITER, TOKEN_TX_LIMITER,
};
use crate::GuestMemory;
use crate::interrupt::Interrupt;
use crate::queue::VirtQueue;
use crate::rate_limiter::RateLimiter;

/// Tokens above the handler's: queue `i` is `QUEUE_TOKEN_BASE + i`.
const QUEUE_TOKEN_BASE: u64 = 1 << 32;
const TOKEN_STOP: u64 = 2 << 32;

/// Set when the worker must stop; the handler checks it between frames.
#[derive(Debug, Default)]
pub(crate) struct StopFlag(AtomicBool);

impl StopFlag {
    pub(crate) fn should_stop(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the handler gets on every call.
pub(crate) struct WorkerContext<'a> {
    pub(crate) mem: &'a GuestMemory,
    pub(crate) queues: &'a mut [VirtQueue],
    pub(crate) interrupt: &'a Interrupt,
    pub(crate) stop: &'a StopFlag,
    epoll: &'a Epoll,
}

impl WorkerContext<'_> {
    /// Watches a limiter's timer under `token` (a limiter created by an update).
    pub(crate) fn watch(&self, limiter: &RateLimiter, token: u32) -> io::Result<()> {
        add(
            self.epoll,
            limiter.as_raw_fd(),
            EventSet::IN,
            u64::from(token),
        )
    }
}

fn add(epoll: &Epoll, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
}

/// Everything the thread owns.
pub(crate) struct Worker {
    pub(crate) mem: GuestMemory,
    pub(crate) queues: Vec<VirtQueue>,
    pub(crate) queue_events: Vec<EventFd>,
    pub(crate) interrupt: Arc<Interrupt>,
    pub(crate) handler: NetHandler,
    pub(crate) backend_fd: RawFd,
    pub(crate) limiter_event_fd: RawFd,
}

impl Worker {
    fn run(mut self, stop: &StopFlag, stop_event: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        for (index, event) in self.queue_events.iter().enumerate() {
            add(
                &epoll,
                event.as_raw_fd(),
                EventSet::IN,
                QUEUE_TOKEN_BASE + index as u64,
            )?;
        }
        add(&epoll, stop_event.as_raw_fd(), EventSet::IN, TOKEN_STOP)?;
        add(
            &epoll,
            self.backend_fd,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
            u64::from(TOKEN_BACKEND),
        )?;
        add(
            &epoll,
            self.limiter_event_fd,
            EventSet::IN,
            u64::from(TOKEN_LIMITER_UPDATE),
        )?;
        let limiters = self.handler.limiters();
        for (limiter, token) in [
            (&limiters.rx, TOKEN_RX_LIMITER),
            (&limiters.tx, TOKEN_TX_LIMITER),
        ] {
            if let Some(limiter) = limiter {
                add(&epoll, limiter.as_raw_fd(), EventSet::IN, u64::from(token))?;
            }
        }
        let mut events = [EpollEvent::default(); 16];
        loop {
            let ready = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            for event in &events[..ready] {
                if stop.should_stop() {
                    return Ok(());
                }
                let token = event.data();
                let mut cx = WorkerContext {
                    mem: &self.mem,
                    queues: &mut self.queues,
                    interrupt: &self.interrupt,
                    stop,
                    epoll: &epoll,
                };
                if token == TOKEN_STOP {
                    return Ok(());
                } else if token >= QUEUE_TOKEN_BASE {
                    let index = (token - QUEUE_TOKEN_BASE) as usize;
                    if let Some(event) = self.queue_events.get(index) {
                        let _ = event.read();
                    }
                    self.handler.process_queue(index, &mut cx);
                } else {
                    // Handler tokens are u32 by construction.
                    self.handler.process_event(token as u32, &mut cx);
                }
            }
        }
    }
}

/// The running worker thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    stop: Arc<StopFlag>,
    stop_event: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub(crate) fn spawn(worker: Worker) -> io::Result<Self> {
        let stop = Arc::new(StopFlag::default());
        let stop_event = EventFd::new(EFD_NONBLOCK)?;
        let thread_stop = Arc::clone(&stop);
        let thread_event = stop_event.try_clone()?;
        let thread = thread::Builder::new()
            .name("squib-net".into())
            .spawn(move || {
                if let Err(error) = worker.run(&thread_stop, &thread_event) {
                    error!(%error, "virtio-net worker cannot wait for events; it stopped");
                }
            })?;
        Ok(Self {
            stop,
            stop_event,
            thread: Some(thread),
        })
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.0.store(true, Ordering::Release);
        if let Err(error) = self.stop_event.write(1) {
            error!(%error, "cannot stop the virtio-net worker; detaching it");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the virtio-net worker panicked");
        }
    }
}
