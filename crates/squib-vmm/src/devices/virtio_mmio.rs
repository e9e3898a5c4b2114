//! virtio-mmio slots on KVM: the transport on the MMIO bus, its queue notifications as
//! ioeventfds (no exit to squib), its interrupt as an irqfd on the slot's GSI.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use squib_virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};

use super::DeviceError;
use super::bus::{Bus, BusDevice};
use crate::arch::x86_64::layout::MMIO_DEVICE_SIZE;

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Puts `transport` at `base` on the MMIO bus: registers its queue notifications as ioeventfds
/// (datamatch = queue index) and its interrupt as an irqfd on `gsi`.
pub fn wire(
    vm: &VmFd,
    mmio: &mut Bus,
    name: &str,
    base: u64,
    gsi: u32,
    transport: MmioTransport,
) -> Result<Arc<Mutex<MmioTransport>>, DeviceError> {
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
    tracing::debug!(device = name, base, gsi, "virtio-mmio device attached");
    Ok(transport)
}
