//! The virtio-blk device: the features it offers, its configuration space (virtio 1.2 §5.2.4),
//! and its life on the shared device runtime (activation, pause, reset, snapshot state).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::debug;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::backend::{BlockBackend, SECTOR_SIZE};
use super::config::{
    BlockConfig, BlockError, BlockLimits, CacheType, DriveSerial, FEATURE_BLK_SIZE,
    FEATURE_DISCARD, FEATURE_FLUSH, FEATURE_RO, FEATURE_SEG_MAX, FEATURE_WRITE_ZEROES, Negotiated,
    QUEUE_SIZE, SEG_MAX, ServeConfig,
};
use super::drive_state::{BlockHandle, DriveState};
use super::handler::BlockHandler;
use crate::device::{ActivateError, Activation, COMMON_FEATURES, RuntimeControl, VirtioDevice};
use crate::persist::{DeviceState, StateError};
use crate::rate_limiter::RateLimiter;
use crate::runtime::{DeviceRuntime, QueueParts};

/// What a snapshot keeps of a virtio-blk device beyond its queues: the backend and its limits
/// come from the configuration the restoring process is given, as in Firecracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// ConfigGeneration, so a driver comparing it across the snapshot sees no change.
    pub config_generation: u32,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct BlockDevice {
    shared: Arc<DriveState>,
    serial: DriveSerial,
    limits: BlockLimits,
    offered_features: u64,
    runtime: DeviceRuntime<BlockHandler>,
}

impl BlockDevice {
    /// A block device serving `backend`. Nothing runs until the driver activates it.
    pub fn new(backend: Arc<dyn BlockBackend>, config: BlockConfig) -> Result<Self, BlockError> {
        if config.drive_id.is_empty() {
            return Err(BlockError::EmptyDriveId);
        }
        if config.limits.max_discard_sectors == 0 {
            return Err(BlockError::ZeroLimit("max_discard_sectors"));
        }
        if config.limits.max_write_zeroes_sectors == 0 {
            return Err(BlockError::ZeroLimit("max_write_zeroes_sectors"));
        }
        let read_only = backend.is_read_only();
        let mut offered_features = COMMON_FEATURES | FEATURE_SEG_MAX | FEATURE_BLK_SIZE;
        if read_only {
            offered_features |= FEATURE_RO;
        } else {
            offered_features |= FEATURE_DISCARD | FEATURE_WRITE_ZEROES;
        }
        if config.cache_type == CacheType::Writeback {
            offered_features |= FEATURE_FLUSH;
        }
        let limiter = match config.rate_limiter {
            Some(spec) => {
                spec.validate()?;
                Some(RateLimiter::from_spec(spec).map_err(BlockError::Host)?)
            }
            None => None,
        };
        let shared = DriveState::new(backend, limiter).map_err(BlockError::Host)?;
        Ok(Self {
            shared: Arc::new(shared),
            serial: DriveSerial::new(&config.drive_id),
            limits: config.limits,
            offered_features,
            runtime: DeviceRuntime::new("squib-blk"),
        })
    }

    /// A handle for the API thread: backend swap, rate-limiter updates and metrics.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle::new(Arc::clone(&self.shared))
    }

    /// Whether the driver activated the device (and did not reset it since).
    pub fn is_active(&self) -> bool {
        self.runtime.is_active()
    }

    /// The handler and queues one activation serves (DRIVER_OK or a restored snapshot).
    fn prepare(&self, activation: Activation) -> Result<(BlockHandler, QueueParts), ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            acked_features,
        } = activation;
        if queues.len() != 1 || queue_events.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len().min(queue_events.len()),
            });
        }
        let serve = ServeConfig {
            serial: self.serial,
            limits: self.limits,
            negotiated: Negotiated {
                flush: acked_features & FEATURE_FLUSH != 0,
                discard: acked_features & FEATURE_DISCARD != 0,
                write_zeroes: acked_features & FEATURE_WRITE_ZEROES != 0,
            },
        };
        self.shared.set_interrupt(Some(Arc::clone(&interrupt)));
        let handler = BlockHandler::new(mem.clone(), Arc::clone(&self.shared), serve);
        Ok((
            handler,
            QueueParts {
                mem,
                queues,
                queue_events,
                interrupt,
            },
        ))
    }

    /// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` (virtio 1.2
    /// §5.2.4), little endian. Fields for features we do not offer read 0.
    fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            space[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &(self.shared.capacity() / SECTOR_SIZE).to_le_bytes()); // capacity
        // 8: size_max (not offered)
        put(
            12,
            &u32::try_from(SEG_MAX).unwrap_or(u32::MAX).to_le_bytes(),
        ); // seg_max
        // 16: geometry (not offered)
        put(
            20,
            &u32::try_from(SECTOR_SIZE).unwrap_or(u32::MAX).to_le_bytes(),
        ); // blk_size
        // 24: topology (not offered); 32: writeback (CONFIG_WCE not offered)
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &self.limits.max_discard_sectors.to_le_bytes());
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &self.limits.max_write_zeroes_sectors.to_le_bytes());
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        // 56: write_zeroes_may_unmap = 0
        space
    }
}

const CONFIG_SPACE_LEN: usize = 60;

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        self.offered_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let space = self.config_space();
        let Some(start) = usize::try_from(offset).ok().filter(|&s| s < space.len()) else {
            debug!(
                offset,
                len = data.len(),
                "read past the virtio-blk config space"
            );
            return;
        };
        let len = data.len().min(space.len() - start);
        data[..len].copy_from_slice(&space[start..start + len]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The only writable field is `writeback`, which needs CONFIG_WCE, which we do not offer.
        debug!(
            offset,
            len = data.len(),
            "write to read-only virtio-blk config space ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        self.shared.config_generation()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.runtime.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let (handler, parts) = self.prepare(activation)?;
        self.runtime.activate(handler, parts).inspect_err(|_| {
            self.shared.set_interrupt(None);
        })
    }

    fn reset(&mut self) {
        // Dropping the handler joins its I/O threads after their requests; the rate limiter
        // goes back to the drive state.
        drop(self.runtime.reset());
        self.shared.set_interrupt(None);
    }

    fn runtime(&self) -> &dyn RuntimeControl {
        &self.runtime
    }

    fn runtime_mut(&mut self) -> &mut dyn RuntimeControl {
        &mut self.runtime
    }

    fn save_state(&self) -> Result<DeviceState, StateError> {
        self.runtime.ensure_quiescent()?;
        Ok(DeviceState::Block(BlockState {
            config_generation: self.shared.config_generation(),
        }))
    }

    fn restore_state(
        &mut self,
        state: &DeviceState,
        activation: Option<Activation>,
    ) -> Result<(), StateError> {
        let DeviceState::Block(state) = state else {
            return Err(StateError::StateMismatch("virtio-blk"));
        };
        self.shared
            .restore_config_generation(state.config_generation);
        drop(self.runtime.reset());
        if let Some(activation) = activation {
            let (handler, parts) = self.prepare(activation)?;
            self.runtime.restore_paused(handler, parts);
        }
        Ok(())
    }
}
