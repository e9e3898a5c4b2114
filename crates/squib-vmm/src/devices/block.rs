//! The virtio-blk builder: each `DriveConfig` becomes a backend (its engine, optionally bypassing
//! the host page cache), a virtio-blk device behind a virtio-mmio transport, and the
//! [`DriveHandle`] the API keeps. Block I/O runs on the device's worker thread (squib-virtio's
//! runtime), started when the driver activates the device — never on a vCPU.

use std::path::PathBuf;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use squib_virtio::block::backend::{BackendError, BlockBackend};
use squib_virtio::block::engine::{AsyncFileBackend, SyncFileBackend, UringFileBackend};
use squib_virtio::block::{BlockConfig, BlockDevice, BlockHandle, BlockMetricsSnapshot, SwapError};
use squib_virtio::mmio::MmioTransport;
use squib_virtio::rate_limiter::{BucketSpec, RateLimiterSpec};
use tracing::{info, warn};

use super::DeviceError;
use super::bus::Bus;
use super::manager::{DeviceKind, DeviceManager, RuntimeHandle};
use crate::GuestMemory;
use crate::host_file::{self, Accept};
use crate::vm_config::{CacheType, DriveConfig, IoEngine, RateLimiterConfig, TokenBucketConfig};

/// Why a drive could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The backing file could not be opened or used.
    #[error("drive {id}: cannot open {}: {source}", path.display())]
    Open {
        /// The drive id.
        id: String,
        /// Its backing file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `direct` was asked for and the host refused to bypass its cache for this file.
    #[error("drive {id}: cannot bypass the host page cache for {} (direct): {source}", path.display())]
    Direct {
        /// The drive id.
        id: String,
        /// Its backing file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The device refused the configuration.
    #[error("drive {id}: {source}")]
    Device {
        /// The drive id.
        id: String,
        /// Why.
        source: squib_virtio::block::BlockError,
    },
    /// The virtio-mmio slot could not be set up.
    #[error("drive {id}: {source}")]
    Attach {
        /// The drive id.
        id: String,
        /// Why.
        source: DeviceError,
    },
}

/// A drive of the running microVM: its device's runtime handle.
#[derive(Debug)]
pub struct DriveHandle {
    id: String,
    block: BlockHandle,
}

impl DriveHandle {
    /// The drive id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device's counters.
    pub fn metrics(&self) -> BlockMetricsSnapshot {
        self.block.metrics()
    }

    /// The device's runtime handle.
    pub fn block_handle(&self) -> &BlockHandle {
        &self.block
    }

    /// Replaces the backing file (the guest is notified of a capacity change).
    pub fn swap_backend(&self, backend: Arc<dyn BlockBackend>) -> Result<(), SwapError> {
        self.block.swap_backend(backend)
    }

    /// Makes every write the drive ever acknowledged durable, on its current backend and on
    /// those swapped out before it.
    pub fn flush(&self) -> Result<(), BackendError> {
        self.block.flush_all()
    }
}

/// Opens the backend `drive` asks for.
pub fn open_backend(drive: &DriveConfig) -> Result<Arc<dyn BlockBackend>, DriveError> {
    let open_err = |source| DriveError::Open {
        id: drive.drive_id.clone(),
        path: drive.path_on_host.clone(),
        source,
    };
    let file = host_file::open(
        &drive.path_on_host,
        !drive.is_read_only,
        Accept::RegularFileOrBlockDevice,
    )
    .map_err(|e| open_err(e.into_io()))?;
    if drive.direct {
        squib_host::block_io::set_f_nocache(&file).map_err(|source| DriveError::Direct {
            id: drive.drive_id.clone(),
            path: drive.path_on_host.clone(),
            source,
        })?;
    }
    let backend: Arc<dyn BlockBackend> = match drive.io_engine {
        IoEngine::Sync => {
            Arc::new(SyncFileBackend::from_file(file, drive.is_read_only).map_err(open_err)?)
        }
        IoEngine::Async => match squib_host::uring::probe() {
            Ok(()) => {
                info!(drive = %drive.drive_id, direct = drive.direct, "io_engine Async: io_uring");
                Arc::new(UringFileBackend::from_file(file, drive.is_read_only).map_err(open_err)?)
            }
            Err(error) => {
                warn!(
                    drive = %drive.drive_id,
                    %error,
                    "io_engine Async: this kernel refuses io_uring; using I/O threads instead"
                );
                Arc::new(AsyncFileBackend::from_file(file, drive.is_read_only).map_err(open_err)?)
            }
        },
        IoEngine::Threads => {
            Arc::new(AsyncFileBackend::from_file(file, drive.is_read_only).map_err(open_err)?)
        }
    };
    Ok(backend)
}

fn block_config(drive: &DriveConfig) -> BlockConfig {
    let cache = match drive.cache_type {
        CacheType::Unsafe => squib_virtio::block::CacheType::Unsafe,
        CacheType::Writeback => squib_virtio::block::CacheType::Writeback,
    };
    let mut config = BlockConfig::new(drive.drive_id.clone(), cache);
    config.rate_limiter = drive.rate_limiter.as_ref().map(rate_limiter_spec);
    config
}

/// The API's rate limiter in squib-virtio's terms (which does not know the VMM's types).
pub fn rate_limiter_spec(config: &RateLimiterConfig) -> RateLimiterSpec {
    let bucket = |b: &TokenBucketConfig| BucketSpec {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time_ms: b.refill_time_ms,
    };
    RateLimiterSpec {
        bandwidth: config.bandwidth.as_ref().map(bucket),
        ops: config.ops.as_ref().map(bucket),
    }
}

/// Opens every drive and attaches it, in order, to the next virtio-mmio slot (drives come
/// first, so the n-th drive is the guest's n-th virtio disk).
pub fn attach_all(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    devices: &mut DeviceManager,
    drives: &[DriveConfig],
) -> Result<(), DriveError> {
    for drive in drives {
        let id = || drive.drive_id.clone();
        let backend = open_backend(drive)?;
        let device = BlockDevice::new(backend, block_config(drive))
            .map_err(|source| DriveError::Device { id: id(), source })?;
        let block = device.handle();
        let transport = MmioTransport::new(Box::new(device), mem.clone()).map_err(|source| {
            DriveError::Attach {
                id: id(),
                source: DeviceError::Transport {
                    device: id(),
                    source,
                },
            }
        })?;
        let handle = DriveHandle { id: id(), block };
        devices
            .attach(
                vm,
                mmio,
                DeviceKind::Block,
                &drive.drive_id,
                transport,
                RuntimeHandle::Block(handle),
            )
            .map_err(|source| DriveError::Attach { id: id(), source })?;
    }
    Ok(())
}
