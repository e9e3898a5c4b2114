//! The entropy device's builder: an `EntropyConfig` becomes a virtio-rng device in the next
//! virtio-mmio slot. Its worker starts when the guest's driver activates it.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use squib_virtio::rng::{RngConfig, RngDevice, RngError, RngMetrics};

use super::DeviceError;
use super::bus::Bus;
use super::virtio_mmio::VirtioMmioManager;
use crate::GuestMemory;
use crate::drives::rate_limiter_spec;
use crate::vm_config::EntropyConfig;

/// Why the entropy device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// The device refused the configuration.
    #[error("entropy device: {0}")]
    Device(#[from] RngError),
    /// The virtio-mmio slot could not be set up.
    #[error("entropy device: {0}")]
    Attach(#[from] DeviceError),
}

/// Builds the entropy device and attaches it; returns its counters.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    virtio: &mut VirtioMmioManager,
    config: &EntropyConfig,
) -> Result<Arc<RngMetrics>, EntropyError> {
    let device = RngDevice::new(RngConfig {
        rate_limiter: config.rate_limiter.as_ref().map(rate_limiter_spec),
    })?;
    let metrics = device.metrics();
    virtio.attach_device(vm, mmio, mem, "entropy", Box::new(device))?;
    Ok(metrics)
}
