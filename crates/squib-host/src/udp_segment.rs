//! UDP generic segmentation offload (`UDP_SEGMENT`) on a sending socket: one `send` of up to 64
//! segments that the kernel cuts into datagrams below the socket layer. Only the network
//! benchmark's host → guest sender uses it (`cargo xtask net-peer send`), so that the sender
//! pays for one socket send per 64 KiB rather than per datagram; the VMM never does.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// `linux/udp.h`; the libc crate defines it for uClibc and Android only.
const UDP_SEGMENT: libc::c_int = 103;

/// Most segments the kernel accepts in one send (`UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;

/// Makes every send on `socket` larger than `size` bytes leave as datagrams of `size` payload
/// bytes (the last may be shorter).
///
/// # Errors
/// The `setsockopt` error: `ENOPROTOOPT` on a kernel older than 4.18.
pub fn set_segment_size(socket: &UdpSocket, size: u16) -> io::Result<()> {
    let value = libc::c_int::from(size);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `socket` owns a valid descriptor for the call; `value` is a live `c_int` whose
    // size is `len`, and the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One send of three segments arrives as three datagrams, the last one short.
    #[test]
    fn a_segmented_send_arrives_as_separate_datagrams() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        sender
            .connect(receiver.local_addr().expect("address"))
            .expect("connect");
        if let Err(e) = set_segment_size(&sender, 1000) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}");
            eprintln!("SKIPPED: this kernel has no UDP_SEGMENT ({e})");
            return;
        }
        assert_eq!(sender.send(&[7u8; 2500]).expect("send"), 2500);
        let mut buf = [0u8; 4096];
        let lengths: Vec<usize> = (0..3)
            .map(|_| receiver.recv(&mut buf).expect("recv"))
            .collect();
        assert_eq!(lengths, [1000, 1000, 500]);
    }
}
