//! The microVM monitor: builds a machine from a [`VmConfig`], runs its vCPUs, and stops it in
//! order. [`VmmHandle`] is the control surface the API and the signal thread use.
//!
//! Start-up sequence ([`Vmm::start`]). Steps 1–4 depend only on the machine size, so they form
//! a [`VmShell`] that the API builds ahead of `InstanceStart`, off its thread
//! ([`Vmm::start_on`] finishes from one). Guest RAM is registered with KVM before the irqchip
//! exists: after it, KVM's first memory-slot change waits 5–7 ms here (see `kvm::vm::create`):
//!
//! 1. validate the machine; open `/dev/kvm`;
//! 2. map guest RAM (lazily: no page is touched);
//! 3. create the VM: RAM registered, then irqchip, PIT, KVM's private pages;
//! 4. create and configure the vCPUs;
//! 5. attach the devices: legacy PIO devices, boot timer, virtio-mmio devices;
//! 6. load the guest (`boot::load`) and set the boot vCPU's entry state;
//! 7. start one thread per vCPU, then stdin forwarding.

use std::io::Read;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use squib_host::signals;

use crate::GuestMemory;
use crate::arch::x86_64::layout::{BOOT_TIMER_START, LEGACY_BOOT_TIMER_START, MMIO_DEVICE_SIZE};
use crate::boot::{self, BootError};
use crate::control::{RunControl, VmState};
use crate::devices::block::{self, DriveError};
use crate::devices::boot_timer::{BootTimer, BuildStart};
use crate::devices::bus::Bus;
use crate::devices::manager::DeviceManager;
use crate::devices::serial::{self, SerialOutput};
use crate::devices::{self, DeviceError, LegacyDevices};
use crate::exit::{ExitReason, ExitSender};
use crate::kvm::state::{self as kvm_state, VcpuState, VmDevicesState};
use crate::kvm::vcpu::{RunOutcome, Vcpu, VcpuError};
use crate::kvm::vm::{self, VmError};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::snapshot::memory::{self as snapshot_memory, MemoryBacking, Pages};
use crate::snapshot::state::{DeviceConfigs, MachineState, MicrovmState, memory_layout};
use crate::snapshot::{CreateRequest, SnapshotError, SnapshotType, format as snapshot_format};
use crate::vm_config::{MachineConfig, VmConfig, check_mem_size_mib, check_vcpu_count};

/// The machine limits, defined with the KVM-free model that checks them.
pub use crate::vm_config::{MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB};
/// vCPU thread stack: the run loop and device emulation need little.
const VCPU_STACK_SIZE: usize = 256 << 10;

/// Why the microVM could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// No kernel was configured.
    #[error("no kernel to boot: set a boot source")]
    NoBootSource,
    /// vCPU count out of range.
    #[error("{0} vCPUs requested: squib runs 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    /// Memory size out of range.
    #[error("{0} MiB of memory requested: squib needs {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB")]
    MemSize(usize),
    /// SMT is not offered.
    #[error("SMT is not supported: squib exposes one thread per core")]
    Smt,
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    /// KVM refused to report its CPUID.
    #[error("KVM GET_SUPPORTED_CPUID failed: {0}")]
    Cpuid(kvm_ioctls::Error),
    /// VM set-up failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU set-up failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device could not be attached.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A drive could not be opened.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// A network interface could not be set up.
    #[error(transparent)]
    Net(#[from] crate::devices::net::NetError),
    /// The guest could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The vCPU kick signal could not be set up.
    #[error("cannot set up the vCPU kick signal: {0}")]
    KickSignal(std::io::Error),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The entropy device could not be set up.
    #[error(transparent)]
    Entropy(#[from] crate::devices::rng::EntropyError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] crate::devices::vsock::VsockBuildError),
    /// The VM is stopping: it can no longer be paused or resumed.
    #[error("the microVM is stopping")]
    Stopping,
    /// A snapshot could not be created or loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A shell built for another machine size.
    #[error("the prepared VM has another machine size")]
    ShellMismatch,
    /// A device could not restart its worker after a pause.
    #[error("resuming the devices: {0}")]
    DeviceResume(squib_virtio::device::ActivateError),
}

/// Where the guest console goes, and where the process started.
pub struct StartOptions {
    /// When squib's process started (the boot timer measures from here).
    pub process_start: Instant,
    /// Guest console output.
    pub console_out: SerialOutput,
    /// Guest console input, forwarded on its own thread (`None`: no input).
    pub console_in: Option<Box<dyn Read + Send>>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("process_start", &self.process_start)
            .field("console_in", &self.console_in.is_some())
            .finish_non_exhaustive()
    }
}

