//! How a device tells its driver that something happened: the virtio-mmio interrupt-status word
//! and the `EventFd` the VMM registers as an irqfd on the slot's GSI.
//!
//! The transport owns one [`Interrupt`] per device and shares it (`Arc`) with the device's worker
//! thread, which signals used buffers, and with the API's runtime handle, which signals config
//! changes. Signalling is lock-free: an atomic OR on the status word, then an eventfd write.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::warn;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A device's interrupt line and the status bits behind it.
#[derive(Debug)]
pub struct Interrupt {
    /// The virtio-mmio InterruptStatus register: `VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG`.
    status: AtomicU32,
    /// Written once per interrupt; KVM injects the GSI (irqfd), tests read it.
    event: EventFd,
    /// Set when the device hit an error it cannot recover from without a reset; the transport
    /// reports it as `DEVICE_NEEDS_RESET` in the Status register.
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// A quiet interrupt line with a fresh non-blocking `EventFd`.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            event: EventFd::new(EFD_NONBLOCK)?,
            needs_reset: AtomicBool::new(false),
        })
    }

    /// The device placed buffers in a used ring.
    pub fn signal_used_buffer(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// The device's configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The device stopped serving because the driver broke the protocol (virtio 1.2 §2.1.2): the
    /// driver sees `DEVICE_NEEDS_RESET` in Status after a config-change interrupt.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    /// Whether [`Interrupt::signal_needs_reset`] was called since the last reset.
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

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(error) = self.event.write(1) {
            // Only fails if the counter would overflow, i.e. nobody has consumed 2^64 - 1
            // interrupts: the status bit is still set, so the driver sees it on its next poll.
            warn!(%error, "could not signal the virtio interrupt eventfd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_and_config_bits_accumulate_until_acknowledged() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_buffer();
        irq.signal_config_change();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.event().read().unwrap(), 2);
        irq.acknowledge(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn needs_reset_is_sticky_until_reset() {
        let irq = Interrupt::new().unwrap();
        irq.signal_needs_reset();
        irq.acknowledge(u32::MAX);
        assert!(irq.needs_reset());
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.status(), 0);
    }
}
