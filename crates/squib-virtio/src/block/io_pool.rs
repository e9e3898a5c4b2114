//! The I/O threads that let one virtio-blk device keep several requests in flight: the
//! thread-pool implementation of the in-flight [`Executor`](super::executor::Executor).
//!
//! A backend that gains from concurrency ([`BlockBackend::concurrent_io`] above 1: a file that
//! bypasses the page cache, where each request waits tens of µs for the disk) gets a pool of
//! that many `squib-blk-io` threads, spawned and joined by the device's handler. The worker stays
//! the only thread that touches the virtqueue: it pops, parses, validates and charges the rate
//! limiter, then hands the request to an idle I/O thread, which executes it and writes its
//! status byte; the worker puts the completion on the used ring and interrupts the driver.
//!
//! Each in-flight request travels in a [`Slot`] owned by one I/O thread: its own fixed
//! segment buffer, allocated when the pool is spawned and recycled, so a request in flight
//! borrows nothing from the worker and nothing is allocated per request. Slots move through
//! bounded channels (one per thread to submit, one shared back) that never block: a thread has
//! at most its one slot, and the way back holds every slot. An `EventFd` in the worker's epoll
//! set says completions are waiting; a counter lets the worker's ring polling see them without
//! a system call.
//!
//! Dropping the pool closes the submit channels and joins the threads, which first finish the
//! request they hold: once the worker has returned, no I/O thread touches guest memory.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::{self, JoinHandle};

use tracing::error;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::BlockBackend;
use super::config::ServeConfig;
use super::drive_state::DriveState;
use super::executor::Slot;
use super::request::{Completion, ParsedRequest, RequestContext};
use crate::GuestMemory;

/// The most I/O threads one device gets, whatever its backend asks for.
pub(crate) const MAX_IO_THREADS: usize = 16;
/// An I/O thread only runs the backend's positioned I/O (at most one bounded batch of iovecs on
/// its stack) and logs its errors.
const IO_THREAD_STACK: usize = 128 * 1024;

/// The I/O threads of one worker and the slots of the requests they can hold.
#[derive(Debug)]
pub(crate) struct IoPool {
    /// Idle slots; never grows past the number of threads, so pushes do not allocate.
    free: Vec<Box<Slot>>,
    submit: Vec<SyncSender<Box<Slot>>>,
    done: Receiver<Box<Slot>>,
    done_event: EventFd,
    /// Completions sent so far by every thread, against those the worker has taken.
    completed: Arc<AtomicU64>,
    reaped: u64,
    threads: Vec<JoinHandle<()>>,
}

impl IoPool {
    /// Spawns `threads` I/O threads, each with one pre-allocated slot.
    pub(crate) fn spawn(
        threads: usize,
        mem: &GuestMemory,
        serve: ServeConfig,
        shared: &Arc<DriveState>,
    ) -> io::Result<Self> {
        let threads = threads.clamp(1, MAX_IO_THREADS);
        let (done_tx, done) = mpsc::sync_channel(threads);
        let mut pool = Self {
            free: Vec::with_capacity(threads),
            submit: Vec::with_capacity(threads),
            done,
            done_event: EventFd::new(EFD_NONBLOCK)?,
            completed: Arc::new(AtomicU64::new(0)),
            reaped: 0,
            threads: Vec::with_capacity(threads),
        };
        for thread in 0..threads {
            let (submit, requests) = mpsc::sync_channel(1);
            let io = IoThread {
                requests,
                done: done_tx.clone(),
                done_event: pool.done_event.try_clone()?,
                completed: Arc::clone(&pool.completed),
                mem: mem.clone(),
                serve,
                shared: Arc::clone(shared),
            };
            // On an error here, dropping `pool` joins the threads already running.
            let handle = thread::Builder::new()
                .name("squib-blk-io".into())
                .stack_size(IO_THREAD_STACK)
                .spawn(move || {
                    crate::threads::on_thread_start(crate::threads::WorkerThread::BlockIo);
                    io.run();
                })?;
            pool.threads.push(handle);
            pool.submit.push(submit);
            pool.free.push(Box::new(Slot::new(thread)));
        }
        Ok(pool)
    }