/// The running machine, as the handle, the vCPU threads and the main loop share it.
#[derive(Debug)]
struct RunningVm {
    control: RunControl,
    vcpu_threads: Mutex<Vec<JoinHandle<()>>>,
    /// Each vCPU thread holds its vCPU's lock around `KVM_RUN`; a snapshot takes them while the
    /// threads are parked.
    vcpus: Vec<Arc<Mutex<Vcpu>>>,
    exit: ExitSender,
    legacy: LegacyDevices,
    devices: DeviceManager,
    // Kept for the VM's whole life; the guest memory mapping is also pinned by squib-host.
    vm: VmFd,
    mem: GuestMemory,
    machine: MachineState,
    track_dirty_pages: bool,
    /// Where untouched guest pages are (a Full snapshot of a loaded microVM needs them).
    backing: MemoryBacking,
    /// The MSRs a snapshot saves, listed at build time: a snapshot runs on the API thread
    /// under its seccomp filter, which has no `/dev/kvm` system ioctls.
    msrs: Option<Vec<u32>>,
}

impl RunningVm {
    fn kick_vcpus(&self) {
        let threads = self
            .vcpu_threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for thread in threads.iter() {
            if let Err(err) = signals::kick(thread) {
                tracing::warn!("cannot kick a vCPU thread: {err}");
            }
        }
    }
}

/// A cloneable, thread-safe control handle on a running microVM.
#[derive(Clone, Debug)]
pub struct VmmHandle(Arc<RunningVm>);

impl VmmHandle {
    /// Parks every vCPU outside `KVM_RUN`, then stops every device once its requests in
    /// flight are published: nothing changes guest memory or device state until
    /// [`resume`](Self::resume). Returns once all are stopped — within one request per device
    /// and one exit per vCPU, whatever the guest does.
    pub fn pause(&self) -> Result<(), VmmError> {
        if !self.0.control.request_pause() {
            return Err(VmmError::Stopping);
        }
        self.0.kick_vcpus();
        self.0.control.wait_parked();
        self.0.devices.pause();
        tracing::info!("microVM paused");
        Ok(())
    }

    /// Starts the devices, then lets the parked vCPUs run again.
    pub fn resume(&self) -> Result<(), VmmError> {
        self.0.devices.resume().map_err(VmmError::DeviceResume)?;
        if !self.0.control.resume() {
            return Err(VmmError::Stopping);
        }
        tracing::info!("microVM resumed");
        Ok(())
    }

    /// Presses Ctrl-Alt-Del on the i8042 (a Linux guest reboots, which stops squib).
    pub fn send_ctrl_alt_del(&self) {
        self.0
            .legacy
            .i8042
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send_ctrl_alt_del();
    }

    /// Stops the microVM: [`Vmm::wait`] returns [`ExitReason::Requested`].
    pub fn stop(&self) {
        self.request_exit(ExitReason::Requested);
    }

    /// Stops the microVM for `reason` (the first reason received wins).
    pub fn request_exit(&self, reason: ExitReason) {
        self.0.exit.request(reason);
    }

    /// The run state.
    pub fn state(&self) -> VmState {
        self.0.control.state()
    }

