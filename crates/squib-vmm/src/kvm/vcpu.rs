//! One vCPU: its boot-time configuration and the handling of each `KVM_RUN` exit.

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, lapic, msr, regs};
use crate::boot::{EntryPoint, pvh};
use crate::devices::bus::Bus;
use crate::exit::ExitReason;
use vm_memory::GuestAddress;

/// Why a vCPU could not be created or configured.
#[derive(Debug, thiserror::Error)]
#[error("vCPU {index}: KVM {op} failed: {source}")]
pub struct VcpuError {
    /// Which vCPU.
    pub index: u8,
    /// Which operation.
    pub op: &'static str,
    /// The error KVM returned.
    pub source: kvm_ioctls::Error,
}

/// What the run loop does after one `KVM_RUN`.
#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Keep running the guest.
    Continue,
    /// `KVM_RUN` was interrupted by a kick: check whether to pause or stop.
    Kicked,
    /// The VM must stop.
    Exit(ExitReason),
}

/// A vCPU and its index (also its APIC id).
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`.
    pub fn new(vm: &VmFd, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError {
                index,
                op: "CREATE_VCPU",
                source,
            })?;
        Ok(Self { index, fd })
    }

    /// The index (and APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The KVM vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn op(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError { index, op, source }
    }

    /// Everything every vCPU needs whatever the boot protocol: CPUID (from KVM's supported
    /// table, filtered for this vCPU of `count`), boot MSRs, FPU, LAPIC LINT0/LINT1.
    pub fn configure(&self, supported_cpuid: &CpuId, count: u8) -> Result<(), VcpuError> {
        let mut cpuid_table = supported_cpuid.clone();
        cpuid::filter(cpuid_table.as_mut_slice(), self.index, count);
        self.fd
            .set_cpuid2(&cpuid_table)
            .map_err(self.op("SET_CPUID2"))?;

        let entries = msr::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError {
            index: self.index,
            op: "SET_MSRS (building the list)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let written = self.fd.set_msrs(&msrs).map_err(self.op("SET_MSRS"))?;
        if written != entries.len() {
            let failed = entries.get(written).map_or(0, |e| e.index);
            tracing::warn!(
                vcpu = self.index,
                "KVM refused boot MSR {failed:#x}; later ones not set"
            );
        }

        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.op("SET_FPU"))?;

        let mut lapic_state = self.fd.get_lapic().map_err(self.op("GET_LAPIC"))?;
        lapic::set_lint_modes(&mut lapic_state);
        self.fd
            .set_lapic(&lapic_state)
            .map_err(self.op("SET_LAPIC"))
    }

    /// Puts the boot vCPU at `entry`.
    pub fn set_entry(&self, entry: &EntryPoint) -> Result<(), VcpuError> {
        match *entry {
            EntryPoint::Linux64 { rip, cr3 } => {
                let sregs = self.fd.get_sregs().map_err(self.op("GET_SREGS"))?;
                self.fd
                    .set_sregs(&regs::long_mode_sregs(sregs, cr3))
                    .map_err(self.op("SET_SREGS"))?;
                self.fd
                    .set_regs(&regs::boot_regs(rip))
                    .map_err(self.op("SET_REGS"))
            }
            EntryPoint::Pvh { eip, ebx } => {
                let mut sregs = self.fd.get_sregs().map_err(self.op("GET_SREGS"))?;
                pvh::set_entry_sregs(&mut sregs);
                self.fd.set_sregs(&sregs).map_err(self.op("SET_SREGS"))?;
                let regs = pvh::entry_regs(GuestAddress(eip), GuestAddress(ebx));
                self.fd.set_regs(&regs).map_err(self.op("SET_REGS"))
            }
        }
    }

    /// Runs the guest until the next exit and handles it.
    pub fn run_once(&mut self, pio: &Bus, mmio: &Bus) -> RunOutcome {
        let index = self.index;
        let failure = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
                return RunOutcome::Continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
                return RunOutcome::Continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                return RunOutcome::Continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                return RunOutcome::Continue;
            }
            Ok(VcpuExit::Intr) => return RunOutcome::Kicked,
            Ok(VcpuExit::Shutdown) => {
                return RunOutcome::Exit(ExitReason::TripleFault { vcpu: index });
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return RunOutcome::Exit(ExitReason::SystemEvent { kind });
            }
            // On PVM this is mostly an instruction the CPL0 emulator cannot run; the kernel log
            // (`kvm-pvm: INTERNAL_ERROR …`) names it.
            Ok(VcpuExit::InternalError) => String::from("KVM_EXIT_INTERNAL_ERROR"),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                format!("KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}")
            }
            Ok(other) => format!("unexpected exit {other:?}"),
            Err(err) if err.errno() == libc::EINTR => return RunOutcome::Kicked,
            Err(err) if err.errno() == libc::EAGAIN => return RunOutcome::Continue,
            Err(err) => {
                return RunOutcome::Exit(ExitReason::HostError(format!(
                    "KVM_RUN on vCPU {index}: {err}"
                )));
            }
        };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        RunOutcome::Exit(ExitReason::VcpuFailure {
            vcpu: index,
            detail: format!("{failure} at rip {rip:#x}"),
        })
    }
}
