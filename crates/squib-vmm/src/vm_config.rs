//! What a microVM is made of, as the CLI, the config file and the API describe it.
//!
//! Every front end (command line, `--config-file`, the REST API) produces a `VmConfig`; the VMM
//! builds the machine from it. Values here are validated by the front end that parsed them.

use std::path::PathBuf;

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
    /// Whether the boot-timer device logs the guest's boot-complete write.
    pub boot_timer: bool,
    /// Boot protocol and how the guest discovers the machine.
    pub boot_options: BootOptions,
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

/// How the guest's writes reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// FLUSH is not offered; the host decides when data reaches the disk.
    #[default]
    Unsafe,
    /// FLUSH is offered and honoured with `fdatasync`.
    Writeback,
}

/// Which engine moves a drive's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// `Async`.
    Threads,
}

/// One token bucket: `size` tokens, refilled completely every `refill_time_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Bucket capacity (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at start.
    pub one_time_burst: u64,
    /// Time for an empty bucket to fill, in milliseconds.
    pub refill_time_ms: u64,
}

/// Firecracker's rate limiter: a bandwidth bucket and an operations bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests.
    pub ops: Option<TokenBucketConfig>,
}

/// One virtio-blk drive.
#[derive(Clone, Debug, PartialEq, Eq)]
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
