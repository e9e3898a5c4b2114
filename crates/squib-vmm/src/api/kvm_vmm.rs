//! [`VmmControl`] for squib's KVM VMM: starts a [`Vmm`], waits for it on its own thread, and
//! drives it through the cloneable [`VmmHandle`] (atomics and a condvar the vCPUs obey; nothing
//! here waits on guest I/O).
//!
//! Start on request: [`VmmControl::prepare`] builds the [`VmShell`] (VM, guest RAM registered,
//! vCPUs) on a background thread as soon as the machine size is known, so `InstanceStart` is
//! left with the devices, the kernel load and starting the vCPUs. A new machine size discards
//! the shell and builds another; as registered RAM stays mapped until the process exits (see
//! `squib_host::kvm_memory`), a discarded shell keeps its (untouched, unreserved) address range,
//! so squib builds at most [`MAX_SHELLS`] of them and then builds at `InstanceStart`.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, warn};

use super::vmm_control::{
    ControlError, DeviceCounters, DriveCounters, ExitNotice, RunState, VmmControl,
};
use crate::control::VmState;
use crate::devices::block::{DriveHandle, open_backend, rate_limiter_spec};
use crate::devices::serial::Stdout;
use crate::exit::ExitReason;
use crate::snapshot::state::DeviceConfigs;
use crate::snapshot::{self, CreateRequest, LoadRequest, MemBackend};
use crate::vm_config::{DriveConfig, MachineConfig, RateLimiterConfig, VmConfig};
use crate::vmm::{StartOptions, VmShell, Vmm, VmmError, VmmHandle};

/// Most shells built ahead per process (each discarded one keeps its address range).
pub const MAX_SHELLS: u32 = 4;

/// A shell being built (or built) on its own thread, for this machine.
#[derive(Debug)]
struct PendingShell {
    machine: MachineConfig,
    thread: JoinHandle<Result<VmShell, VmmError>>,
}

/// The running VM (once started) and the exit status: what the waiter thread, a signal thread
/// and the API share.
#[derive(Debug, Default)]
struct VmSlot {
    handle: Mutex<Option<VmmHandle>>,
    /// Set once, by whichever stops the process first.
    exit_status: OnceLock<i32>,
}

/// The KVM VMM behind the API.
#[derive(Debug)]
pub struct KvmVmm {
    process_start: Instant,
    shared: Arc<VmSlot>,
    /// The running VM's handle (a clone of the one in `shared`, without the lock).
    handle: Option<VmmHandle>,
    /// Forward stdin to the guest console.
    console_in: bool,
    /// The shell built ahead, if any.
    pending: Option<PendingShell>,
    /// Shells built ahead so far.
    shells_built: u32,
    /// Threads still building shells for a machine size that changed since: their threads run
    /// without a seccomp filter, so they are joined before any guest code runs.
    superseded: Vec<JoinHandle<Result<VmShell, VmmError>>>,
    /// Shells built ahead and not used, kept until the process exits as the VMM itself is:
    /// closing a VM costs milliseconds a start or a load should not wait for.
    unused_shells: Vec<VmShell>,
}

/// Stops the process from another thread (a signal): the VM if it runs, else the server.
#[derive(Debug)]
pub struct Stopper {
    shared: Arc<VmSlot>,
    wake: ExitNotice,
}

impl Stopper {
    /// Stops for `signal`.
    pub fn stop(&self, signal: i32) {
        let handle = self
            .shared
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match handle.as_ref() {
            // The waiter thread sets the status and wakes the server.
            Some(handle) => handle.request_exit(ExitReason::Signal(signal)),
            None => {
                let _ = self
                    .shared
                    .exit_status
                    .set(i32::from(ExitReason::Signal(signal).status()));
                self.wake.notify();
            }
        }
    }
}

impl KvmVmm {
    /// A VMM not started yet; `process_start` anchors the boot timer.
    pub fn new(process_start: Instant, console_in: bool) -> Self {
        Self {
            process_start,
            shared: Arc::default(),
            handle: None,
            console_in,
            pending: None,
            shells_built: 0,
            superseded: Vec::new(),
            unused_shells: Vec::new(),
        }
    }

    /// The shell built ahead for `machine`, waiting for it if it is still being built; `None`
    /// when there is none or it does not fit (then it is superseded).
    fn take_shell(&mut self, machine: &MachineConfig) -> Option<VmShell> {
        let pending = self.pending.take()?;
        if pending.machine != *machine {
            self.superseded.push(pending.thread);
            return None;
        }
        match pending.thread.join() {
            Ok(Ok(shell)) => Some(shell),
            Ok(Err(e)) => {
                // Built again at start, where the error is reported to the client.
                debug!("the VM prepared ahead failed: {e}");
                None
            }
            Err(_) => {
                warn!("the thread preparing the VM panicked");
                None
            }
        }
    }

