//! The virtio-mmio device manager: 4 KiB slots from `0xD000_1000`, a GSI each (5 + n), queue
//! notifications as ioeventfds (no exit to squib), interrupts as irqfds.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use squib_virtio::mmio::MmioTransport;

use super::DeviceError;
use super::bus::{Bus, BusDevice};
use crate::arch::x86_64::layout::{MAX_VIRTIO_MMIO_SLOTS, MMIO_DEVICE_SIZE, virtio_mmio_slot};

/// virtio-mmio QueueNotify register.
const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Hands out virtio-mmio slots in order and wires each device to KVM and the MMIO bus.
#[derive(Debug, Default)]
pub struct VirtioMmioManager {
    /// (address, GSI) of each attached device, in slot order.
    slots: Vec<(u64, u32)>,
}

impl VirtioMmioManager {
    /// No devices yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots in use, for the kernel command line.
    pub fn slots(&self) -> &[(u64, u32)] {
        &self.slots
    }

    /// Wraps `device` in a virtio-mmio transport over `mem` and attaches it ([`Self::attach`]).
    pub fn attach_device(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        mem: &crate::GuestMemory,
        name: &str,
        device: Box<dyn squib_virtio::device::VirtioDevice>,
    ) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
        let transport =
            MmioTransport::new(device, mem.clone()).map_err(|source| DeviceError::Transport {
                device: name.to_owned(),
                source,
            })?;
        self.attach(vm, mmio, name, transport)
    }

    /// Puts `transport` in the next free slot: registers its queue notifications as ioeventfds
    /// (datamatch = queue index) and its interrupt as an irqfd, and maps its registers.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        name: &str,
        transport: MmioTransport,
    ) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
        let (base, gsi) =
            virtio_mmio_slot(self.slots.len()).ok_or(DeviceError::NoSlot(MAX_VIRTIO_MMIO_SLOTS))?;
        let kvm_err = |op| {
            move |source| DeviceError::Kvm {
                op,
                device: name.to_owned(),
                source,
            }
        };
        for (index, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(
                event,
                &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                index as u32,
            )
            .map_err(kvm_err("IOEVENTFD"))?;
        }
        vm.register_irqfd(transport.interrupt_event(), gsi)
            .map_err(kvm_err("IRQFD"))?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, MMIO_DEVICE_SIZE, transport.clone())?;
        self.slots.push((base, gsi));
        tracing::debug!(device = name, base, gsi, "virtio-mmio device attached");
        Ok(transport)
    }
}
