//! Split virtqueues: what the driver programs through the transport ([`QueueConfig`]) and the
//! device-side queue a worker consumes ([`VirtQueue`]).
//!
//! `VirtQueue` wraps `virtio_queue::Queue`, which checks ring alignment and refuses an
//! `avail.idx` more than `size` entries ahead of the device. The wrapper turns those checks into
//! errors a device can act on instead of log lines, and gives the block path a small vocabulary:
//! pop, complete, notify. Chains are walked by [`Chain`], which applies the rules every device
//! relies on (virtio 1.2 §2.7.5.3), direct and indirect alike.

use std::mem::size_of;
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemory;

/// Why a chain ended before its last descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A `next` index (or the head) beyond the table.
    #[error("descriptor index {index} is outside a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table's length in descriptors.
        size: u16,
    },
    /// More descriptors than the table holds: a loop.
    #[error("the chain is longer than its table of {0} descriptors (a loop)")]
    TooLong(u16),
    /// A descriptor that is not in guest memory.
    #[error("descriptor at {0:#x} is not in guest memory")]
    DescriptorOutsideMemory(u64),
    /// The buffers' lengths add up to more than 4 GiB.
    #[error("the chain's buffers add up to more than 4 GiB")]
    LengthOverflow,
    /// `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect table")]
    NestedIndirect,
    /// An indirect descriptor with `NEXT` set (virtio 1.2 §2.7.5.3.1: the driver must not).
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect table that is empty, not a whole number of descriptors, longer than the
    /// queue, misaligned or not in guest memory.
    #[error(
        "indirect table {addr:#x}+{len:#x} is empty, misaligned, longer than the queue or not in guest memory"
    )]
    BadIndirectTable {
        /// Table address.
        addr: u64,
        /// Table length in bytes.
        len: u32,
    },
}

/// One descriptor chain, walked lazily: an iterator over its buffers' descriptors that stops at
/// the first rule broken and keeps the reason ([`Chain::error`]). A chain cut short always ends
/// on a descriptor with `NEXT` set, so a device that requires the last descriptor to end the
/// chain (a status byte) refuses it without looking at the error.
///
/// Rules: indices inside their table; at most one table's worth of descriptors per table (a
/// loop ends there); the buffers' lengths fit in 32 bits; an indirect descriptor only when
/// `VIRTIO_F_INDIRECT_DESC` was negotiated, never inside an indirect table, never with `NEXT`;
/// an indirect table 16-byte aligned, non-empty, a whole number of descriptors, no longer than
/// the queue, and in guest memory.
#[derive(Clone, Debug)]
pub struct Chain<'m> {
    mem: &'m GuestMemory,
    head_index: u16,
    queue_size: u16,
    indirect_allowed: bool,
    table: GuestAddress,
    table_size: u16,
    next_index: u16,
    /// Descriptors still allowed from the current table.
    ttl: u16,
    in_indirect: bool,
    yielded_bytes: u32,
    done: bool,
    error: Option<ChainError>,
}

impl<'m> Chain<'m> {
    fn new(
        mem: &'m GuestMemory,
        desc_table: GuestAddress,
        queue_size: u16,
        head_index: u16,
        indirect_allowed: bool,
    ) -> Self {
        Self {
            mem,
            head_index,
            queue_size,
            indirect_allowed,
            table: desc_table,
            table_size: queue_size,
            next_index: head_index,
            ttl: queue_size,
            in_indirect: false,
            yielded_bytes: 0,
            done: false,
            error: None,
        }
    }

    /// The index of the chain's first descriptor, which goes back in the used ring.
    pub fn head_index(&self) -> u16 {
        self.head_index
    }

    /// Why the walk stopped early, once it has.
    pub fn error(&self) -> Option<ChainError> {
        self.error
    }

    fn fail(&mut self, error: ChainError) -> Option<Descriptor> {
        self.done = true;
        self.error = Some(error);
        None
    }

