//! `GuestDriver`: plays the guest side of a virtio-mmio device with split virtqueues. Ring
//! operations act on the selected queue ([`GuestDriver::select_queue`]; queue 0 at first).
//!
//! Guest memory layout (each queue uses the device's maximum size, at most 256 entries; queue
//! `q`'s rings are `q * QUEUE_STRIDE` above queue 0's, for at most [`MAX_QUEUES`] queues):
//!
//! | address   | what |
//! |-----------|------|
//! | `0x0000`  | descriptor table (16 bytes × size) |
//! | `0x1000`  | available ring: flags, idx, ring[size], used_event |
//! | `0x2000`  | used ring: flags, idx, ring[size] (8 bytes each), avail_event |
//! | `0x10000` | buffers, handed out by [`GuestDriver::alloc`] |
//!
//! Nothing here allocates on the heap per request, so benchmarks can count the device's
//! allocations with a global counting allocator.

use std::os::fd::AsRawFd;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::GuestMemory;
use crate::device::VirtioDevice;
use crate::mmio::{MmioTransport, reg};

/// Descriptor table address.
pub const DESC_TABLE: u64 = 0x0000;
/// Available ring address.
pub const AVAIL_RING: u64 = 0x1000;
/// Used ring address.
pub const USED_RING: u64 = 0x2000;
/// First address [`GuestDriver::alloc`] hands out.
pub const HEAP_START: u64 = 0x10000;

const MAX_DRIVER_QUEUE: u16 = 256;
/// Distance between two queues' ring sets.
pub const QUEUE_STRIDE: u64 = 0x4000;
/// Queues the fixed layout holds below [`HEAP_START`].
pub const MAX_QUEUES: usize = (HEAP_START / QUEUE_STRIDE) as usize;