    /// The virtio devices.
    pub fn devices(&self) -> &DeviceManager {
        &self.0.devices
    }

    /// Writes a snapshot of the paused microVM: guest memory to `mem_file_path` (only the pages
    /// the guest touched, or dirtied since the last snapshot for `Diff`), then the state file,
    /// written last and renamed into place. `config` is the devices' configuration as the
    /// controller's resources hold it now (with every `PATCH` since the boot); a snapshot whose
    /// configuration does not match the running devices is refused, never written. Returns the
    /// memory bytes written.
    pub fn create_snapshot(
        &self,
        request: &CreateRequest,
        config: &DeviceConfigs,
    ) -> Result<u64, VmmError> {
        let shared = &self.0;
        if shared.control.state() != VmState::Paused {
            return Err(
                SnapshotError::WrongState("the microVM must be paused to snapshot it").into(),
            );
        }
        if request.snapshot_type == SnapshotType::Diff && !shared.track_dirty_pages {
            return Err(SnapshotError::WrongState(
                "a Diff snapshot needs track_dirty_pages in the machine configuration",
            )
            .into());
        }
        let msrs = shared.msrs.as_deref().ok_or(SnapshotError::WrongState(
            "KVM could not list the MSRs to save when this microVM was built",
        ))?;
        let mut vcpus = Vec::with_capacity(shared.vcpus.len());
        for vcpu in &shared.vcpus {
            let vcpu = vcpu.lock().unwrap_or_else(PoisonError::into_inner);
            vcpus.push(VcpuState::save(vcpu.fd(), msrs).map_err(SnapshotError::from)?);
        }
        let state = MicrovmState {
            machine: shared.machine.clone(),
            memory: memory_layout(shared.machine.mem_size_mib),
            vm: VmDevicesState::save(&shared.vm).map_err(SnapshotError::from)?,
            vcpus,
            legacy: shared.legacy.save(),
            config: config.clone(),
            devices: shared
                .devices
                .save()
                .map_err(|e| SnapshotError::Unsupported(e.to_string()))?,
        };
        // What a load will check, checked before anything is written: above all that the
        // configuration given matches the devices saved.
        state.validate()?;
        let pages = match request.snapshot_type {
            SnapshotType::Full => Pages::Touched,
            SnapshotType::Diff => Pages::Dirty,
        };
        let written = snapshot_memory::write(
            &shared.vm,
            &shared.mem,
            &shared.backing,
            &state.memory,
            &request.mem_file_path,
            pages,
            shared.track_dirty_pages,
        )?;
        let bytes = snapshot_format::encode(&state)?;
        snapshot_format::write(&request.snapshot_path, &bytes)?;
        tracing::info!(
            memory_bytes = written,
            state_bytes = bytes.len(),
            "snapshot written"
        );
        Ok(written)
    }
}

/// A running microVM.
#[derive(Debug)]
pub struct Vmm {
    shared: Arc<RunningVm>,
    exit_rx: Receiver<ExitReason>,
}

/// A microVM rebuilt from a snapshot ([`Vmm::restore`]), its vCPU threads not started yet.
pub struct RestoredVm {
    built: Machine,
    console_in: Option<Box<dyn Read + Send>>,
    paused: bool,
    vcpus_start: Arc<OnceLock<Instant>>,
}

impl std::fmt::Debug for RestoredVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoredVm")
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl RestoredVm {
    /// Starts the vCPU threads (parked if the load did not ask to resume), then stdin
    /// forwarding; installs the calling (API) thread's seccomp filter last.
    pub fn launch(self) -> Result<Vmm, VmmError> {
        let _ = self.vcpus_start.set(Instant::now());
        Vmm::launch(self.built, self.console_in, self.paused)
    }
}

