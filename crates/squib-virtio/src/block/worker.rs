//! The virtio-blk worker thread: one per active device, spawned at DRIVER_OK, stopped at reset
//! or drop. It sleeps in `epoll_wait` on the queue's notification `EventFd` (the ioeventfd the
//! guest's QueueNotify write signals) and a stop `EventFd`, so block I/O never runs on a vCPU.
//!
//! Rate limiting hooks in at two places: between parsing and executing a request in
//! [`Worker::drain`] (an over-budget request is put back by rewinding the queue one entry,
//! virtio-queue's `go_to_previous_position`, and the drain stops), and in the epoll set, where
//! the limiter's timer fd gets a token of its own and resumes draining when it fires.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::BlockBackend;
use super::device::ServeConfig;
use super::handle::{Shared, usable_capacity};
use super::request::{ParsedRequest, RequestContext, SegmentBuf};
use crate::GuestMemory;
use crate::interrupt::Interrupt;
use crate::queue::{QueueError, VirtQueue};

/// epoll tokens.
const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

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
            shared,
            serve,
            segments: SegmentBuf::new(),
            broken: false,
        }
    }

    fn run(mut self, stop: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        for (fd, token) in [(&self.queue_event, TOKEN_QUEUE), (stop, TOKEN_STOP)] {
            use std::os::fd::AsRawFd;
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        // The driver may have published requests before we started listening.
        self.serve_queue();
        let mut events = [EpollEvent::default(); 2];
        loop {
            let ready = match epoll.wait(-1, &mut events) {
                Ok(ready) => ready,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            for event in &events[..ready] {
                match event.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_QUEUE => {
                        // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
                        let _ = self.queue_event.read();
                        self.serve_queue();
                    }
                    other => warn!(token = other, "unexpected epoll token in virtio-blk worker"),
                }
            }
        }
    }

    /// Serves every available request, then interrupts the driver if it asked for it.
    fn serve_queue(&mut self) {
        if self.broken {
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
        loop {
            self.queue.disable_notification(&self.mem)?;
            while let Some(chain) = self.queue.pop(&self.mem)? {
                let request = ParsedRequest::parse(chain, &ctx, &mut self.segments);
                // Rate-limiter hook: ask the limiter for this request's bytes/ops here; when it
                // refuses, rewind the queue by one and return (its timer fd resumes us).
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