    /// Ends every thread still building a shell nobody will use (they run unfiltered, so none
    /// may outlive the start of the guest) and keeps their shells. Waits only for a build still
    /// under way, which is rare: a superseded build started before the request that replaced it.
    fn retire_prepared(&mut self) {
        let threads = self
            .superseded
            .drain(..)
            .chain(self.pending.take().map(|p| p.thread));
        for thread in threads.collect::<Vec<_>>() {
            if let Ok(Ok(shell)) = thread.join() {
                self.unused_shells.push(shell);
            }
        }
    }

    /// A handle a signal thread uses to stop squib; `wake` is the server's wake-up eventfd.
    pub fn stopper(&self, wake: ExitNotice) -> Stopper {
        Stopper {
            shared: self.shared.clone(),
            wake,
        }
    }

    fn running(&self) -> Result<&VmmHandle, ControlError> {
        self.handle
            .as_ref()
            .ok_or_else(|| ControlError::new("the microVM is not running"))
    }

    fn drive(&self, id: &str) -> Result<&DriveHandle, ControlError> {
        self.running()?
            .devices()
            .drive(id)
            .ok_or_else(|| ControlError::new(format!("drive `{id}` does not exist")))
    }
}

impl KvmVmm {
    fn options(&self) -> StartOptions {
        StartOptions {
            process_start: self.process_start,
            console_out: Box::new(Stdout),
            console_in: self
                .console_in
                .then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
        }
    }

    /// Takes a started (or restored) VMM: publishes its handle and waits for it on a thread.
    fn adopt(&mut self, vmm: Vmm, exit: ExitNotice) -> Result<(), ControlError> {
        let handle = vmm.handle();
        *self
            .shared
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(handle.clone());
        let shared = self.shared.clone();
        let waiter = std::thread::Builder::new()
            .name("vmm-wait".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vmm);
                let reason = vmm.wait();
                let _ = shared.exit_status.set(i32::from(reason.status()));
                exit.notify();
                // `vmm` is leaked into this thread's end: the process exits right after, and
                // the kernel tears the VM down faster than an explicit close.
                std::mem::forget(vmm);
            });
        if let Err(e) = waiter {
            handle.stop();
            return Err(ControlError::new(format!(
                "cannot start the VMM wait thread: {e}"
            )));
        }
        self.handle = Some(handle);
        Ok(())
    }
}

