//! The runtime handle the API thread keeps for a virtio-blk device: swap the disk behind it
//! (`PATCH /drives/{id}` with a new `path_on_host`), change its rate limiter (`PATCH /drives/{id}`
//! with a `rate_limiter`) and read its metrics.
//!
//! The device, its worker and every handle share one [`Shared`]. The worker keeps its own
//! `Arc` of the backend and only looks at the shared slot when `backend_epoch` moved (one atomic
//! load per batch of requests), so a swap never puts a lock on the request path. A rate-limiter
//! update waits in its own slot and wakes the worker through `limiter_event`, so it applies at
//! once even while the worker sits throttled on a long timer.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{info, warn};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::{BlockBackend, SECTOR_SIZE};
use super::metrics::{BlockMetrics, BlockMetricsSnapshot};
use crate::interrupt::Interrupt;
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};

/// State shared by a block device, its worker thread and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    backend: Mutex<Arc<dyn BlockBackend>>,
    /// Bumped on every swap, after `backend` and `capacity` changed.
    backend_epoch: AtomicU64,
    /// The current backend's capacity in bytes, for config-space reads on the vCPU thread.
    capacity: AtomicU64,
    config_generation: AtomicU32,
    /// The interrupt line while the device is active (a swap then tells the driver).
    interrupt: Mutex<Option<Arc<Interrupt>>>,
    read_only: bool,
    /// The rate limiter while no worker runs. A worker takes it when it is built and puts it
    /// back when it ends, so a driver reset does not refill the buckets.
    limiter: Mutex<Option<RateLimiter>>,
    /// A limiter update the worker has not applied yet.
    limiter_update: Mutex<Option<RateLimiterSpec>>,
    /// Written after `limiter_update` is set; the worker epolls it.
    limiter_event: EventFd,
    pub(crate) metrics: BlockMetrics,
    /// Whether a worker has logged which in-flight executor it started: only the first
    /// activation says so above debug level (a guest can reset the device in a loop).
    executor_announced: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        backend: Arc<dyn BlockBackend>,
        limiter: Option<RateLimiter>,
    ) -> io::Result<Self> {
        Ok(Self {
            capacity: AtomicU64::new(usable_capacity(backend.as_ref())),
            read_only: backend.is_read_only(),
            backend: Mutex::new(backend),
            backend_epoch: AtomicU64::new(0),
            config_generation: AtomicU32::new(0),
            interrupt: Mutex::new(None),
            limiter: Mutex::new(limiter),
            limiter_update: Mutex::new(None),
            limiter_event: EventFd::new(EFD_NONBLOCK)?,
            metrics: BlockMetrics::default(),
            executor_announced: AtomicBool::new(false),
        })
    }

    /// True the first time it is called: the caller logs at its normal level, later at debug.
    pub(crate) fn first_executor_announcement(&self) -> bool {
        !self.executor_announced.swap(true, Ordering::Relaxed)
    }

    /// Takes the parked rate limiter (a worker starting).
    pub(crate) fn take_limiter(&self) -> Option<RateLimiter> {
        lock(&self.limiter).take()
    }

    /// Parks the rate limiter (a worker ending).
    pub(crate) fn park_limiter(&self, limiter: Option<RateLimiter>) {
        *lock(&self.limiter) = limiter;
    }

    /// Takes the pending limiter update, if any.
    pub(crate) fn take_limiter_update(&self) -> Option<RateLimiterSpec> {
        lock(&self.limiter_update).take()
    }

    /// Readable while a limiter update may be pending.
    pub(crate) fn limiter_event(&self) -> &EventFd {
        &self.limiter_event
    }

    /// The current backend and the epoch it belongs to.
    pub(crate) fn backend(&self) -> (u64, Arc<dyn BlockBackend>) {
        let backend = lock(&self.backend);
        (
            self.backend_epoch.load(Ordering::Acquire),
            Arc::clone(&backend),
        )
    }

    pub(crate) fn backend_epoch(&self) -> u64 {
        self.backend_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    pub(crate) fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    pub(crate) fn set_interrupt(&self, interrupt: Option<Arc<Interrupt>>) {
        *lock(&self.interrupt) = interrupt;
    }
}

/// The capacity the guest sees: whole sectors only (the backend contract promises this; flooring
/// again costs nothing and keeps a buggy backend from exposing a partial sector).
pub(crate) fn usable_capacity(backend: &dyn BlockBackend) -> u64 {
    backend.size() - backend.size() % SECTOR_SIZE
}

/// Why a backend swap was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new disk's read-only flag differs from the one the guest negotiated with.
    #[error(
        "the new disk is {new}, the drive was set up {old}: read-only cannot change while the guest runs",
        new = ro_word(*new_read_only),
        old = ro_word(!*new_read_only)
    )]
    ReadOnlyMismatch {
        /// Whether the refused backend is read-only.
        new_read_only: bool,
    },
}

fn ro_word(read_only: bool) -> &'static str {
    if read_only { "read-only" } else { "read-write" }
}

/// A cloneable, thread-safe handle on a running (or not yet running) virtio-blk device.
#[derive(Clone, Debug)]
pub struct BlockHandle {
    shared: Arc<Shared>,
}

impl BlockHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Replaces the disk: requests already taken finish on the old backend, later ones use the
    /// new one. The guest sees the new capacity after a config-change interrupt (if the device is
    /// active) and a ConfigGeneration bump.
    pub fn swap_backend(&self, backend: Arc<dyn BlockBackend>) -> Result<(), SwapError> {
        if backend.is_read_only() != self.shared.read_only {
            return Err(SwapError::ReadOnlyMismatch {
                new_read_only: backend.is_read_only(),
            });
        }
        let capacity = usable_capacity(backend.as_ref());
        {
            let mut slot = lock(&self.shared.backend);
            *slot = backend;
            self.shared.capacity.store(capacity, Ordering::Release);
            self.shared.config_generation.fetch_add(1, Ordering::AcqRel);
            self.shared.backend_epoch.fetch_add(1, Ordering::AcqRel);
        }
        info!(capacity, "virtio-blk backend swapped");
        if let Some(interrupt) = lock(&self.shared.interrupt).as_ref() {
            interrupt.signal_config_change();
        }
        Ok(())
    }

    /// Changes the rate limiter: the worker applies `spec` at its next wake-up, which this call
    /// causes (or, while the device is not active, when the driver next activates it). An absent
    /// bucket keeps its state, a zero-sized one removes the limit, a given one starts full. A
    /// drive built without a limiter gets one.
    pub fn update_rate_limiter(&self, spec: RateLimiterSpec) -> Result<(), RateLimiterError> {
        spec.validate()?;
        {
            let mut slot = lock(&self.shared.limiter_update);
            *slot = Some(slot.take().unwrap_or_default().merged_with(spec));
        }
        if let Err(error) = self.shared.limiter_event.write(1) {
            // The update stays in its slot: the worker applies it at its next event instead.
            warn!(%error, "cannot wake the virtio-blk worker for a rate-limiter update");
        }
        info!(?spec, "virtio-blk rate limiter update queued");
        Ok(())
    }

    /// The current capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity()
    }

    /// The device's counters.
    pub fn metrics(&self) -> BlockMetricsSnapshot {
        self.shared.metrics.snapshot()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single assignment or clone).
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