/// The driver's side of one queue.
#[derive(Clone, Copy, Debug, Default)]
struct QueueState {
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    published_idx: u16,
    last_used: u16,
}

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VRING_DESC_F_WRITE`).
    pub device_writes: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// One used-ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the completed chain.
    pub head: u16,
    /// Bytes the device wrote into the chain's buffers.
    pub len: u32,
}

/// A simulated guest driver for the queues of one device.
#[derive(Debug)]
pub struct GuestDriver {
    transport: MmioTransport,
    mem: GuestMemory,
    event_idx: bool,
    queues: [QueueState; MAX_QUEUES],
    /// How many queues `activated` set up.
    queue_count: usize,
    /// The queue ring operations act on.
    current: usize,
    heap_next: u64,
    mem_size: u64,
    interrupts: u64,
    epoll: Epoll,
    /// Whether the device's worker runs inline, on each notification.
    inline: bool,
    /// Guest ranges (`[start, end)`) the driver wrote since the last
    /// [`take_writes`](Self::take_writes), once [`record_writes`](Self::record_writes) asked.
    written: Option<Mutex<Vec<(u64, u64)>>>,
}

/// Rounds an inline worker gets per notification: enough for any batch the harnesses publish;
/// a device that is still busy after them is left for the next notification.
const INLINE_ROUNDS: usize = 64;

impl GuestDriver {
    /// `device` behind a fresh transport over `mem_size` bytes of guest memory at address 0;
    /// the driver has not touched any register yet.
    pub fn new(device: Box<dyn VirtioDevice>, mem_size: usize) -> Self {
        Self::with_memory(device, Self::memory(mem_size))
    }

    /// `device` behind a fresh transport over `mem`, which may have several regions and holes
    /// (for guest-memory-bounds tests). The rings and [`GuestDriver::alloc`] use the region that
    /// starts at address 0, which must exist.
    pub fn with_memory(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Self {
        let mem_size = mem
            .find_region(GuestAddress(0))
            .expect("guest memory must have a region at address 0")
            .len();
        let transport = MmioTransport::new(device, mem.clone()).unwrap();
        let epoll = Epoll::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                transport.interrupt_event().as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        Self {
            transport,
            mem,
            event_idx: false,
            queues: [QueueState::default(); MAX_QUEUES],
            queue_count: 1,
            current: 0,
            heap_next: HEAP_START,
            mem_size,
            interrupts: 0,
            epoll,
            inline: false,
            written: None,
        }
    }

    /// Like [`GuestDriver::new`], but the device's worker runs inline
    /// (`DeviceRuntime::set_inline`): every [`notify`](Self::notify) serves the device on this
    /// thread before returning, and [`run_device`](Self::run_device) serves host-side events.
    pub fn inline(device: Box<dyn VirtioDevice>, mem_size: usize) -> Self {
        Self::inline_with_memory(device, Self::memory(mem_size))
    }

    /// [`GuestDriver::inline`] over `mem` (e.g. memory a fuzz target zeroes and reuses rather
    /// than map afresh for every input).
    pub fn inline_with_memory(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Self {
        let mut driver = Self::with_memory(device, mem);
        driver.transport.runtime_mut().set_inline();
        driver.inline = true;
        driver
    }

    /// `mem_size` bytes of fresh guest memory at address 0, what [`GuestDriver::new`] uses.
    pub fn memory(mem_size: usize) -> GuestMemory {
        squib_host::guest_memory::anonymous(&[(GuestAddress(0), mem_size)], false).unwrap()
    }

    /// Serves what the inline worker has ready; returns whether it went idle. A no-op (true)
    /// unless built with [`GuestDriver::inline`] and activated.
    pub fn run_device(&mut self) -> bool {
        if !self.inline {
            return true;
        }
        self.transport.runtime_mut().run_inline(INLINE_ROUNDS)
    }

    /// The whole probe sequence: reset, ACKNOWLEDGE, DRIVER, accept `features` (which must be
    /// offered), FEATURES_OK, set up every queue the device has at its maximum size (capped at
    /// 256), DRIVER_OK. Queue 0 is selected.
    pub fn activated(device: Box<dyn VirtioDevice>, mem_size: usize, features: u64) -> Self {
        Self::activated_on(Self::new(device, mem_size), features)
    }

    /// [`GuestDriver::activated`] over `mem` (e.g. memory that tracks dirty pages).
    pub fn activated_with_memory(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        features: u64,
    ) -> Self {
        Self::activated_on(Self::with_memory(device, mem), features)
    }

    fn activated_on(mut driver: Self, features: u64) -> Self {
        assert!(
            driver.negotiate(features),
            "the device refused features {features:#x}"
        );
        for index in 0..MAX_QUEUES {
            driver.write_reg(reg::QUEUE_SEL, index as u32);
            let max = driver.read_reg(reg::QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            driver.current = index;
            driver.setup_queue(u16::try_from(max).unwrap().min(MAX_DRIVER_QUEUE));
            driver.queue_count = index + 1;
        }
        driver.current = 0;
        driver.write_reg(reg::QUEUE_SEL, 0);
        driver.set_status_bit(VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(
            driver.read_reg(reg::STATUS) & 0x40,
            0,
            "the device asked for a reset at DRIVER_OK"
        );
        driver
    }

    /// Resets the device (Status = 0), zeroes the rings and probes again with `features`, as a
    /// guest does after DEVICE_NEEDS_RESET or on rebinding the driver.
    pub fn reprobe(&mut self, features: u64) {
        self.write_reg(reg::STATUS, 0);
        self.mem
            .write_slice(&[0; (HEAP_START - DESC_TABLE) as usize], GuestAddress(0))
            .unwrap();
        self.wrote(0, HEAP_START - DESC_TABLE);
        assert!(
            self.negotiate(features),
            "the device refused features {features:#x}"
        );
        let selected = self.current;
        for index in 0..self.queue_count {
            self.current = index;
            let size = self.queues[index].size;
            self.queues[index] = QueueState::default();
            self.setup_queue(size);
        }
        self.current = selected;
        self.set_status_bit(VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// Makes ring operations (chains, kicks, used entries) act on queue `index`.
    pub fn select_queue(&mut self, index: usize) {
        assert!(
            index < MAX_QUEUES,
            "the fixed layout holds {MAX_QUEUES} queues"
        );
        self.current = index;
    }

    /// The selected queue's descriptor table, available and used ring addresses.
    pub fn ring_addresses(&self) -> (u64, u64, u64) {
        let base = QUEUE_STRIDE * self.current as u64;
        (DESC_TABLE + base, AVAIL_RING + base, USED_RING + base)
    }

    fn q(&self) -> &QueueState {
        &self.queues[self.current]
    }

    fn q_mut(&mut self) -> &mut QueueState {
        &mut self.queues[self.current]
    }

    /// The transport, for register-level tests.
    pub fn transport(&mut self) -> &mut MmioTransport {
        &mut self.transport
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// A 4-byte register read.
    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// A 4-byte register write.
    pub fn write_reg(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// Reads Status, ORs `bit` in, writes it back (what Linux's `virtio_add_status` does).
    pub fn set_status_bit(&mut self, bit: u32) {
        let status = self.read_reg(reg::STATUS);
        self.write_reg(reg::STATUS, status | bit);
    }

    /// The device's 64 feature bits.
    pub fn device_features(&mut self) -> u64 {
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read_reg(reg::DEVICE_FEATURES);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read_reg(reg::DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns whether the device
    /// kept FEATURES_OK set.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write_reg(reg::STATUS, 0);
        self.set_status_bit(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.set_status_bit(VIRTIO_CONFIG_S_DRIVER);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.set_status_bit(VIRTIO_CONFIG_S_FEATURES_OK);
        self.event_idx = features & crate::device::FEATURE_EVENT_IDX != 0;
        self.read_reg(reg::STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Programs the selected queue with `size` entries at its fixed ring addresses and marks it
    /// ready.
    pub fn setup_queue(&mut self, size: u16) {
        assert!(
            size <= MAX_DRIVER_QUEUE,
            "the fixed ring layout holds 256 entries"
        );
        self.write_reg(reg::QUEUE_SEL, self.current as u32);
        self.write_reg(reg::QUEUE_NUM, u32::from(size));
        let (desc, avail, used) = self.ring_addresses();
        for (low, addr) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            self.write_reg(low, addr as u32);
            self.write_reg(low + 4, (addr >> 32) as u32);
        }
        self.write_reg(reg::QUEUE_READY, 1);
        self.q_mut().size = size;
    }

    /// `len` bytes of guest memory for buffers, 16-byte aligned (never freed).
    pub fn alloc(&mut self, len: u32) -> GuestAddress {
        let addr = self.heap_next;
        let next = (addr + u64::from(len)).next_multiple_of(16);
        assert!(next <= self.mem_size, "the test ran out of guest memory");
        self.heap_next = next;
        GuestAddress(addr)
    }

    /// Writes one descriptor-table entry.
    pub fn write_descriptor(
        &self,
        index: u16,
        addr: GuestAddress,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.0.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let (desc, _, _) = self.ring_addresses();
        self.mem
            .write_slice(&raw, GuestAddress(desc + 16 * u64::from(index)))
            .unwrap();
        self.wrote(desc + 16 * u64::from(index), 16);
    }

    /// Writes `bufs` as a chain into the next free descriptors (the table is used as a ring;
    /// callers keep fewer than `size` descriptors in flight) and queues its head in the
    /// available ring (not yet published: see [`GuestDriver::kick`]). Returns the head index.
    pub fn add_chain(&mut self, bufs: impl IntoIterator<Item = Buf>) -> u16 {
        let head = self.q().next_desc;
        let mut bufs = bufs.into_iter().peekable();
        assert!(bufs.peek().is_some(), "a chain needs at least one buffer");
        while let Some(buf) = bufs.next() {
            let index = self.q().next_desc;
            let size = self.q().size;
            self.q_mut().next_desc = (index + 1) % size;
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if bufs.peek().is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_descriptor(index, buf.addr, buf.len, flags, self.q().next_desc);
        }
        self.push_avail(head);
        head
    }

    /// Writes `bufs` as an indirect descriptor table in freshly allocated guest memory (each
    /// entry's `next` is the following one) and returns its address and length in bytes.
    pub fn write_indirect_table(&mut self, bufs: &[Buf]) -> (GuestAddress, u32) {
        let len = u32::try_from(16 * bufs.len()).expect("indirect table too large");
        let table = self.alloc(len);
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&buf.addr.0.to_le_bytes());
            raw[8..12].copy_from_slice(&buf.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&(i as u16).wrapping_add(1).to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(table.0 + 16 * i as u64))
                .unwrap();
            self.wrote(table.0 + 16 * i as u64, 16);
        }
        (table, len)
    }

    /// Queues `bufs` as one indirect descriptor (`VRING_DESC_F_INDIRECT`) pointing at a table of
    /// them; returns the head index (call [`GuestDriver::kick`] to publish).
    pub fn add_indirect_chain(&mut self, bufs: &[Buf]) -> u16 {
        let (table, len) = self.write_indirect_table(bufs);
        let head = self.q().next_desc;
        let q = self.q_mut();
        q.next_desc = (head + 1) % q.size;
        self.write_descriptor(head, table, len, VRING_DESC_F_INDIRECT as u16, 0);
        self.push_avail(head);
        head
    }

    /// Moves the descriptor cursor past `count` descriptors, e.g. ones a test wrote by hand with
    /// [`GuestDriver::write_descriptor`].
    pub fn skip_descriptors(&mut self, count: u16) {
        let q = self.q_mut();
        q.next_desc = (q.next_desc + count) % q.size;
    }

    /// Queues descriptor `head` in the available ring without publishing it.
    pub fn push_avail(&mut self, head: u16) {
        let slot = u64::from(self.q().avail_idx % self.q().size);
        let (_, avail, _) = self.ring_addresses();
        self.mem
            .write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.wrote(avail + 4 + 2 * slot, 2);
        let q = self.q_mut();
        q.avail_idx = q.avail_idx.wrapping_add(1);
    }

    /// Publishes everything queued (`avail.idx`) and notifies the selected queue — with EVENT_IDX only if
    /// the device's `avail_event` asks for it, as Linux's `virtqueue_kick_prepare` does. A device
    /// that forgets to re-check its ring after re-enabling notifications then misses requests.
    pub fn kick(&mut self) {
        if self.publish() {
            self.notify();
        }
    }

    /// The first half of [`kick`](Self::kick): publishes everything queued and returns whether
    /// the device wants a notification for it (always without EVENT_IDX).
    pub fn publish(&mut self) -> bool {
        let (old, new) = (self.q().published_idx, self.q().avail_idx);
        self.publish_avail_idx(new);
        fence(Ordering::SeqCst);
        let event = self.avail_event();
        // vring_need_event: notify if `event` lies in (old, new].
        !self.event_idx || new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Writes QueueNotify for the selected queue unconditionally.
    pub fn notify(&mut self) {
        self.write_reg(reg::QUEUE_NOTIFY, self.current as u32);
        self.run_device();
    }

    /// Stores `idx` in `avail.idx`, whatever the queued entries say (for broken-driver tests).
    pub fn publish_avail_idx(&mut self, idx: u16) {
        self.q_mut().published_idx = idx;
        fence(Ordering::SeqCst);
        let (_, avail, _) = self.ring_addresses();
        self.mem
            .store(idx.to_le(), GuestAddress(avail + 2), Ordering::Release)
            .unwrap();
        self.wrote(avail + 2, 2);
    }

    /// The device's `used.idx`.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(self.ring_addresses().2 + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// The used ring's `flags`: 1 (VRING_USED_F_NO_NOTIFY) while the device asks not to be
    /// notified (without EVENT_IDX).
    pub fn used_flags(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(self.ring_addresses().2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// `used_event`: the driver asks for an interrupt once the device passes this used index.
    pub fn set_used_event(&self, value: u16) {
        let addr = self.ring_addresses().1 + 4 + 2 * u64::from(self.q().size);
        self.mem
            .store(value.to_le(), GuestAddress(addr), Ordering::Release)
            .unwrap();
        self.wrote(addr, 2);
    }

    /// The available ring's `flags`: 1 (VRING_AVAIL_F_NO_INTERRUPT) asks the device not to
    /// interrupt (without EVENT_IDX).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem
            .store(
                flags.to_le(),
                GuestAddress(self.ring_addresses().1),
                Ordering::Release,
            )
            .unwrap();
        self.wrote(self.ring_addresses().1, 2);
    }

    /// `avail_event`: the device asks for a notification once the driver passes this index.
    pub fn avail_event(&self) -> u16 {
        let addr = self.ring_addresses().2 + 4 + 8 * u64::from(self.q().size);
        u16::from_le(
            self.mem
                .load(GuestAddress(addr), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// The next completed chain, if the device returned one.
    pub fn pop_used(&mut self) -> Option<Used> {
        let last_used = self.q().last_used;
        if self.used_idx() == last_used {
            return None;
        }
        let slot = u64::from(last_used % self.q().size);
        let mut raw = [0u8; 8];
        self.mem
            .read_slice(
                &mut raw,
                GuestAddress(self.ring_addresses().2 + 4 + 8 * slot),
            )
            .unwrap();
        self.q_mut().last_used = last_used.wrapping_add(1);
        let [i0, i1, _, _, l0, l1, l2, l3] = raw;
        Some(Used {
            head: u16::from_le_bytes([i0, i1]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
        })
    }

    /// Waits (up to 5 s) for the next completed chain, sleeping on the interrupt like a guest:
    /// with EVENT_IDX it first asks for an interrupt at the next completion.
    pub fn wait_used(&mut self) -> Option<Used> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = [EpollEvent::default(); 1];
        loop {
            if let Some(used) = self.pop_used() {
                return Some(used);
            }
            if self.event_idx {
                self.set_used_event(self.q().last_used);
                fence(Ordering::SeqCst);
                if let Some(used) = self.pop_used() {
                    return Some(used);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            if self.epoll.wait(10, &mut events).unwrap_or(0) > 0 {
                self.drain_interrupts();
            }
        }
    }

    /// Interrupts received so far (consumes the pending eventfd count).
    pub fn interrupts(&mut self) -> u64 {
        self.drain_interrupts();
        self.interrupts
    }

    fn drain_interrupts(&mut self) {
        if let Ok(count) = self.transport.interrupt_event().read() {
            self.interrupts += count;
        }
    }

    /// Reads `len` bytes of guest memory.
    pub fn read_bytes(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.mem.read_slice(&mut out, addr).unwrap();
        out
    }

    /// Writes `bytes` into guest memory.
    pub fn write_bytes(&self, addr: GuestAddress, bytes: &[u8]) {
        self.mem.write_slice(bytes, addr).unwrap();
        self.wrote(addr.0, bytes.len() as u64);
    }

    /// From now on, remembers which guest ranges the driver writes (not the device): an oracle
    /// that keeps a copy of guest memory then refreshes only those ranges before the device
    /// runs, instead of copying all of it.
    pub fn record_writes(&mut self) {
        self.written = Some(Mutex::new(Vec::new()));
    }

    /// The `[start, end)` ranges the driver wrote since the last call (or since
    /// [`record_writes`](Self::record_writes)), oldest first, moved into `into`.
    pub fn take_writes(&self, into: &mut Vec<(u64, u64)>) {
        if let Some(written) = &self.written {
            into.append(&mut written.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    fn wrote(&self, addr: u64, len: u64) {
        if let Some(written) = &self.written {
            written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((addr, addr.saturating_add(len)));
        }
    }
}