impl VmmControl for KvmVmm {
    fn prepare(&mut self, machine: &MachineConfig) {
        if self.handle.is_some() || self.pending.as_ref().is_some_and(|p| p.machine == *machine) {
            return;
        }
        // A different machine: the old build is superseded (joined before the guest starts).
        if let Some(old) = self.pending.take() {
            self.superseded.push(old.thread);
        }
        if self.shells_built >= MAX_SHELLS {
            debug!("not preparing the VM ahead again: {MAX_SHELLS} shells built already");
            return;
        }
        let for_thread = machine.clone();
        let spawned = std::thread::Builder::new()
            .name("vm-prepare".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let shell = VmShell::build(&for_thread);
                // The guest console's writer too, off the path of the first output.
                crate::devices::serial::start_stdout_writer();
                shell
            });
        match spawned {
            Ok(thread) => {
                self.shells_built += 1;
                self.pending = Some(PendingShell {
                    machine: machine.clone(),
                    thread,
                });
            }
            Err(e) => warn!("cannot prepare the VM ahead: {e}"),
        }
    }

    fn start(&mut self, config: &VmConfig, exit: ExitNotice) -> Result<(), ControlError> {
        let options = self.options();
        let shell = self.take_shell(&config.machine);
        self.retire_prepared();
        let vmm = match shell {
            Some(shell) => Vmm::start_on(shell, config, options),
            None => Vmm::start(config, options),
        }
        .map_err(ControlError::new)?;
        self.adopt(vmm, exit)
    }

    fn create_snapshot(
        &mut self,
        request: &CreateRequest,
        config: &DeviceConfigs,
    ) -> Result<(), ControlError> {
        self.running()?
            .create_snapshot(request, config)
            .map(drop)
            .map_err(ControlError::new)
    }

    fn load_snapshot(
        &mut self,
        request: &LoadRequest,
        exit: ExitNotice,
    ) -> Result<VmConfig, ControlError> {
        // Everything is read and checked before a VM exists.
        let (_, mut state) =
            snapshot::format::read(&request.snapshot_path).map_err(ControlError::new)?;
        state.validate().map_err(ControlError::new)?;
        state
            .config
            .apply_overrides(
                &request.network_overrides,
                request.vsock_override.as_deref(),
            )
            .map_err(ControlError::new)?;
        let (mem, backing) = match &request.mem_backend {
            MemBackend::File(path) => {
                snapshot::memory::map_file(path, &state.memory, request.track_dirty_pages)
            }
            MemBackend::Uffd(socket) => {
                snapshot::memory::uffd_backed(&state.memory, socket, request.track_dirty_pages)
            }
        }
        .map_err(ControlError::new)?;
        // A restore builds its own VM (see `Vmm::restore`), meanwhile the shell built ahead
        // may still be building.
        let restored = Vmm::restore(
            &state,
            mem,
            backing,
            request.track_dirty_pages,
            request.resume_vm,
            self.options(),
        )
        .map_err(ControlError::new)?;
        // That thread is unfiltered, so it ends before the guest runs (it has usually finished
        // by now). Its shell is kept, not closed: closing a VM costs milliseconds.
        self.retire_prepared();
        let vmm = restored.launch().map_err(ControlError::new)?;
        self.adopt(vmm, exit)?;
        let config = VmConfig {
            machine: crate::vm_config::MachineConfig {
                vcpu_count: state.machine.vcpu_count,
                mem_size_mib: state.machine.mem_size_mib,
                smt: false,
                track_dirty_pages: request.track_dirty_pages,
            },
            drives: state.config.drives.clone(),
            network_interfaces: state.config.network_interfaces.clone(),
            entropy: state.config.entropy,
            vsock: state.config.vsock.clone(),
            boot_timer: state.machine.boot_timer,
            ..VmConfig::default()
        };
        Ok(config)
    }

    fn state(&self) -> RunState {
        match self.handle.as_ref().map(VmmHandle::state) {
            None => RunState::NotStarted,
            Some(VmState::Paused) => RunState::Paused,
            // Pausing is not Paused yet; Stopped is reported until the process exits.
            Some(VmState::Running | VmState::Pausing | VmState::Stopped) => RunState::Running,
        }
    }

    fn pause(&mut self) -> Result<(), ControlError> {
        self.running()?.pause().map_err(ControlError::new)
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        self.running()?.resume().map_err(ControlError::new)
    }

    fn send_ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        self.running()?.send_ctrl_alt_del();
        Ok(())
    }

    fn swap_drive(&mut self, drive: &DriveConfig) -> Result<(), ControlError> {
        let handle = self.drive(&drive.drive_id)?;
        let backend = open_backend(drive).map_err(ControlError::new)?;
        handle.swap_backend(backend).map_err(ControlError::new)
    }

    fn update_rate_limiter(
        &mut self,
        drive_id: &str,
        config: &RateLimiterConfig,
    ) -> Result<(), ControlError> {
        // Queued for the drive's worker, which applies it at once: nothing here waits on I/O.
        self.drive(drive_id)?
            .block_handle()
            .update_rate_limiter(rate_limiter_spec(config))
            .map_err(|e| ControlError::new(format!("drive `{drive_id}`: {e}")))?;
        Ok(())
    }

    fn device_counters(&self) -> Vec<DeviceCounters> {
        let Some(handle) = &self.handle else {
            return Vec::new();
        };
        let devices = handle.devices();
        let entropy = devices.entropy_metrics().map(|m| DeviceCounters {
            group: "entropy",
            counters: m.fields(),
        });
        let vsock = devices.vsock().map(|v| DeviceCounters {
            group: "vsock",
            counters: v.metrics().fields(),
        });
        entropy.into_iter().chain(vsock).collect()
    }

    fn drive_counters(&self) -> Vec<(String, DriveCounters)> {
        let Some(handle) = &self.handle else {
            return Vec::new();
        };
        handle
            .devices()
            .drives()
            .map(|d| {
                let m = d.metrics();
                let counters = DriveCounters {
                    read_count: m.reads,
                    write_count: m.writes,
                    flush_count: m.flushes,
                    read_bytes: m.read_bytes,
                    write_bytes: m.written_bytes,
                    invalid_reqs_count: m.invalid_requests,
                    io_errors: m.io_errors,
                    latency_total_us: m.latency_total_ns / 1000,
                    latency_max_us: m.latency_max_ns / 1000,
                    rate_limiter_throttled_events: m.rate_limiter_throttled,
                };
                (d.id().to_owned(), counters)
            })
            .collect()
    }

    fn update_net_rate_limiters(
        &mut self,
        iface_id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), ControlError> {
        // Queued for the interface's worker, which applies it at once.
        self.running()?
            .devices()
            .network_interface(iface_id)
            .ok_or_else(|| {
                ControlError::new(format!("network interface `{iface_id}` does not exist"))
            })?
            .update_rate_limiters(rx, tx)
            .map_err(|e| ControlError::new(format!("network interface `{iface_id}`: {e}")))?;
        Ok(())
    }

    fn net_counters(&self) -> Vec<(String, squib_virtio::net::NetMetricsSnapshot)> {
        let Some(handle) = &self.handle else {
            return Vec::new();
        };
        handle
            .devices()
            .network_interfaces()
            .map(|n| (n.id().to_owned(), n.metrics()))
            .collect()
    }

    fn exit_status(&self) -> Option<i32> {
        self.shared.exit_status.get().copied()
    }
}
