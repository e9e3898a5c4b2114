//! Why a microVM stops, and the process exit status each reason maps to.
//!
//! Firecracker's statuses (`FcExitCode`) where Firecracker has one, so that launchers read
//! squib's exit like Firecracker's; squib's own guest-driven statuses use numbers Firecracker
//! never returns. docs/architecture.md "Exit statuses" is the table users read.
//!
//! | status | meaning | Firecracker |
//! |---|---|---|
//! | 0 | the guest powered off (ACPI S5) or reset the machine (i8042 `0xfe`, ACPI reset register, KVM system event shutdown/reset), or squib was told to stop (SIGTERM, SIGINT, the API) | same (Firecracker dies of SIGTERM instead) |
//! | 1 | squib itself failed (set-up or a host error) | `GenericError` |
//! | 4 | triple fault (`KVM_EXIT_SHUTDOWN`) or a KVM system-event crash | 0 — squib reports the crash |
//! | 6 | the guest put a vCPU where KVM cannot run it (emulation failure, failed entry, unexpected exit) | 1 |
//! | odd `(v << 1) \| 1` | the guest wrote `v` to the debug-exit port `0x501` (QEMU's `isa-debug-exit` convention, for test guests) | no such device |
//! | 151, 154, 156 | SIGXFSZ, SIGXCPU, SIGHUP | same |
//! | 152 | bad configuration: a `--config-file` that does not parse, validate or build, a bad `--level` | `BadConfiguration` |
//! | 153 | bad command-line arguments, or a flag whose feature squib lacks | `ArgParsing` |

use std::sync::mpsc::Sender;

/// Why the microVM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote the reset command (`0xfe`) to the i8042.
    I8042Reset,
    /// The guest powered off through ACPI (S5 in the FADT's sleep control register).
    AcpiPowerOff,
    /// The guest wrote the reset value to the FADT's reset register.
    AcpiReset,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u8),
    /// KVM reported a system event (`KVM_SYSTEM_EVENT_*`).
    SystemEvent {
        /// The event type.
        kind: u32,
    },
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
    },
    /// A vCPU stopped in a state KVM cannot continue from.
    VcpuFailure {
        /// Which vCPU.
        vcpu: u8,
        /// What KVM reported.
        detail: String,
    },
    /// A signal asked squib to stop.
    Signal(i32),
    /// The control API asked squib to stop.
    Requested,
    /// A host-side failure.
    HostError(String),
}

/// Exit status for a failure of squib itself (Firecracker's `GenericError`).
pub const STATUS_GENERIC_ERROR: u8 = 1;
/// Exit status for a bad configuration (Firecracker's `BadConfiguration`).
pub const STATUS_BAD_CONFIGURATION: u8 = 152;
/// Exit status for bad command-line arguments (Firecracker's `ArgParsing`).
pub const STATUS_ARG_PARSING: u8 = 153;
/// Exit status for a triple fault or guest crash event.
pub const STATUS_TRIPLE_FAULT: u8 = 4;
/// Exit status for a vCPU KVM cannot run.
pub const STATUS_VCPU_FAILURE: u8 = 6;

impl ExitReason {
    /// The process exit status for this reason (see the module table).
    pub fn status(&self) -> u8 {
        match self {
            Self::I8042Reset | Self::AcpiPowerOff | Self::AcpiReset | Self::Requested => 0,
            Self::Signal(signal) => signal_status(*signal),
            // Wraps to 8 bits like any exit status; `v` < 128 round-trips.
            Self::DebugExit(v) => (v << 1) | 1,
            Self::SystemEvent { kind } => match *kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => 0,
                _ => STATUS_TRIPLE_FAULT,
            },
            Self::TripleFault { .. } => STATUS_TRIPLE_FAULT,
            Self::VcpuFailure { .. } => STATUS_VCPU_FAILURE,
            Self::HostError(_) => STATUS_GENERIC_ERROR,
        }
    }
}

/// Firecracker's status for a signal that stopped it; 0 for the orderly stops (SIGTERM, SIGINT).
fn signal_status(signal: i32) -> u8 {
    match signal {
        libc::SIGXFSZ => 151,
        libc::SIGXCPU => 154,
        libc::SIGHUP => 156,
        _ => 0,
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::I8042Reset => write!(f, "the guest reset the machine through the i8042"),
            Self::AcpiPowerOff => write!(f, "the guest powered off (ACPI S5)"),
            Self::AcpiReset => write!(
                f,
                "the guest reset the machine through the ACPI reset register"
            ),
            Self::DebugExit(v) => write!(f, "the guest wrote {v:#x} to the debug-exit port"),
            Self::SystemEvent { kind } => write!(f, "KVM system event {kind} from the guest"),
            Self::TripleFault { vcpu } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")
            }
            Self::VcpuFailure { vcpu, detail } => {
                write!(f, "vCPU {vcpu} cannot continue: {detail}")
            }
            Self::Signal(signal) => write!(f, "stopped by signal {signal}"),
            Self::Requested => write!(f, "stopped on request"),
            Self::HostError(detail) => write!(f, "host error: {detail}"),
        }
    }
}

/// Tells the VMM's main loop that the microVM must stop. Cloned into every device and thread
/// that can end the VM; the first reason received wins.
#[derive(Clone, Debug)]
pub struct ExitSender(Sender<ExitReason>);

impl ExitSender {
    /// Wraps the sending end of the main loop's channel.
    pub fn new(sender: Sender<ExitReason>) -> Self {
        Self(sender)
    }

    /// Asks the VMM to stop for `reason`.
    pub fn request(&self, reason: ExitReason) {
        // The receiver is gone only once the VMM is already stopping: nothing left to tell.
        let _ = self.0.send(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_table() {
        assert_eq!(ExitReason::I8042Reset.status(), 0);
        assert_eq!(ExitReason::Signal(15).status(), 0);
        assert_eq!(ExitReason::DebugExit(0).status(), 1);
        assert_eq!(ExitReason::DebugExit(1).status(), 3);
        assert_eq!(ExitReason::DebugExit(0x7f).status(), 0xff);
        assert_eq!(ExitReason::TripleFault { vcpu: 0 }.status(), 4);
        assert_eq!(
            ExitReason::SystemEvent {
                kind: kvm_bindings::KVM_SYSTEM_EVENT_RESET
            }
            .status(),
            0
        );
        assert_eq!(
            ExitReason::SystemEvent {
                kind: kvm_bindings::KVM_SYSTEM_EVENT_CRASH
            }
            .status(),
            4
        );
        assert_eq!(
            ExitReason::VcpuFailure {
                vcpu: 1,
                detail: String::new()
            }
            .status(),
            6
        );
        assert_eq!(ExitReason::HostError(String::new()).status(), 1);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).status(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGINT).status(), 0);
        assert_eq!(ExitReason::Signal(libc::SIGHUP).status(), 156);
        assert_eq!(ExitReason::Signal(libc::SIGXCPU).status(), 154);
        assert_eq!(ExitReason::Signal(libc::SIGXFSZ).status(), 151);
    }
}
