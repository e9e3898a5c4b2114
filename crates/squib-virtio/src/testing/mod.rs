//! Test support (feature `test-util`): a simulated guest driver that programs a transport through
//! its registers and lays out split virtqueues in guest memory, and an in-memory disk.
//!
//! Integration tests and the `device_model` benchmark drive devices through these, the way a
//! guest kernel would. Helpers here panic on misuse (they are test code); the device under test
//! must not.

mod block;
mod driver;
mod hooked_disk;
mod mem_disk;
mod net;
mod vsock;

pub use block::{BlockSlot, STATUS_UNTOUCHED, range_bytes};
pub use driver::{
    AVAIL_RING, Buf, DESC_TABLE, GuestDriver, HEAP_START, MAX_QUEUES, QUEUE_STRIDE, USED_RING, Used,
};
pub use hooked_disk::{DiskAccess, DiskHook, HookedDisk};
pub use mem_disk::MemDisk;
pub use net::{FAKE_TAP_QUEUE, FakeTap, SocketTap};
pub use vsock::{HDR_LEN as VSOCK_HDR_LEN, RING_SIZE, RX_BUF_LEN, VsockGuest, VsockHdr, vsock_op};
