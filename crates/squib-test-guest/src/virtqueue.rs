//! A split virtqueue (virtio 1.2 §2.7) in DMA memory, driven the way Linux's `virtio_ring`
//! does: a free list threaded through the descriptors, the avail index published after the
//! ring entry, and EVENT_IDX notification and interrupt suppression when negotiated.

use core::fmt;
use core::ptr;
use core::sync::atomic::{Ordering, compiler_fence, fence};

use crate::dma::{DmaBuf, OutOfDmaMemory};

/// Largest queue the driver sets up (and the size of its in-flight bitmap).
pub const MAX_SIZE: u16 = 256;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

const DESC_BYTES: usize = 16;

/// One buffer of a request: guest-physical address, length, and who writes it.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

/// A used-ring entry: which chain the device finished, and how many bytes it wrote into it
/// (virtio-blk ignores the length, like Linux's driver, and relies on the status byte).
#[derive(Debug, Clone, Copy)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// Something wrong with a queue operation.
#[derive(Debug, Clone, Copy)]
pub enum QueueError {
    /// Not enough free descriptors for the chain.
    Full { needed: usize, free: u16 },
    /// The device returned a head that is not in flight (or out of range).
    BogusUsedHead { head: u32 },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { needed, free } => {
                write!(f, "queue full: {needed} descriptors needed, {free} free")
            }
            Self::BogusUsedHead { head } => {
                write!(
                    f,
                    "device used descriptor {head}, which is not the head of a request in flight"
                )
            }
        }
    }
}

#[derive(Debug)]
pub struct SplitQueue {
    size: u16,
    event_idx: bool,
    desc: DmaBuf,
    avail: DmaBuf,
    used: DmaBuf,
    free_head: u16,
    free_count: u16,
    /// Our copy of avail.idx.
    next_avail: u16,
    /// avail.idx when the device was last notified.
    notified_avail: u16,
    /// The next used-ring entry to consume.
    last_used: u16,
    /// Heads of the chains the device holds.
    in_flight: [u64; MAX_SIZE as usize / 64],
}

