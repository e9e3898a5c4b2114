//! `VsockGuest`: plays a virtio-vsock driver over the three queues (rx 0, tx 1, event 2), with
//! its own encoding of the packet header so that tests check the device against an independent
//! reading of the spec. Each queue is a split ring of [`RING_SIZE`] entries at a fixed place;
//! rx buffers are recycled as the guest consumes them.

use std::os::fd::AsRawFd;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::driver::Buf;
use crate::GuestMemory;
use crate::device::{FEATURE_VERSION_1, VirtioDevice};
use crate::mmio::{MmioTransport, reg};

/// Entries per ring.
pub const RING_SIZE: u16 = 256;
/// Bytes of a vsock header.
pub const HDR_LEN: usize = 44;
/// Bytes of each rx buffer (header + payload), as Linux posts them.
pub const RX_BUF_LEN: u32 = 4096 + HDR_LEN as u32;
/// Guest memory the rig uses.
pub const VSOCK_GUEST_MEM: usize = 16 << 20;
const QUEUE_BASE: [u64; 3] = [0x0, 0x10000, 0x20000];
const RX_BUFS: u64 = 0x100000;
/// Past the last rx buffer: the heap wraps around onto itself, never onto a posted rx buffer.
const HEAP_START: u64 = (RX_BUFS + RING_SIZE as u64 * RX_BUF_LEN as u64).next_multiple_of(0x1000);

/// Packet ops.
#[allow(missing_docs)]
pub mod vsock_op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// A vsock packet header as the test guest sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct VsockHdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl VsockHdr {
    /// Little-endian wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.src_cid.to_le_bytes());
        put(&self.dst_cid.to_le_bytes());
        put(&self.src_port.to_le_bytes());
        put(&self.dst_port.to_le_bytes());
        put(&self.len.to_le_bytes());
        put(&self.type_.to_le_bytes());
        put(&self.op.to_le_bytes());
        put(&self.flags.to_le_bytes());
        put(&self.buf_alloc.to_le_bytes());
        put(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses wire bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        let u = |range: std::ops::Range<usize>| {
            let mut v = [0u8; 8];
            v[..range.len()].copy_from_slice(&b[range]);
            u64::from_le_bytes(v)
        };
        Self {
            src_cid: u(0..8),
            dst_cid: u(8..16),
            src_port: u(16..20) as u32,
            dst_port: u(20..24) as u32,
            len: u(24..28) as u32,
            type_: u(28..30) as u16,
            op: u(30..32) as u16,
            flags: u(32..36) as u32,
            buf_alloc: u(36..40) as u32,
            fwd_cnt: u(40..44) as u32,
        }
    }
}

#[derive(Debug)]
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
}

/// A simulated virtio-vsock driver.
#[derive(Debug)]
pub struct VsockGuest {
    transport: MmioTransport,
    mem: GuestMemory,
    rings: [Ring; 3],
    heap_next: u64,
    epoll: Epoll,
    /// rx buffers posted since the last rx kick.
    unkicked_rx: u16,
    /// Guest CID read from config space.
    pub cid: u64,
}

