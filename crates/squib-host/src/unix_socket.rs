//! A non-blocking Unix stream `connect(2)`: std's `UnixStream::connect` blocks while the
//! listener's backlog is full, which would let a guest stall the vsock device's worker by
//! opening connections to a host listener that does not accept them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Connects to the Unix stream socket at `path` without blocking; the stream is non-blocking
/// and close-on-exec.
///
/// # Errors
/// `WouldBlock` when the listener's backlog is full; `ConnectionRefused` / `NotFound` when
/// nobody listens there; `InvalidInput` when the path does not fit `sun_path`.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: `sockaddr_un` is plain old data, for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // One byte stays 0: the path's terminator.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain system call with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialised `sockaddr_un` of `len` bytes that outlives the
    // call; `fd` is open (owned by `socket`).
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

/// Accepts one connection from `listener` as a non-blocking, close-on-exec stream in a single
/// `accept4(2)` (no `ioctl(FIONBIO)` afterwards, which the device workers' seccomp filter does
/// not allow).
///
/// # Errors
/// `WouldBlock` when no connection is pending (on a non-blocking listener); otherwise the
/// `accept4` error.
pub fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: `accept4` with null address pointers only returns a new descriptor; the listener's
    // fd is open for the duration of the call (borrowed from `listener`).
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly accepted socket that nothing else owns.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn connects_without_blocking_and_reports_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(connect_nonblocking(&path).is_err());
        let listener = UnixListener::bind(&path).unwrap();
        let mut stream = connect_nonblocking(&path).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        stream.write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // Non-blocking: nothing to read is WouldBlock, not a hang.
        let error = stream.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        // Accepted streams are non-blocking too.
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            accept_nonblocking(&listener).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let _client = connect_nonblocking(&path).unwrap();
        let mut server = accept_nonblocking(&listener).unwrap();
        assert_eq!(
            server.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            connect_nonblocking(Path::new("")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
