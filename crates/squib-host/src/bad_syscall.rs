//! What happens when a seccomp filter traps a syscall: the SIGSYS handler.
//!
//! squib's filters answer a syscall outside a thread's allowlist with `SECCOMP_RET_TRAP`, which
//! raises SIGSYS in that thread. The handler installed here writes one line naming the syscall
//! to stderr and ends the whole process with the exit status it was given (Firecracker's 148),
//! as Firecracker does. Everything in the handler is async-signal-safe: a fixed buffer, one
//! `write`, `_exit`. Every squib filter allows `write` and `exit_group`; if one did not, the
//! kernel would kill the process anyway (SIGSYS stays blocked while its handler runs, and a
//! blocked forced SIGSYS kills).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::c_int;

/// The exit status the handler ends the process with.
static EXIT_STATUS: AtomicI32 = AtomicI32::new(148);

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on 64-bit Linux: `si_signo`, `si_errno`,
/// `si_code`, padding (16 bytes), then `_sigsys { void *_call_addr; int _syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_signal: c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel hands a SIGSYS handler installed with SA_SIGINFO a valid
        // `siginfo_t`, whose `_sigsys` member holds the syscall number at this offset (see
        // `SI_SYSCALL_OFFSET`); the read is within the struct and `i32`-aligned.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        }
    };
    let mut line = [0u8; 96];
    let prefix = b"squib: seccomp: a thread made syscall ";
    let suffix = b" outside its allowlist; exiting\n";
    let mut len = 0;
    for &b in prefix {
        line[len] = b;
        len += 1;
    }
    len += format_decimal(syscall, &mut line[len..len + 12]);
    for &b in suffix {
        line[len] = b;
        len += 1;
    }
    // SAFETY: `line[..len]` is initialised memory we own; `write` and `_exit` are
    // async-signal-safe. A failed write changes nothing: we exit either way.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
        libc::_exit(EXIT_STATUS.load(Ordering::Relaxed));
    }
}

/// Writes `value` in decimal into `out` (at least 11 bytes) without allocating; returns the length.
fn format_decimal(value: i32, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 11];
    let mut n = value.unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    if value < 0 {
        out[0] = b'-';
        len = 1;
    }
    for i in (0..count).rev() {
        out[len] = digits[i];
        len += 1;
    }
    len
}

/// Installs the SIGSYS handler for the whole process: a trapped syscall in any thread ends the
/// process with `exit_status`. Call it before installing the first filter.
pub fn install_handler(exit_status: u8) -> io::Result<()> {
    EXIT_STATUS.store(i32::from(exit_status), Ordering::Relaxed);
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid value (null
    // handler, no flags, empty mask on Linux); the fields that matter are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void)
        as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is fully initialised, its handler has the SA_SIGINFO signature and is
    // async-signal-safe; the previous action is not requested.
    let ret = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a syscall no squib filter allows (`getppid`), for the tests that prove a trapped
/// syscall ends the process. Without a filter it just returns the parent's pid.
pub fn call_forbidden_syscall() -> i32 {
    // SAFETY: `getppid` has no arguments and no memory effect.
    unsafe { libc::getppid() }
}

#[cfg(test)]
mod tests {
    use super::format_decimal;

    #[test]
    fn decimal_formatting() {
        for (value, want) in [
            (0, "0"),
            (7, "7"),
            (110, "110"),
            (-1, "-1"),
            (i32::MIN, "-2147483648"),
        ] {
            let mut out = [0u8; 12];
            let len = format_decimal(value, &mut out);
            assert_eq!(&out[..len], want.as_bytes());
        }
    }
}
