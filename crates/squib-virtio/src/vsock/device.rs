//! The vsock device: its configuration space (the guest's CID), the host socket it listens on,
//! and activation, which hands the three queues to a worker running [`VsockHandler`].

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use serde::{Deserialize, Serialize};

use super::handler::{HandlerConfig, VsockHandler};
use super::metrics::{VsockMetrics, VsockMetricsSnapshot};
use crate::device::{ActivateError, Activation, FEATURE_VERSION_1, RuntimeControl, VirtioDevice};
use crate::persist::{DeviceState, StateError};
use crate::runtime::{DeviceRuntime, QueueParts};

/// Descriptors per queue (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// How the VMM configures the vsock device (Firecracker's `PUT /vsock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The Unix socket squib listens on for host-initiated connections; guest-initiated ones
    /// to port `P` go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Why a vsock device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved, and virtio-vsock CIDs are 32-bit in practice.
    #[error("guest_cid {0} is reserved or too large (3 to {max})", max = u32::MAX)]
    GuestCid(u64),
    /// The listening socket could not be created.
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        /// `uds_path`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The host refused an eventfd.
    #[error("cannot create the device's eventfd: {0}")]
    Host(#[source] io::Error),
}

/// What a snapshot keeps of a vsock device: its CID, checked on restore. Connections are not
/// kept: the guest learns of it from a TRANSPORT_RESET event when the device resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
}

/// The API side of a vsock device: counters and the transport reset the snapshot code sends.
#[derive(Clone, Debug)]
pub struct VsockHandle {
    metrics: Arc<VsockMetrics>,
    reset_request: Arc<EventFd>,
}

impl VsockHandle {
    /// The device's counters.
    pub fn metrics(&self) -> VsockMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Asks the running device to send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET and drop every
    /// connection (after a snapshot restore). Ignored while the driver has not started it.
    pub fn request_transport_reset(&self) -> io::Result<()> {
        self.reset_request.write(1)
    }
}

/// A virtio-vsock device.
#[derive(Debug)]
pub struct VsockDevice {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    metrics: Arc<VsockMetrics>,
    reset_request: Arc<EventFd>,
    runtime: DeviceRuntime<VsockHandler>,
}

impl VsockDevice {
    /// Binds `uds_path` (which must not exist) and builds the device; nothing runs until the
    /// driver activates it.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid < 3 || config.guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::GuestCid(config.guest_cid));
        }
        let listener = UnixListener::bind(&config.uds_path).map_err(|source| VsockError::Bind {
            path: config.uds_path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: config.uds_path.clone(),
                source,
            })?;
        let reset_request = EventFd::new(EFD_NONBLOCK).map_err(VsockError::Host)?;
        Ok(Self {
            guest_cid: config.guest_cid,
            uds_path: config.uds_path,
            listener,
            metrics: Arc::default(),
            reset_request: Arc::new(reset_request),
            runtime: DeviceRuntime::new("squib-vsock"),
        })
    }

    /// The handle the VMM keeps.
    pub fn handle(&self) -> VsockHandle {
        VsockHandle {
            metrics: Arc::clone(&self.metrics),
            reset_request: Arc::clone(&self.reset_request),
        }
    }

    /// Where host-initiated connections arrive.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Whether a worker is serving the queues.
    pub fn is_active(&self) -> bool {
        self.runtime.is_active()
    }

    fn prepare(&self, activation: Activation) -> Result<(VsockHandler, QueueParts), ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            ..
        } = activation;
        if queues.len() != QUEUE_SIZES.len() || queue_events.len() != QUEUE_SIZES.len() {
            self.metrics.activate_fails(1);
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: queues.len().min(queue_events.len()),
            });
        }
        let handler = VsockHandler::new(HandlerConfig {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
            listener: self.listener.try_clone()?,
            reset_request: self.reset_request.try_clone()?,
            timeouts: TimerFd::new()
                .map_err(|e| ActivateError::Host(io::Error::from_raw_os_error(e.errno())))?,
            metrics: Arc::clone(&self.metrics),
        });
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
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `struct virtio_vsock_config { le64 guest_cid; }`
        data.fill(0);
        let space = self.guest_cid.to_le_bytes();
        let Some(start) = usize::try_from(offset).ok().filter(|&s| s < space.len()) else {
            debug!(
                offset,
                len = data.len(),
                "read past the virtio-vsock config space"
            );
            return;
        };
        let len = data.len().min(space.len() - start);
        data[..len].copy_from_slice(&space[start..start + len]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.metrics.cfg_fails(1);
        debug!(
            offset,
            len = data.len(),
            "write to read-only virtio-vsock config space ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        0
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.runtime.is_active() {
            return Err(ActivateError::AlreadyActive);
        }
        let (handler, parts) = self.prepare(activation)?;
        self.runtime
            .activate(handler, parts)
            .inspect_err(|_| self.metrics.activate_fails(1))
    }

    fn reset(&mut self) {
        // Dropping the handler closes every connection's socket.
        drop(self.runtime.reset());
    }

    fn runtime(&self) -> &dyn RuntimeControl {
        &self.runtime
    }

    fn runtime_mut(&mut self) -> &mut dyn RuntimeControl {
        &mut self.runtime
    }

    fn save_state(&self) -> Result<DeviceState, StateError> {
        self.runtime.ensure_quiescent()?;
        Ok(DeviceState::Vsock(VsockState {
            guest_cid: self.guest_cid,
        }))
    }

    fn restore_state(
        &mut self,
        state: &DeviceState,
        activation: Option<Activation>,
    ) -> Result<(), StateError> {
        match state {
            DeviceState::Vsock(saved) if saved.guest_cid == self.guest_cid => {}
            _ => return Err(StateError::StateMismatch("virtio-vsock (same guest_cid)")),
        }
        drop(self.runtime.reset());
        if let Some(activation) = activation {
            let (handler, parts) = self.prepare(activation)?;
            self.runtime.restore_paused(handler, parts);
            // The guest's connections died with the snapshot: tell it once the worker runs.
            self.reset_request
                .write(1)
                .map_err(|e| StateError::Activate(ActivateError::Host(e)))?;
        }
        Ok(())
    }
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        // squib created the socket file; leave no stale one behind.
        if let Err(error) = std::fs::remove_file(&self.uds_path) {
            warn!(%error, path = %self.uds_path.display(), "cannot remove the vsock socket");
        }
    }
}
