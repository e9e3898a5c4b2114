//! How a device tells its driver that something happened.
//!
//! Devices see only the [`VirtioInterrupt`] trait, so a transport other than virtio-mmio (PCI
//! with MSI-X, one vector per queue) can come later without touching them. [`MmioInterrupt`] is
//! virtio-mmio's: the InterruptStatus word and the `EventFd` the VMM registers as an irqfd on the
//! slot's GSI. The transport owns one per device and shares it (`Arc`) with the device's worker
//! thread, which signals used buffers, and with the API's runtime handle, which signals config
//! changes. Signalling is lock-free: an atomic OR on the status word, then an eventfd write.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::warn;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// How a device signals its driver, whatever the transport.
pub trait VirtioInterrupt: Send + Sync + std::fmt::Debug {
    /// The device placed buffers in the used ring of `queue`.
    fn signal_used(&self, queue: u16);

    /// The device's configuration space changed.
    fn signal_config_change(&self);

    /// The device stopped serving because the driver broke the protocol (virtio 1.2 §2.1.2): the
    /// driver sees `DEVICE_NEEDS_RESET` in the device status after a config-change interrupt.
    fn signal_needs_reset(&self);
}

/// A virtio-mmio device's interrupt line and the status bits behind it.
#[derive(Debug)]
pub struct MmioInterrupt {
    /// The virtio-mmio InterruptStatus register: `VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG`.
    status: AtomicU32,
    /// Written once per interrupt; KVM injects the GSI (irqfd), tests read it.
    event: EventFd,
    /// Set when the device hit an error it cannot recover from without a reset; the transport
    /// reports it as `DEVICE_NEEDS_RESET` in the Status register.
    needs_reset: AtomicBool,
}

impl MmioInterrupt {
    /// A quiet interrupt line with a fresh non-blocking `EventFd`.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            event: EventFd::new(EFD_NONBLOCK)?,
            needs_reset: AtomicBool::new(false),
        })
    }

    /// Same as [`VirtioInterrupt::signal_needs_reset`], for the transport itself.
    pub(crate) fn signal_needs_reset_now(&self) {
        VirtioInterrupt::signal_needs_reset(self);
    }

    /// Whether [`VirtioInterrupt::signal_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The driver's write to InterruptACK: clears the acknowledged bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The `EventFd` to register as an irqfd (or, in tests, to read).
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Back to the power-on state, on a device reset.
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    /// Sets InterruptStatus and the needs-reset flag as a snapshot recorded them, without
    /// signalling: the restored guest already saw (or will poll) them.
    pub(crate) fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(error) = self.event.write(1) {
            // Only fails if the counter would overflow, i.e. nobody has consumed 2^64 - 1
            // interrupts: the status bit is still set, so the driver sees it on its next poll.
            warn!(%error, "could not signal the virtio interrupt eventfd");
        }
    }
}

impl VirtioInterrupt for MmioInterrupt {
    // virtio-mmio has one line per device: the queue index does not matter.
    fn signal_used(&self, _queue: u16) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_and_config_bits_accumulate_until_acknowledged() {
        let irq = MmioInterrupt::new().unwrap();
        irq.signal_used(0);
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.event().read().unwrap(), 2);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn needs_reset_is_sticky_until_reset() {
        let irq = MmioInterrupt::new().unwrap();
        irq.signal_needs_reset();
        irq.acknowledge(u32::MAX);
        assert!(irq.needs_reset());
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
