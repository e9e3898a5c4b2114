//! Signals: waiting for SIGTERM/SIGINT in one thread, and kicking vCPU threads out of `KVM_RUN`.
//!
//! The kick is race-free without touching `kvm_run` from a signal handler. The kick signal is
//! blocked in every thread, and each vCPU hands KVM a signal mask with the kick *unblocked*
//! (`KVM_SET_SIGNAL_MASK`), which KVM installs only while the thread is inside `KVM_RUN`. A kick
//! sent while the thread is outside `KVM_RUN` therefore stays pending, and the next `KVM_RUN`
//! returns `EINTR` at once (the same effect as `immediate_exit`); a kick sent while it is inside
//! makes it exit with `EINTR`. Either way the signal is still pending (blocked again) afterwards;
//! [`consume_pending_kick`] clears it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;
use libc::c_int;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// The signal used to kick vCPU threads: the first real-time signal.
pub fn kick_signal() -> c_int {
    libc::SIGRTMIN()
}

/// Builds a `sigset_t` holding `signals`.
fn sigset_of(signals: &[c_int]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initialises the set it is given a valid pointer to.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigemptyset` succeeded, so the set is initialised.
    let mut set = unsafe { set.assume_init() };
    for &signal in signals {
        // SAFETY: `set` is an initialised sigset; an invalid signal number is reported (EINVAL).
        if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Blocks `signals` in the calling thread; threads it spawns afterwards inherit the mask.
pub fn block(signals: &[c_int]) -> io::Result<()> {
    let set = sigset_of(signals)?;
    // SAFETY: `set` is a valid sigset; the old mask is not requested (null is allowed).
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Waits until one of `signals` (which must be blocked in every thread) is pending, consumes it
/// and returns its number.
pub fn wait(signals: &[c_int]) -> io::Result<c_int> {
    let set = sigset_of(signals)?;
    let mut signal: c_int = 0;
    // SAFETY: `set` is a valid sigset and `signal` a valid place for the result.
    let ret = unsafe { libc::sigwait(&set, &mut signal) };
    if ret == 0 {
        Ok(signal)
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

extern "C" fn on_kick(_: c_int) {
    // Nothing to do: the signal's only job is to make `KVM_RUN` return `EINTR`.
}

/// Installs the (empty) kick handler. Without a handler the kick signal's default action would
/// terminate the process when it arrives during `KVM_RUN`.
pub fn install_kick_handler() -> io::Result<()> {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid value (null
    // handler, no flags, empty mask on Linux); the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_kick as extern "C" fn(c_int) as libc::sighandler_t;
    // No SA_RESTART: the point of the signal is to interrupt `KVM_RUN`.
    action.sa_flags = 0;
    // SAFETY: `action` is fully initialised and its handler is async-signal-safe (it does
    // nothing); the previous action is not requested.
    let ret = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends the kick signal to `thread`.
pub fn kick<T>(thread: &JoinHandle<T>) -> io::Result<()> {
    // SAFETY: a `JoinHandle` that has not been joined or dropped keeps its thread's `pthread_t`
    // valid (the thread is neither detached nor reaped, even if it has finished), and we hold a
    // reference to one. Sending a signal has no memory-safety effect on this process: the
    // handler installed for it does nothing.
    let ret = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// Tells KVM which signals to block while the calling thread is inside `KVM_RUN` on `vcpu`:
/// the calling thread's current mask, without the kick signal. Call it on the vCPU's thread.
pub fn unblock_kick_during_run(vcpu: &VcpuFd) -> io::Result<()> {
    let mut current = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: reads the calling thread's mask into `current` (a valid pointer); no change made.
    let ret =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), current.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: `pthread_sigmask` succeeded, so it wrote the current mask.
    let current = unsafe { current.assume_init() };
    // The kernel's sigset: bit `n - 1` for signal `n`, 64 signals on x86_64.
    let mut kernel_set: u64 = 0;
    for signal in 1..=64 {
        // SAFETY: `current` is an initialised sigset; `signal` is within 1..=64.
        let blocked = unsafe { libc::sigismember(&current, signal) } == 1;
        if blocked && signal != kick_signal() {
            kernel_set |= 1 << (signal - 1);
        }
    }
    let mask = KvmSignalMask {
        len: 8,
        sigset: kernel_set.to_ne_bytes(),
    };
    // SAFETY: KVM_SET_SIGNAL_MASK reads a `struct kvm_signal_mask` (a u32 length) followed by
    // `len` bytes of sigset; `KvmSignalMask` is exactly that layout (8 sigset bytes at offset
    // 4) and lives for the call. `vcpu` is a valid vCPU fd.
    let ret = unsafe { ioctl_with_ref(&vcpu.as_raw_fd(), KVM_SET_SIGNAL_MASK(), &mask) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct kvm_signal_mask` with its 8-byte kernel sigset inline.
#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; 8],
}

/// Clears a pending kick on the calling thread, if there is one; returns whether there was.
pub fn consume_pending_kick() -> io::Result<bool> {
    let set = sigset_of(&[kick_signal()])?;
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `zero` are valid for the call; no siginfo is requested (null allowed).
    let ret = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
    if ret >= 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(false),
        Some(libc::EINTR) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_stays_pending_while_blocked_and_is_consumed() {
        install_kick_handler().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            block(&[kick_signal()]).unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let first = consume_pending_kick().unwrap();
            let second = consume_pending_kick().unwrap();
            (first, second)
        });
        ready_rx.recv().unwrap();
        kick(&thread).unwrap();
        go_tx.send(()).unwrap();
        assert_eq!(thread.join().unwrap(), (true, false));
    }
}
