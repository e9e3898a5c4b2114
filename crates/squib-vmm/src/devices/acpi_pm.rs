//! The FADT's power registers: how an ACPI guest powers off or resets a squib microVM.
//!
//! A hardware-reduced ACPI platform has no PM1 blocks; the FADT instead names a sleep control
//! register, a sleep status register and a reset register. squib puts all three on consecutive
//! I/O ports. Linux's `poweroff` writes `SLP_TYP = 5` (the DSDT's `_S5_`) with `SLP_EN`; its
//! `reboot` (with `reboot=a`, or after the i8042 path) writes [`RESET_VALUE`] to the reset register.

use super::bus::BusDevice;

/// First port: the sleep control register.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Ports the device occupies: sleep control, sleep status, reset.
pub const ACPI_PM_PORT_COUNT: u64 = 3;
/// Sleep control register (write-only here).
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT;
/// Sleep status register (reads 0: squib never wakes a sleeping guest).
pub const SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT + 1;
/// Reset register.
pub const RESET_PORT: u16 = ACPI_PM_PORT + 2;
/// The value the FADT tells the guest to write to [`RESET_PORT`].
pub const RESET_VALUE: u8 = 0x01;

/// Sleep type S5 (soft off), as the DSDT's `_S5_` package declares it.
const SLEEP_TYPE_S5: u8 = 5;
/// SLP_TYP occupies bits 2–4 of the sleep control register, SLP_EN is bit 5.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;
const SLEEP_ENABLE: u8 = 1 << 5;

/// What the guest asked the machine to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    /// S5: the guest shut down.
    PowerOff,
    /// The guest wrote the reset value.
    Reset,
}

/// The sleep control, sleep status and reset registers at [`ACPI_PM_PORT`].
pub struct AcpiPm {
    on_event: Box<dyn FnMut(PowerEvent) + Send>,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm").finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// A device that calls `on_event` when the guest powers off or resets (typically: ask the
    /// VMM to exit with status 0).
    pub fn new(on_event: impl FnMut(PowerEvent) + Send + 'static) -> Self {
        Self {
            on_event: Box::new(on_event),
        }
    }

    fn sleep_control(&mut self, value: u8) {
        if value & SLEEP_ENABLE == 0 {
            return;
        }
        match (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK {
            SLEEP_TYPE_S5 => {
                tracing::info!("the guest powered off through ACPI (S5)");
                (self.on_event)(PowerEvent::PowerOff);
            }
            other => tracing::warn!(
                sleep_type = other,
                "guest asked for an unsupported sleep state; ignored"
            ),
        }
    }

    fn reset(&mut self, value: u8) {
        if value == RESET_VALUE {
            tracing::info!("the guest reset the machine through the ACPI reset register");
            (self.on_event)(PowerEvent::Reset);
        } else {
            tracing::debug!(value, "ignored write to the ACPI reset register");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS clear. The other registers are write-only and read as 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // All three registers are 8 bits wide; the FADT declares byte access.
        let [value] = data else {
            tracing::debug!(
                offset,
                len = data.len(),
                "ignored wide write to the ACPI PM registers"
            );
            return;
        };
        match offset {
            0 => self.sleep_control(*value),
            2 => self.reset(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn device() -> (AcpiPm, Arc<Mutex<Vec<PowerEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        (AcpiPm::new(move |e| sink.lock().unwrap().push(e)), events)
    }

    #[test]
    fn linux_poweroff_value_powers_off() {
        let (mut pm, events) = device();
        // What ACPICA writes for S5: SLP_TYP 5 << 2 | SLP_EN.
        pm.write(0, &[0x34]);
        assert_eq!(*events.lock().unwrap(), vec![PowerEvent::PowerOff]);
    }

    #[test]
    fn reset_value_resets_and_other_values_do_not() {
        let (mut pm, events) = device();
        pm.write(2, &[0x02]);
        assert!(events.lock().unwrap().is_empty());
        pm.write(2, &[RESET_VALUE]);
        assert_eq!(*events.lock().unwrap(), vec![PowerEvent::Reset]);
    }

    #[test]
    fn other_sleep_states_wide_writes_and_stray_offsets_do_nothing() {
        let (mut pm, events) = device();
        pm.write(0, &[5 << 2]); // S5 without SLP_EN
        pm.write(0, &[(3 << 2) | SLEEP_ENABLE]); // S3
        pm.write(0, &[0x34, 0]); // wide
        pm.write(0, &[]);
        pm.write(1, &[0x34]); // the status register
        pm.write(u64::MAX, &[RESET_VALUE]);
        assert!(events.lock().unwrap().is_empty());
        let mut status = [0xffu8; 2];
        pm.read(1, &mut status);
        assert_eq!(status, [0, 0]);
    }
}
