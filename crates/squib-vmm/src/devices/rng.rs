//! The entropy device's builder: an `EntropyConfig` becomes a virtio-rng device in the next
//! virtio-mmio slot. Its worker starts when the guest's driver activates it.

use kvm_ioctls::VmFd;
use squib_virtio::mmio::MmioTransport;
use squib_virtio::rng::{RngConfig, RngDevice, RngError};

use super::DeviceError;
use super::block::rate_limiter_spec;
use super::bus::Bus;
use super::manager::{DeviceKind, DeviceManager, RuntimeHandle};
use crate::GuestMemory;
use crate::vm_config::EntropyConfig;

/// The entropy device's id in the device manager (Firecracker has one, unnamed).
pub const ENTROPY_ID: &str = "entropy";

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

/// Builds the entropy device and attaches it to the next slot.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    devices: &mut DeviceManager,
    config: &EntropyConfig,
) -> Result<(), EntropyError> {
    let device = RngDevice::new(RngConfig {
        rate_limiter: config.rate_limiter.as_ref().map(rate_limiter_spec),
    })?;
    let metrics = device.metrics();
    let transport = MmioTransport::new(Box::new(device), mem.clone()).map_err(|source| {
        DeviceError::Transport {
            device: ENTROPY_ID.into(),
            source,
        }
    })?;
    devices.attach(
        vm,
        mmio,
        DeviceKind::Entropy,
        ENTROPY_ID,
        transport,
        RuntimeHandle::Entropy(metrics),
    )?;
    Ok(())
}
