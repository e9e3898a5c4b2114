//! The boot GDT and the segment registers it describes.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment.
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x18;

/// The boot GDT: null, 64-bit code, data, 32-bit TSS (flat, as Linux's boot protocol expects).
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Packs a GDT descriptor from its flags (access byte and the flags nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The segment register KVM should load for descriptor `entry` at `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if granularity == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat_ring_0() {
        let cs = segment(BOOT_GDT[1], CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.dpl, cs.present, cs.s, cs.type_),
            (1, 0, 0, 1, 1, 0xb)
        );
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s, ds.unusable), (0, 1, 3, 1, 0));
        let tr = segment(BOOT_GDT[3], TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
        assert_eq!(segment(BOOT_GDT[0], 0).unusable, 1);
    }

    #[test]
    fn entry_packing_matches_known_descriptors() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }
}
