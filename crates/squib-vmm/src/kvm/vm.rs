//! The KVM VM: in-kernel irqchip and PIT, KVM's private pages, guest RAM.

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use squib_host::kvm_memory::{self, SlotFlags};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::GuestMemory;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, ram_ranges};

/// Why the VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be mapped.
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Memory {
        /// Size asked for.
        mib: usize,
        /// Why.
        source: squib_host::guest_memory::GuestMemoryError,
    },
}

fn kvm_op(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// Creates a VM with guest RAM `mem` registered (one slot per region), then the in-kernel
/// irqchip (PIC, IOAPIC, LAPICs) and PIT. Must precede vCPU creation.
///
/// RAM goes in before the irqchip: creating the irqchip leaves a KVM grace period (SRCU) in
/// flight that the next memory-slot change waits for — 5–7 ms here, whatever the memory size
/// (the "first slot costs milliseconds" of docs/architecture.md) — while a slot registered
/// before it costs a tenth of a millisecond.
pub fn create(kvm: &Kvm, mem: &GuestMemory, track_dirty_pages: bool) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_op("CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_op("SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_op("SET_IDENTITY_MAP_ADDR"))?;
    register_memory(&vm, mem, track_dirty_pages)?;
    vm.create_irq_chip().map_err(kvm_op("CREATE_IRQCHIP"))?;
    // Port 0x61 (PC speaker, PIT channel 2 gate) handled in the kernel too.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_op("CREATE_PIT2"))?;
    Ok(vm)
}

/// Maps `mem_mib` MiB of guest RAM around the MMIO gap. Pages are not touched (no
/// pre-faulting): they are allocated as the guest first uses them. With `track_dirty_pages`
/// each region carries a dirty bitmap that the devices' writes mark (KVM logs the vCPUs').
pub fn create_memory(mem_mib: usize, track_dirty_pages: bool) -> Result<GuestMemory, VmError> {
    let bytes = (mem_mib as u64) << 20;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(bytes)
        .into_iter()
        .map(|(addr, len)| (addr, len as usize))
        .collect();
    squib_host::guest_memory::anonymous(&ranges, track_dirty_pages).map_err(|source| {
        VmError::Memory {
            mib: mem_mib,
            source,
        }
    })
}

/// Registers every region of `mem` with `vm`, one slot each.
fn register_memory(vm: &VmFd, mem: &GuestMemory, track_dirty_pages: bool) -> Result<(), VmError> {
    let flags = SlotFlags {
        log_dirty_pages: track_dirty_pages,
    };
    for (slot, region) in mem.iter().enumerate() {
        kvm_memory::set_user_memory_region(vm, slot as u32, region, flags)
            .map_err(kvm_op("SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
