//! userfaultfd: guest memory whose pages a separate handler process supplies on first touch
//! (snapshot loads with the `Uffd` memory backend), and the handler side's page copies.
//!
//! The VMM creates the descriptor, registers guest RAM on it (missing-page mode) and sends it to
//! the handler; each first access to a page, by a vCPU through KVM or by the VMM, then waits
//! until the handler `UFFDIO_COPY`s the page in.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

// <linux/userfaultfd.h>, x86_64.
const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)` (24 bytes).
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)` (32 bytes).
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)` (40 bytes).
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_MSG_SIZE: usize = 32;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd descriptor.
#[derive(Debug)]
pub struct Userfaultfd(File);

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Userfaultfd {
    /// A new descriptor (blocking reads, close-on-exec), API handshake done. Needs root or
    /// `vm.unprivileged_userfaultfd = 1`: KVM's own accesses to guest memory must fault too.
    pub fn new() -> io::Result<Self> {
        // SAFETY: the userfaultfd system call takes one integer flag and returns a new
        // descriptor or -1; it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: UFFDIO_API reads and writes exactly one `struct uffdio_api`, which `api` is
        // (same layout, `repr(C)`), borrowed mutably for the call.
        check(unsafe { libc::ioctl(file.as_raw_fd(), UFFDIO_API, &mut api) })?;
        Ok(Self(file))
    }

    /// Wraps a descriptor received from a VMM (the handler side).
    pub fn from_file(file: File) -> Self {
        Self(file)
    }

    /// The descriptor, to send to the handler.
    pub fn as_file(&self) -> &File {
        &self.0
    }

    /// Makes missing-page faults in `[addr, addr + len)` of this process wait for the handler.
    /// The range must be page-aligned private anonymous memory (the kernel refuses others).
    pub fn register(&self, addr: u64, len: u64) -> io::Result<()> {
        let mut register = UffdioRegister {
            start: addr,
            len,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register` (`register`,
        // same layout). Registering changes no memory contents: it only routes future faults
        // on missing pages of the range to this descriptor.
        check(unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_REGISTER, &mut register) })
    }

    /// Waits for the next event; returns the faulting address for a page fault, `None` for an
    /// event of another kind. Fails with `UnexpectedEof` when the descriptor is closed.
    pub fn next_fault(&self) -> io::Result<Option<u64>> {
        let mut msg = [0u8; UFFD_MSG_SIZE];
        let n = io::Read::read(&mut &self.0, &mut msg)?;
        if n != UFFD_MSG_SIZE {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if msg[0] != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        let mut address = [0u8; 8];
        address.copy_from_slice(&msg[16..24]);
        Ok(Some(u64::from_ne_bytes(address)))
    }

    /// Supplies the missing page(s) at `dst` (page-aligned, in a registered range of the
    /// process that registered them) with `data` and wakes the threads waiting on them. A page
    /// already present (another fault raced this one) is not an error.
    pub fn copy(&self, dst: u64, data: &[u8]) -> io::Result<()> {
        let mut copy = UffdioCopy {
            dst,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: the kernel reads `len` bytes from `src`, which is exactly `data`, borrowed for
        // the call. It writes only pages that are *missing* in ranges registered on this
        // descriptor (a present page gives EEXIST and is left alone), so no byte any code has
        // ever read or written changes: a missing page has never been accessed (every access
        // would have faulted to the handler). The struct is `repr(C)` `struct uffdio_copy`.
        let ret = unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_COPY, &mut copy) };
        match check(ret) {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }
}

/// Sends `message` and the descriptor `uffd` in one `SCM_RIGHTS` message (Firecracker's
/// handshake with a page-fault handler).
pub fn send(stream: &UnixStream, message: &[u8], uffd: &Userfaultfd) -> io::Result<()> {
    let sent = stream
        .send_with_fd(message, uffd.0.as_raw_fd())
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != message.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// Receives the handshake `send` makes: the message bytes and the descriptor.
pub fn receive(stream: &UnixStream, max_len: usize) -> io::Result<(Vec<u8>, Userfaultfd)> {
    let mut buf = vec![0u8; max_len];
    let (len, file) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let file = file.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "no descriptor in the handshake")
    })?;
    buf.truncate(len);
    Ok((buf, Userfaultfd(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_page_is_filled_by_the_handler_thread() {
        let uffd = match Userfaultfd::new() {
            Ok(uffd) => uffd,
            Err(err) => {
                eprintln!("SKIPPED: userfaultfd unavailable here ({err}); the test did not run");
                return;
            }
        };
        let region =
            vm_memory::MmapRegion::<()>::new(4 * 4096).expect("anonymous mapping for the test");
        let base = region.as_ptr() as u64;
        uffd.register(base, 4 * 4096).unwrap();
        let handler = uffd.as_file().try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            let uffd = Userfaultfd::from_file(handler);
            let fault = uffd.next_fault().unwrap().unwrap();
            let page = fault & !4095;
            uffd.copy(page, &[0x5a; 4096]).unwrap();
            page
        });
        let mem = vm_memory::GuestRegionMmap::new(region, vm_memory::GuestAddress(0)).unwrap();
        let byte: u8 =
            vm_memory::Bytes::read_obj(&mem, vm_memory::MemoryRegionAddress(2 * 4096 + 9)).unwrap();
        assert_eq!(byte, 0x5a);
        assert_eq!(thread.join().unwrap(), base + 2 * 4096);
    }
}
