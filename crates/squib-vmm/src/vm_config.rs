//! What a microVM is made of, as the CLI, the config file and the API describe it.
//!
//! Every front end (command line, `--config-file`, the REST API) configures the same
//! [`VmResources`](crate::api::resources::VmResources), which validates each value once and hands
//! the VMM a finished `VmConfig`. The machine limits live here ([`check_vcpu_count`],
//! [`check_mem_size_mib`]); the VMM checks them again at its boundary with the same functions,
//! since `Vmm` is a public API of its own. `CacheType` and `IoEngine` are also the API's and the config file's
//! types (Firecracker's names).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::boot::pvh::BootProtocol;

/// Everything needed to build and boot one microVM.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmConfig {
    /// Kernel, initrd and command line.
    pub boot: Option<BootSource>,
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Block devices, in the order they appear to the guest (`/dev/vda`, `/dev/vdb`, …).
    pub drives: Vec<DriveConfig>,
    /// virtio-net interfaces, in the order they were configured.
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// Whether the boot-timer device logs the guest's boot-complete write.
    pub boot_timer: bool,
    /// Boot protocol and how the guest discovers the machine.
    pub boot_options: BootOptions,
    /// The virtio-rng device (`PUT /entropy`), if any.
    pub entropy: Option<EntropyConfig>,
    /// The virtio-vsock device (`PUT /vsock`), if any.
    pub vsock: Option<VsockConfig>,
}

/// The entropy device (virtio-rng).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyConfig {
    /// Throttles the random bytes (bandwidth) and requests (ops) served.
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// The vsock device, in Firecracker's hybrid design: host-initiated connections arrive on the
/// Unix socket `uds_path`; guest-initiated ones to port `P` go to `<uds_path>_<P>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Where squib listens for host-initiated connections.
    pub uds_path: PathBuf,
}

/// How squib enters the kernel and which descriptions of the machine it provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOptions {
    /// PVH or the 64-bit Linux boot protocol for an ELF kernel (`--boot-protocol`).
    pub protocol: BootProtocol,
    /// ACPI tables (`--no-acpi` turns them off).
    pub acpi: bool,
    /// The MP table (`--no-mptable`).
    pub mptable: bool,
    /// `virtio_mmio.device=` entries on the command line (`--no-cmdline-devices`).
    pub cmdline_devices: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self {
            protocol: BootProtocol::Auto,
            acpi: true,
            mptable: true,
            cmdline_devices: true,
        }
    }
}

/// The kernel to boot and what to hand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSource {
    /// ELF `vmlinux` (or, with the Linux-boot issue, PVH ELF or bzImage).
    pub kernel_image_path: PathBuf,
    /// Optional initramfs.
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; `None` means squib's default.
    pub boot_args: Option<String>,
}

/// Most vCPUs a microVM may have.
pub const MAX_VCPUS: u8 = 32;
/// Least guest RAM, MiB: room for the boot structures below 1 MiB and a small kernel above.
pub const MIN_MEM_MIB: usize = 8;
/// Most guest RAM, MiB (1 TiB): far beyond any microVM, well within every address computation.
pub const MAX_MEM_MIB: usize = 1 << 20;

/// A machine size out of squib's limits; the text is the API's `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineLimitError {
    /// `vcpu_count` out of 1..=[`MAX_VCPUS`].
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// `mem_size_mib` out of [`MIN_MEM_MIB`]..=[`MAX_MEM_MIB`].
    #[error("mem_size_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {0}")]
    MemSize(u64),
}

/// Checks a vCPU count against squib's limits.
pub fn check_vcpu_count(n: u64) -> Result<u8, MachineLimitError> {
    u8::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_VCPUS).contains(n))
        .ok_or(MachineLimitError::VcpuCount(n))
}

/// Checks a memory size (MiB) against squib's limits.
pub fn check_mem_size_mib(mib: u64) -> Result<usize, MachineLimitError> {
    usize::try_from(mib)
        .ok()
        .filter(|mib| (MIN_MEM_MIB..=MAX_MEM_MIB).contains(mib))
        .ok_or(MachineLimitError::MemSize(mib))
}

/// vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// 1 to 32.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading (refused: squib exposes one thread per core).
    pub smt: bool,
    /// Dirty-page tracking for snapshots.
    pub track_dirty_pages: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
        }
    }
}

/// How the guest's writes reach the disk (Firecracker's `cache_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// FLUSH is not offered; the host decides when data reaches the disk.
    #[default]
    Unsafe,
    /// FLUSH is offered and honoured with `fdatasync`.
    Writeback,
}

