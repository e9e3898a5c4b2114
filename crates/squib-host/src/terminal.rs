//! Terminal raw mode for the guest console.
//!
//! When stdin is a terminal, the guest's serial console needs every key as it is typed (no line
//! editing, no local echo, Ctrl-C going to the guest). The original settings are kept in a
//! process-wide slot so that every exit path — including `std::process::exit`, which runs no
//! destructors — can put the terminal back with [`restore`].

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Mutex;

/// The terminal put in raw mode and its settings before that.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

/// Whether `fd` refers to a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: `isatty` only inspects the fd, which `BorrowedFd` guarantees is open.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// Puts the terminal `fd` in raw mode, remembering its settings for [`restore`]. Returns
/// `Ok(false)`, changing nothing, when `fd` is not a terminal.
pub fn enter_raw_mode(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if !is_terminal(fd) {
        return Ok(false);
    }
    let raw_fd = fd.as_fd().as_raw_fd();
    let mut original = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `raw_fd` is open (borrowed) and `original` is a valid place for the settings.
    if unsafe { libc::tcgetattr(raw_fd, original.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `tcgetattr` succeeded, so it filled `original`.
    let original = unsafe { original.assume_init() };
    let mut raw = original;
    // SAFETY: `raw` is an initialised termios; `cfmakeraw` only edits its flags.
    unsafe { libc::cfmakeraw(&mut raw) };
    // SAFETY: `raw_fd` is open and `raw` a valid termios.
    if unsafe { libc::tcsetattr(raw_fd, libc::TCSANOW, &raw) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut saved = SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Keep the first original if raw mode is entered twice.
    saved.get_or_insert((raw_fd, original));
    Ok(true)
}

/// Puts back the settings saved by [`enter_raw_mode`], if any. Idempotent; safe to call from
/// every exit path.
pub fn restore() {
    let saved = SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some((fd, original)) = saved {
        // SAFETY: `original` is a valid termios. If `fd` has been closed since, the call fails
        // with EBADF and changes nothing; stdin is never closed by squib.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_not_a_terminal_and_is_left_alone() {
        let (reader, _writer) = std::io::pipe().unwrap();
        assert!(!is_terminal(reader.as_fd()));
        assert!(!enter_raw_mode(reader.as_fd()).unwrap());
        restore();
    }
}
