//! squib's VMM: builds a KVM microVM from a `VmConfig` and runs it.
//!
//! Entry points: [`vmm::Vmm::start`] builds and starts a microVM, [`vmm::VmmHandle`] controls
//! it, [`vmm::Vmm::wait`] returns the [`exit::ExitReason`] it stopped for; [`cli`] turns the
//! command line into a `VmConfig`.
#![forbid(unsafe_code)]

pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod control;
pub mod devices;
pub mod exit;
pub mod host_file;
pub mod ids;
pub mod kvm;
pub mod seccomp;
pub mod version;
pub mod vm_config;
pub mod vmm;

/// Guest memory as squib maps it (shared with squib-virtio).
pub use squib_virtio::GuestMemory;

/// Signals squib's main thread waits for to stop the microVM in order: SIGTERM and SIGINT (exit
/// 0), and those Firecracker turns into exit statuses (SIGHUP, SIGXFSZ, SIGXCPU; see [`exit`]).
pub const TERMINATION_SIGNALS: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGXFSZ,
    libc::SIGXCPU,
];

/// Blocks the termination signals (so one thread can `sigwait` for them) and the vCPU kick signal
/// in the calling thread. Call it first thing in `main`, before any thread exists: threads
/// inherit the mask.
pub fn block_signals() -> std::io::Result<()> {
    squib_host::signals::block(&TERMINATION_SIGNALS)?;
    squib_host::signals::block(&[squib_host::signals::kick_signal()])
}
