//! What a snapshot records of a virtio device behind its transport, and why a restore can fail.
//!
//! Each device keeps its own state type beside its code and adds a [`DeviceState`] variant; the
//! transport wraps it with its registers and the queues' progress ([`TransportState`]). Every
//! field is as untrusted as the file it came from: restoring validates rings against guest memory
//! exactly as activation does.

use serde::{Deserialize, Serialize};

use crate::queue::{QueueError, QueueSnapshot};

/// A device's own state, beyond its registers and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// virtio-blk.
    Block(crate::block::BlockState),
    /// virtio-net: frames in flight are not kept; the TAP is reopened on load.
    Net(crate::net::NetState),
    /// virtio-rng: nothing beyond its queue (the limiter's buckets start full, as on boot).
    Entropy,
    /// virtio-vsock: its connections do not survive a snapshot; the guest is told with a
    /// TRANSPORT_RESET event when the device resumes.
    Vsock(crate::vsock::VsockState),
}

/// A virtio-mmio transport, its device and its queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device ID, checked against the device being restored.
    pub device_type: u32,
    /// Device status (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, FAILED).
    pub status: u32,
    /// Whether the device had signalled DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Every queue: registers, and the device's progress if it was active.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state.
    pub device: DeviceState,
}

/// Why a device could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Saving needs the device's worker paused (the VM paused), so the queues hold still.
    #[error("the device is running: pause the microVM before saving it")]
    Running,
    /// The device type has no snapshot support.
    #[error("{0} devices cannot be saved in a snapshot yet")]
    Unsupported(&'static str),
    /// The snapshot describes another kind of device than the one configured in its place.
    #[error("the snapshot holds device type {found} where device type {expected} is configured")]
    DeviceType {
        /// The configured device's type.
        expected: u32,
        /// The snapshot's.
        found: u32,
    },
    /// The device's own state in the snapshot belongs to another kind of device.
    #[error("the snapshot's device state is not a {0} device's")]
    StateMismatch(&'static str),
    /// The snapshot's queue count is not the device's.
    #[error("the snapshot has {found} queues, the device has {expected}")]
    QueueCount {
        /// The device's.
        expected: usize,
        /// The snapshot's.
        found: usize,
    },
    /// A queue in the snapshot does not fit guest memory or virtio's rules.
    #[error("queue {index}: {source}")]
    Queue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        source: QueueError,
    },
    /// The snapshot's features are not the device's.
    #[error("the snapshot's negotiated features {0:#x} are not all offered by the device")]
    Features(u64),
    /// The device could not start its worker on the restored queues.
    #[error("restarting the device: {0}")]
    Activate(#[from] crate::device::ActivateError),
}
