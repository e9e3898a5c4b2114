//! The entropy device: no configuration space, one request queue, activation hands the queue to
//! a worker running [`RngHandler`].

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::handler::RngHandler;
use super::metrics::{RngMetrics, RngMetricsSnapshot};
use crate::device::{ActivateError, Activation, FEATURE_VERSION_1, VirtioDevice};
use crate::handler_worker::HandlerWorker;
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// How the VMM configures the entropy device (Firecracker's `PUT /entropy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngConfig {
    /// Throttles the bytes (bandwidth bucket) and requests (ops bucket) served.
    pub rate_limiter: Option<RateLimiterSpec>,
}

/// Why an entropy device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// A token bucket that cannot be represented.
    #[error("rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
    /// The host refused the limiter's timer fd.
    #[error("cannot create the rate limiter's timer: {0}")]
    Host(#[source] io::Error),
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct RngDevice {
    metrics: Arc<RngMetrics>,
    /// The limiter between activations: its buckets belong to the device, so a guest cannot
    /// refill them by resetting it.
    limiter: Arc<Mutex<Option<RateLimiter>>>,
    worker: Option<HandlerWorker>,
}

impl RngDevice {
    /// An entropy device; nothing runs until the driver activates it.
    pub fn new(config: RngConfig) -> Result<Self, RngError> {
        let limiter = match config.rate_limiter {
            Some(spec) => {
                spec.validate()?;
                Some(RateLimiter::from_spec(spec).map_err(RngError::Host)?)
            }
            None => None,
        };
        Ok(Self {
            metrics: Arc::default(),
            limiter: Arc::new(Mutex::new(limiter)),
            worker: None,
        })
    }

    /// The device's counters, shared with the API's metrics.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        Arc::clone(&self.metrics)
    }

    /// A snapshot of the counters.
    pub fn metrics_snapshot(&self) -> RngMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Whether a worker is serving the queue.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

impl VirtioDevice for RngDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        debug!(offset, len = data.len(), "read of virtio-rng config space");
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "write to virtio-rng config space ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        0
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            ..
        } = activation;
        let got = queues.len().min(queue_events.len());
        if got != 1 || queues.len() != queue_events.len() {
            self.metrics.activate_fails(1);
            return Err(ActivateError::QueueCount { expected: 1, got });
        }
        let limiter = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handler = RngHandler::new(
            Arc::clone(&self.metrics),
            limiter,
            Arc::clone(&self.limiter),
        );
        match HandlerWorker::spawn("rng", handler, mem, queues, queue_events, interrupt) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(error) => {
                self.metrics.activate_fails(1);
                Err(ActivateError::Host(error))
            }
        }
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins it; its handler parks the limiter again.
        self.worker = None;
    }
}