/// Which engine moves a drive's data (Firecracker's `io_engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// `SyncFileBackend`: one `Mutex<File>`.
    #[default]
    Sync,
    /// `UringFileBackend`: the device worker submits to an io_uring, as Firecracker's Async
    /// engine does; `AsyncFileBackend` (lockless positioned I/O, I/O threads with cache bypass)
    /// where the kernel refuses io_uring.
    Async,
    /// `AsyncFileBackend` without io_uring: what `Async` meant before the io_uring engine, and
    /// its fallback. squib's command line only (`engine=threads`); the API reports it as
    /// `Async` and does not accept it (Firecracker's clients know two engines).
    #[serde(rename(serialize = "Async"), skip_deserializing)]
    Threads,
}

/// Longest `refill_time` (ms) whose nanoseconds fit in 64 bits.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// One token bucket: `size` tokens, refilled completely every `refill_time_ms`. Also the API's
/// and the config file's `TokenBucket` (Firecracker's names on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Bucket capacity (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start (0: none; omitted on the wire when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub one_time_burst: u64,
    /// Time for an empty bucket to fill, in milliseconds.
    #[serde(rename = "refill_time")]
    pub refill_time_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Firecracker's rate limiter: a bandwidth bucket and an operations bucket. Also the API's and
/// the config file's `RateLimiter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// One virtio-net interface on a TAP device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterfaceConfig {
    /// The API's `iface_id`.
    pub iface_id: String,
    /// The TAP device to attach to (it must exist, or squib must be allowed to create it).
    pub host_dev_name: String,
    /// The MAC the guest reads; `None` lets the guest choose.
    pub guest_mac: Option<squib_virtio::net::MacAddr>,
    /// Receive throttle.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit throttle.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// A token bucket that cannot be represented; the text is the API's `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate_limiter.{bucket}.refill_time {ms} ms is too large (at most {MAX_REFILL_TIME_MS})")]
pub struct RateLimiterError {
    /// `bandwidth` or `ops`.
    pub bucket: &'static str,
    /// The value given.
    pub ms: u64,
}

impl RateLimiterConfig {
    /// The limiter after a `PATCH` that gives `update`: a bucket the update leaves out keeps its
    /// configuration (what Firecracker's update does).
    pub fn patched(current: Option<Self>, update: Option<Self>) -> Option<Self> {
        let Some(update) = update else {
            return current;
        };
        let current = current.unwrap_or_default();
        Some(Self {
            bandwidth: update.bandwidth.or(current.bandwidth),
            ops: update.ops.or(current.ops),
        })
    }

    /// Checks that every bucket can be represented (its refill time in nanoseconds fits).
    pub fn check(&self) -> Result<(), RateLimiterError> {
        for (bucket, b) in [("bandwidth", &self.bandwidth), ("ops", &self.ops)] {
            if let Some(b) = b
                && b.refill_time_ms > MAX_REFILL_TIME_MS
            {
                return Err(RateLimiterError {
                    bucket,
                    ms: b.refill_time_ms,
                });
            }
        }
        Ok(())
    }
}

/// One virtio-blk drive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveConfig {
    /// The API's `drive_id`; also the virtio-blk GET_ID serial (first 20 bytes).
    pub drive_id: String,
    /// Backing file.
    pub path_on_host: PathBuf,
    /// Refuse guest writes.
    pub is_read_only: bool,
    /// Boot from it: squib adds `root=/dev/vdX` (or `root=PARTUUID=…`) to the command line.
    pub is_root_device: bool,
    /// Root partition UUID, with `is_root_device`.
    pub partuuid: Option<String>,
    /// Whether FLUSH is offered.
    pub cache_type: CacheType,
    /// Which engine.
    pub io_engine: IoEngine,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Optional throttle.
    pub rate_limiter: Option<RateLimiterConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 100,
        })
    }

    #[test]
    fn a_patch_replaces_the_buckets_it_gives_and_keeps_the_others() {
        let current = Some(RateLimiterConfig {
            bandwidth: bucket(1),
            ops: bucket(2),
        });
        let update = Some(RateLimiterConfig {
            bandwidth: bucket(3),
            ops: None,
        });
        assert_eq!(
            RateLimiterConfig::patched(current, update),
            Some(RateLimiterConfig {
                bandwidth: bucket(3),
                ops: bucket(2),
            })
        );
        assert_eq!(RateLimiterConfig::patched(current, None), current);
        assert_eq!(RateLimiterConfig::patched(None, update), update);
    }
}
