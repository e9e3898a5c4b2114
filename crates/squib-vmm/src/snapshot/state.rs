//! What a snapshot holds besides guest memory: the machine's shape and every piece of state.

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::arch::x86_64::layout::ram_ranges;
use crate::devices::LegacyState;
use crate::devices::manager::{DeviceKind, SavedDevice};
use crate::devices::rng::ENTROPY_ID;
use crate::devices::vsock::VSOCK_ID;
use crate::kvm::state::{VcpuState, VmDevicesState};
use crate::vm_config::{DriveConfig, EntropyConfig, NetworkInterfaceConfig, VsockConfig};
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
    /// Every virtio device's configuration, rebuilt on load.
    #[serde(flatten)]
    pub config: DeviceConfigs,
    /// Every virtio device's transport, queues and own state, in slot order.
    pub devices: Vec<SavedDevice>,
}

/// The virtio devices as configured, rate limiters included (with the updates the API applied
/// since the boot): a load rebuilds them from this, reopening their host resources (drive
/// files, TAP devices, the vsock socket) — the load's overrides may point those elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfigs {
    /// The drives, in slot order.
    pub drives: Vec<DriveConfig>,
    /// The network interfaces, after the drives.
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The entropy device, after them.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device, last.
    pub vsock: Option<VsockConfig>,
}

/// A `/snapshot/load` `network_overrides` entry: interface `iface_id` attaches to another TAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkOverride {
    /// The snapshot's interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

impl DeviceConfigs {
    /// Every device as (kind, id), in the slot order the VMM attaches them in.
    pub fn slot_order(&self) -> Vec<(DeviceKind, &str)> {
        let drives = self
            .drives
            .iter()
            .map(|d| (DeviceKind::Block, d.drive_id.as_str()));
        let nets = self
            .network_interfaces
            .iter()
            .map(|n| (DeviceKind::Net, n.iface_id.as_str()));
        let entropy = self.entropy.map(|_| (DeviceKind::Entropy, ENTROPY_ID));
        let vsock = self.vsock.as_ref().map(|_| (DeviceKind::Vsock, VSOCK_ID));
        drives.chain(nets).chain(entropy).chain(vsock).collect()
    }

    /// Points the snapshot's interfaces and vsock socket at the load's host resources, as
    /// Firecracker does; an override naming a device the snapshot lacks is refused.
    pub fn apply_overrides(
        &mut self,
        network: &[NetworkOverride],
        vsock_uds_path: Option<&std::path::Path>,
    ) -> Result<(), SnapshotError> {
        for o in network {
            let iface = self
                .network_interfaces
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
                .ok_or_else(|| {
                    SnapshotError::Override(format!(
                        "network_overrides: the snapshot has no network interface `{}`",
                        o.iface_id
                    ))
                })?;
            iface.host_dev_name.clone_from(&o.host_dev_name);
        }
        if let Some(path) = vsock_uds_path {
            let vsock = self.vsock.as_mut().ok_or_else(|| {
                SnapshotError::Override("vsock_override: the snapshot has no vsock device".into())
            })?;
            vsock.uds_path = path.to_owned();
        }
        Ok(())
    }
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
        let configured = self.config.slot_order();
        if self.devices.len() != configured.len()
            || self
                .devices
                .iter()
                .zip(&configured)
                .any(|(device, (kind, id))| device.kind != *kind || device.id != *id)
        {
            return bad("device states that do not match its device configuration".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::TokenBucketConfig;

    fn configs() -> DeviceConfigs {
        DeviceConfigs {
            drives: Vec::new(),
            network_interfaces: vec![NetworkInterfaceConfig {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:ac:10:00:02".parse().unwrap()),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }],
            entropy: Some(EntropyConfig::default()),
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: "/old.sock".into(),
            }),
        }
    }

    #[test]
    fn overrides_repoint_devices_and_refuse_unknown_ones() {
        let mut c = configs();
        c.apply_overrides(
            &[NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap9".into(),
            }],
            Some(std::path::Path::new("/new.sock")),
        )
        .unwrap();
        assert_eq!(c.network_interfaces[0].host_dev_name, "tap9");
        assert_eq!(
            c.vsock.as_ref().unwrap().uds_path,
            std::path::Path::new("/new.sock")
        );
        let unknown = [NetworkOverride {
            iface_id: "eth1".into(),
            host_dev_name: "tap1".into(),
        }];
        let err = c.apply_overrides(&unknown, None).unwrap_err().to_string();
        assert!(err.contains("no network interface `eth1`"), "{err}");
        c.vsock = None;
        let err = c
            .apply_overrides(&[], Some(std::path::Path::new("/v")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no vsock device"), "{err}");
    }

    #[test]
    fn configs_round_trip_through_json_with_their_rate_limiters() {
        let mut c = configs();
        let bucket = |size| TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 100,
        };
        c.network_interfaces[0].rx_rate_limiter = Some(crate::vm_config::RateLimiterConfig {
            bandwidth: Some(bucket(1000)),
            ops: Some(bucket(10)),
        });
        let text = serde_json::to_string(&c).unwrap();
        let back: DeviceConfigs = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.slot_order(),
            [
                (DeviceKind::Net, "eth0"),
                (DeviceKind::Entropy, ENTROPY_ID),
                (DeviceKind::Vsock, VSOCK_ID)
            ]
        );
    }
}