    fn read(&self, index: u16) -> Result<Descriptor, ChainError> {
        if index >= self.table_size {
            return Err(ChainError::IndexOutOfRange {
                index,
                size: self.table_size,
            });
        }
        let addr = self
            .table
            .0
            .checked_add(u64::from(index) * size_of::<Descriptor>() as u64)
            .ok_or(ChainError::DescriptorOutsideMemory(self.table.0))?;
        self.mem
            .read_obj::<Descriptor>(GuestAddress(addr))
            .map_err(|_| ChainError::DescriptorOutsideMemory(addr))
    }

    fn enter_indirect(&mut self, desc: &Descriptor) -> Result<(), ChainError> {
        if !self.indirect_allowed {
            return Err(ChainError::IndirectNotNegotiated);
        }
        if self.in_indirect {
            return Err(ChainError::NestedIndirect);
        }
        if desc.has_next() {
            return Err(ChainError::IndirectWithNext);
        }
        let (addr, len) = (desc.addr(), desc.len());
        let entries = len / size_of::<Descriptor>() as u32;
        let bad = len == 0
            || len % size_of::<Descriptor>() as u32 != 0
            || entries > u32::from(self.queue_size)
            || addr.0 % size_of::<Descriptor>() as u64 != 0
            || !GuestMemoryBackend::check_range(self.mem, addr, len as usize);
        if bad {
            return Err(ChainError::BadIndirectTable { addr: addr.0, len });
        }
        self.table = addr;
        // `entries` is at most the queue size, a u16.
        self.table_size = entries as u16;
        self.next_index = 0;
        self.ttl = self.table_size;
        self.in_indirect = true;
        Ok(())
    }
}

impl Iterator for Chain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.done {
            return None;
        }
        if self.ttl == 0 {
            return self.fail(ChainError::TooLong(self.table_size));
        }
        let mut desc = match self.read(self.next_index) {
            Ok(desc) => desc,
            Err(error) => return self.fail(error),
        };
        if desc.refers_to_indirect_table() {
            if let Err(error) = self.enter_indirect(&desc) {
                return self.fail(error);
            }
            desc = match self.read(0) {
                Ok(desc) => desc,
                Err(error) => return self.fail(error),
            };
            if desc.refers_to_indirect_table() {
                return self.fail(ChainError::NestedIndirect);
            }
        }
        self.yielded_bytes = match self.yielded_bytes.checked_add(desc.len()) {
            Some(total) => total,
            None => return self.fail(ChainError::LengthOverflow),
        };
        self.ttl -= 1;
        if desc.has_next() {
            self.next_index = desc.next();
        } else {
            self.done = true;
        }
        Some(desc)
    }
}

/// What the driver wrote for one queue through the transport registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// QueueNumMax: the largest size the device supports (a power of two).
    pub max_size: u16,
    /// QueueNum: the size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// QueueDescLow/High.
    pub desc_table: u64,
    /// QueueDriverLow/High.
    pub avail_ring: u64,
    /// QueueDeviceLow/High.
    pub used_ring: u64,
}

impl QueueConfig {
    /// The reset state of a queue whose device supports `max_size` entries.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }
}

/// Why a queue cannot be used, or stopped being usable.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver activated the device without marking the queue ready.
    #[error("the driver did not set QueueReady")]
    NotReady,
    /// The driver's QueueNum, ring addresses or ring placement are invalid.
    #[error("invalid queue setup: {0}")]
    InvalidSetup(virtio_queue::Error),
    /// The rings do not lie inside guest memory.
    #[error(
        "rings (desc {desc:#x}, avail {avail:#x}, used {used:#x}, size {size}) are not all in guest memory"
    )]
    RingsOutsideMemory {
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
        /// Queue size.
        size: u16,
    },
    /// The driver broke the ring protocol (e.g. `avail.idx` more than the queue size ahead).
    #[error("the driver broke the ring protocol: {0}")]
    Broken(virtio_queue::Error),
}

/// Everything needed to rebuild a running queue: the driver's configuration and the device's
/// progress through the rings (virtio-queue's `QueueState`, in a form a snapshot can store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// The next available-ring entry the device will read.
    pub next_avail: u16,
    /// The next used-ring entry the device will write.
    pub next_used: u16,
    /// Whether EVENT_IDX was negotiated.
    pub event_idx: bool,
}

