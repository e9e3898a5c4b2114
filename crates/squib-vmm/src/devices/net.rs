//! Network interfaces: each `NetworkInterfaceConfig` becomes a TAP backend, a virtio-net device
//! and a virtio-mmio slot (after the drives'). Frames move on the device's worker thread, never
//! on a vCPU.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use squib_host::tap::Tap;
use squib_virtio::mmio::MmioTransport;
use squib_virtio::net::{NetConfig, NetDevice, NetHandle, NetMetricsSnapshot};
use squib_virtio::rate_limiter::RateLimiterError;

use super::DeviceError;
use super::block::rate_limiter_spec;
use super::bus::Bus;
use super::manager::{DeviceKind, DeviceManager, RuntimeHandle};
use crate::GuestMemory;
use crate::vm_config::{NetworkInterfaceConfig, RateLimiterConfig};

/// Why an interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP device could not be opened.
    #[error("network interface {id}: cannot open TAP device `{tap}`: {source}")]
    Tap {
        /// The interface id.
        id: String,
        /// `host_dev_name`.
        tap: String,
        /// Why.
        source: std::io::Error,
    },
    /// The device refused the configuration.
    #[error("network interface {id}: {source}")]
    Device {
        /// The interface id.
        id: String,
        /// Why.
        source: squib_virtio::net::NetError,
    },
    /// The virtio-mmio slot could not be set up.
    #[error("network interface {id}: {source}")]
    Attach {
        /// The interface id.
        id: String,
        /// Why.
        source: DeviceError,
    },
}

/// A network interface of the running microVM.
#[derive(Debug)]
pub struct NetInterfaceHandle {
    id: String,
    net: NetHandle,
}

impl NetInterfaceHandle {
    /// The interface id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device's counters.
    pub fn metrics(&self) -> NetMetricsSnapshot {
        self.net.metrics()
    }

    /// Changes the receive and/or transmit throttle (applied by the worker at once).
    pub fn update_rate_limiters(
        &self,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), RateLimiterError> {
        self.net
            .update_rate_limiters(rx.map(rate_limiter_spec), tx.map(rate_limiter_spec))
    }
}

/// Opens every interface's TAP and attaches it, in order, to the next virtio-mmio slot.
pub fn attach_all(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    devices: &mut DeviceManager,
    ifaces: &[NetworkInterfaceConfig],
) -> Result<(), NetError> {
    for iface in ifaces {
        let id = || iface.iface_id.clone();
        let tap = Tap::open(&iface.host_dev_name).map_err(|source| NetError::Tap {
            id: id(),
            tap: iface.host_dev_name.clone(),
            source,
        })?;
        let config = NetConfig {
            guest_mac: iface.guest_mac,
            rx_rate_limiter: iface.rx_rate_limiter.as_ref().map(rate_limiter_spec),
            tx_rate_limiter: iface.tx_rate_limiter.as_ref().map(rate_limiter_spec),
        };
        let device = NetDevice::new(Arc::new(tap), config)
            .map_err(|source| NetError::Device { id: id(), source })?;
        let net = device.handle();
        let transport = MmioTransport::new(Box::new(device), mem.clone()).map_err(|source| {
            NetError::Attach {
                id: id(),
                source: DeviceError::Transport {
                    device: id(),
                    source,
                },
            }
        })?;
        devices
            .attach(
                vm,
                mmio,
                DeviceKind::Net,
                &iface.iface_id,
                transport,
                RuntimeHandle::Net(NetInterfaceHandle { id: id(), net }),
            )
            .map_err(|source| NetError::Attach { id: id(), source })?;
    }
    Ok(())
}