impl VsockGuest {
    /// Probes `device` (VERSION_1 only), sets up the three queues, DRIVER_OK, and posts
    /// `RING_SIZE` rx buffers.
    pub fn activated(device: Box<dyn VirtioDevice>) -> Self {
        let mem = squib_host::guest_memory::anonymous(&[(GuestAddress(0), VSOCK_GUEST_MEM)], false)
            .unwrap();
        let transport = MmioTransport::new(device, mem.clone()).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                transport.interrupt_event().as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        let mut guest = Self {
            transport,
            mem,
            rings: QUEUE_BASE.map(|base| Ring {
                base,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
            }),
            heap_next: HEAP_START,
            epoll,
            unkicked_rx: 0,
            cid: 0,
        };
        guest.write_reg(reg::STATUS, 0);
        guest.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        guest.add_status(VIRTIO_CONFIG_S_DRIVER);
        guest.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        guest.write_reg(reg::DRIVER_FEATURES, (FEATURE_VERSION_1 >> 32) as u32);
        guest.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        for (index, base) in QUEUE_BASE.iter().enumerate() {
            guest.write_reg(reg::QUEUE_SEL, index as u32);
            guest.write_reg(reg::QUEUE_NUM, u32::from(RING_SIZE));
            for (low, addr) in [
                (0x080, *base),
                (0x090, base + 0x1000),
                (0x0a0, base + 0x2000),
            ] {
                guest.write_reg(low, addr as u32);
                guest.write_reg(low + 4, (addr >> 32) as u32);
            }
            guest.write_reg(reg::QUEUE_READY, 1);
        }
        guest.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            guest.read_reg(reg::STATUS) & 0xcf,
            0x0f,
            "the device did not activate"
        );
        let low = guest.read_reg(reg::CONFIG);
        let high = guest.read_reg(reg::CONFIG + 4);
        guest.cid = u64::from(low) | (u64::from(high) << 32);
        for slot in 0..RING_SIZE {
            guest.post_rx(slot);
        }
        guest.kick(0);
        guest
    }

    /// The transport (pause, resume, save and restore).
    pub fn transport(&mut self) -> &mut MmioTransport {
        &mut self.transport
    }

    /// Replaces the transport with one for `device` over the same guest memory (a snapshot
    /// restored into a new VMM); returns the old one.
    pub fn swap_device(&mut self, device: Box<dyn VirtioDevice>) -> MmioTransport {
        let transport = MmioTransport::new(device, self.mem.clone()).unwrap();
        self.epoll
            .ctl(
                ControlOperation::Delete,
                self.transport.interrupt_event().as_raw_fd(),
                EpollEvent::default(),
            )
            .unwrap();
        self.epoll
            .ctl(
                ControlOperation::Add,
                transport.interrupt_event().as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        std::mem::replace(&mut self.transport, transport)
    }

    /// The transport's Status register.
    pub fn status(&mut self) -> u32 {
        self.read_reg(reg::STATUS)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn add_status(&mut self, bits: u32) {
        let status = self.read_reg(reg::STATUS);
        self.write_reg(reg::STATUS, status | bits);
    }

    /// Notifies queue `index`.
    pub fn kick(&mut self, index: u16) {
        fence(Ordering::SeqCst);
        self.transport.queue_events()[usize::from(index)]
            .write(1)
            .unwrap();
    }

    /// Notifies queue `index` unless the device asked not to be (`VRING_USED_F_NO_NOTIFY`, set
    /// while it drains the ring), as Linux's `virtqueue_kick_prepare` does without EVENT_IDX.
    pub fn notify(&mut self, index: u16) {
        fence(Ordering::SeqCst);
        let flags: u16 = self
            .mem
            .read_obj(GuestAddress(self.rings[usize::from(index)].used()))
            .unwrap();
        if flags & VRING_USED_F_NO_NOTIFY as u16 == 0 {
            self.kick(index);
        }
    }

    /// `len` bytes of guest memory (never freed; wraps around the heap when it runs out, which
    /// is fine for buffers whose packets completed).
    pub fn alloc(&mut self, len: u32) -> GuestAddress {
        if self.heap_next + u64::from(len) > VSOCK_GUEST_MEM as u64 {
            self.heap_next = HEAP_START;
        }
        let addr = self.heap_next;
        self.heap_next = (addr + u64::from(len)).next_multiple_of(16);
        GuestAddress(addr)
    }

    /// Writes guest memory.
    pub fn write(&self, addr: GuestAddress, bytes: &[u8]) {
        self.mem.write_slice(bytes, addr).unwrap();
    }

    /// Reads guest memory.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem.read_slice(&mut out, addr).unwrap();
        out
    }

    /// Adds a chain of `bufs` to queue `index` and publishes it (no kick).
    pub fn add_chain(&mut self, index: usize, bufs: &[Buf]) -> u16 {
        let ring = &mut self.rings[index];
        let head = ring.next_desc;
        for (position, buf) in bufs.iter().enumerate() {
            let desc = ring.next_desc;
            ring.next_desc = (ring.next_desc + 1) % RING_SIZE;
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if position + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = GuestAddress(ring.desc() + 16 * u64::from(desc));
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&buf.addr.0.to_le_bytes());
            raw[8..12].copy_from_slice(&buf.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&ring.next_desc.to_le_bytes());
            self.mem.write_slice(&raw, at).unwrap();
        }
        let ring = &mut self.rings[index];
        let slot = u64::from(ring.avail_idx % RING_SIZE);
        self.mem
            .write_obj(head, GuestAddress(ring.avail() + 4 + 2 * slot))
            .unwrap();
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(ring.avail_idx, GuestAddress(ring.avail() + 2))
            .unwrap();
        head
    }

    /// The next used entry of queue `index`: `(head, len)`.
    pub fn pop_used(&mut self, index: usize) -> Option<(u16, u32)> {
        let ring = &mut self.rings[index];
        fence(Ordering::SeqCst);
        let used_idx: u16 = self.mem.read_obj(GuestAddress(ring.used() + 2)).unwrap();
        if used_idx == ring.last_used {
            return None;
        }
        let slot = u64::from(ring.last_used % RING_SIZE);
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(ring.used() + 4 + 8 * slot))
            .unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(ring.used() + 8 + 8 * slot))
            .unwrap();
        ring.last_used = ring.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    fn post_rx(&mut self, slot: u16) {
        let addr = GuestAddress(RX_BUFS + u64::from(slot) * u64::from(RX_BUF_LEN));
        // Descriptor `slot` always carries rx buffer `slot`: the ring is exactly full.
        self.rings[0].next_desc = slot;
        self.add_chain(0, &[Buf::writable(addr, RX_BUF_LEN)]);
    }

    /// Sends one packet on the tx queue (header and payload in separate buffers, as Linux
    /// does) and kicks unless the device is draining the ring. The chain's completion is collected by [`VsockGuest::reap_tx`].
    pub fn send(&mut self, hdr: &VsockHdr, payload: &[u8]) {
        let h = self.alloc(HDR_LEN as u32);
        self.write(h, &hdr.to_bytes());
        if payload.is_empty() {
            self.add_chain(1, &[Buf::readable(h, HDR_LEN as u32)]);
        } else {
            let p = self.alloc(payload.len() as u32);
            self.write(p, payload);
            self.add_chain(
                1,
                &[
                    Buf::readable(h, HDR_LEN as u32),
                    Buf::readable(p, payload.len() as u32),
                ],
            );
        }
        self.notify(1);
    }

    /// Waits until the device has completed every tx chain published so far.
    pub fn flush_tx(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            while self.pop_used(1).is_some() {}
            if self.rings[1].last_used == self.rings[1].avail_idx {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Collects completed tx chains; returns how many.
    pub fn reap_tx(&mut self) -> usize {
        let mut count = 0;
        while self.pop_used(1).is_some() {
            count += 1;
        }
        count
    }

    /// The next packet the device delivered, waiting up to `timeout`; its rx buffer is posted
    /// again at once, and the device notified once per 16 buffers (as a driver batches refills)
    /// or before the guest waits.
    pub fn recv(&mut self, timeout: Duration) -> Option<(VsockHdr, Vec<u8>)> {
        let mut payload = Vec::new();
        let hdr = self.recv_into(timeout, &mut payload)?;
        Some((hdr, payload))
    }

    /// [`VsockGuest::recv`] with the payload copied once into `payload` (replacing its
    /// contents, reusing its memory), as a driver copies a packet to its reader.
    pub fn recv_into(&mut self, timeout: Duration, payload: &mut Vec<u8>) -> Option<VsockHdr> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((head, len)) = self.pop_used(0) {
                let addr = GuestAddress(RX_BUFS + u64::from(head) * u64::from(RX_BUF_LEN));
                let mut raw = [0u8; HDR_LEN];
                let hdr_len = HDR_LEN.min(len as usize);
                self.mem.read_slice(&mut raw[..hdr_len], addr).unwrap();
                let hdr = VsockHdr::from_bytes(&raw);
                let data_len = (len as usize).saturating_sub(HDR_LEN);
                payload.resize(data_len, 0);
                self.mem
                    .read_slice(payload, addr.unchecked_add(HDR_LEN as u64))
                    .unwrap();
                self.post_rx(head);
                self.unkicked_rx += 1;
                if self.unkicked_rx >= 16 {
                    self.unkicked_rx = 0;
                    self.kick(0);
                }
                return Some(hdr);
            }
            if self.unkicked_rx > 0 {
                self.unkicked_rx = 0;
                self.kick(0);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut events = [EpollEvent::default(); 1];
            if self.epoll.wait(5, &mut events).unwrap_or(0) > 0 {
                let _ = self.transport.interrupt_event().read();
            }
        }
    }

    /// The next event-queue entry (`(head, len)`), after posting one 8-byte buffer if none is.
    pub fn post_event_buffer(&mut self) -> GuestAddress {
        let addr = self.alloc(8);
        self.add_chain(2, &[Buf::writable(addr, 8)]);
        self.kick(2);
        addr
    }
}