/// A built machine, ready for its vCPU threads.
struct Machine {
    vm: VmFd,
    mem: GuestMemory,
    vcpus: Vec<Vcpu>,
    pio: Bus,
    mmio: Bus,
    legacy: LegacyDevices,
    devices: DeviceManager,
    exit: ExitSender,
    exit_rx: Receiver<ExitReason>,
    machine: MachineState,
    track_dirty_pages: bool,
    backing: MemoryBacking,
    msrs: Option<Vec<u32>>,
}

fn validate(machine: &MachineConfig) -> Result<(), VmmError> {
    check_vcpu_count(u64::from(machine.vcpu_count))
        .map_err(|_| VmmError::VcpuCount(machine.vcpu_count))?;
    check_mem_size_mib(machine.mem_size_mib as u64)
        .map_err(|_| VmmError::MemSize(machine.mem_size_mib))?;
    if machine.smt {
        return Err(VmmError::Smt);
    }
    Ok(())
}

/// The part of a microVM that depends only on its machine size (steps 1–4): the KVM VM, guest
/// RAM registered with it, the vCPUs created and configured. Nothing of the guest is in it yet.
#[derive(Debug)]
pub struct VmShell {
    machine: MachineConfig,
    vm: VmFd,
    mem: GuestMemory,
    vcpus: Vec<Vcpu>,
    msrs: Option<Vec<u32>>,
}

impl VmShell {
    /// Steps 1–4 for `machine`.
    pub fn build(machine: &MachineConfig) -> Result<Self, VmmError> {
        // 1.
        validate(machine)?;
        let vcpu_count = machine.vcpu_count;
        signals::install_kick_handler().map_err(VmmError::KickSignal)?;
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        // 2.-4. RAM first: it is cheap before the irqchip, not after (see `vm::create`).
        let mem = vm::create_memory(machine.mem_size_mib, machine.track_dirty_pages)?;
        let vm = vm::create(&kvm, &mem, machine.track_dirty_pages)?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::Cpuid)?;
        let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
        for index in 0..vcpu_count {
            let vcpu = Vcpu::new(&vm, index)?;
            vcpu.configure(&supported_cpuid, vcpu_count)?;
            vcpus.push(vcpu);
        }
        Ok(Self {
            machine: machine.clone(),
            vm,
            mem,
            vcpus,
            msrs: snapshot_msrs(&kvm),
        })
    }

    /// Whether this shell is what `machine` asks for.
    pub fn fits(&self, machine: &MachineConfig) -> bool {
        self.machine == *machine
    }
}

impl Vmm {
    /// Builds the microVM described by `config` and starts its vCPUs (see the module docs for
    /// the sequence). A process that waits for SIGTERM/SIGINT blocks them first thing in
    /// `main` ([`crate::block_signals`]).
    pub fn start(config: &VmConfig, options: StartOptions) -> Result<Self, VmmError> {
        let build_start = BuildStart::now();
        let shell = VmShell::build(&config.machine)?;
        Self::finish(shell, config, options, build_start)
    }

    /// Steps 5–7 on a shell built ahead of time for `config`'s machine: what is left to do
    /// when `InstanceStart` arrives.
    pub fn start_on(
        shell: VmShell,
        config: &VmConfig,
        options: StartOptions,
    ) -> Result<Self, VmmError> {
        let build_start = BuildStart::now();
        if !shell.fits(&config.machine) {
            return Err(VmmError::ShellMismatch);
        }
        Self::finish(shell, config, options, build_start)
    }

