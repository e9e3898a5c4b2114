//! [`DeviceRuntime`]: the life of one device's worker — idle, running, paused — which every
//! device embeds instead of managing threads itself.
//!
//! ```text
//!            activate                 pause
//!   Idle ─────────────────▶ Running ────────▶ Paused ──┐
//!    ▲                        │  ▲    resume     │     │ restore (snapshot load)
//!    └──────── reset ─────────┴──┼───────────────┘     │
//!                                └─────────────────────┘ (resume)
//! ```
//!
//! Pausing stops the worker after it finished and published the requests in flight, and keeps
//! its handler and queues: their state is what a snapshot saves, and resuming starts a new worker
//! on them. Reset stops the worker within one request and drops everything but the handler, which
//! it returns so the device can keep state that outlives an activation (rate-limiter buckets).

use std::io;

use tracing::{debug, error};

use super::handler::{DeviceHandler, MAX_QUEUES};
use super::worker::{DeviceWorker, QueueParts, WorkerExit};
use crate::device::{ActivateError, RuntimeControl};
use crate::queue::QueueSnapshot;

#[derive(Debug)]
enum State<H: DeviceHandler + std::fmt::Debug> {
    Idle,
    Running(DeviceWorker<H>),
    /// The worker stopped; `broken` if the driver broke a ring (stays so until reset).
    Paused(WorkerExit<H>),
}

/// One device's worker and what it serves.
#[derive(Debug)]
pub struct DeviceRuntime<H: DeviceHandler + std::fmt::Debug> {
    /// The worker thread's name.
    name: &'static str,
    state: State<H>,
    /// Queues the driver stopped (QueueReady = 0 after DRIVER_OK), a bit each.
    disabled: u64,
}

impl<H: DeviceHandler + std::fmt::Debug> DeviceRuntime<H> {
    /// An idle runtime whose workers will be called `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: State::Idle,
            disabled: 0,
        }
    }

    /// Whether the device was activated and not reset since (running or paused).
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Whether the worker is paused (its queues can be saved).
    pub fn is_paused(&self) -> bool {
        matches!(self.state, State::Paused(_))
    }

    /// Starts serving `parts` with `handler` (DRIVER_OK).
    pub fn activate(&mut self, handler: H, parts: QueueParts) -> Result<(), ActivateError> {
        if self.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        if parts.queues.len() > MAX_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: MAX_QUEUES,
                got: parts.queues.len(),
            });
        }
        self.disabled = 0;
        let worker = DeviceWorker::spawn(self.name, handler, parts, self.disabled)?;
        self.state = State::Running(worker);
        Ok(())
    }

    /// Installs a restored handler and queues, paused: [`resume`](Self::resume) starts them.
    pub fn restore_paused(&mut self, handler: H, parts: QueueParts) {
        self.disabled = 0;
        self.state = State::Paused(WorkerExit {
            handler,
            parts,
            broken: false,
        });
    }

    /// Stops the worker once the requests in flight are published (a no-op unless running).
    pub fn pause(&mut self) {
        if !matches!(self.state, State::Running(_)) {
            return;
        }
        let State::Running(worker) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        match worker.pause() {
            Some(exit) => {
                debug!(device = self.name, "device worker paused");
                self.state = State::Paused(exit);
            }
            // The worker panicked: its queues are gone; the driver must reset the device.
            None => self.state = State::Idle,
        }
    }

    /// Starts a worker on the paused queues (a no-op unless paused). A broken device stays
    /// paused: it serves nothing until the driver resets it.
    pub fn resume(&mut self) -> io::Result<()> {
        if !matches!(&self.state, State::Paused(exit) if !exit.broken) {
            return Ok(());
        }
        let State::Paused(exit) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(());
        };
        let WorkerExit { handler, parts, .. } = exit;
        // A failed spawn drops the handler and queues; the device then needs a reset.
        let worker = DeviceWorker::spawn(self.name, handler, parts, self.disabled);
        match worker {
            Ok(worker) => {
                self.state = State::Running(worker);
                Ok(())
            }
            Err(error) => {
                error!(device = self.name, %error, "cannot restart the device worker");
                Err(error)
            }
        }
    }

    /// Stops the worker within one request and returns to idle; returns the handler.
    pub fn reset(&mut self) -> Option<H> {
        self.disabled = 0;
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => None,
            State::Running(worker) => worker.stop().map(|exit| exit.handler),
            State::Paused(exit) => Some(exit.handler),
        }
    }

    /// The driver stopped queue `index` (QueueReady = 0): once this returns, the device no longer
    /// touches it. Other queues keep being served.
    pub fn disable_queue(&mut self, index: usize) -> io::Result<()> {
        if index >= MAX_QUEUES {
            return Ok(());
        }
        let running = matches!(self.state, State::Running(_));
        self.pause();
        self.disabled |= 1 << index;
        if running { self.resume() } else { Ok(()) }
    }

    /// The queues' state while paused, for a snapshot.
    pub fn queue_snapshots(&self) -> Option<Vec<QueueSnapshot>> {
        match &self.state {
            State::Paused(exit) => Some(exit.parts.queues.iter().map(|q| q.snapshot()).collect()),
            State::Idle | State::Running(_) => None,
        }
    }

    /// The paused handler, for a snapshot of the device's own state.
    pub fn paused_handler(&self) -> Option<&H> {
        match &self.state {
            State::Paused(exit) => Some(&exit.handler),
            State::Idle | State::Running(_) => None,
        }
    }
}

impl<H: DeviceHandler + std::fmt::Debug> RuntimeControl for DeviceRuntime<H> {
    fn is_active(&self) -> bool {
        DeviceRuntime::is_active(self)
    }

    fn is_paused(&self) -> bool {
        DeviceRuntime::is_paused(self)
    }

    fn pause(&mut self) {
        DeviceRuntime::pause(self);
    }

    fn resume(&mut self) -> io::Result<()> {
        DeviceRuntime::resume(self)
    }

    fn disable_queue(&mut self, index: usize) -> io::Result<()> {
        DeviceRuntime::disable_queue(self, index)
    }

    fn queue_snapshots(&self) -> Option<Vec<QueueSnapshot>> {
        DeviceRuntime::queue_snapshots(self)
    }
}