impl QueueSnapshot {
    /// The driver's configuration of this queue, as the transport registers hold it.
    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            max_size: self.max_size,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }
}

/// The device side of one split virtqueue.
#[derive(Debug)]
pub struct VirtQueue {
    queue: Queue,
    indirect: bool,
    /// The driver's `avail.idx` when last read. Every chain before it is published, so [`pop`]
    /// reads the index again only once it has caught up: the driver's CPU keeps writing that
    /// cache line, and re-reading it for every chain was 95 % of `pop`'s time while a guest
    /// streamed frames from the other core (one cross-core cache miss per chain).
    ///
    /// [`pop`]: Self::pop
    known_avail: Wrapping<u16>,
}

impl VirtQueue {
    /// Builds the device-side queue from the driver's configuration, checking the size, the
    /// ring alignment and that the rings lie in guest memory.
    pub fn new(
        config: &QueueConfig,
        mem: &GuestMemory,
        event_idx: bool,
    ) -> Result<Self, QueueError> {
        if !config.ready {
            return Err(QueueError::NotReady);
        }
        let mut queue = Queue::new(config.max_size).map_err(QueueError::InvalidSetup)?;
        queue
            .try_set_size(config.size)
            .map_err(QueueError::InvalidSetup)?;
        queue
            .try_set_desc_table_address(GuestAddress(config.desc_table))
            .map_err(QueueError::InvalidSetup)?;
        queue
            .try_set_avail_ring_address(GuestAddress(config.avail_ring))
            .map_err(QueueError::InvalidSetup)?;
        queue
            .try_set_used_ring_address(GuestAddress(config.used_ring))
            .map_err(QueueError::InvalidSetup)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(QueueError::RingsOutsideMemory {
                desc: config.desc_table,
                avail: config.avail_ring,
                used: config.used_ring,
                size: config.size,
            });
        }
        Ok(Self {
            known_avail: Wrapping(queue.next_avail()),
            queue,
            indirect: false,
        })
    }

    /// Lets chains use indirect tables (`VIRTIO_F_INDIRECT_DESC` was negotiated).
    pub fn set_indirect(&mut self, negotiated: bool) {
        self.indirect = negotiated;
    }

    /// Rebuilds a queue from a snapshot, with the same checks as [`VirtQueue::new`]: a snapshot
    /// is as untrusted as the driver that wrote the registers it records.
    pub fn from_snapshot(snapshot: &QueueSnapshot, mem: &GuestMemory) -> Result<Self, QueueError> {
        let mut queue = Self::new(&snapshot.config(), mem, snapshot.event_idx)?;
        queue.queue.set_next_avail(snapshot.next_avail);
        queue.queue.set_next_used(snapshot.next_used);
        queue.known_avail = Wrapping(snapshot.next_avail);
        Ok(queue)
    }

    /// The queue's configuration and progress, for a snapshot.
    pub fn snapshot(&self) -> QueueSnapshot {
        let QueueState {
            max_size,
            next_avail,
            next_used,
            event_idx_enabled,
            size,
            ready,
            desc_table,
            avail_ring,
            used_ring,
        } = self.queue.state();
        QueueSnapshot {
            max_size,
            size,
            ready,
            desc_table,
            avail_ring,
            used_ring,
            next_avail,
            next_used,
            event_idx: event_idx_enabled,
        }
    }

    /// The size the driver chose: the longest possible chain.
    pub fn size(&self) -> u16 {
        self.queue.size()
    }

    /// Takes the next available chain, if any. An error means the driver broke the ring
    /// protocol and the queue must not be used until the device is reset.
    pub fn pop<'m>(&mut self, mem: &'m GuestMemory) -> Result<Option<Chain<'m>>, QueueError> {
        let next = Wrapping(self.queue.next_avail());
        if next == self.known_avail && !self.refresh_avail(mem)? {
            return Ok(None);
        }
        let size = self.queue.size();
        // The ring entry of `next`: 4 bytes of flags and index, then `size` u16 heads.
        // (`size` is never 0: `Queue::try_set_size` refuses it.)
        let offset = 4 + 2 * u64::from(next.0.checked_rem(size).unwrap_or(0));
        let head: u16 = GuestAddress(self.queue.avail_ring())
            .checked_add(offset)
            .ok_or(QueueError::Broken(virtio_queue::Error::AddressOverflow))
            .and_then(|at| {
                mem.load(at, Ordering::Acquire)
                    .map_err(|e| QueueError::Broken(virtio_queue::Error::GuestMemory(e)))
            })?;
        self.queue.set_next_avail(next.0.wrapping_add(1));
        let desc_table = GuestAddress(self.queue.desc_table());
        Ok(Some(Chain::new(
            mem,
            desc_table,
            size,
            u16::from_le(head),
            self.indirect,
        )))
    }

    /// Reads `avail.idx` (acquiring the ring entries it publishes) into `known_avail`; returns
    /// whether chains wait. An index more than `size` entries ahead of us is a broken ring
    /// (virtio 1.2 §2.7.6: the driver cannot have published more chains than the ring holds).
    fn refresh_avail(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let idx = self
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(QueueError::Broken)?;
        let next = Wrapping(self.queue.next_avail());
        if (idx - next).0 > self.queue.size() {
            return Err(QueueError::Broken(
                virtio_queue::Error::InvalidAvailRingIndex,
            ));
        }
        self.known_avail = idx;
        Ok(idx != next)
    }

    /// Whether the driver has published a chain we have not popped: one load of `avail.idx`
    /// unless one is already known, touching nothing the driver reads (in particular not
    /// `avail_event`), so it can be polled while notifications stay suppressed.
    /// [`pop`](Self::pop) validates the index.
    pub fn has_available(&self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let next = self.queue.next_avail();
        if self.known_avail.0 != next {
            return Ok(true);
        }
        let avail_idx = self
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(QueueError::Broken)?;
        Ok(avail_idx.0 != next)
    }

    /// Puts the chain [`pop`](Self::pop) returned last back at the head of the ring, so the next
    /// `pop` reads it again (a throttled request waits there: nothing is copied or allocated).
    /// Only valid right after a `pop` that returned a chain.
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Puts the last `count` chains [`pop`](Self::pop) returned back at the head of the ring, in
    /// order (an rx frame that needed fewer buffers than were gathered for it, or none at all).
    /// `count` must not exceed the chains popped since the last completion.
    pub fn undo_pops(&mut self, count: u16) {
        let next = self.queue.next_avail().wrapping_sub(count);
        self.queue.set_next_avail(next);
    }

    /// Returns a chain to the driver with `len` bytes written into its buffers.
    pub fn complete(
        &mut self,
        mem: &GuestMemory,
        head_index: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.queue
            .add_used(mem, head_index, len)
            .map_err(QueueError::Broken)
    }

    /// Asks the driver not to notify us while we are draining the ring (a no-op with EVENT_IDX,
    /// where the stale `avail_event` already suppresses notifications).
    pub fn disable_notification(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        self.queue
            .disable_notification(mem)
            .map_err(QueueError::Broken)
    }

    /// Asks the driver to notify us of new buffers; returns whether some arrived meanwhile, in
    /// which case the caller must drain again or it would miss them (no notification will come).
    pub fn enable_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        self.queue
            .enable_notification(mem)
            .map_err(QueueError::Broken)
    }

    /// Whether the chains completed since the last call warrant an interrupt: with EVENT_IDX,
    /// per the driver's `used_event`; without it, unless the driver set
    /// VRING_AVAIL_F_NO_INTERRUPT (virtio 1.2 §2.7.7.2: the device SHOULD NOT interrupt then;
    /// `virtio-queue` ignores the flag). A polling driver sets it, and an interrupt per batch
    /// would only cost it an exit.
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        // Also resets the EVENT_IDX bookkeeping, and fences the used-ring writes before the
        // flag is read.
        let needed = self
            .queue
            .needs_notification(mem)
            .map_err(QueueError::Broken)?;
        if !needed || self.queue.event_idx_enabled() {
            return Ok(needed);
        }
        let flags: u16 = mem
            .load(GuestAddress(self.queue.avail_ring()), Ordering::Acquire)
            .map_err(|e| QueueError::Broken(virtio_queue::Error::GuestMemory(e)))?;
        Ok(u32::from(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
    }
}