    fn finish(
        shell: VmShell,
        config: &VmConfig,
        options: StartOptions,
        build_start: BuildStart,
    ) -> Result<Self, VmmError> {
        let source = config.boot.as_ref().ok_or(VmmError::NoBootSource)?;
        let VmShell {
            vm,
            mem,
            vcpus,
            msrs,
            ..
        } = shell;
        let vcpu_count = config.machine.vcpu_count;
        let mem_bytes = (config.machine.mem_size_mib as u64) << 20;
        let (exit_tx, exit_rx) = mpsc::channel();
        let exit = ExitSender::new(exit_tx);
        let vcpus_start = Arc::new(OnceLock::new());

        // 5.
        let mut pio = Bus::new("pio");
        let mut mmio = Bus::new("mmio");
        let legacy = devices::attach_legacy(&vm, &mut pio, &exit, options.console_out, None)?;
        if config.boot_timer {
            attach_boot_timer(
                &mut mmio,
                BootTimer::new(build_start, options.process_start, vcpus_start.clone()),
            )?;
        }
        let configs = DeviceConfigs {
            drives: config.drives.clone(),
            network_interfaces: config.network_interfaces.clone(),
            entropy: config.entropy,
            vsock: config.vsock.clone(),
        };
        let devices = attach_virtio(&vm, &mem, &mut mmio, &configs)?;

        // 6.
        let machine = boot::Machine {
            mem_bytes,
            vcpu_count,
            virtio_slots: devices.slots(),
            options: config.boot_options,
        };
        let entry = boot::load(&mem, &machine, source, &config.drives)?;
        vcpus[0].set_entry(&entry)?;

        // 7.
        let built = Machine {
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            legacy,
            devices,
            exit,
            exit_rx,
            machine: MachineState {
                vcpu_count,
                mem_size_mib: config.machine.mem_size_mib,
                boot_timer: config.boot_timer,
            },
            track_dirty_pages: config.machine.track_dirty_pages,
            backing: MemoryBacking::Anonymous,
            msrs,
        };
        let _ = vcpus_start.set(Instant::now());
        Self::launch(built, options.console_in, false)
    }

    /// Builds a microVM from a snapshot's `state` and its guest memory `mem` (mapped from the
    /// memory file, or registered with a page-fault handler: `backing`);
    /// [`RestoredVm::launch`] then starts its vCPU threads — parked unless `resume`. Nothing
    /// runs before every piece of state is restored. A restore builds its own VM: a prepared
    /// [`VmShell`] has other RAM, and swapping a VM's memory slot shortly after its irqchip was
    /// created waits milliseconds (see `vm::create`), where a new VM with the snapshot's RAM
    /// registered first does not.
    pub fn restore(
        state: &MicrovmState,
        mem: GuestMemory,
        backing: MemoryBacking,
        track_dirty_pages: bool,
        resume: bool,
        options: StartOptions,
    ) -> Result<RestoredVm, VmmError> {
        let build_start = BuildStart::now();
        state.validate()?;
        signals::install_kick_handler().map_err(VmmError::KickSignal)?;
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        // Registration first: the devices check their rings against guest memory, and a Uffd
        // handler must be the only thing a fault can wait on.
        let vm = vm::create(&kvm, &mem, track_dirty_pages)?;
        let (exit_tx, exit_rx) = mpsc::channel();
        let exit = ExitSender::new(exit_tx);
        let vcpus_start = Arc::new(OnceLock::new());
        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for index in 0..state.machine.vcpu_count {
            vcpus.push(Vcpu::new(&vm, index)?);
        }
        state.vm.restore(&vm).map_err(SnapshotError::from)?;
        for (vcpu, saved) in vcpus.iter().zip(&state.vcpus) {
            saved.restore(vcpu.fd()).map_err(SnapshotError::from)?;
        }
        let mut pio = Bus::new("pio");
        let mut mmio = Bus::new("mmio");
        let legacy = devices::attach_legacy(
            &vm,
            &mut pio,
            &exit,
            options.console_out,
            Some(&state.legacy),
        )?;
        if state.machine.boot_timer {
            attach_boot_timer(
                &mut mmio,
                BootTimer::new(build_start, options.process_start, vcpus_start.clone()),
            )?;
        }
        let devices = attach_virtio(&vm, &mem, &mut mmio, &state.config)?;
        devices
            .restore(&state.devices)
            .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        let built = Machine {
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            legacy,
            devices,
            exit,
            exit_rx,
            machine: state.machine.clone(),
            track_dirty_pages,
            backing,
            msrs: snapshot_msrs(&kvm),
        };
        Ok(RestoredVm {
            built,
            console_in: options.console_in,
            paused: !resume,
            vcpus_start,
        })
    }

