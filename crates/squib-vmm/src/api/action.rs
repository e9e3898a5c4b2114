//! The one action enum every front end produces (Firecracker's `VmmAction`).

use super::models::{
    ActionType, BootSourceBody, DriveBody, EntropyBody, FullVmConfig, LoggerBody,
    MachineConfigBody, MetricsBody, NetworkInterfaceBody, PartialDriveBody,
    PartialNetworkInterfaceBody, SnapshotCreateBody, SnapshotLoadBody, VmBody, VsockBody,
};

/// One request to the VMM: what the router makes of an HTTP request, and what the command
/// line and `--config-file` are turned into, so that every front end is applied (and validated)
/// by the same [`ApiController::handle`](super::controller::ApiController::handle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSourceBody),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfigBody),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigBody),
    /// `PUT /drives/{id}`: the path's id and the body.
    PutDrive(String, DriveBody),
    /// `PATCH /drives/{id}`.
    PatchDrive(String, PartialDriveBody),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(String, NetworkInterfaceBody),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(String, PartialNetworkInterfaceBody),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmBody),
    /// `PUT /logger`.
    PutLogger(LoggerBody),
    /// `PUT /metrics`.
    PutMetrics(MetricsBody),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateBody),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadBody),
    /// `PUT /entropy`.
    PutEntropy(EntropyBody),
    /// `PUT /vsock`.
    PutVsock(VsockBody),
}

impl VmmAction {
    /// A `--config-file` as the API requests that would configure the same microVM, in the order that
    /// applies them: logger and metrics first (so later failures are logged), then the machine
    /// and its devices.
    pub fn from_config_file(config: &FullVmConfig) -> Vec<Self> {
        let mut actions = Vec::new();
        actions.extend(config.logger.clone().map(VmmAction::PutLogger));
        actions.extend(config.metrics.clone().map(VmmAction::PutMetrics));
        actions.extend(config.boot_source.clone().map(VmmAction::PutBootSource));
        actions.extend(
            config
                .machine_config
                .clone()
                .map(VmmAction::PutMachineConfig),
        );
        actions.extend(
            config
                .drives
                .iter()
                .map(|d| VmmAction::PutDrive(d.drive_id.clone(), d.clone())),
        );
        actions.extend(
            config
                .network_interfaces
                .iter()
                .map(|i| VmmAction::PutNetworkInterface(i.iface_id.clone(), i.clone())),
        );
        actions.extend(config.entropy.map(VmmAction::PutEntropy));
        actions.extend(config.vsock.clone().map(VmmAction::PutVsock));
        actions
    }

    /// A short name for logs and the API-request metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetInstanceInfo => "instance_info",
            Self::GetVersion => "version",
            Self::GetVmConfig => "vm_config",
            Self::GetMachineConfig | Self::PutMachineConfig(_) | Self::PatchMachineConfig(_) => {
                "machine_config"
            }
            Self::PutBootSource(_) => "boot_source",
            Self::PutDrive(..) | Self::PatchDrive(..) => "drives",
            // Firecracker's metric names: `network_count`, `network_fails`.
            Self::PutNetworkInterface(..) | Self::PatchNetworkInterface(..) => "network",
            Self::Action(_) => "actions",
            Self::PatchVm(_) => "vm",
            Self::PutLogger(_) => "logger",
            Self::PutMetrics(_) => "metrics",
            Self::CreateSnapshot(_) => "snapshot_create",
            Self::LoadSnapshot(_) => "snapshot_load",
            Self::PutEntropy(_) => "entropy",
            Self::PutVsock(_) => "vsock",
        }
    }
}

impl VmmAction {
    /// The endpoint, as errors name it (`PUT /drives`).
    pub fn endpoint(&self) -> &'static str {
        match self {
            Self::GetInstanceInfo => "GET /",
            Self::GetVersion => "GET /version",
            Self::GetVmConfig => "GET /vm/config",
            Self::GetMachineConfig => "GET /machine-config",
            Self::PutBootSource(_) => "PUT /boot-source",
            Self::PutMachineConfig(_) => "PUT /machine-config",
            Self::PatchMachineConfig(_) => "PATCH /machine-config",
            Self::PutDrive(..) => "PUT /drives",
            Self::PatchDrive(..) => "PATCH /drives",
            Self::PutNetworkInterface(..) => "PUT /network-interfaces",
            Self::PatchNetworkInterface(..) => "PATCH /network-interfaces",
            Self::Action(ActionType::InstanceStart) => "InstanceStart",
            Self::Action(ActionType::SendCtrlAltDel) => "SendCtrlAltDel",
            Self::Action(ActionType::FlushMetrics) => "FlushMetrics",
            Self::PatchVm(_) => "PATCH /vm",
            Self::PutLogger(_) => "PUT /logger",
            Self::PutMetrics(_) => "PUT /metrics",
            Self::CreateSnapshot(_) => "PUT /snapshot/create",
            Self::LoadSnapshot(_) => "PUT /snapshot/load",
            Self::PutEntropy(_) => "PUT /entropy",
            Self::PutVsock(_) => "PUT /vsock",
        }
    }
}
