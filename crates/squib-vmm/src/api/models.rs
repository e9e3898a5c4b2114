//! The Firecracker API's JSON bodies (swagger v1.16), exactly as they travel on the wire.
//!
//! These types only describe shape: every request body refuses unknown fields, and enums take
//! only Firecracker's spellings. Whether the *values* make sense is decided by
//! [`VmResources`](super::resources::VmResources), which turns them into a `VmConfig`.

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::vm_config::{CacheType, IoEngine, RateLimiterConfig, TokenBucketConfig};

/// `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceBody {
    /// Host path of the kernel image.
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `CpuTemplate`: squib accepts only `"None"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// `huge_pages`: squib accepts only `"None"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    None,
    /// `madvise(MADV_HUGEPAGE)`.
    Transparent,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT`/`PATCH /machine-config` and the `GET` answer. `PUT` requires `vcpu_count` and
/// `mem_size_mib`; `PATCH` takes any subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    /// 1 to 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u64>,
    /// Guest RAM in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty-page tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Huge-page backing of guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PUT /drives/{drive_id}` (`Drive`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    /// Must equal the path's `drive_id`.
    pub drive_id: String,
    /// Backing file (required: squib has no vhost-user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Boot from this drive.
    pub is_root_device: bool,
    /// Refuse guest writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Root partition UUID, with `is_root_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether FLUSH is offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Which engine moves the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// vhost-user-block socket (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Bypass the host page cache (`O_DIRECT`): squib's command line only (`--disk …,direct`),
    /// never read from or written to JSON, since Firecracker's API has no such field.
    #[serde(skip)]
    pub direct: bool,
}

/// `PUT /network-interfaces/{iface_id}` (`NetworkInterface`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceBody {
    /// Must equal the path's `iface_id`.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` (`PartialNetworkInterface`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterfaceBody {
    /// Must equal the path's `iface_id`.
    pub iface_id: String,
    /// New receive throttle.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New transmit throttle.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /entropy` (`EntropyDevice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyBody {
    /// Throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock` (`Vsock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockBody {
    /// The guest's context id; at least 3.
    pub guest_cid: u32,
    /// Host path of the Unix socket for host-initiated connections.
    pub uds_path: String,
    /// Deprecated and ignored, as in Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PATCH /drives/{drive_id}` (`PartialDrive`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDriveBody {
    /// Must equal the path's `drive_id`.
    pub drive_id: String,
    /// New backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New throttle.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `InstanceActionInfo.action_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Write a metrics line now.
    FlushMetrics,
    /// Boot the configured microVM.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the i8042.
    SendCtrlAltDel,
}

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// What to do.
    pub action_type: ActionType,
}

/// `Vm.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmStateRequest {
    /// Stop the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmBody {
    /// The state wanted.
    pub state: VmStateRequest,
}

/// Log levels; Firecracker takes them case-insensitively.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Parses a level the way Firecracker does: case-insensitive, `Warn` accepted for `Warning`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown log level `{s}`, expected one of Error, Warning, Info, Debug, Trace, Off"
            ))
        })
    }
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerBody {
    /// Verbosity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// File or named pipe for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Print each line's level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print each line's source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsBody {
    /// File or named pipe the JSON lines go to.
    pub metrics_path: String,
}

/// `GET /` (`InstanceInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Always `"squib"`.
    pub app_name: String,
    /// The `--id` given at start.
    pub id: String,
    /// `"Not started"`, `"Running"` or `"Paused"`.
    pub state: String,
    /// squib's own version.
    pub vmm_version: String,
}

/// `GET /version` (`FirecrackerVersion`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The Firecracker API version squib is compatible with.
    pub firecracker_version: String,
}

/// Every error answer (`Error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong, for a human.
    pub fault_message: String,
}

/// `GET /vm/config`, and the `--config-file` format (`FullVmConfiguration`).
///
/// Firecracker resources squib lacks are accepted only empty (`[]` or `null`), so that config
/// files written for Firecracker that merely mention them still load; anything in them is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    /// Kernel and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceBody>,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    /// vCPUs and memory.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfigBody>,
    /// Logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerBody>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsBody>,
    /// virtio-net interfaces.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockBody>,
    /// Unsupported Firecracker resources, accepted only when empty.
    #[allow(missing_docs)]
    #[serde(default, skip_serializing)]
    pub balloon: Option<serde_json::Value>,
    #[allow(missing_docs)]
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<serde_json::Value>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyBody>,
    #[allow(missing_docs)]
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<serde_json::Value>,
    #[allow(missing_docs)]
    #[serde(default, skip_serializing)]
    pub pmem: Option<serde_json::Value>,
    #[allow(missing_docs)]
    #[serde(rename = "memory-hotplug", default, skip_serializing)]
    pub memory_hotplug: Option<serde_json::Value>,
    #[allow(missing_docs)]
    #[serde(default, skip_serializing)]
    pub serial: Option<serde_json::Value>,
}

impl FullVmConfig {
    /// The first resource squib lacks that the file actually configures (present, not empty).
    pub fn first_unsupported(&self) -> Option<&'static str> {
        let used = |v: &Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        [
            ("balloon", &self.balloon),
            ("mmds-config", &self.mmds_config),
            ("cpu-config", &self.cpu_config),
            ("pmem", &self.pmem),
            ("memory-hotplug", &self.memory_hotplug),
            ("serial", &self.serial),
        ]
        .into_iter()
        .find(|(_, v)| used(v))
        .map(|(name, _)| name)
    }
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotTypeBody {
    /// Every page the guest touched.
    #[default]
    Full,
    /// Pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create` (`SnapshotCreateParams`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateBody {
    /// Where the state file goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotTypeBody>,
}

/// `MemoryBackend.backend_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// A memory file.
    File,
    /// A userfaultfd page-fault handler's socket.
    Uffd,
}

/// `MemoryBackend`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendBody {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file, or the handler's Unix socket.
    pub backend_path: String,
}

/// `NetworkOverride`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverrideBody {
    /// Which interface.
    pub iface_id: String,
    /// Its new TAP device.
    pub host_dev_name: String,
}

/// `VsockOverride`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverrideBody {
    /// The new Unix socket path.
    pub uds_path: String,
}

/// `PUT /snapshot/load` (`SnapshotLoadParams`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    /// The state file.
    pub snapshot_path: String,
    /// Where memory comes from (exclusive with `mem_file_path`).
    #[serde(default)]
    pub mem_backend: Option<MemBackendBody>,
    /// Deprecated: a memory file (same as a `File` backend).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Log dirty pages for later Diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Run the vCPUs at once.
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// New TAP devices for the snapshot's interfaces.
    #[serde(default)]
    pub network_overrides: Option<Vec<NetworkOverrideBody>>,
    /// A new Unix socket for the snapshot's vsock device.
    #[serde(default)]
    pub vsock_override: Option<VsockOverrideBody>,
}
