//! The jailer's host boundary: namespaces, the chroot, device nodes, resource limits, file
//! descriptors, `fork` and the clocks its timing flags report. Each function is one syscall (or
//! one fixed sequence) behind a safe signature; `squib-jailer` composes them in Firecracker's
//! order.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes every file descriptor above stderr (`close_range(3, ~0, 0)`).
pub fn close_fds_above_stdio() -> io::Result<()> {
    // SAFETY: `close_range` takes plain integers. Closing descriptors that Rust objects in this
    // process may still own is what the caller asks for: call it before opening anything.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `unshare(flags)` (`CLONE_NEWNS`, `CLONE_NEWPID`, …).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `unshare` takes a flag word and touches no memory of ours.
    check(unsafe { libc::unshare(flags) })
}

/// Joins the namespace `fd` refers to (`setns(fd, nstype)`).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the borrow's duration; no memory is passed.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
}

/// Makes every mount in the calling process's mount namespace private, recursively (needed
/// before `pivot_root` in a fresh mount namespace).
pub fn make_mounts_private() -> io::Result<()> {
    // SAFETY: a valid NUL-terminated target, null source/type/data as `MS_PRIVATE` allows.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

/// Bind-mounts `dir` onto itself (so that it is a mount point `pivot_root` can use).
pub fn bind_mount_onto_itself(dir: &Path) -> io::Result<()> {
    let dir = cstring(dir)?;
    // SAFETY: valid NUL-terminated source and target that outlive the call; null type and data
    // are allowed with `MS_BIND`.
    check(unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let (new_root, put_old) = (cstring(new_root)?, cstring(put_old)?);
    // SAFETY: two valid NUL-terminated paths that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Detaches the mount at `target` (`umount2(target, MNT_DETACH)`).
pub fn unmount_detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: a valid NUL-terminated path that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// Creates the character device node `path` (`major`:`minor`) with permission bits `mode`.
pub fn mknod_char(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let path = cstring(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: a valid NUL-terminated path that outlives the call; mode and dev are integers.
    check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) })
}

/// A resource limit the jailer sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_FSIZE`: largest file the process may create, in bytes.
    FileSize,
    /// `RLIMIT_NOFILE`: one more than the largest file descriptor number.
    OpenFiles,
}

/// Sets both the soft and the hard limit of `resource` to `value`.
pub fn set_rlimit(resource: Resource, value: u64) -> io::Result<()> {
    let resource = match resource {
        Resource::FileSize => libc::RLIMIT_FSIZE,
        Resource::OpenFiles => libc::RLIMIT_NOFILE,
    };
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid, initialised rlimit the call only reads.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Starts a new session (`setsid`), detaching from the controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments, no memory effect.
    if unsafe { libc::setsid() } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `target` (0, 1 or 2) a copy of `fd` (`dup2`).
pub fn redirect_stdio(fd: BorrowedFd<'_>, target: libc::c_int) -> io::Result<()> {
    if !(0..=2).contains(&target) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only stdin, stdout and stderr can be redirected",
        ));
    }
    // SAFETY: `fd` is valid for the borrow; `target` is a standard descriptor, which no Rust
    // object in this process owns exclusively (std's handles only borrow them).
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Which side of a [`fork`] the caller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    /// The parent; the child's pid (as the parent's PID namespace sees it).
    Parent(i32),
    /// The child.
    Child,
}

/// Forks a single-threaded process. Refuses when the process has other threads: after a fork
/// only the calling thread exists in the child, and locks other threads held would stay held.
pub fn fork() -> io::Result<Forked> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(io::Error::other(format!(
            "fork needs a single-threaded process ({threads:?} threads)"
        )));
    }
    // SAFETY: the process has one thread (checked just above; nothing in between can start
    // one), so the child gets a consistent copy of every lock and allocator state.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

fn clock_us(clock: libc::clockid_t) -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes.
    check(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000) + nanos / 1_000)
}

/// `CLOCK_MONOTONIC` in microseconds (Firecracker's `--start-time-us`).
pub fn monotonic_us() -> io::Result<u64> {
    clock_us(libc::CLOCK_MONOTONIC)
}

/// CPU time this process has used, in microseconds (`--start-time-cpu-us`).
pub fn process_cpu_time_us() -> io::Result<u64> {
    clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}
