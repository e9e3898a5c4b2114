//! Test TAPs for virtio-net. `FakeTap`: in memory, with a TAP's semantics: one frame per read,
//! the 12-byte header's first ten bytes written by the "kernel" and `num_buffers` left alone, a
//! truncated frame reported at its full length, `WouldBlock` when empty, a bounded queue. It has
//! no descriptor to read, so the device moves its frames one call each. `SocketTap`: a datagram
//! socket pair, one datagram per frame (header included), which the device reads and writes
//! through its io_uring as it does a TAP.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, MutexGuard};

use squib_host::tap::TapOffloads;

use crate::GuestSlice;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::net::VNET_HDR_LEN;
use crate::net::backend::NetBackend;
use crate::net::handler::write_at;

/// Frames the fake kernel queue holds before it drops (Linux's default `txqueuelen` is 1000).
pub const FAKE_TAP_QUEUE: usize = 1000;

/// An in-memory TAP.
#[derive(Debug)]
pub struct FakeTap {
    inbound: Mutex<VecDeque<Vec<u8>>>,
    sent: Mutex<Vec<Vec<u8>>>,
    offloads: Mutex<TapOffloads>,
    dropped: Mutex<u64>,
    event: EventFd,
}

impl FakeTap {
    /// An empty TAP.
    pub fn new() -> Self {
        Self {
            inbound: Mutex::new(VecDeque::new()),
            sent: Mutex::new(Vec::new()),
            offloads: Mutex::new(TapOffloads::default()),
            dropped: Mutex::new(0),
            event: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// The host sends `frame` (an Ethernet frame, no header) to the guest. Returns false when
    /// the queue was full and the frame was dropped, as the kernel would.
    pub fn inject(&self, frame: &[u8]) -> bool {
        let mut inbound = lock(&self.inbound);
        if inbound.len() >= FAKE_TAP_QUEUE {
            *lock(&self.dropped) += 1;
            return false;
        }
        inbound.push_back(frame.to_vec());
        drop(inbound);
        self.event.write(1).unwrap();
        true
    }

    /// Frames the guest sent, header included, in order; clears the list.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *lock(&self.sent))
    }

    /// Frames waiting for the guest.
    pub fn pending(&self) -> usize {
        lock(&self.inbound).len()
    }

    /// The offloads the device last set.
    pub fn offloads(&self) -> TapOffloads {
        *lock(&self.offloads)
    }
}

impl Default for FakeTap {
    fn default() -> Self {
        Self::new()
    }
}

impl NetBackend for FakeTap {
    fn read_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        let Some(frame) = lock(&self.inbound).pop_front() else {
            let _ = self.event.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // Header: ten zero bytes (no offload), then two bytes the TAP skips; then the frame,
        // scattered over the buffers a slice at a time (a byte loop costs the fuzz targets a
        // traced comparison per byte).
        write_at(bufs, 0, &[0; 10]);
        write_at(bufs, VNET_HDR_LEN, &frame);
        Ok(VNET_HDR_LEN + frame.len())
    }

    fn write_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for buf in bufs {
            let mut chunk = vec![0u8; buf.len()];
            buf.copy_to(&mut chunk[..]);
            frame.extend_from_slice(&chunk);
        }
        let len = frame.len();
        lock(&self.sent).push(frame);
        Ok(len)
    }

    fn set_offloads(&self, offloads: TapOffloads) -> io::Result<()> {
        *lock(&self.offloads) = offloads;
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// A TAP made of a datagram socket pair: the device reads and writes one end (through its
/// io_uring, as it does a real TAP's descriptor), the test the other. Each datagram is a frame
/// with its 12-byte header; a read into buffers too short for it returns the truncated length.
#[derive(Debug)]
pub struct SocketTap {
    device: UnixDatagram,
    host: UnixDatagram,
}

impl SocketTap {
    /// A connected pair, the device's end non-blocking.
    pub fn new() -> Self {
        let (device, host) = UnixDatagram::pair().unwrap();
        device.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        Self { device, host }
    }

    /// The host sends `datagram` (header and frame, or anything) to the guest. Returns false
    /// when the socket's buffer was full and the datagram was dropped, as a full TAP drops.
    pub fn inject(&self, datagram: &[u8]) -> bool {
        match self.host.send(datagram) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("SocketTap: {e}"),
        }
    }

    /// Reads and discards what the device has not read; returns how many datagrams that was.
    pub fn drain_unread(&self) -> usize {
        let mut buf = vec![0u8; 1 << 16];
        std::iter::from_fn(|| self.device.recv(&mut buf).ok()).count()
    }

    /// The next datagram the guest sent, if any.
    pub fn receive(&self) -> Option<Vec<u8>> {
        // Room for the largest frame the device sends (64 KiB and its header) and more: a
        // shorter buffer would truncate it here.
        let mut buf = vec![0u8; 1 << 17];
        let len = self.host.recv(&mut buf).ok()?;
        buf.truncate(len);
        Some(buf)
    }
}

impl Default for SocketTap {
    fn default() -> Self {
        Self::new()
    }
}

impl NetBackend for SocketTap {
    fn read_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        squib_host::guest_io::readv_volatile(&self.device, bufs)
    }

    fn write_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        squib_host::guest_io::writev_volatile(&self.device, bufs)
    }

    fn set_offloads(&self, _: TapOffloads) -> io::Result<()> {
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }

    fn ring_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.device.as_fd())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap()
}
