//! Local APIC set-up: LINT0 delivers the 8259's ExtINT, LINT1 delivers NMI (virtual wire mode).

use kvm_bindings::kvm_lapic_state;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_MODE_NMI: u32 = 0x4;
const DELIVERY_MODE_EXTINT: u32 = 0x7;

fn read_register(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes = &state.regs[offset..offset + 4];
    u32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ])
}

fn write_register(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in state.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

fn with_delivery_mode(register: u32, mode: u32) -> u32 {
    (register & !DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in a LAPIC state read from KVM.
pub fn set_lint_modes(state: &mut kvm_lapic_state) {
    let lvt0 = read_register(state, APIC_LVT0);
    write_register(
        state,
        APIC_LVT0,
        with_delivery_mode(lvt0, DELIVERY_MODE_EXTINT),
    );
    let lvt1 = read_register(state, APIC_LVT1);
    write_register(
        state,
        APIC_LVT1,
        with_delivery_mode(lvt1, DELIVERY_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint0_extint_lint1_nmi_other_bits_kept() {
        let mut state = kvm_lapic_state::default();
        write_register(&mut state, APIC_LVT0, 0x0001_0000 | 0x200);
        write_register(&mut state, APIC_LVT1, 0x0001_0000);
        set_lint_modes(&mut state);
        assert_eq!(read_register(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_register(&state, APIC_LVT1), 0x0001_0400);
    }
}
