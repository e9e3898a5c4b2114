//! Capture and restore of KVM's vCPU and VM state, for snapshots.
//!
//! The restore order follows what KVM needs (and Firecracker does): CPUID before anything that
//! checks features; special registers (APIC base, EFER, CR4) before the LAPIC and the MSRs that
//! depend on them; the TSC before the TSC deadline; vCPU events (pending exceptions, NMIs) last.
//! On the VM side the PIT and the irqchips are restored before any vCPU runs.

use kvm_bindings::{
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC`: restored before the TSC deadline, which is relative to it.
const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// A KVM state ioctl that failed.
#[derive(Debug, thiserror::Error)]
#[error("KVM {op} failed: {source}")]
pub struct StateError {
    /// Which operation.
    pub op: &'static str,
    /// The error KVM returned.
    pub source: kvm_ioctls::Error,
}

fn op(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError { op, source }
}

/// `kvm_fpu` (kvm-bindings has no serde for it): the x87/SSE state, for hosts without XSAVE.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    fpr: Vec<[u8; 16]>,
    fcw: u16,
    fsw: u16,
    ftwx: u8,
    last_opcode: u16,
    last_ip: u64,
    last_dp: u64,
    xmm: Vec<[u8; 16]>,
    mxcsr: u32,
}

impl FpuState {
    fn from_kvm(fpu: &kvm_fpu) -> Self {
        Self {
            fpr: fpu.fpr.to_vec(),
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm.to_vec(),
            mxcsr: fpu.mxcsr,
        }
    }

    fn to_kvm(&self) -> kvm_fpu {
        let mut fpu = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        for (dst, src) in fpu.fpr.iter_mut().zip(&self.fpr) {
            *dst = *src;
        }
        for (dst, src) in fpu.xmm.iter_mut().zip(&self.xmm) {
            *dst = *src;
        }
        fpu
    }
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    cpuid: Vec<kvm_cpuid_entry2>,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: FpuState,
    /// `None` where `KVM_GET_XSAVE` is not available.
    xsave: Option<kvm_xsave>,
    /// `None` where `KVM_GET_XCRS` is not available.
    xcrs: Option<kvm_xcrs>,
    debug_regs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    vcpu_events: kvm_vcpu_events,
    /// `None` where KVM cannot report the TSC frequency.
    tsc_khz: Option<u32>,
}

/// The MSRs KVM says it can save and restore (`KVM_GET_MSR_INDEX_LIST`).
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let list = kvm.get_msr_index_list().map_err(op("GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().to_vec())
}

fn msrs_of(entries: &[kvm_msr_entry]) -> Result<Msrs, StateError> {
    Msrs::from_entries(entries).map_err(|_| StateError {
        op: "building an MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

/// Reads every MSR in `indices` that this vCPU lets KVM read; one KVM may list but refuse
/// (it stops at the first refused entry) is left out rather than failing the snapshot.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    while !rest.is_empty() {
        // KVM takes at most KVM_MAX_MSR_ENTRIES per call.
        let chunk = rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES);
        let mut msrs = msrs_of(&rest[..chunk])?;
        let read = fd.get_msrs(&mut msrs).map_err(op("GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        let skip = if read < chunk {
            tracing::debug!("KVM refused to read MSR {:#x}", rest[read].index);
            read + 1
        } else {
            read
        };
        rest.drain(..skip);
    }
    Ok(saved)
}

fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let written = fd.set_msrs(&msrs_of(chunk)?).map_err(op("SET_MSRS"))?;
        if written != chunk.len() {
            // A half-restored vCPU must not run: refuse the snapshot.
            return Err(StateError {
                op: "SET_MSRS (an MSR was refused)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
    }
    Ok(())
}

impl VcpuState {
    /// Reads a vCPU's state. The vCPU must be out of `KVM_RUN` (paused).
    pub fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<Self, StateError> {
        // MP state first: reading it makes KVM settle pending LAPIC events.
        let mp_state = fd.get_mp_state().map_err(op("GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(op("GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(op("GET_SREGS"))?;
        let fpu = FpuState::from_kvm(&fd.get_fpu().map_err(op("GET_FPU"))?);
        let xsave = fd.get_xsave().ok();
        let xcrs = fd.get_xcrs().ok();
        let debug_regs = fd.get_debug_regs().map_err(op("GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(op("GET_LAPIC"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let mut msrs = read_msrs(fd, msr_indices)?;
        // The TSC before the deadline that is relative to it.
        msrs.sort_by_key(|m| match m.index {
            MSR_IA32_TSC => 0,
            MSR_IA32_TSC_DEADLINE => 2,
            _ => 1,
        });
        let cpuid = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(op("GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let vcpu_events = fd.get_vcpu_events().map_err(op("GET_VCPU_EVENTS"))?;
        Ok(Self {
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Loads this state into a freshly created vCPU.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), StateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| StateError {
            op: "building the CPUID table",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(op("SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz
            && fd.get_tsc_khz().ok() != Some(khz)
        {
            fd.set_tsc_khz(khz).map_err(op("SET_TSC_KHZ"))?;
        }
        fd.set_mp_state(self.mp_state).map_err(op("SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(op("SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(op("SET_SREGS"))?;
        fd.set_fpu(&self.fpu.to_kvm()).map_err(op("SET_FPU"))?;
        if let Some(xsave) = &self.xsave {
            squib_host::kvm_xsave::set_xsave(fd, xsave).map_err(op("SET_XSAVE"))?;
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs).map_err(op("SET_XCRS"))?;
        }
        fd.set_debug_regs(&self.debug_regs)
            .map_err(op("SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(op("SET_LAPIC"))?;
        write_msrs(fd, &self.msrs)?;
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(op("SET_VCPU_EVENTS"))
    }

    /// The instruction pointer (for logs and tests).
    pub fn rip(&self) -> u64 {
        self.regs.rip
    }
}

/// The in-kernel VM devices: PIC master and slave, IOAPIC, PIT, KVM clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmDevicesState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(op("GET_IRQCHIP"))?;
    Ok(chip)
}

impl VmDevicesState {
    /// Reads the VM's in-kernel devices (vCPUs paused).
    pub fn save(vm: &VmFd) -> Result<Self, StateError> {
        let pit = vm.get_pit2().map_err(op("GET_PIT2"))?;
        let mut clock = vm.get_clock().map_err(op("GET_CLOCK"))?;
        // Only the clock value is restored; the flags describe how it was read.
        clock.flags = 0;
        Ok(Self {
            pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit,
            clock,
        })
    }

    /// Loads them into a VM created with its irqchip and PIT, before any vCPU runs.
    pub fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        vm.set_pit2(&self.pit).map_err(op("SET_PIT2"))?;
        vm.set_clock(&self.clock).map_err(op("SET_CLOCK"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(op("SET_IRQCHIP"))?;
        }
        Ok(())
    }
}
