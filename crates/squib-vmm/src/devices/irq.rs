//! Interrupt lines for the legacy devices: an `EventFd` registered with KVM as an irqfd.

use vmm_sys_util::eventfd::EventFd;

/// Raises a guest interrupt by signalling an irqfd.
#[derive(Debug)]
pub struct IrqLine(EventFd);

impl IrqLine {
    /// A new line; register [`IrqLine::event`] as an irqfd on the device's GSI.
    pub fn new() -> std::io::Result<Self> {
        EventFd::new(libc::EFD_NONBLOCK).map(Self)
    }

    /// The eventfd to register with KVM.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