    /// How many requests the pool can hold at once.
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Requests handed to a thread and not yet taken back by [`Self::reap`].
    pub(crate) fn in_flight(&self) -> usize {
        self.threads.len() - self.free.len()
    }

    /// Signalled when completions are waiting.
    pub(crate) fn event(&self) -> &EventFd {
        &self.done_event
    }

    /// Whether a completion is waiting, without a system call.
    pub(crate) fn has_completions(&self) -> bool {
        self.completed.load(Ordering::Acquire) != self.reaped
    }

    /// An idle slot to parse the next request into.
    pub(crate) fn take_slot(&mut self) -> Option<Box<Slot>> {
        self.free.pop()
    }

    /// Returns a slot whose request was not submitted.
    pub(crate) fn put_back(&mut self, slot: Box<Slot>) {
        self.free.push(slot);
    }

    /// Hands `request`, parsed into `slot`, to the slot's thread. Gives the slot back if that
    /// thread is gone (it only stops when the pool is dropped, or if it panicked), for the caller
    /// to execute [`Slot::take_request`] itself.
    pub(crate) fn submit(
        &mut self,
        mut slot: Box<Slot>,
        request: ParsedRequest,
        backend: &Arc<dyn BlockBackend>,
        capacity: u64,
    ) -> Result<(), Box<Slot>> {
        slot.request = Some(request);
        slot.backend = Some(Arc::clone(backend));
        slot.capacity = capacity;
        let Some(submit) = self.submit.get(slot.index) else {
            return Err(slot);
        };
        submit.try_send(slot).map_err(|error| match error {
            mpsc::TrySendError::Full(slot) | mpsc::TrySendError::Disconnected(slot) => slot,
        })
    }

    /// Waits until every request in flight is done, passing each completion to `complete` (a
    /// pause publishes everything before the queues are saved).
    pub(crate) fn wait_all<E>(
        &mut self,
        mut complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.in_flight() > 0 {
            // The threads are alive while the pool is: a slot always comes back.
            let Ok(slot) = self.done.recv() else {
                break;
            };
            self.reaped += 1;
            let completion = slot.completion;
            self.free.push(slot);
            complete(completion)?;
        }
        let _ = self.done_event.read();
        Ok(())
    }

    /// Takes back every finished request, passing each completion to `complete`.
    pub(crate) fn reap<E>(
        &mut self,
        mut complete: impl FnMut(Completion) -> Result<(), E>,
    ) -> Result<usize, E> {
        let _ = self.done_event.read();
        let mut reaped = 0;
        loop {
            match self.done.try_recv() {
                Ok(slot) => {
                    self.reaped += 1;
                    reaped += 1;
                    let completion = slot.completion;
                    self.free.push(slot);
                    complete(completion)?;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(reaped),
            }
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        // Closing the submit channels ends each thread once its request (if any) is done.
        self.submit.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                error!("a virtio-blk I/O thread panicked");
            }
        }
    }
}

/// What one I/O thread owns.
struct IoThread {
    requests: Receiver<Box<Slot>>,
    done: SyncSender<Box<Slot>>,
    done_event: EventFd,
    completed: Arc<AtomicU64>,
    mem: GuestMemory,
    serve: ServeConfig,
    shared: Arc<DriveState>,
}

impl IoThread {
    fn run(self) {
        while let Ok(mut slot) = self.requests.recv() {
            if let (Some(request), Some(backend)) = (slot.request.take(), slot.backend.take()) {
                let ctx = RequestContext {
                    mem: &self.mem,
                    backend: backend.as_ref(),
                    capacity: slot.capacity,
                    serve: &self.serve,
                    metrics: &self.shared.metrics,
                };
                slot.completion = request.execute(&ctx, &slot.segments);
            }
            // Never blocks: the channel holds every slot. Fails only once the pool is gone.
            if self.done.send(slot).is_err() {
                return;
            }
            self.completed.fetch_add(1, Ordering::Release);
            if let Err(error) = self.done_event.write(1) {
                error!(%error, "virtio-blk I/O thread cannot wake its worker");
            }
        }
    }
}
