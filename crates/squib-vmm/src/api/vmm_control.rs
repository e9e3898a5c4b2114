//! What the API needs from a VMM, as a trait: the real KVM VMM implements it, tests use a fake.
//!
//! Every method must return promptly: the API thread calls them, and `GET /` must answer while a
//! guest saturates its disk. Implementations talk to vCPU and device threads through atomics,
//! channels and non-blocking handles, never by waiting on guest I/O.

use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::state::DeviceConfigs;
use crate::snapshot::{CreateRequest, LoadRequest};
use crate::vm_config::{DriveConfig, MachineConfig, RateLimiterConfig, VmConfig};

/// The state `GET /` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Before `InstanceStart`.
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs parked by `PATCH /vm`.
    Paused,
}

impl RunState {
    /// Firecracker's spelling.
    pub fn as_api_str(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// A VMM operation that failed; the text becomes the fault message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(String);

impl ControlError {
    /// Wraps any error's description.
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// Cumulative counters of one drive, as the metrics file reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriveCounters {
    /// Completed reads.
    pub read_count: u64,
    /// Completed writes.
    pub write_count: u64,
    /// Completed flushes.
    pub flush_count: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Requests the guest built wrong.
    pub invalid_reqs_count: u64,
    /// Requests the host failed.
    pub io_errors: u64,
    /// Sum of request latencies, µs.
    pub latency_total_us: u64,
    /// Longest request latency, µs.
    pub latency_max_us: u64,
    /// Times the rate limiter made the drive's queue wait (Firecracker's name).
    pub rate_limiter_throttled_events: u64,
}

/// Cumulative counters of one non-block device under its metrics group (`entropy`, `vsock`),
/// with Firecracker's field names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The group's name in the metrics line.
    pub group: &'static str,
    /// `(field, cumulative value)`.
    pub counters: Vec<(&'static str, u64)>,
}

/// Signals the API server that the microVM has stopped, so the process can exit at once.
#[derive(Debug)]
pub struct ExitNotice(EventFd);

impl ExitNotice {
    /// Wraps the server's wake-up eventfd.
    pub fn new(event: EventFd) -> Self {
        Self(event)
    }

    /// Wakes the server (after the exit status is readable through `exit_status`).
    pub fn notify(&self) {
        if let Err(e) = self.0.write(1) {
            tracing::error!("cannot wake the API server after the microVM stopped: {e}");
        }
    }
}

/// The VMM as the API sees it.
pub trait VmmControl: Send {
    /// Starts, off the calling thread, whatever of the microVM `machine` already determines,
    /// so that `start` has less to do; a later call with another machine replaces it. Only a
    /// hint: `start` works without it.
    fn prepare(&mut self, _machine: &MachineConfig) {}
    /// Builds and boots the microVM; `exit` is notified once it stops.
    fn start(&mut self, config: &VmConfig, exit: ExitNotice) -> Result<(), ControlError>;
    /// The current state.
    fn state(&self) -> RunState;
    /// Parks every vCPU.
    fn pause(&mut self) -> Result<(), ControlError>;
    /// Runs them again.
    fn resume(&mut self) -> Result<(), ControlError>;
    /// Presses Ctrl+Alt+Del on the i8042.
    fn send_ctrl_alt_del(&mut self) -> Result<(), ControlError>;
    /// Puts a new backing file behind a running drive and tells the guest its config changed.
    /// `drive` is the drive's configuration with the new `path_on_host`, validated by the
    /// resources: the file is opened as it says (mode, cache type, engine).
    fn swap_drive(&mut self, drive: &DriveConfig) -> Result<(), ControlError>;
    /// Changes a running drive's throttle: a given bucket replaces the current one (starting
    /// full; size or refill time 0 removes the limit), an absent one is kept.
    fn update_rate_limiter(
        &mut self,
        drive_id: &str,
        config: &RateLimiterConfig,
    ) -> Result<(), ControlError>;
    /// Writes a snapshot of the paused microVM.
    fn create_snapshot(
        &mut self,
        request: &CreateRequest,
        config: &DeviceConfigs,
    ) -> Result<(), ControlError>;
    /// Builds the microVM from a snapshot instead of booting it; `exit` as for `start`.
    /// Returns the configuration the snapshot describes (machine, drives), which the API then
    /// reports and lets drives be patched against.
    fn load_snapshot(
        &mut self,
        request: &LoadRequest,
        exit: ExitNotice,
    ) -> Result<VmConfig, ControlError>;
    /// Every drive's counters, by drive id.
    fn drive_counters(&self) -> Vec<(String, DriveCounters)>;
    /// Changes a running interface's receive and/or transmit throttle, bucket by bucket as
    /// [`update_rate_limiter`](Self::update_rate_limiter) does for drives.
    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), ControlError> {
        let _ = (rx, tx);
        Err(ControlError::new(format!(
            "network interface `{iface_id}`: this VMM has no network devices"
        )))
    }
    /// Every network interface's counters, by interface id.
    fn net_counters(&self) -> Vec<(String, squib_virtio::net::NetMetricsSnapshot)> {
        Vec::new()
    }
    /// The other devices' counters (entropy, vsock), one entry per device present.
    fn device_counters(&self) -> Vec<DeviceCounters> {
        Vec::new()
    }
    /// The process exit status once the microVM has stopped.
    fn exit_status(&self) -> Option<i32>;
}
