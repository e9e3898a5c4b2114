//! The device manager: every virtio device of the microVM, keyed by `(kind, id)` as Firecracker's
//! device registry is, with the virtio-mmio slot and GSI it was given, its transport, and the
//! runtime handle the API drives it through.
//!
//! Each device type has a builder beside this module (`block.rs`, ...) that makes the transport
//! and the handle; the manager hands out slots in order, wires them to KVM, and does what applies
//! to every device at once: pause and resume with the VM, flush at shutdown, save and restore for
//! a snapshot.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use squib_virtio::device::ActivateError;
use squib_virtio::mmio::MmioTransport;
use squib_virtio::persist::{StateError, TransportState};

use super::DeviceError;
use super::block::DriveHandle;
use super::bus::Bus;
use super::net::NetInterfaceHandle;
use super::virtio_mmio;
use crate::arch::x86_64::layout::{MAX_VIRTIO_MMIO_SLOTS, virtio_mmio_slot};

/// The kinds of virtio device, as the API names their collections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeviceKind {
    /// `drives`.
    Block,
    /// `network-interfaces`.
    Net,
    /// `entropy` (at most one).
    Entropy,
    /// `vsock` (at most one).
    Vsock,
}

impl DeviceKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Block => "drive",
            Self::Net => "network interface",
            Self::Entropy => "entropy device",
            Self::Vsock => "vsock device",
        }
    }
}

/// What the API keeps of a running device, per kind.
#[derive(Debug)]
pub enum RuntimeHandle {
    /// A drive: backend swap, rate limiter, metrics, flush.
    Block(DriveHandle),
    /// A network interface: rate limiters, metrics.
    Net(NetInterfaceHandle),
    /// The entropy device: its counters.
    Entropy(Arc<squib_virtio::rng::RngMetrics>),
    /// The vsock device: counters and the snapshot's transport reset.
    Vsock(squib_virtio::vsock::VsockHandle),
}

/// One virtio device of the microVM.
#[derive(Debug)]
struct ManagedDevice {
    kind: DeviceKind,
    id: String,
    transport: Arc<Mutex<MmioTransport>>,
    runtime: RuntimeHandle,
}

/// A device's saved state, for a snapshot: which device, and its transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDevice {
    /// The device's kind.
    pub kind: DeviceKind,
    /// Its API id.
    pub id: String,
    /// Its transport, queues and own state.
    pub state: TransportState,
}

/// Why a device could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// One device refused.
    #[error("{kind} `{id}`: {source}")]
    Device {
        /// Its kind.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why.
        source: StateError,
    },
    /// The snapshot and the configuration disagree on the devices.
    #[error("the snapshot has {0}, which is not configured")]
    Missing(String),
}

/// Every virtio device, in slot order.
#[derive(Debug, Default)]
pub struct DeviceManager {
    devices: Vec<ManagedDevice>,
    /// (address, GSI) of each slot in use, for the kernel command line and ACPI.
    slots: Vec<(u64, u32)>,
}

impl DeviceManager {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots in use, in order.
    pub fn slots(&self) -> &[(u64, u32)] {
        &self.slots
    }