    /// Starts one thread per vCPU (held until every thread has its seccomp filter, and parked
    /// after that if `paused`), then stdin forwarding; installs the calling thread's filter
    /// last. The caller is always the controller's thread (the API thread, which also runs the
    /// command line and `--config-file`).
    fn launch(
        built: Machine,
        console_in: Option<Box<dyn Read + Send>>,
        paused: bool,
    ) -> Result<Self, VmmError> {
        let Machine {
            vm,
            mem,
            vcpus,
            pio,
            mmio,
            legacy,
            devices,
            exit,
            exit_rx,
            machine,
            track_dirty_pages,
            backing,
            msrs,
        } = built;
        let vcpus: Vec<Arc<Mutex<Vcpu>>> =
            vcpus.into_iter().map(|v| Arc::new(Mutex::new(v))).collect();
        let shared = Arc::new(RunningVm {
            // Held until every thread, this one included, has its seccomp filter.
            control: RunControl::new_held(vcpus.len()),
            vcpu_threads: Mutex::new(Vec::with_capacity(vcpus.len())),
            vcpus: vcpus.clone(),
            exit,
            legacy,
            devices,
            vm,
            mem,
            machine,
            track_dirty_pages,
            backing,
            msrs,
        });
        if !paused {
            // Restored devices come back paused; freshly booted ones are idle, and resuming
            // them is a no-op. A paused restore leaves them to `VmmHandle::resume`.
            shared.devices.resume().map_err(VmmError::DeviceResume)?;
        }
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        for vcpu in vcpus {
            let (shared_for_thread, pio, mmio) = (shared.clone(), pio.clone(), mmio.clone());
            let index = vcpu.lock().unwrap_or_else(PoisonError::into_inner).index();
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .stack_size(VCPU_STACK_SIZE)
                .spawn(move || run_vcpu(&vcpu, &shared_for_thread, &pio, &mmio))
                .map_err(|source| VmmError::Thread {
                    what: "vCPU",
                    source,
                });
            match thread {
                Ok(thread) => shared
                    .vcpu_threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(thread),
                Err(err) => {
                    shutdown(&shared);
                    return Err(err);
                }
            }
        }
        if let Some(input) = console_in {
            // Without input forwarding the guest still runs: not worth failing the start.
            if let Err(err) = serial::spawn_input_forwarder(shared.legacy.serial.clone(), input) {
                tracing::warn!("guest console input disabled: cannot start its thread: {err}");
            }
        }
        // Last: the threads started above installed their own filters; the guest runs only
        // once this thread has its own too.
        if let Err(err) = seccomp::enter(ThreadKind::Api) {
            shutdown(&shared);
            return Err(err.into());
        }
        if !seccomp::enabled() {
            tracing::info!("seccomp: no filter installed");
        }
        if !paused {
            // A paused restore stays held: its vCPUs park at their first check.
            shared.control.resume();
        }
        tracing::debug!(
            vcpus = shared.vcpus.len(),
            mem_mib = shared.machine.mem_size_mib,
            paused,
            "microVM started"
        );
        Ok(Self { shared, exit_rx })
    }

    /// A control handle.
    pub fn handle(&self) -> VmmHandle {
        VmmHandle(self.shared.clone())
    }

    /// Blocks until something stops the microVM, then stops it in order — vCPUs out of
    /// `KVM_RUN` and joined, drives flushed — and returns why it stopped.
    pub fn wait(&self) -> ExitReason {
        let reason = self
            .exit_rx
            .recv()
            .unwrap_or_else(|_| ExitReason::HostError("every exit notifier is gone".into()));
        if reason.status() == 0 {
            tracing::info!("microVM stopping: {reason}");
        } else {
            tracing::warn!(
                "microVM stopping: {reason} (exit status {})",
                reason.status()
            );
        }
        shutdown(&self.shared);
        reason
    }
}

