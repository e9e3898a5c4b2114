//! The local APIC and the IOAPIC, programmed from CPL3 through the (user-mapped) MMIO window.

use crate::interrupts;

const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
/// Spurious-interrupt vector register; bit 8 software-enables the APIC.
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_SOFTWARE_ENABLE: u32 = 1 << 8;
/// Task priority: 0 accepts every vector.
const LAPIC_TPR: u64 = 0x80;

const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_SELECT: u64 = 0x00;
const IOAPIC_WINDOW: u64 = 0x10;
/// Redirection entry `n` is registers `0x10 + 2n` (low) and `0x11 + 2n` (high).
const IOAPIC_REDIRECTION: u32 = 0x10;

/// A GSI the IOAPIC has no pin for.
#[derive(Debug, Clone, Copy)]
pub struct NoSuchPin(pub u32);

impl core::fmt::Display for NoSuchPin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "GSI {} has no IOAPIC pin (0-{})",
            self.0,
            interrupts::IRQ_LINES - 1
        )
    }
}

/// Software-enables this CPU's local APIC so that IOAPIC messages are delivered.
pub fn enable_local_apic() {
    write(LAPIC_BASE + LAPIC_TPR, 0);
    write(
        LAPIC_BASE + LAPIC_SVR,
        LAPIC_SOFTWARE_ENABLE | u32::from(interrupts::SPURIOUS_VECTOR),
    );
}

/// Routes `gsi` (edge-triggered, active high, fixed delivery) to this CPU at its vector.
pub fn route(gsi: u32) -> Result<u8, NoSuchPin> {
    let vector = interrupts::vector_for(gsi).ok_or(NoSuchPin(gsi))?;
    let apic_id = read(LAPIC_BASE + LAPIC_ID) >> 24;
    let register = IOAPIC_REDIRECTION + 2 * gsi;
    ioapic_write(register + 1, apic_id << 24);
    ioapic_write(register, u32::from(vector));
    Ok(vector)
}

fn ioapic_write(register: u32, value: u32) {
    write(IOAPIC_BASE + IOAPIC_SELECT, register);
    write(IOAPIC_BASE + IOAPIC_WINDOW, value);
}

fn read(address: u64) -> u32 {
    // SAFETY: `address` is a register of the LAPIC or IOAPIC (constants above), which the page
    // tables map uncached and user-accessible; device registers are read volatile.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn write(address: u64, value: u32) {
    // SAFETY: as in `read`; writing these registers changes interrupt routing only.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}