impl SplitQueue {
    /// Allocates and initialises a queue of `size` entries (a power of two up to `MAX_SIZE`).
    pub fn new(size: u16, event_idx: bool) -> Result<Self, OutOfDmaMemory> {
        assert!(
            size.is_power_of_two() && size <= MAX_SIZE,
            "bad queue size {size}"
        );
        let entries = usize::from(size);
        let mut queue = Self {
            size,
            event_idx,
            desc: DmaBuf::new(DESC_BYTES * entries, 16)?,
            // flags, idx, ring[size], used_event
            avail: DmaBuf::new(6 + 2 * entries, 2)?,
            // flags, idx, ring[size] of (id, len), avail_event
            used: DmaBuf::new(6 + 8 * entries, 4)?,
            free_head: 0,
            free_count: size,
            next_avail: 0,
            notified_avail: 0,
            last_used: 0,
            in_flight: [0; MAX_SIZE as usize / 64],
        };
        for index in 0..size {
            queue.set_desc_next(index, index.wrapping_add(1));
        }
        Ok(queue)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Back to the state `new` leaves, on the same memory: for a driver that resets its device
    /// and brings it up again (the device forgets every chain it held).
    pub fn clear(&mut self) {
        self.avail.as_mut_slice().fill(0);
        self.used.as_mut_slice().fill(0);
        self.free_head = 0;
        self.free_count = self.size;
        self.next_avail = 0;
        self.notified_avail = 0;
        self.last_used = 0;
        self.in_flight = [0; MAX_SIZE as usize / 64];
        for index in 0..self.size {
            self.set_desc_next(index, index.wrapping_add(1));
        }
    }

    pub fn desc_addr(&self) -> u64 {
        self.desc.addr()
    }

    pub fn avail_addr(&self) -> u64 {
        self.avail.addr()
    }

    pub fn used_addr(&self) -> u64 {
        self.used.addr()
    }

    /// The head descriptor the next `add` will use.
    pub fn next_head(&self) -> u16 {
        self.free_head
    }

    /// Chains `segments` into free descriptors and makes the chain available; returns its head.
    /// The device sees it once notified (`should_notify` decides whether that is needed).
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, QueueError> {
        if segments.is_empty() || segments.len() > usize::from(self.free_count) {
            return Err(QueueError::Full {
                needed: segments.len(),
                free: self.free_count,
            });
        }
        let head = self.free_head;
        let mut index = head;
        for (position, segment) in segments.iter().enumerate() {
            let last = position + 1 == segments.len();
            let next = self.desc_next(index);
            let flags = if segment.device_writes {
                DESC_F_WRITE
            } else {
                0
            } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(index, segment.addr, segment.len, flags);
            if last {
                self.free_head = next;
            }
            index = next;
        }
        self.free_count -= segments.len() as u16;
        self.in_flight[usize::from(head) / 64] |= 1 << (head % 64);

        let slot = 4 + 2 * usize::from(self.next_avail % self.size);
        write_u16(&self.avail, slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
        // The ring entry (and the request's buffers) must be visible before the index.
        fence(Ordering::Release);
        write_u16(&self.avail, 2, self.next_avail);
        Ok(head)
    }

    /// Whether the device wants a notification for what was added since the last one.
    pub fn should_notify(&mut self) -> bool {
        // The avail index must be visible before the device's suppression state is read.
        fence(Ordering::SeqCst);
        let (old, new) = (self.notified_avail, self.next_avail);
        self.notified_avail = new;
        if self.event_idx {
            let avail_event = read_u16(&self.used, 4 + 8 * usize::from(self.size));
            need_event(avail_event, new, old)
        } else {
            read_u16(&self.used, 0) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Takes the next used entry, if the device has produced one, and frees its chain.
    pub fn pop_used(&mut self) -> Result<Option<Used>, QueueError> {
        if read_u16(&self.used, 2) == self.last_used {
            return Ok(None);
        }
        // Read the entry only after seeing the index that covers it.
        fence(Ordering::Acquire);
        let slot = 4 + 8 * usize::from(self.last_used % self.size);
        let head = read_u32(&self.used, slot);
        let len = read_u32(&self.used, slot + 4);
        let in_flight = u16::try_from(head)
            .ok()
            .filter(|&head| head < self.size)
            .filter(|&head| self.in_flight[usize::from(head) / 64] & 1 << (head % 64) != 0);
        let Some(head) = in_flight else {
            return Err(QueueError::BogusUsedHead { head });
        };
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight[usize::from(head) / 64] &= !(1 << (head % 64));
        self.free_chain(head);
        Ok(Some(Used { head, len }))
    }

    /// Asks for an interrupt at the next completion. Returns false if completions are already
    /// waiting (so the caller must not wait for an interrupt that may not come).
    pub fn enable_interrupts(&mut self) -> bool {
        if self.event_idx {
            write_u16(&self.avail, 4 + 2 * usize::from(self.size), self.last_used);
        } else {
            write_u16(&self.avail, 0, 0);
        }
        fence(Ordering::SeqCst);
        read_u16(&self.used, 2) == self.last_used
    }

    /// Tells the device that no interrupts are wanted (a hint; the device may still send some).
    pub fn disable_interrupts(&mut self) {
        write_u16(&self.avail, 0, AVAIL_F_NO_INTERRUPT);
        if self.event_idx {
            // As far from the used index as it gets.
            let far = self.last_used.wrapping_add(0x8000);
            write_u16(&self.avail, 4 + 2 * usize::from(self.size), far);
        }
    }

    fn free_chain(&mut self, head: u16) {
        let mut index = head;
        let mut count = 1;
        while self.desc_flags(index) & DESC_F_NEXT != 0 {
            index = self.desc_next(index);
            count += 1;
        }
        self.set_desc_next(index, self.free_head);
        self.free_head = head;
        self.free_count += count;
    }

    fn write_desc(&mut self, index: u16, addr: u64, len: u32, flags: u16) {
        let base = DESC_BYTES * usize::from(index);
        write_u64(&self.desc, base, addr);
        write_u32(&self.desc, base + 8, len);
        write_u16(&self.desc, base + 12, flags);
    }

    fn desc_flags(&self, index: u16) -> u16 {
        read_u16(&self.desc, DESC_BYTES * usize::from(index) + 12)
    }

    fn desc_next(&self, index: u16) -> u16 {
        read_u16(&self.desc, DESC_BYTES * usize::from(index) + 14)
    }

    fn set_desc_next(&mut self, index: u16, next: u16) {
        write_u16(&self.desc, DESC_BYTES * usize::from(index) + 14, next);
    }
}

/// virtio's `vring_need_event`: did `new` pass `event` since `old`?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

// Ring fields are shared with the device: every access is volatile, at an in-bounds, naturally
// aligned offset (the offsets above are multiples of the field size and `DmaBuf`s are aligned).

fn field<T>(buf: &DmaBuf, offset: usize) -> *mut T {
    assert!(
        offset + size_of::<T>() <= buf.len(),
        "ring field {offset} out of bounds"
    );
    buf.addr_at(offset) as *mut T
}

fn read_u16(buf: &DmaBuf, offset: usize) -> u16 {
    // SAFETY: `field` checked the bounds; the address is aligned DMA memory (see above).
    unsafe { ptr::read_volatile(field(buf, offset)) }
}

fn read_u32(buf: &DmaBuf, offset: usize) -> u32 {
    // SAFETY: as in `read_u16`.
    unsafe { ptr::read_volatile(field(buf, offset)) }
}

fn write_u16(buf: &DmaBuf, offset: usize, value: u16) {
    // SAFETY: as in `read_u16`; the driver owns these fields (the device only reads them).
    unsafe { ptr::write_volatile(field(buf, offset), value) }
    compiler_fence(Ordering::SeqCst);
}

fn write_u32(buf: &DmaBuf, offset: usize, value: u32) {
    // SAFETY: as in `write_u16`.
    unsafe { ptr::write_volatile(field(buf, offset), value) }
}

fn write_u64(buf: &DmaBuf, offset: usize, value: u64) {
    // SAFETY: as in `write_u16`.
    unsafe { ptr::write_volatile(field(buf, offset), value) }
}
