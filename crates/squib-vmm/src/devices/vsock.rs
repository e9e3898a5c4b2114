//! The vsock device's builder: a `VsockConfig` becomes a virtio-vsock device listening on its
//! `uds_path` (bound here, at start), in the next virtio-mmio slot.

use kvm_ioctls::VmFd;
use squib_virtio::mmio::MmioTransport;
use squib_virtio::vsock::{self, VsockDevice, VsockError};

use super::DeviceError;
use super::bus::Bus;
use super::manager::{DeviceKind, DeviceManager, RuntimeHandle};
use crate::GuestMemory;
use crate::vm_config::VsockConfig;

/// The vsock device's id in the device manager (Firecracker's deprecated `vsock_id` is ignored).
pub const VSOCK_ID: &str = "vsock";

/// Why the vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockBuildError {
    /// The device refused the configuration or could not bind its socket.
    #[error("vsock device: {0}")]
    Device(#[from] VsockError),
    /// The virtio-mmio slot could not be set up.
    #[error("vsock device: {0}")]
    Attach(#[from] DeviceError),
}

/// Builds the vsock device, binds its socket and attaches it to the next slot.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    devices: &mut DeviceManager,
    config: &VsockConfig,
) -> Result<(), VsockBuildError> {
    let device = VsockDevice::new(vsock::VsockConfig {
        guest_cid: u64::from(config.guest_cid),
        uds_path: config.uds_path.clone(),
    })?;
    let handle = device.handle();
    let transport = MmioTransport::new(Box::new(device), mem.clone()).map_err(|source| {
        DeviceError::Transport {
            device: VSOCK_ID.into(),
            source,
        }
    })?;
    devices.attach(
        vm,
        mmio,
        DeviceKind::Vsock,
        VSOCK_ID,
        transport,
        RuntimeHandle::Vsock(handle),
    )?;
    Ok(())
}
