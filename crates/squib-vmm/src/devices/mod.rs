//! Devices: the buses, the legacy PC devices, the boot timer, and the virtio devices with their
//! manager and one builder per device type.

pub mod acpi_pm;
pub mod block;
pub mod boot_timer;
pub mod bus;
pub mod debug_exit;
pub mod i8042;
pub mod irq;
pub mod manager;
pub mod net;
pub mod rng;
pub mod serial;
pub mod virtio_mmio;
pub mod vsock;

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;

use self::bus::{Bus, BusError};
use self::debug_exit::DebugExit;
use self::i8042::{I8042, I8042State};
use self::irq::IrqLine;
use self::serial::{SerialDevice, SerialOutput, UartState, UartStateError};
use crate::arch::x86_64::layout::{
    DEBUG_EXIT_PORT, I8042_IRQ, I8042_PORT, SERIAL_IRQ, SERIAL_PORT,
};
use crate::exit::{ExitReason, ExitSender};

/// Why a device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Its address range is taken or invalid.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM {op} for {device} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// Which device.
        device: String,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {device}: {source}")]
    EventFd {
        /// Which device.
        device: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Two devices of one kind with the same id.
    #[error("a {kind} with id `{id}` is already attached")]
    Duplicate {
        /// The kind.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// No virtio-mmio slot is left.
    #[error("too many virtio devices: at most {0} fit the interrupt lines")]
    NoSlot(usize),
    /// A snapshot's legacy-device state does not fit the device.
    #[error(transparent)]
    LegacyState(#[from] UartStateError),
    /// A virtio transport could not be created.
    #[error("virtio device {device}: {source}")]
    Transport {
        /// Which device.
        device: String,
        /// Why.
        source: squib_virtio::mmio::TransportError,
    },
}

/// The legacy devices the host side also drives.
#[derive(Debug, Clone)]
pub struct LegacyDevices {
    /// COM1, which stdin forwarding feeds.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The i8042, for Ctrl-Alt-Del.
    pub i8042: Arc<Mutex<I8042>>,
}

/// The legacy devices' guest-visible state, as a snapshot stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegacyState {
    serial: UartState,
    i8042: I8042State,
}

impl LegacyDevices {
    /// Their state (vCPUs paused, so no guest access races the read).
    pub fn save(&self) -> LegacyState {
        LegacyState {
            serial: self
                .serial
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .save(),
            i8042: self
                .i8042
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .save(),
        }
    }
}

fn irq_line(device: &'static str) -> Result<IrqLine, DeviceError> {
    IrqLine::new().map_err(|source| DeviceError::EventFd { device, source })
}

fn register_irqfd(vm: &VmFd, line: &IrqLine, gsi: u32, device: &str) -> Result<(), DeviceError> {
    vm.register_irqfd(line.event(), gsi)
        .map_err(|source| DeviceError::Kvm {
            op: "IRQFD",
            device: device.into(),
            source,
        })
}

/// Puts COM1 (IRQ 4), the i8042 (IRQ 1), the ACPI power registers and the debug-exit port on
/// the PIO bus; `restored` is the state of a snapshot being loaded.
pub fn attach_legacy(
    vm: &VmFd,
    pio: &mut Bus,
    exit: &ExitSender,
    serial_out: SerialOutput,
    restored: Option<&LegacyState>,
) -> Result<LegacyDevices, DeviceError> {
    let serial = match restored {
        Some(state) => SerialDevice::from_state(irq_line("COM1")?, serial_out, &state.serial)?,
        None => SerialDevice::new(irq_line("COM1")?, serial_out),
    };
    register_irqfd(vm, serial.irq(), SERIAL_IRQ, "COM1")?;
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(u64::from(SERIAL_PORT), 8, serial.clone())?;

    let mut i8042 = I8042::new(irq_line("i8042")?, exit.clone());
    if let Some(state) = restored {
        i8042.restore(&state.i8042);
    }
    register_irqfd(vm, i8042.irq(), I8042_IRQ, "i8042")?;
    let i8042 = Arc::new(Mutex::new(i8042));
    // Data port 0x60 and command port 0x64 (0x61 is KVM's, with the in-kernel PIT).
    pio.insert(u64::from(I8042_PORT), 5, i8042.clone())?;

    let acpi_exit = exit.clone();
    let acpi_pm = acpi_pm::AcpiPm::new(move |event| {
        acpi_exit.request(match event {
            acpi_pm::PowerEvent::PowerOff => ExitReason::AcpiPowerOff,
            acpi_pm::PowerEvent::Reset => ExitReason::AcpiReset,
        })
    });
    pio.insert(
        u64::from(acpi_pm::ACPI_PM_PORT),
        acpi_pm::ACPI_PM_PORT_COUNT,
        Arc::new(Mutex::new(acpi_pm)),
    )?;

    pio.insert(
        u64::from(DEBUG_EXIT_PORT),
        1,
        Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
    )?;
    Ok(LegacyDevices { serial, i8042 })
}
