//! Guest RAM registration with KVM (`KVM_SET_USER_MEMORY_REGION`).
//!
//! Handing KVM a host virtual address range is `unsafe` because the kernel keeps using the range
//! for as long as the VM exists — and the VM exists as long as *any* fd refers to it: the VM fd,
//! every vCPU fd, any `dup` of them. A mapping unmapped (or replaced) while one of those lives
//! would let the guest read and write whatever the host later maps there.
//!
//! squib runs one microVM per process, and its guest RAM lives until the process exits anyway.
//! So the guarantee is made the simplest way that cannot be broken by a caller: registering a
//! region *pins* its mapping for the rest of the process (a clone of its `Arc<MmapRegion>` kept
//! in a process-wide list). The kernel closes every KVM fd at process exit, before the address
//! space goes away, so no KVM object can outlive a registered mapping.

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryRegion;

use crate::guest_memory::{GuestMapping, GuestRegion};

/// Mappings registered with KVM: never unmapped before the process exits.
static PINNED: Mutex<Vec<Arc<GuestMapping>>> = Mutex::new(Vec::new());

/// How KVM should treat a memory slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotFlags {
    /// Track the pages the guest writes (`KVM_MEM_LOG_DIRTY_PAGES`), for snapshots.
    pub log_dirty_pages: bool,
}

/// Makes `region` guest RAM of `vm` in memory slot `slot`.
///
/// The region's mapping is pinned for the rest of the process (see the module docs), which is
/// what makes this function safe. KVM itself refuses a slot that overlaps another (`EEXIST`) or a
/// misaligned range (`EINVAL`); those come back as errors.
pub fn set_user_memory_region(
    vm: &VmFd,
    slot: u32,
    region: &GuestRegion,
    flags: SlotFlags,
) -> Result<(), kvm_ioctls::Error> {
    let mapping = region.get_mmap();
    let descriptor = kvm_userspace_memory_region {
        slot,
        flags: if flags.log_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: mapping.as_ptr() as u64,
    };
    // Pin first: once the ioctl returns, the kernel may use the range at any time.
    PINNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(mapping);
    // SAFETY: `userspace_addr..+memory_size` is exactly the live mapping of `region` (an
    // `MmapRegion` owns a valid mapping of `size()` bytes for its whole life), and that mapping
    // was just pinned in `PINNED`, which is never drained: it stays mapped until the process
    // exits, which also closes every fd that refers to the VM. So the kernel never accesses an
    // unmapped or reused range. Overlap with other slots is rejected by the kernel, not UB.
    unsafe { vm.set_user_memory_region(descriptor) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    #[test]
    fn registers_and_refuses_overlap() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED: /dev/kvm is absent; the KVM memory-slot test did not run");
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let region = |at| crate::guest_memory::anonymous(&[(GuestAddress(at), 0x10_0000)], false);
        let first = region(0).unwrap();
        let first = first.iter().next().unwrap();
        set_user_memory_region(&vm, 0, first, SlotFlags::default()).unwrap();
        let overlapping = region(0x8_0000).unwrap();
        let overlapping = overlapping.iter().next().unwrap();
        let err = set_user_memory_region(&vm, 1, overlapping, SlotFlags::default()).unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
    }
}
