//! The controller: applies [`VmmAction`]s to the pre-boot [`VmResources`] or the running VMM.
//!
//! Before `InstanceStart` requests edit the [`VmResources`]; after it, the resources Firecracker
//! calls pre-boot only are refused, and runtime requests go to the [`VmmControl`].

use std::path::Path;
use std::time::Instant;

use tracing::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use super::action::VmmAction;
use super::http::{Request, Response, Status};
use super::logger::{LogConfigError, Logger};
use super::metrics::{FLUSH_INTERVAL, Metrics, MetricsError};
use super::models::{
    ActionType, FullVmConfig, InstanceInfo, LoggerBody, MemBackendType, PartialDriveBody,
    PartialNetworkInterfaceBody, SnapshotCreateBody, SnapshotLoadBody, SnapshotTypeBody,
    VersionInfo, VmStateRequest,
};
use super::resources::{ConfigError, VmResources};
use super::router::{RouteError, route};
use super::vmm_control::{ControlError, ExitNotice, RunState, VmmControl};
use crate::snapshot::state::NetworkOverride;
use crate::snapshot::{CreateRequest, LoadRequest, MemBackend, SnapshotType};
use crate::version::FIRECRACKER_VERSION;
use crate::vm_config::BootOptions;

/// Why a request was refused; every variant is a 400 with this text as `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not a request squib serves.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A value the configuration cannot take.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The VMM refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Metrics setup or flush.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Logger setup.
    #[error(transparent)]
    Logger(#[from] LogConfigError),
    /// A pre-boot-only request after `InstanceStart`.
    #[error("{0} is not supported after starting the microVM")]
    AfterBoot(&'static str),
    /// A runtime request before `InstanceStart`.
    #[error("{0} is not supported before starting the microVM")]
    BeforeBoot(&'static str),
    /// `InstanceStart` twice.
    #[error("the microVM is already started")]
    AlreadyStarted,
    /// A snapshot request squib cannot honour as asked.
    #[error("{0}")]
    Snapshot(String),
}

/// What identifies this squib and fixes its behaviour, from the command line.
#[derive(Clone, Debug)]
pub struct InstanceSettings {
    /// `--id`.
    pub id: String,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// Boot protocol and machine descriptions (squib's command line; the defaults otherwise).
    pub boot_options: BootOptions,
}

/// Serves API requests for one microVM.
#[derive(Debug)]
pub struct ApiController<V: VmmControl> {
    settings: InstanceSettings,
    resources: VmResources,
    vmm: V,
    started: bool,
    metrics: Metrics,
    next_flush: Option<Instant>,
    logger: Option<Logger>,
    /// Cloned into the VMM at start so that its exit wakes the server.
    exit_event: EventFd,
}

impl<V: VmmControl> ApiController<V> {
    /// A controller for a VMM not started yet. `exit_event` is the server's wake-up eventfd.
    pub fn new(
        settings: InstanceSettings,
        vmm: V,
        logger: Option<Logger>,
        exit_event: EventFd,
    ) -> Self {
        Self {
            settings,
            resources: VmResources::default(),
            vmm,
            started: false,
            metrics: Metrics::new(logger.as_ref().map(Logger::counters)),
            next_flush: None,
            logger,
            exit_event,
        }
    }

    /// Starts from resources configured already (the command line's, applied before the
    /// controller exists so that its mistakes are reported as usage errors).
    pub fn with_resources(mut self, resources: VmResources) -> Self {
        self.resources = resources;
        self
    }

    /// The VMM (tests inspect their fake through it).
    pub fn vmm(&self) -> &V {
        &self.vmm
    }

    /// Answers one HTTP request.
    pub fn handle_http(&mut self, request: &Request) -> Response {
        let routed = route(&request.method, &request.path, &request.body);
        let result = routed.map_err(ApiError::from).and_then(|r| self.handle(r));
        self.metrics
            .record_request(&request.method, &request.path, result.is_ok());
        match result {
            Ok(response) => response,
            Err(e) => {
                warn!(method = %request.method, path = %request.path, "API request refused: {e}");
                Response::fault(Status::BadRequest, &e.to_string())
            }
        }
    }

    /// Applies one request.
    pub fn handle(&mut self, request: VmmAction) -> Result<Response, ApiError> {
        use VmmAction as R;
        let done = Ok(Response::no_content());
        match request {
            R::GetInstanceInfo => Ok(Response::json(&InstanceInfo {
                app_name: "squib".into(),
                id: self.settings.id.clone(),
                state: self.vmm.state().as_api_str().into(),
                vmm_version: FIRECRACKER_VERSION.into(),
            })),
            R::GetVersion => Ok(Response::json(&VersionInfo {
                firecracker_version: FIRECRACKER_VERSION.into(),
            })),
            R::GetVmConfig => Ok(Response::json(&self.full_config())),
            R::GetMachineConfig => Ok(Response::json(&self.resources.machine_body())),
            action @ (R::PutBootSource(_)
            | R::PutMachineConfig(_)
            | R::PatchMachineConfig(_)
            | R::PutDrive(..)
            | R::PutNetworkInterface(..)
            | R::PutEntropy(_)
            | R::PutVsock(_)) => {
                self.pre_boot(action.endpoint())?;
                self.resources.apply(&action)?;
                if matches!(action, R::PutMachineConfig(_) | R::PatchMachineConfig(_)) {
                    self.prepare_ahead();
                }
                done
            }
            R::PatchDrive(id, body) => {
                self.post_boot("PATCH /drives")?;
                self.patch_drive(&id, &body)?;
                done
            }
            R::PatchNetworkInterface(id, body) => {
                self.post_boot("PATCH /network-interfaces")?;
                self.patch_network_interface(&id, &body)?;
                done
            }
            R::PutLogger(body) => {
                self.pre_boot("PUT /logger")?;
                self.configure_logger(body)?;
                done
            }
            R::PutMetrics(body) => {
                self.pre_boot("PUT /metrics")?;
                self.configure_metrics(Path::new(&body.metrics_path))?;
                done
            }
            R::Action(ActionType::InstanceStart) => {
                self.start()?;
                done
            }
            R::Action(ActionType::SendCtrlAltDel) => {
                self.post_boot("SendCtrlAltDel")?;
                self.vmm.send_ctrl_alt_del()?;
                done
            }
            R::Action(ActionType::FlushMetrics) => {
                self.flush_metrics()?;
                done
            }
            R::PatchVm(body) => {
                self.post_boot("PATCH /vm")?;
                let begin = Instant::now();
                let operation = match body.state {
                    VmStateRequest::Paused => {
                        self.vmm.pause()?;
                        "pause_vm"
                    }
                    VmStateRequest::Resumed => {
                        self.vmm.resume()?;
                        "resume_vm"
                    }
                };
                self.metrics.record_latency(operation, begin.elapsed());
                done
            }
            R::CreateSnapshot(body) => {
                self.post_boot("PUT /snapshot/create")?;
                let request = create_request(&body)?;
                if self.vmm.state() != RunState::Paused {
                    return Err(ApiError::Snapshot(
                        "the microVM must be paused to snapshot it (PATCH /vm Paused)".into(),
                    ));
                }
                let begin = Instant::now();
                self.vmm
                    .create_snapshot(&request, &self.resources.device_configs())?;
                let operation = match request.snapshot_type {
                    SnapshotType::Full => "full_create_snapshot",
                    SnapshotType::Diff => "diff_create_snapshot",
                };
                self.metrics.record_latency(operation, begin.elapsed());
                done
            }
            R::LoadSnapshot(body) => {
                if self.started {
                    return Err(ApiError::AfterBoot("PUT /snapshot/load"));
                }
                if self.resources.is_configured() {
                    return Err(ApiError::Snapshot(
                        "loading a snapshot is not allowed after configuring boot-specific \
                         resources"
                            .into(),
                    ));
                }
                let request = load_request(&body)?;
                let begin = Instant::now();
                let exit = self.exit_event.try_clone().map_err(ControlError::new)?;
                let config = self.vmm.load_snapshot(&request, ExitNotice::new(exit))?;
                self.resources.adopt_loaded(&config);
                self.started = true;
                self.metrics
                    .record_latency("load_snapshot", begin.elapsed());
                info!(id = %self.settings.id, "microVM loaded from a snapshot");
                done
            }
        }
    }

    fn pre_boot(&self, what: &'static str) -> Result<(), ApiError> {
        if self.started {
            Err(ApiError::AfterBoot(what))
        } else {
            Ok(())
        }
    }

    fn post_boot(&self, what: &'static str) -> Result<(), ApiError> {
        if self.started {
            Ok(())
        } else {
            Err(ApiError::BeforeBoot(what))
        }
    }

    /// Lets the VMM build ahead what the machine size in force determines (see
    /// [`VmmControl::prepare`]); called at start and after every change of the machine config.
    pub fn prepare_ahead(&mut self) {
        if !self.started {
            self.vmm.prepare(self.resources.machine());
        }
    }

    /// Boots the configured microVM (`InstanceStart`, or at once in `--config-file` mode).
    pub fn start(&mut self) -> Result<(), ApiError> {
        if self.started {
            return Err(ApiError::AlreadyStarted);
        }
        let config = self
            .resources
            .vm_config(self.settings.boot_timer, self.settings.boot_options)?;
        let exit = self.exit_event.try_clone().map_err(ControlError::new)?;
        self.vmm.start(&config, ExitNotice::new(exit))?;
        self.started = true;
        info!(id = %self.settings.id, "microVM started");
        Ok(())
    }

    /// `PATCH /drives/{id}`: a new backing file and/or throttle for a running drive.
    fn patch_drive(&mut self, id: &str, body: &PartialDriveBody) -> Result<(), ApiError> {
        // Validated in full before anything changes.
        let update = self.resources.drive_update(id, body)?;
        if let Some(drive) = &update.swapped {
            self.vmm.swap_drive(drive)?;
        }
        if let Some(limiter) = &update.rate_limiter {
            self.vmm.update_rate_limiter(id, limiter)?;
        }
        self.resources.commit_drive(id, &update);
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}`: new rate limiters for a running interface.
    fn patch_network_interface(
        &mut self,
        id: &str,
        body: &PartialNetworkInterfaceBody,
    ) -> Result<(), ApiError> {
        let update = self.resources.network_interface_update(id, body)?;
        self.vmm.update_net_rate_limiters(
            id,
            update.rx_rate_limiter.as_ref(),
            update.tx_rate_limiter.as_ref(),
        )?;
        self.resources.commit_network_interface(id, &update);
        Ok(())
    }

    /// `PUT /metrics` (or the config file's `metrics`).
    pub fn configure_metrics(&mut self, path: &Path) -> Result<(), ApiError> {
        self.metrics.configure(path)?;
        self.next_flush = Some(Instant::now() + FLUSH_INTERVAL);
        Ok(())
    }

    /// `PUT /logger` (or the config file's `logger`).
    pub fn configure_logger(&mut self, body: LoggerBody) -> Result<(), ApiError> {
        match &self.logger {
            Some(logger) => logger.apply(&body)?,
            None => return Err(LogConfigError::NotInstalled.into()),
        }
        Ok(())
    }

    /// The jailer's start-up measurements (`api_server.process_startup_time_us`, `_cpu_us`).
    pub fn record_startup_times(&mut self, wall_us: Option<u64>, cpu_us: Option<u64>) {
        self.metrics.set_startup_times(wall_us, cpu_us);
    }

    fn flush_metrics(&mut self) -> Result<(), ApiError> {
        let drives = self.vmm.drive_counters();
        let nets = self.vmm.net_counters();
        let devices = self.vmm.device_counters();
        self.metrics.flush(&drives, &nets, &devices)?;
        Ok(())
    }

    /// Periodic work: writes the metrics line when due. Returns when it next wants to run.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        if self.next_flush.is_some_and(|due| now >= due) {
            if let Err(e) = self.flush_metrics() {
                warn!("periodic metrics flush failed: {e}");
            }
            self.next_flush = Some(now + FLUSH_INTERVAL);
        }
        self.next_flush
    }

    /// The exit status once the microVM has stopped.
    pub fn exit_status(&self) -> Option<i32> {
        self.vmm.exit_status()
    }

    /// The whole configuration in `--config-file` form.
    pub fn full_config(&self) -> FullVmConfig {
        FullVmConfig {
            boot_source: self.resources.boot_source_body(),
            drives: self.resources.drive_bodies(),
            network_interfaces: self.resources.network_interface_bodies(),
            entropy: self.resources.entropy_body(),
            vsock: self.resources.vsock_body(),
            machine_config: Some(self.resources.machine_body()),
            logger: self.logger.as_ref().map(Logger::settings),
            metrics: self.metrics.path().map(|p| super::models::MetricsBody {
                metrics_path: p.display().to_string(),
            }),
            ..FullVmConfig::default()
        }
    }

    /// Applies a `--config-file`: every section as the action of its endpoint.
    pub fn apply_config_file(&mut self, config: &FullVmConfig) -> Result<(), ApiError> {
        if let Some(name) = config.first_unsupported() {
            return Err(RouteError::Unsupported(format!("`{name}` in the config file")).into());
        }
        for action in VmmAction::from_config_file(config) {
            self.handle(action)?;
        }
        Ok(())
    }

    /// Whether `InstanceStart` has succeeded.
    pub fn is_started(&self) -> bool {
        self.started && self.vmm.state() != RunState::NotStarted
    }
}

fn snapshot_path(field: &str, path: &str) -> Result<std::path::PathBuf, ApiError> {
    if path.is_empty() {
        return Err(ApiError::Snapshot(format!("{field} must not be empty")));
    }
    Ok(path.into())
}

/// Validates a `PUT /snapshot/create` body.
fn create_request(body: &SnapshotCreateBody) -> Result<CreateRequest, ApiError> {
    Ok(CreateRequest {
        snapshot_path: snapshot_path("snapshot_path", &body.snapshot_path)?,
        mem_file_path: snapshot_path("mem_file_path", &body.mem_file_path)?,
        snapshot_type: match body.snapshot_type.unwrap_or_default() {
            SnapshotTypeBody::Full => SnapshotType::Full,
            SnapshotTypeBody::Diff => SnapshotType::Diff,
        },
    })
}

/// Validates a `PUT /snapshot/load` body (Firecracker's rules: exactly one of `mem_backend` and
/// the deprecated `mem_file_path`; overrides must name devices the snapshot has).
fn load_request(body: &SnapshotLoadBody) -> Result<LoadRequest, ApiError> {
    let mem_backend = match (&body.mem_backend, &body.mem_file_path) {
        (Some(backend), None) => {
            let path = snapshot_path("mem_backend.backend_path", &backend.backend_path)?;
            match backend.backend_type {
                MemBackendType::File => MemBackend::File(path),
                MemBackendType::Uffd => MemBackend::Uffd(path),
            }
        }
        (None, Some(path)) => MemBackend::File(snapshot_path("mem_file_path", path)?),
        (Some(_), Some(_)) => {
            return Err(ApiError::Snapshot(
                "give either mem_backend or the deprecated mem_file_path, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::Snapshot(
                "mem_backend (or the deprecated mem_file_path) is required".into(),
            ));
        }
    };
    // Whether the snapshot has the devices they name is checked against the snapshot's state.
    let network_overrides = body
        .network_overrides
        .iter()
        .flatten()
        .map(|o| NetworkOverride {
            iface_id: o.iface_id.clone(),
            host_dev_name: o.host_dev_name.clone(),
        })
        .collect();
    let vsock_override = body
        .vsock_override
        .as_ref()
        .map(|o| snapshot_path("vsock_override.uds_path", &o.uds_path))
        .transpose()?;
    Ok(LoadRequest {
        snapshot_path: snapshot_path("snapshot_path", &body.snapshot_path)?,
        mem_backend,
        track_dirty_pages: body
            .track_dirty_pages
            .or(body.enable_diff_snapshots)
            .unwrap_or(false),
        resume_vm: body.resume_vm.unwrap_or(false),
        network_overrides,
        vsock_override,
    })
}
