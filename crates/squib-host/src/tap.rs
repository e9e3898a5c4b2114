//! TAP devices: open one by name with a virtio-net header on every frame, and set the offloads
//! the guest accepted.
//!
//! A [`Tap`] is opened non-blocking with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte
//! header (`struct virtio_net_hdr_v1`, what a VERSION_1 driver uses), so a frame moves between
//! the TAP and guest memory with one `readv`/`writev` ([`crate::guest_io`]) and no copy: the
//! kernel reads and writes the guest's header in place.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;
use vm_memory::bitmap::BitmapSlice;

use crate::guest_io;

/// Bytes of `struct virtio_net_hdr_v1` (virtio 1.2 §5.1.6): the header on every frame.
pub const VNET_HDR_LEN: usize = 12;

/// Linux's interface-name limit (`IFNAMSIZ`), terminating NUL included.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// The offloads the kernel may hand the TAP reader (`TUNSETOFFLOAD`): what the guest accepted
/// as GUEST_CSUM / GUEST_TSO4 / GUEST_TSO6 / GUEST_UFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// Partial checksums (`TUN_F_CSUM`); the others need it.
    pub csum: bool,
    /// TCP segmentation over IPv4 (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCP segmentation over IPv6 (`TUN_F_TSO6`).
    pub tso6: bool,
    /// UDP fragmentation (`TUN_F_UFO`).
    pub ufo: bool,
}

impl TapOffloads {
    fn bits(self) -> libc::c_uint {
        // Segmentation offloads without checksum offload are refused by the kernel: drop them.
        if !self.csum {
            return 0;
        }
        let mut bits = libc::TUN_F_CSUM;
        for (on, bit) in [
            (self.tso4, libc::TUN_F_TSO4),
            (self.tso6, libc::TUN_F_TSO6),
            (self.ufo, libc::TUN_F_UFO),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union is
/// padding the kernel copies in).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device (a queue of it: one file descriptor).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the TAP interface `name` (created beforehand, e.g. `ip tuntap add NAME mode
    /// tap`; the kernel creates it if we may), non-blocking, with 12-byte virtio-net headers and
    /// no offloads until [`Tap::set_offloads`].
    ///
    /// # Errors
    /// `InvalidInput` for an empty name, one of `IFNAMSIZ` bytes or more, or one with a NUL;
    /// otherwise the `open`/`ioctl` error (`EPERM` without CAP_NET_ADMIN on a device we do not
    /// own, `EBUSY` when another process holds it).
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.bytes().any(|b| b == 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "TAP name {name:?} must be 1 to {} bytes without NUL",
                    IFNAMSIZ - 1
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            // The flags are 16-bit in `struct ifreq`; these three fit.
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes on Linux: a 16-byte name and a
        // 24-byte union whose first member is the 16-bit flags); `IfReqFlags` is `repr(C)` with
        // that layout and size, lives on our stack for the whole call, and its name is
        // NUL-terminated (checked length < IFNAMSIZ, zero-filled). The kernel may write the
        // chosen name back into it, which stays within the struct. The fd is open (owned by
        // `file`).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at a live
        // local; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tap = Self {
            file,
            name: name.to_owned(),
        };
        tap.set_offloads(TapOffloads::default())?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloaded frames (partial checksums, large segments) the reader
    /// accepts: exactly what the guest negotiated, so it never gets a frame it cannot take.
    ///
    /// # Errors
    /// The `ioctl` error.
    pub fn set_offloads(&self, offloads: TapOffloads) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_* bits),
        // not as a pointer: the kernel reads nothing from our memory. The fd is open.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads.bits()),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame, header first, into `bufs`. Returns the frame's length (header included),
    /// which exceeds the buffers' total when they were too short: the frame is then truncated
    /// and consumed.
    ///
    /// # Errors
    /// `WouldBlock` when no frame is queued; otherwise the `readv` error.
    pub fn read_frame<B: BitmapSlice>(&self, bufs: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        guest_io::readv_volatile(&self.file, bufs)
    }

    /// Writes one frame, header first, from `bufs`. Returns the bytes the kernel took.
    ///
    /// # Errors
    /// `WouldBlock` when the TAP cannot take it now; otherwise the `writev` error (`EINVAL` for
    /// a malformed header or frame).
    pub fn write_frame<B: BitmapSlice>(&self, bufs: &[VolatileSlice<'_, B>]) -> io::Result<usize> {
        guest_io::writev_volatile(&self.file, bufs)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for name in ["", "a\0b", "0123456789abcdef"] {
            let err = Tap::open(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    /// Creates a throw-away TAP (it vanishes with the fd; it stays down, so no traffic moves).
    #[test]
    fn opens_sets_offloads_and_reads_nothing_without_blocking() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("SKIPPED: /dev/net/tun is absent");
            return;
        }
        let tap = match Tap::open("squibnet-ut0") {
            Ok(tap) => tap,
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("SKIPPED: creating a TAP needs CAP_NET_ADMIN ({error})");
                return;
            }
            Err(error) => panic!("TAP open failed: {error}"),
        };
        assert_eq!(tap.name(), "squibnet-ut0");
        tap.set_offloads(TapOffloads {
            csum: true,
            tso4: true,
            tso6: true,
            // Removed from the kernel in 4.14 but still accepted: Linux guests negotiate it.
            ufo: true,
        })
        .unwrap();
        let mut buf = [0u8; 64];
        let bufs = [VolatileSlice::from(&mut buf[..])];
        let err = tap.read_frame(&bufs).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), 16);
    }

    #[test]
    fn segmentation_offloads_need_checksum_offload() {
        let all = TapOffloads {
            csum: true,
            tso4: true,
            tso6: true,
            ufo: true,
        };
        assert_eq!(all.bits(), 0x17);
        assert_eq!(TapOffloads { csum: false, ..all }.bits(), 0);
    }
}