/// The MSRs KVM can save, for later snapshots; `None` (said once) if KVM cannot list them.
fn snapshot_msrs(kvm: &Kvm) -> Option<Vec<u32>> {
    kvm_state::saveable_msrs(kvm)
        .inspect_err(|err| tracing::warn!("snapshots of this microVM will fail: {err}"))
        .ok()
}

/// Builds every virtio device of `configs` and gives each its slot, in the order
/// [`DeviceConfigs::slot_order`] names (a snapshot's device states follow it).
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    configs: &DeviceConfigs,
) -> Result<DeviceManager, VmmError> {
    let mut devices = DeviceManager::new();
    block::attach_all(vm, mem, mmio, &mut devices, &configs.drives)?;
    devices::net::attach_all(vm, mem, mmio, &mut devices, &configs.network_interfaces)?;
    if let Some(entropy) = &configs.entropy {
        devices::rng::attach(vm, mem, mmio, &mut devices, entropy)?;
    }
    if let Some(vsock) = &configs.vsock {
        devices::vsock::attach(vm, mem, mmio, &mut devices, vsock)?;
    }
    Ok(devices)
}

/// Maps the boot timer at Firecracker's address, and at the one images built before
/// Firecracker 1.13 write.
fn attach_boot_timer(mmio: &mut Bus, timer: BootTimer) -> Result<(), VmmError> {
    let timer = Arc::new(Mutex::new(timer));
    for base in [BOOT_TIMER_START, LEGACY_BOOT_TIMER_START] {
        mmio.insert(base, MMIO_DEVICE_SIZE, timer.clone())
            .map_err(DeviceError::from)?;
    }
    Ok(())
}

/// Stops and joins every vCPU thread, then flushes the drives.
fn shutdown(shared: &RunningVm) {
    shared.control.request_stop();
    shared.kick_vcpus();
    let threads = std::mem::take(
        &mut *shared
            .vcpu_threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for thread in threads {
        if thread.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
    for (id, err) in shared.devices.flush_drives() {
        tracing::error!("drive {id}: flush at shutdown failed: {err}");
    }
}

/// A vCPU thread: run the guest until told to stop or the guest stops the VM.
fn run_vcpu(vcpu: &Mutex<Vcpu>, shared: &RunningVm, pio: &Bus, mmio: &Bus) {
    // Before anything the guest can influence.
    let filtered = seccomp::enter(ThreadKind::Vcpu);
    let lock = || vcpu.lock().unwrap_or_else(PoisonError::into_inner);
    let index = lock().index();
    // Blocked outside KVM_RUN, unblocked inside: see `squib_host::signals`.
    let kick_setup = signals::block(&[signals::kick_signal()])
        .and_then(|()| signals::unblock_kick_during_run(lock().fd()));
    if let Err(err) = filtered {
        shared
            .exit
            .request(ExitReason::HostError(format!("vCPU {index}: {err}")));
    } else if let Err(err) = kick_setup {
        shared.exit.request(ExitReason::HostError(format!(
            "vCPU {index}: KVM_SET_SIGNAL_MASK: {err}"
        )));
    } else {
        while shared.control.may_run() {
            // Uncontended except while paused, when a snapshot reads the vCPU.
            let outcome = lock().run_once(pio, mmio);
            match outcome {
                RunOutcome::Continue => {}
                RunOutcome::Kicked => {
                    if let Err(err) = signals::consume_pending_kick() {
                        tracing::warn!(vcpu = index, "clearing a kick failed: {err}");
                    }
                }
                RunOutcome::Exit(reason) => {
                    shared.exit.request(reason);
                    break;
                }
            }
        }
    }
    shared.control.vcpu_exited();
}
