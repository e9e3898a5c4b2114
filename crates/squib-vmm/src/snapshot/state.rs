//! What a snapshot holds besides guest memory: the machine's shape and every piece of state.

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::arch::x86_64::layout::ram_ranges;
use crate::devices::LegacyState;
use crate::devices::manager::SavedDevice;
use crate::kvm::state::{VcpuState, VmDevicesState};
use crate::vm_config::DriveConfig;
use crate::vmm::{MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB};

/// The machine a snapshot restores into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest RAM, MiB.
    pub mem_size_mib: usize,
    /// Whether the boot-timer device was attached.
    pub boot_timer: bool,
}

/// One guest RAM region and where its pages sit in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionState {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// The snapshot payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// The machine's shape.
    pub machine: MachineState,
    /// Guest RAM layout in the memory file.
    pub memory: Vec<MemoryRegionState>,
    /// PIC, IOAPIC, PIT, clock.
    pub vm: VmDevicesState,
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Serial port and i8042.
    pub legacy: LegacyState,
    /// The drives, as configured (re-opened at their `path_on_host` on load), in slot order.
    pub drives: Vec<DriveConfig>,
    /// Every virtio device's transport, queues and own state, in slot order.
    pub devices: Vec<SavedDevice>,
}

/// The memory-file layout of a machine with `mem_size_mib` MiB: its RAM regions back to back.
pub fn memory_layout(mem_size_mib: usize) -> Vec<MemoryRegionState> {
    let mut offset = 0;
    ram_ranges((mem_size_mib as u64) << 20)
        .into_iter()
        .map(|(addr, size)| {
            let region = MemoryRegionState {
                guest_addr: addr.0,
                size,
                file_offset: offset,
            };
            offset += size;
            region
        })
        .collect()
}

impl MicrovmState {
    /// Checks that the payload describes a machine squib can build, before anything is built.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let m = &self.machine;
        let bad = |why: String| Err(SnapshotError::Invalid(why));
        if !(1..=MAX_VCPUS).contains(&m.vcpu_count) {
            return bad(format!("{} vCPUs", m.vcpu_count));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&m.mem_size_mib) {
            return bad(format!("{} MiB of memory", m.mem_size_mib));
        }
        if self.vcpus.len() != usize::from(m.vcpu_count) {
            return bad(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                m.vcpu_count
            ));
        }
        if self.devices.len() != self.drives.len()
            || self
                .devices
                .iter()
                .zip(&self.drives)
                .any(|(device, drive)| device.id != drive.drive_id)
        {
            return bad("device states that do not match its drives".into());
        }
        if self.memory != memory_layout(m.mem_size_mib) {
            return bad("a memory layout squib does not build".into());
        }
        Ok(())
    }

    /// Bytes the memory file must hold.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.size).sum()
    }
}
