//! The contract between a transport and a virtio device model.
//!
//! The transport (virtio-mmio here) owns the registers, the device status state machine, feature
//! negotiation and queue configuration; a [`VirtioDevice`] only describes itself, serves its
//! configuration space, and runs once the driver sets DRIVER_OK ([`VirtioDevice::activate`]).

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemory;
use crate::interrupt::VirtioInterrupt;
use crate::persist::{DeviceState, StateError};
use crate::queue::{QueueError, QueueSnapshot, VirtQueue};

/// The feature bit every device offers and every driver of a version-2 transport must accept.
pub const FEATURE_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// `used_event`/`avail_event` notification suppression (virtio 1.2 §2.7.10).
pub const FEATURE_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// Indirect descriptor tables (virtio 1.2 §2.7.5.3): more requests in flight on a small queue.
pub const FEATURE_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// What the transport and the virtqueues give every device, so every device offers them: include
/// them in [`VirtioDevice::offered_features`].
pub const COMMON_FEATURES: u64 = FEATURE_VERSION_1 | FEATURE_EVENT_IDX | FEATURE_INDIRECT_DESC;

/// Why the driver's feature selection was refused at FEATURES_OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// The driver acked bits the device never offered.
    #[error("the driver acked features {unoffered:#x} that the device does not offer")]
    NotOffered {
        /// The offending bits.
        unoffered: u64,
    },
    /// A version-2 (non-legacy) transport needs VIRTIO_F_VERSION_1.
    #[error("the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)")]
    MissingVersion1,
}

/// Why a device could not start at DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device needs `expected` queues, the transport passed `got`.
    #[error("the device needs {expected} queue(s), got {got}")]
    QueueCount {
        /// Queues the device drives.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// A queue the device needs is unusable.
    #[error("queue {index}: {source}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        source: QueueError,
    },
    /// The device is already running (DRIVER_OK twice without a reset).
    #[error("the device is already active")]
    AlreadyActive,
    /// The host could not create the device's thread or event descriptors.
    #[error("host resources for the device: {0}")]
    Host(#[from] io::Error),
}

/// Everything a device needs to run, handed over at DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory, where the rings and buffers live.
    pub mem: GuestMemory,
    /// The queues, in index order, built from the driver's configuration.
    pub queues: Vec<VirtQueue>,
    /// One notification `EventFd` per queue (duplicates of the transport's, which the VMM
    /// registers as ioeventfds).
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted (validated with [`VirtioDevice::validate_features`]).
    pub acked_features: u64,
}

/// The lifecycle of a device's worker as the device's transport-facing side drives it, whatever
/// the worker serves: [`DeviceRuntime`](crate::runtime::DeviceRuntime) implements it, and
/// [`VirtioDevice`]'s pause, resume, queue-stop and snapshot methods use it by default.
pub trait RuntimeControl: Send + Debug {
    /// Activated and not reset since (running or paused).
    fn is_active(&self) -> bool;
    /// Paused: the queues and the handler can be saved.
    fn is_paused(&self) -> bool;
    /// Stops serving once the requests in flight are published (a no-op unless running).
    fn pause(&mut self);
    /// Serves again after a pause or a restore (a no-op unless paused).
    fn resume(&mut self) -> io::Result<()>;
    /// Stops serving queue `index`; the others go on.
    fn disable_queue(&mut self, index: usize) -> io::Result<()>;
    /// The queues' state while paused.
    fn queue_snapshots(&self) -> Option<Vec<QueueSnapshot>>;

    /// Refuses to save a device whose worker is running.
    fn ensure_quiescent(&self) -> Result<(), StateError> {
        if self.is_active() && !self.is_paused() {
            return Err(StateError::Running);
        }
        Ok(())
    }
}

/// A virtio device model, driven by a transport.
pub trait VirtioDevice: Send + Debug {
    /// The virtio device ID (`VIRTIO_ID_BLOCK`, ...).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue, in index order; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers: [`COMMON_FEATURES`] and the device's own.
    fn offered_features(&self) -> u64;

    /// Checks the driver's feature selection; called when the driver sets FEATURES_OK.
    fn validate_features(&self, acked: u64) -> Result<(), FeatureError> {
        let unoffered = acked & !self.offered_features();
        if unoffered != 0 {
            return Err(FeatureError::NotOffered { unoffered });
        }
        if acked & FEATURE_VERSION_1 == 0 {
            return Err(FeatureError::MissingVersion1);
        }
        Ok(())
    }

    /// Reads `data.len()` bytes of configuration space at `offset`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The ConfigGeneration register: changes whenever configuration space changes, so a driver
    /// can detect a torn multi-register read.
    fn config_generation(&self) -> u32;

    /// Starts the device (DRIVER_OK).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;

    /// Stops the device and returns it to its pre-activation state (the driver wrote 0 to
    /// Status). Must not return before the device stopped touching guest memory, and must return
    /// within one request's time whatever the guest keeps queueing.
    fn reset(&mut self);

    /// The device's worker runtime, through which the lifecycle methods below act.
    fn runtime(&self) -> &dyn RuntimeControl;

    /// The same, to change it.
    fn runtime_mut(&mut self) -> &mut dyn RuntimeControl;

    /// The driver stopped queue `index` (QueueReady = 0 after DRIVER_OK): once this returns the
    /// device no longer touches that queue.
    fn disable_queue(&mut self, index: usize) {
        if let Err(error) = self.runtime_mut().disable_queue(index) {
            tracing::error!(
                device_type = self.device_type(),
                %error,
                "cannot restart the device worker after stopping a queue"
            );
        }
    }

    /// Stops serving after the requests in flight are published (VM pause, snapshot). A no-op
    /// unless active.
    fn pause(&mut self) {
        self.runtime_mut().pause();
    }

    /// Serves again after [`pause`](Self::pause) or [`restore_state`](Self::restore_state).
    fn resume(&mut self) -> Result<(), ActivateError> {
        Ok(self.runtime_mut().resume()?)
    }

    /// The queues' state while paused (`None` while running or inactive).
    fn queue_snapshots(&self) -> Option<Vec<QueueSnapshot>> {
        self.runtime().queue_snapshots()
    }

    /// The device's own state for a snapshot: only while paused or inactive.
    fn save_state(&self) -> Result<DeviceState, StateError>;

    /// Restores the device's own state; with `activation` (the snapshot was taken while the
    /// device was active), the device is active and paused afterwards: [`resume`](Self::resume)
    /// starts it.
    fn restore_state(
        &mut self,
        state: &DeviceState,
        activation: Option<Activation>,
    ) -> Result<(), StateError>;
}
