//! The entropy device: no configuration space, one request queue, activation hands the queue to
//! the device runtime running [`RngHandler`].

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::handler::RngHandler;
use super::metrics::{RngMetrics, RngMetricsSnapshot};
use crate::device::{ActivateError, Activation, FEATURE_VERSION_1, RuntimeControl, VirtioDevice};
use crate::persist::{DeviceState, StateError};
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};
use crate::runtime::{DeviceRuntime, QueueParts};

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
    runtime: DeviceRuntime<RngHandler>,
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
            runtime: DeviceRuntime::new("squib-rng"),
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
        self.runtime.is_active()
    }

    fn prepare(&self, activation: Activation) -> Result<(RngHandler, QueueParts), ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            ..
        } = activation;
        if queues.len() != 1 || queue_events.len() != 1 {
            self.metrics.activate_fails(1);
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len().min(queue_events.len()),
            });
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
        Ok((
            handler,
            QueueParts {
                mem,
                queues,
                queue_events,
                interrupt,
            },
        ))
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
        if self.runtime.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let (handler, parts) = self.prepare(activation)?;
        self.runtime
            .activate(handler, parts)
            .inspect_err(|_| self.metrics.activate_fails(1))
    }

    fn reset(&mut self) {
        // Dropping the handler parks the limiter in the device again.
        drop(self.runtime.reset());
    }

    fn runtime(&self) -> &dyn RuntimeControl {
        &self.runtime
    }

    fn runtime_mut(&mut self) -> &mut dyn RuntimeControl {
        &mut self.runtime
    }

    fn save_state(&self) -> Result<DeviceState, StateError> {
        self.runtime.ensure_quiescent()?;
        Ok(DeviceState::Entropy)
    }

    fn restore_state(
        &mut self,
        state: &DeviceState,
        activation: Option<Activation>,
    ) -> Result<(), StateError> {
        if *state != DeviceState::Entropy {
            return Err(StateError::StateMismatch("virtio-rng"));
        }
        drop(self.runtime.reset());
        if let Some(activation) = activation {
            let (handler, parts) = self.prepare(activation)?;
            self.runtime.restore_paused(handler, parts);
        }
        Ok(())
    }
}
