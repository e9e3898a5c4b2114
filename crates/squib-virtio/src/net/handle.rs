//! The runtime handle the API thread keeps for a virtio-net device: rate-limiter updates
//! (`PATCH /network-interfaces/{id}`) and metrics.
//!
//! A limiter update waits in a slot and wakes the worker through `limiter_event`, so it applies at
//! once even while the worker sits throttled on a long timer. The limiters themselves outlive
//! one activation (parked here between workers), so a driver reset does not refill the buckets.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{info, warn};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::NetBackend;
use super::metrics::{NetMetrics, NetMetricsSnapshot};
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};

/// The receive and transmit limiters of one device.
#[derive(Debug, Default)]
pub(crate) struct Limiters {
    pub(crate) rx: Option<RateLimiter>,
    pub(crate) tx: Option<RateLimiter>,
}

/// A pending update of either direction's limiter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LimiterUpdate {
    pub(crate) rx: Option<RateLimiterSpec>,
    pub(crate) tx: Option<RateLimiterSpec>,
}

/// State shared by a net device, its worker thread and its handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn NetBackend>,
    limiters: Mutex<Limiters>,
    limiter_update: Mutex<Option<LimiterUpdate>>,
    limiter_event: EventFd,
    pub(crate) metrics: NetMetrics,
}

impl Shared {
    pub(crate) fn new(backend: Arc<dyn NetBackend>, limiters: Limiters) -> io::Result<Self> {
        Ok(Self {
            backend,
            limiters: Mutex::new(limiters),
            limiter_update: Mutex::new(None),
            limiter_event: EventFd::new(EFD_NONBLOCK)?,
            metrics: NetMetrics::default(),
        })
    }

    pub(crate) fn take_limiters(&self) -> Limiters {
        std::mem::take(&mut *lock(&self.limiters))
    }

    pub(crate) fn park_limiters(&self, limiters: Limiters) {
        *lock(&self.limiters) = limiters;
    }

    pub(crate) fn take_limiter_update(&self) -> Option<LimiterUpdate> {
        lock(&self.limiter_update).take()
    }

    pub(crate) fn limiter_event(&self) -> &EventFd {
        &self.limiter_event
    }
}

/// A cloneable, thread-safe handle on a virtio-net device.
#[derive(Clone, Debug)]
pub struct NetHandle {
    shared: Arc<Shared>,
}

impl NetHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Changes the receive and/or transmit limiter: the worker applies them at its next wake-up,
    /// which this call causes (or at the next activation). Per bucket, as for drives: absent
    /// keeps its state, zero-sized removes the limit, given starts full.
    pub fn update_rate_limiters(
        &self,
        rx: Option<RateLimiterSpec>,
        tx: Option<RateLimiterSpec>,
    ) -> Result<(), RateLimiterError> {
        for spec in [rx, tx].into_iter().flatten() {
            spec.validate()?;
        }
        {
            let mut slot = lock(&self.shared.limiter_update);
            let pending = slot.take().unwrap_or_default();
            let merge = |old: Option<RateLimiterSpec>, new: Option<RateLimiterSpec>| match new {
                Some(new) => Some(old.unwrap_or_default().merged_with(new)),
                None => old,
            };
            *slot = Some(LimiterUpdate {
                rx: merge(pending.rx, rx),
                tx: merge(pending.tx, tx),
            });
        }
        if let Err(error) = self.shared.limiter_event.write(1) {
            warn!(%error, "cannot wake the virtio-net worker for a rate-limiter update");
        }
        info!(?rx, ?tx, "virtio-net rate limiter update queued");
        Ok(())
    }

    /// The device's counters.
    pub fn metrics(&self) -> NetMetricsSnapshot {
        self.shared.metrics.snapshot()
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single assignment or take).
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
