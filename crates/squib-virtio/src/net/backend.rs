//! Where frames go: the host side of a virtio-net device.

use std::fmt::Debug;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::GuestSlice;
use squib_host::tap::{Tap, TapOffloads};

/// A frame source and sink with a pollable descriptor, frames carrying a 12-byte virtio-net
/// header. Implemented by [`Tap`]; tests use an in-memory one (`testing::FakeTap`).
pub trait NetBackend: Send + Sync + Debug {
    /// Reads one frame into `bufs`; returns its full length, which exceeds the buffers' total
    /// when it was truncated (the frame is consumed either way). `WouldBlock` when none waits.
    fn read_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize>;

    /// Writes one frame from `bufs`.
    fn write_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize>;

    /// Sets the offloads the reader accepts (what the driver negotiated).
    fn set_offloads(&self, offloads: TapOffloads) -> io::Result<()>;

    /// Readable when a frame waits; the worker epolls it edge-triggered.
    fn raw_fd(&self) -> RawFd;

    /// The descriptor an io_uring may write frames to (`tx_batch.rs`), if the backend has
    /// one; without it every frame goes through [`write_frame`](Self::write_frame).
    fn ring_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl NetBackend for Tap {
    fn read_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        Tap::read_frame(self, bufs)
    }

    fn write_frame(&self, bufs: &[GuestSlice<'_>]) -> io::Result<usize> {
        Tap::write_frame(self, bufs)
    }

    fn set_offloads(&self, offloads: TapOffloads) -> io::Result<()> {
        Tap::set_offloads(self, offloads)
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn ring_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}
