//! The CPUID table each vCPU gets: KVM's supported CPUID, filtered for one vCPU of a microVM.
//!
//! KVM here (PVM) overwrites feature bits with the host's whatever we set, but honours the
//! topology and hypervisor leaves; and without `KVM_SET_CPUID2` the guest's CPL0 `cpuid`
//! returns zeros. So the table is always set, and only what identifies the vCPU is edited.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (the logical-processor count in EBX[23:16] is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// The KVM hypervisor leaf and its highest sub-leaf.
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
const HYPERVISOR_MAX_LEAF: u32 = 0x4000_0001;
/// Extended topology leaf level types (ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Edits `entries` (KVM's supported CPUID) for vCPU `index` of `count` (one thread per core,
/// one socket): APIC ids in leaves 1 and 0xb, the hypervisor bit, the KVM hypervisor leaf.
pub fn filter(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count = u32::from(count);
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH
                // line size in qwords (kept).
                entry.ebx = (apic_id << 24) | (count << 16) | (entry.ebx & 0xffff);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0xb => {
                entry.edx = apic_id;
                match entry.index {
                    // One thread per core: the SMT level adds no APIC-id bits.
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = u32::BITS - (count - 1).leading_zeros();
                        entry.ebx = count;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    // No further levels.
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            HYPERVISOR_LEAF => entry.eax = HYPERVISOR_MAX_LEAF,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut entries = [entry(1, 0)];
        filter(&mut entries, 3, 4);
        assert_eq!(entries[0].ebx, 0x0304_0800);
        assert_ne!(entries[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & LEAF1_EDX_HTT, 0);
        filter(&mut entries, 0, 1);
        assert_eq!(entries[0].ebx, 0x0001_0800);
        assert_eq!(entries[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_0xb_describes_one_thread_per_core() {
        let mut entries = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter(&mut entries, 5, 6);
        assert!(entries.iter().all(|e| e.edx == 5));
        assert_eq!(
            (entries[0].eax, entries[0].ebx, entries[0].ecx),
            (0, 1, 0x100)
        );
        assert_eq!(
            (entries[1].eax, entries[1].ebx, entries[1].ecx),
            (3, 6, 0x201)
        );
        assert_eq!((entries[2].eax, entries[2].ebx, entries[2].ecx), (0, 0, 2));
        let mut single = [entry(0xb, 1)];
        filter(&mut single, 0, 1);
        assert_eq!(single[0].eax, 0);
    }

    #[test]
    fn hypervisor_leaf_points_at_the_kvm_features_leaf() {
        let mut entries = [kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: 0x4000_0010,
            ..Default::default()
        }];
        filter(&mut entries, 0, 1);
        assert_eq!(entries[0].eax, HYPERVISOR_MAX_LEAF);
    }
}
