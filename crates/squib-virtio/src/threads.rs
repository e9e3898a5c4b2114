//! A hook the VMM sets once to run first thing on every thread this crate starts (the VMM
//! installs that thread's seccomp filter there). This crate cannot depend on the VMM, and the
//! threads start deep inside the runtime — on a vCPU thread at the driver's DRIVER_OK, on the
//! API thread when a paused VM resumes, on a device worker for its I/O pool — so the VMM hands
//! its code in rather than the devices calling out.

use std::sync::OnceLock;

/// The threads this crate starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerThread {
    /// A device's worker thread (`runtime::DeviceWorker`), started at DRIVER_OK or on resume.
    Device,
    /// A virtio-blk I/O pool thread, started by its device's worker.
    BlockIo,
}

static START_HOOK: OnceLock<fn(WorkerThread)> = OnceLock::new();

/// Sets the hook; only the first call takes effect (returns whether this one did).
pub fn set_start_hook(hook: fn(WorkerThread)) -> bool {
    START_HOOK.set(hook).is_ok()
}

/// Called by each thread this crate starts, before it does anything else.
pub(crate) fn on_thread_start(thread: WorkerThread) {
    if let Some(hook) = START_HOOK.get() {
        hook(thread);
    }
}