    /// Puts `transport` in the next free slot and registers the device as `(kind, id)`.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        kind: DeviceKind,
        id: &str,
        transport: MmioTransport,
        runtime: RuntimeHandle,
    ) -> Result<(), DeviceError> {
        if self.find(kind, id).is_some() {
            return Err(DeviceError::Duplicate {
                kind: kind.as_str(),
                id: id.to_owned(),
            });
        }
        let (base, gsi) =
            virtio_mmio_slot(self.slots.len()).ok_or(DeviceError::NoSlot(MAX_VIRTIO_MMIO_SLOTS))?;
        let transport = virtio_mmio::wire(vm, mmio, id, base, gsi, transport)?;
        self.slots.push((base, gsi));
        self.devices.push(ManagedDevice {
            kind,
            id: id.to_owned(),
            transport,
            runtime,
        });
        Ok(())
    }

    fn find(&self, kind: DeviceKind, id: &str) -> Option<&ManagedDevice> {
        self.devices.iter().find(|d| d.kind == kind && d.id == id)
    }

    /// The drive called `id`.
    pub fn drive(&self, id: &str) -> Option<&DriveHandle> {
        self.drives().find(|d| d.id() == id)
    }

    /// Every drive, in guest order (`/dev/vda` first).
    pub fn drives(&self) -> impl Iterator<Item = &DriveHandle> {
        self.devices.iter().filter_map(|d| match &d.runtime {
            RuntimeHandle::Block(drive) => Some(drive),
            _ => None,
        })
    }

    /// The network interface called `id`.
    pub fn network_interface(&self, id: &str) -> Option<&NetInterfaceHandle> {
        self.network_interfaces().find(|n| n.id() == id)
    }

    /// Every network interface, in the order configured.
    pub fn network_interfaces(&self) -> impl Iterator<Item = &NetInterfaceHandle> {
        self.devices.iter().filter_map(|d| match &d.runtime {
            RuntimeHandle::Net(net) => Some(net),
            _ => None,
        })
    }

    /// The entropy device's counters, if there is one.
    pub fn entropy_metrics(&self) -> Option<squib_virtio::rng::RngMetricsSnapshot> {
        self.devices.iter().find_map(|d| match &d.runtime {
            RuntimeHandle::Entropy(metrics) => Some(metrics.snapshot()),
            _ => None,
        })
    }

    /// The vsock device's handle, if there is one.
    pub fn vsock(&self) -> Option<&squib_virtio::vsock::VsockHandle> {
        self.devices.iter().find_map(|d| match &d.runtime {
            RuntimeHandle::Vsock(handle) => Some(handle),
            _ => None,
        })
    }

    /// Stops every device's worker once its requests in flight are published. Call with the
    /// vCPUs parked, so no guest access races the pause.
    pub fn pause(&self) {
        for device in &self.devices {
            lock(&device.transport).pause();
        }
    }

    /// Starts every paused device's worker again.
    pub fn resume(&self) -> Result<(), ActivateError> {
        for device in &self.devices {
            lock(&device.transport).resume()?;
        }
        Ok(())
    }

    /// Makes every drive's completed writes durable; returns the failures by drive id.
    pub fn flush_drives(&self) -> Vec<(String, squib_virtio::block::backend::BackendError)> {
        self.drives()
            .filter_map(|drive| drive.flush().err().map(|e| (drive.id().to_owned(), e)))
            .collect()
    }

    /// Every device's state, for a snapshot: the devices must be paused.
    pub fn save(&self) -> Result<Vec<SavedDevice>, DeviceStateError> {
        self.devices
            .iter()
            .map(|device| {
                let state = lock(&device.transport).save_state().map_err(|source| {
                    DeviceStateError::Device {
                        kind: device.kind.as_str(),
                        id: device.id.clone(),
                        source,
                    }
                })?;
                Ok(SavedDevice {
                    kind: device.kind,
                    id: device.id.clone(),
                    state,
                })
            })
            .collect()
    }

    /// Puts every saved device back; each comes back paused (resume with [`Self::resume`]).
    pub fn restore(&self, saved: &[SavedDevice]) -> Result<(), DeviceStateError> {
        for entry in saved {
            let device = self.find(entry.kind, &entry.id).ok_or_else(|| {
                DeviceStateError::Missing(format!("{} `{}`", entry.kind.as_str(), entry.id))
            })?;
            lock(&device.transport)
                .restore_state(&entry.state)
                .map_err(|source| DeviceStateError::Device {
                    kind: entry.kind.as_str(),
                    id: entry.id.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// A transport's lock: its state stays consistent even if a vCPU thread panicked holding it
/// (every register write completes or changes nothing).
fn lock(transport: &Mutex<MmioTransport>) -> MutexGuard<'_, MmioTransport> {
    transport.lock().unwrap_or_else(PoisonError::into_inner)
}
