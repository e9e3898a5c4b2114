//! The runtime handle the API thread keeps for a virtio-blk device: swap the disk behind it
//! (`PATCH /drives/{id}` with a new `path_on_host`) and read its metrics.
//!
//! The device, its worker and every handle share one [`Shared`]. The worker keeps its own
//! `Arc` of the backend and only looks at the shared slot when `backend_epoch` moved (one atomic
//! load per batch of requests), so a swap never puts a lock on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::info;

use super::backend::{BlockBackend, SECTOR_SIZE};
use super::metrics::{BlockMetrics, BlockMetricsSnapshot};
use crate::interrupt::Interrupt;

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
    pub(crate) metrics: BlockMetrics,
}

impl Shared {
    pub(crate) fn new(backend: Arc<dyn BlockBackend>) -> Self {
        Self {
            capacity: AtomicU64::new(usable_capacity(backend.as_ref())),
            read_only: backend.is_read_only(),
            backend: Mutex::new(backend),
            backend_epoch: AtomicU64::new(0),
            config_generation: AtomicU32::new(0),
            interrupt: Mutex::new(None),
            metrics: BlockMetrics::default(),
        }
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
