//! The guest-physical memory map of `docs/guest-interface.md`, and how RAM is laid out in it.

use vm_memory::GuestAddress;

/// Boot GDT (null, code64, data, TSS).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT (empty).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables: PML4, PDPT, PD.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Boot PDPT.
pub const PDPT_START: GuestAddress = GuestAddress(0xa000);
/// Boot PD (512 × 2 MiB = the first 1 GiB).
pub const PD_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Longest command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the EBDA-style reserved region below 1 MiB (MP table, ACPI RSDP).
pub const EBDA_START: u64 = 0x9_fc00;
/// Kernel load address (1 MiB): the lowest address a kernel may be loaded at.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit MMIO gap: RAM stops here and continues at [`RAM_64BIT_START`]. 1 GiB,
/// as Firecracker's `MMIO32_MEM_START` since 1.13.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where RAM above the gap starts.
pub const RAM_64BIT_START: u64 = MMIO_GAP_END;

/// Boot-timer device: Firecracker's `BOOT_DEVICE_MEM_START`, the first page of the gap.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Where Firecracker before 1.13 had the boot timer (its guest images still write there); a
/// second window of the same device, in the gap past every virtio-mmio slot.
pub const LEGACY_BOOT_TIMER_START: u64 = 0xd000_0000;
/// First virtio-mmio slot; slot n is at `VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE`
/// (Firecracker's `MEM_32BIT_DEVICES_START`).
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + MMIO_DEVICE_SIZE;
/// Size of one MMIO device window (boot timer, each virtio-mmio slot).
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Interrupt line of virtio-mmio slot 0; slot n uses `VIRTIO_MMIO_FIRST_GSI + n`.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// Highest GSI the in-kernel IOAPIC has (24 pins).
pub const MAX_GSI: u32 = 23;
/// How many virtio-mmio slots fit the IOAPIC's pins.
pub const MAX_VIRTIO_MMIO_SLOTS: usize = (MAX_GSI - VIRTIO_MMIO_FIRST_GSI + 1) as usize;

/// KVM's private TSS (3 pages) and identity-map page, in the gap, clear of every device.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port (the command port is `I8042_PORT + 4`).
pub const I8042_PORT: u16 = 0x60;
/// i8042 keyboard IRQ.
pub const I8042_IRQ: u32 = 1;
/// QEMU-compatible debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0x501;

// KVM's private pages sit in the gap, clear of every device: above the last virtio slot and
// the IOAPIC (0xfec0_0000) and LAPIC (0xfee0_0000) pages, below 4 GiB.
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS > 0xfee0_1000);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 == KVM_TSS_ADDRESS);
const _: () = assert!(KVM_TSS_ADDRESS + 3 * 0x1000 <= MMIO_GAP_END);
// The legacy boot-timer window lies in the gap, past the last virtio-mmio slot.
const _: () = assert!(
    LEGACY_BOOT_TIMER_START >= VIRTIO_MMIO_START + MAX_VIRTIO_MMIO_SLOTS as u64 * MMIO_DEVICE_SIZE
);

/// The guest-physical address of virtio-mmio slot `n`, and its GSI.
pub fn virtio_mmio_slot(n: usize) -> Option<(u64, u32)> {
    if n >= MAX_VIRTIO_MMIO_SLOTS {
        return None;
    }
    Some((
        VIRTIO_MMIO_START + n as u64 * MMIO_DEVICE_SIZE,
        VIRTIO_MMIO_FIRST_GSI + n as u32,
    ))
}

/// Guest RAM of a given size split around the MMIO gap: one range below it, and the rest (if
/// any) from 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(RAM_64BIT_START), mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range_from_zero() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(low_ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn ram_skips_the_mmio_gap() {
        let mem = 4u64 << 30;
        assert_eq!(
            ram_ranges(mem),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(1 << 32), mem - MMIO_GAP_START)
            ]
        );
        assert_eq!(low_ram_end(mem), MMIO_GAP_START);
        assert_eq!(
            ram_ranges(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn virtio_slots_follow_the_contract() {
        assert_eq!(virtio_mmio_slot(0), Some((0xc000_1000, 5)));
        assert_eq!(virtio_mmio_slot(2), Some((0xc000_3000, 7)));
        assert_eq!(
            virtio_mmio_slot(MAX_VIRTIO_MMIO_SLOTS - 1),
            Some((0xc001_3000, 23))
        );
        assert_eq!(virtio_mmio_slot(MAX_VIRTIO_MMIO_SLOTS), None);
    }
}
