//! Snapshots: a paused microVM's state to a file and its memory to another, and back into a
//! new process (Firecracker's `/snapshot/create` and `/snapshot/load`).
//!
//! - [`format`]: the state file (header, version, checksum) — docs/snapshot-format.md;
//! - [`state`]: what the state file holds;
//! - [`memory`]: the memory file (sparse writes, dirty pages, `MAP_PRIVATE` loads, merges).
//!
//! Capture and restore of the KVM state itself lives with the KVM objects
//! ([`crate::kvm::state`]); the VMM ([`crate::vmm`]) drives the sequence.

pub mod format;
pub mod memory;
pub mod state;

use std::path::{Path, PathBuf};

/// Why a snapshot could not be created, read or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not start with squib's magic.
    #[error("not a squib snapshot file (bad magic)")]
    NotASnapshot,
    /// Written by a squib with another snapshot format.
    #[error(
        "snapshot format version {found} (written by squib {writer}) is not supported: this squib \
         reads format version {}",
        format::FORMAT_VERSION
    )]
    Version {
        /// The file's format version.
        found: u32,
        /// The squib version that wrote it.
        writer: String,
    },
    /// Shorter than its header says.
    #[error("snapshot file truncated: {found} bytes, expected {expected}")]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// Longer than its header says.
    #[error("snapshot file has trailing data: {found} bytes, expected {expected}")]
    TrailingData {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// An absurd payload length.
    #[error("snapshot payload too large: {0} bytes")]
    PayloadTooLarge(u64),
    /// The payload does not match its checksum.
    #[error("snapshot file corrupted: checksum {computed:#018x}, header says {stored:#018x}")]
    Checksum {
        /// From the header.
        stored: u64,
        /// Of the payload read.
        computed: u64,
    },
    /// The payload could not be serialized.
    #[error("cannot encode the snapshot: {0}")]
    Encode(serde_json::Error),
    /// The payload is not the state this squib writes.
    #[error("snapshot payload unreadable: {0}")]
    Decode(serde_json::Error),
    /// The payload describes a machine squib cannot build.
    #[error("snapshot describes an invalid microVM: {0}")]
    Invalid(String),
    /// The memory file does not match the snapshot.
    #[error("memory file {} is {found} bytes, the snapshot needs {expected}", path.display())]
    MemoryFileSize {
        /// The memory file.
        path: PathBuf,
        /// Bytes the snapshot's layout needs.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The memory file could not be mapped.
    #[error("cannot map the memory file: {0}")]
    Map(String),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// Saving or restoring KVM state failed.
    #[error(transparent)]
    State(#[from] crate::kvm::state::StateError),
    /// A load's override names a device the snapshot does not have.
    #[error("{0}")]
    Override(String),
    /// Something the snapshot cannot capture yet.
    #[error("cannot snapshot this microVM: {0}")]
    Unsupported(String),
    /// The microVM is not in a state that allows it.
    #[error("{0}")]
    WrongState(&'static str),
}

/// `snapshot_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotType {
    /// Every page the guest touched.
    #[default]
    Full,
    /// Pages written since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// A `/snapshot/create` request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file.
    pub mem_file_path: PathBuf,
    /// Full or Diff.
    pub snapshot_type: SnapshotType,
}

/// Where a loaded snapshot's memory comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemBackend {
    /// The memory file, mapped `MAP_PRIVATE`.
    File(PathBuf),
    /// A page-fault handler listening on this Unix socket (userfaultfd).
    Uffd(PathBuf),
}

/// A `/snapshot/load` request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadRequest {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Guest memory.
    pub mem_backend: MemBackend,
    /// Log dirty pages from the start (for later Diff snapshots).
    pub track_dirty_pages: bool,
    /// Resume the vCPUs at once (otherwise the microVM loads paused).
    pub resume_vm: bool,
    /// New TAP devices for the snapshot's interfaces.
    pub network_overrides: Vec<state::NetworkOverride>,
    /// A new Unix socket for the snapshot's vsock device.
    pub vsock_override: Option<PathBuf>,
}

/// `--describe-snapshot`: the file's format version as Firecracker prints it (`v1.0.0`), after
/// checking the whole file (header, CRC, payload).
pub fn describe(path: &Path) -> Result<String, SnapshotError> {
    let (header, _state) = format::read(path)?;
    Ok(version_text(header.format_version))
}

/// `--snapshot-version`: the format version squib writes and loads, as Firecracker prints it.
pub fn supported_version() -> String {
    version_text(format::FORMAT_VERSION)
}

fn version_text(format_version: u32) -> String {
    format!("v{format_version}.0.0")
}
