//! A virtio-blk device's state that outlives one activation, and the handle the API thread keeps
//! on it: swap the disk behind it (`PATCH /drives/{id}` with a new `path_on_host`), change its
//! rate limiter (`PATCH /drives/{id}` with a `rate_limiter`) and read its metrics.
//!
//! The device, its handler and every handle share one [`DriveState`]. The worker keeps its own
//! `Arc` of the backend and only looks at the shared slot when `backend_epoch` moved (one atomic
//! load per batch of requests), so a swap never puts a lock on the request path. A rate-limiter
//! update waits in its own slot and wakes the handler through `limiter_event`, so it applies at
//! once even while the handler sits throttled on a long timer.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{error, info, warn};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::{BackendError, BlockBackend, SECTOR_SIZE};
use super::metrics::{BlockMetrics, BlockMetricsSnapshot};
use crate::interrupt::VirtioInterrupt;
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};

/// State shared by a block device, its handler and its handles.
#[derive(Debug)]
pub(crate) struct DriveState {
    backend: Mutex<Arc<dyn BlockBackend>>,
    /// Backends swapped out and not yet flushed: the worker flushes them, after the requests in
    /// flight on them finished, before it serves anything on the new backend; shutdown flushes
    /// what is left. Until then they stay open, so no write acknowledged on them is lost.
    retired: Mutex<Vec<Arc<dyn BlockBackend>>>,
    /// Bumped on every swap, after `backend` and `capacity` changed.
    backend_epoch: AtomicU64,
    /// The current backend's capacity in bytes, for config-space reads on the vCPU thread.
    capacity: AtomicU64,
    config_generation: AtomicU32,
    /// The interrupt line while the device is active (a swap then tells the driver).
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    read_only: bool,
    /// The rate limiter while no worker runs. A worker takes it when it is built and puts it
    /// back when it ends, so a driver reset does not refill the buckets.
    limiter: Mutex<Option<RateLimiter>>,
    /// A limiter update the handler has not applied yet.
    limiter_update: Mutex<Option<RateLimiterSpec>>,
    /// Written after `limiter_update` is set; the handler epolls it.
    limiter_event: EventFd,
    pub(crate) metrics: BlockMetrics,
    /// Whether a worker has logged which in-flight executor it started: only the first
    /// activation says so above debug level (a guest can reset the device in a loop).
    executor_announced: AtomicBool,
}

impl DriveState {
    pub(crate) fn new(
        backend: Arc<dyn BlockBackend>,
        limiter: Option<RateLimiter>,
    ) -> io::Result<Self> {
        Ok(Self {
            capacity: AtomicU64::new(usable_capacity(backend.as_ref())),
            read_only: backend.is_read_only(),
            backend: Mutex::new(backend),
            retired: Mutex::new(Vec::new()),
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

    /// Sets ConfigGeneration as a snapshot recorded it.
    pub(crate) fn restore_config_generation(&self, generation: u32) {
        self.config_generation.store(generation, Ordering::Release);
    }

    pub(crate) fn set_interrupt(&self, interrupt: Option<Arc<dyn VirtioInterrupt>>) {
        *lock(&self.interrupt) = interrupt;
    }

    /// Flushes and releases the swapped-out backends; the first error is returned after all
    /// were tried.
    pub(crate) fn flush_retired(&self) -> Result<(), BackendError> {
        let retired = std::mem::take(&mut *lock(&self.retired));
        let mut result = Ok(());
        for backend in retired {
            if let Err(error) = flush_writable(backend.as_ref()) {
                error!(%error, "flushing a swapped-out virtio-blk backend failed");
                result = result.and(Err(error));
            }
        }
        result
    }
}

fn flush_writable(backend: &dyn BlockBackend) -> Result<(), BackendError> {
    if backend.is_read_only() {
        Ok(())
    } else {
        backend.flush()
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
    shared: Arc<DriveState>,
}

impl BlockHandle {
    pub(crate) fn new(shared: Arc<DriveState>) -> Self {
        Self { shared }
    }

    /// Replaces the disk: requests already taken finish on the old backend, which is then
    /// flushed before any later request is served on the new one. The guest sees the new capacity after a config-change interrupt (if the device is
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
            let old = std::mem::replace(&mut *slot, backend);
            lock(&self.shared.retired).push(old);
            self.shared.capacity.store(capacity, Ordering::Release);
            self.shared.config_generation.fetch_add(1, Ordering::AcqRel);
            self.shared.backend_epoch.fetch_add(1, Ordering::AcqRel);
        }
        info!(capacity, "virtio-blk backend swapped");
        // Wake the worker so it flushes the old backend now, not at the guest's next request.
        if let Err(error) = self.shared.limiter_event.write(1) {
            warn!(%error, "cannot wake the virtio-blk worker after a swap");
        }
        if let Some(interrupt) = lock(&self.shared.interrupt).as_ref() {
            interrupt.signal_config_change();
        }
        Ok(())
    }

    /// Changes the rate limiter: the handler applies `spec` at its next wake-up, which this call
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
            // The update stays in its slot: the handler applies it at its next event instead.
            warn!(%error, "cannot wake the virtio-blk worker for a rate-limiter update");
        }
        info!(?spec, "virtio-blk rate limiter update queued");
        Ok(())
    }

    /// Makes every write the device ever acknowledged durable: the swapped-out backends not yet
    /// flushed, then the current one (shutdown).
    pub fn flush_all(&self) -> Result<(), BackendError> {
        let retired = self.shared.flush_retired();
        let (_, current) = self.shared.backend();
        retired.and(flush_writable(current.as_ref()))
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
