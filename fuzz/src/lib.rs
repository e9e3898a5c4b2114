//! Shared pieces of squib's fuzz targets: a fake VMM for the API targets and the sandbox that
//! keeps fuzz-chosen paths away from the host's files.
#![forbid(unsafe_code)]

use std::path::{Component, Path};
use std::sync::Once;

use squib_vmm::api::controller::{ApiController, InstanceSettings};
use squib_vmm::api::vmm_control::{ControlError, DriveCounters, ExitNotice, RunState, VmmControl};
use squib_vmm::snapshot::state::DeviceConfigs;
use squib_vmm::snapshot::{CreateRequest, LoadRequest};
use squib_vmm::vm_config::{DriveConfig, RateLimiterConfig, VmConfig};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A VMM that records nothing and always agrees: the targets exercise parsing and validation.
#[derive(Debug, Default)]
pub struct FakeVmm {
    state: Option<RunState>,
}

impl VmmControl for FakeVmm {
    fn start(&mut self, _config: &VmConfig, _exit: ExitNotice) -> Result<(), ControlError> {
        self.state = Some(RunState::Running);
        Ok(())
    }
    fn state(&self) -> RunState {
        self.state.unwrap_or(RunState::NotStarted)
    }
    fn pause(&mut self) -> Result<(), ControlError> {
        self.state = Some(RunState::Paused);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ControlError> {
        self.state = Some(RunState::Running);
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        Ok(())
    }
    fn swap_drive(&mut self, _: &DriveConfig) -> Result<(), ControlError> {
        Ok(())
    }
    fn update_rate_limiter(&mut self, _: &str, _: &RateLimiterConfig) -> Result<(), ControlError> {
        Ok(())
    }
    fn drive_counters(&self) -> Vec<(String, DriveCounters)> {
        Vec::new()
    }
    // The API's validation is what is fuzzed; no snapshot file is ever written or read.
    fn create_snapshot(
        &mut self,
        _: &CreateRequest,
        _: &DeviceConfigs,
    ) -> Result<(), ControlError> {
        Err(ControlError::new("the fuzzing VMM takes no snapshots"))
    }
    fn load_snapshot(&mut self, _: &LoadRequest, _: ExitNotice) -> Result<VmConfig, ControlError> {
        Err(ControlError::new("the fuzzing VMM loads no snapshots"))
    }
    fn exit_status(&self) -> Option<i32> {
        None
    }
}

/// A controller over [`FakeVmm`], its working directory the sandbox.
pub fn controller() -> ApiController<FakeVmm> {
    enter_sandbox();
    let settings = InstanceSettings {
        id: "fuzz".into(),
        boot_timer: false,
        boot_options: Default::default(),
    };
    let wake = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    ApiController::new(settings, FakeVmm::default(), None, wake)
}

static SANDBOX: Once = Once::new();

/// Makes a scratch directory with a `kernel`, an `initrd` and a `disk` file the current
/// directory, once per process.
pub fn enter_sandbox() {
    SANDBOX.call_once(|| {
        let dir = std::env::temp_dir().join(format!("squib-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("sandbox dir");
        for (name, len) in [("kernel", 4096), ("initrd", 512), ("disk", 1 << 20)] {
            std::fs::write(dir.join(name), vec![0u8; len]).expect("sandbox file");
        }
        std::env::set_current_dir(&dir).expect("enter the sandbox");
    });
}

/// Whether a fuzz-chosen path stays inside the sandbox: relative, plain names only. Anything
/// else is not handed to squib (it would open host files such as `/dev/watchdog`).
pub fn is_sandboxed(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

pub mod net;

pub mod shadow_disk {
    //! A disk that checks every operation the device sends it and logs what changed.

    use std::sync::{Mutex, PoisonError};

    use squib_virtio::GuestMemory;
    use squib_virtio::block::backend::{BackendError, BlockBackend, Segment};
    use squib_virtio::testing::MemDisk;
    use vm_memory::Bytes;

    /// One change the device made to the disk.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Change {
        /// `write_vectored_at`: offset and the bytes written.
        Write(u64, Vec<u8>),
        /// `write_zeroes` or `discard`: offset and length.
        Zero(u64, u64),
    }

    /// A [`MemDisk`] that panics when the device sends it a range outside the disk or a write to
    /// a read-only disk (the device must refuse those itself), and logs every change.
    #[derive(Debug)]
    pub struct ShadowDisk {
        disk: MemDisk,
        size: u64,
        read_only: bool,
        changes: Mutex<Vec<Change>>,
    }

    impl ShadowDisk {
        /// A disk holding `contents`.
        pub fn new(contents: Vec<u8>, read_only: bool) -> Self {
            Self {
                size: contents.len() as u64,
                disk: MemDisk::with_contents(contents, read_only),
                read_only,
                changes: Mutex::new(Vec::new()),
            }
        }

        /// The disk's bytes now.
        pub fn contents(&self) -> Vec<u8> {
            self.disk.contents()
        }

        /// The changes, in the order they reached the disk.
        pub fn changes(&self) -> Vec<Change> {
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn check(&self, what: &str, offset: u64, len: u64, write: bool) {
            assert!(
                offset.checked_add(len).is_some_and(|end| end <= self.size),
                "{what} of {len} bytes at {offset:#x} reached a {:#x}-byte disk",
                self.size
            );
            assert!(
                !(write && self.read_only),
                "{what} reached a read-only disk"
            );
        }
    }

    fn total(segments: &[Segment]) -> u64 {
        segments.iter().map(|s| u64::from(s.len)).sum()
    }

    impl BlockBackend for ShadowDisk {
        fn size(&self) -> u64 {
            self.size
        }
        fn is_read_only(&self) -> bool {
            self.read_only
        }
        fn read_vectored_at(
            &self,
            mem: &GuestMemory,
            segments: &[Segment],
            offset: u64,
        ) -> Result<(), BackendError> {
            self.check("read", offset, total(segments), false);
            self.disk.read_vectored_at(mem, segments, offset)
        }
        fn write_vectored_at(
            &self,
            mem: &GuestMemory,
            segments: &[Segment],
            offset: u64,
        ) -> Result<(), BackendError> {
            self.check("write", offset, total(segments), true);
            let mut bytes = Vec::new();
            for s in segments {
                let mut part = vec![0u8; s.len as usize];
                if mem.read_slice(&mut part, s.addr).is_err() {
                    return Err(BackendError::GuestMemory {
                        addr: s.addr.0,
                        len: s.len,
                    });
                }
                bytes.extend_from_slice(&part);
            }
            self.disk.write_vectored_at(mem, segments, offset)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Write(offset, bytes));
            Ok(())
        }
        fn flush(&self) -> Result<(), BackendError> {
            self.disk.flush()
        }
        fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
            self.check("discard", offset, len, true);
            self.disk.discard(offset, len)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Zero(offset, len));
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
            self.check("write_zeroes", offset, len, true);
            self.disk.write_zeroes(offset, len)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Zero(offset, len));
            Ok(())
        }
    }
}

pub mod guest {
    //! What the virtio targets share: guest-memory budgets, hostile chains, and the oracle that
    //! the device wrote guest memory only where the driver let it.

    use std::cell::RefCell;
    use std::sync::OnceLock;

    use libfuzzer_sys::arbitrary::{Error, Result, Unstructured};
    use squib_virtio::GuestMemory;
    use squib_virtio::device::{FEATURE_INDIRECT_DESC, FEATURE_VERSION_1};
    use squib_virtio::mmio::reg;
    use squib_virtio::testing::{
        AVAIL_RING, Buf, DESC_TABLE, GuestDriver, HEAP_START, QUEUE_STRIDE, USED_RING, Used,
    };
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use vm_memory::{Bytes, GuestAddress};

    /// Guest memory the targets use (rings below `HEAP_START`, buffers above): enough for a
    /// few 64 KiB frames or packets. The oracle reads all of it around every device run.
    pub const GUEST_MEM: usize = 256 * 1024;

    thread_local! {
        /// One mapping per thread, zeroed for each input: mapping, faulting in and unmapping
        /// fresh memory for every input cost more than the device's work.
        static MEMORY: RefCell<Option<GuestMemory>> = const { RefCell::new(None) };
    }

    /// [`GUEST_MEM`] bytes of all-zero guest memory at address 0, as fresh as a new mapping.
    pub fn memory() -> GuestMemory {
        static ZEROS: [u8; GUEST_MEM] = [0; GUEST_MEM];
        MEMORY.with_borrow_mut(|slot| {
            let mem = slot.get_or_insert_with(|| GuestDriver::memory(GUEST_MEM));
            mem.write_slice(&ZEROS, GuestAddress(0))
                .expect("guest memory starts at 0");
            mem.clone()
        })
    }

    /// A driver for `device` whose worker runs inline, over [`memory`], recording its writes
    /// for [`run_checked`].
    pub fn driver(device: Box<dyn squib_virtio::device::VirtioDevice>) -> GuestDriver {
        let mut d = GuestDriver::inline_with_memory(device, memory());
        d.record_writes();
        ORACLE.with_borrow_mut(|oracle| oracle.stale = true);
        d
    }

    /// The probe a hostile driver does: features the device offers masked by fuzz bits (plus
    /// VERSION_1), a power-of-two size up to the maximum (capped at 256) for each of the `N`
    /// queues, DRIVER_OK. `None` when the device refused the features or asked for a reset.
    pub fn activate<const N: usize>(
        u: &mut Unstructured,
        d: &mut GuestDriver,
    ) -> Result<Option<(u64, [u16; N])>> {
        let offered = d.device_features();
        let features = (offered & u.arbitrary::<u64>()?) | FEATURE_VERSION_1;
        if !d.negotiate(features) {
            return Ok(None);
        }
        let mut sizes = [0u16; N];
        for (index, size) in sizes.iter_mut().enumerate() {
            d.select_queue(index);
            let max = d.read_reg(reg::QUEUE_NUM_MAX).min(256);
            *size = 1u16 << u.int_in_range(0..=max.trailing_zeros())?;
            d.setup_queue(*size);
        }
        d.select_queue(0);
        d.set_status_bit(VIRTIO_CONFIG_S_DRIVER_OK);
        Ok((!needs_reset(d)).then_some((features, sizes)))
    }

    /// Whether the device asked for a reset (DEVICE_NEEDS_RESET).
    pub fn needs_reset(d: &mut GuestDriver) -> bool {
        d.read_reg(reg::STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// Resets the device and checks that Status reads 0 again.
    pub fn reset(d: &mut GuestDriver) {
        d.write_reg(reg::STATUS, 0);
        assert_eq!(d.read_reg(reg::STATUS), 0, "reset left status bits set");
    }

    /// Every used entry of queue `index` not popped yet.
    pub fn pop_all(d: &mut GuestDriver, index: usize) -> Vec<Used> {
        d.select_queue(index);
        std::iter::from_fn(|| d.pop_used()).collect()
    }

    /// Checks that all `added` chains of a queue were used, unless the device asked for a
    /// reset (`broken`).
    pub fn assert_all_used(what: &str, used: usize, added: usize, broken: bool) {
        assert!(
            broken || used == added,
            "{used} of {added} {what} chains used and no reset asked for"
        );
    }

    /// `len` bytes counting up from `first` (wrapping): buffer contents the oracles can
    /// recognise. A slice of one table, because a byte loop in the target costs a traced
    /// comparison per byte.
    pub fn ramp(first: u8, len: usize) -> &'static [u8] {
        const LONGEST: usize = 128 << 10;
        static RAMP: OnceLock<Vec<u8>> = OnceLock::new();
        let ramp = RAMP.get_or_init(|| (0..LONGEST + 256).map(|i| i as u8).collect());
        assert!(len <= LONGEST, "ramp of {len} bytes");
        let start = usize::from(first);
        &ramp[start..start + len]
    }

    /// Buffer memory left for one execution (the driver's allocator never frees).
    #[derive(Debug)]
    pub struct Heap {
        left: u64,
    }

    impl Default for Heap {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Heap {
        /// The whole heap of [`GUEST_MEM`].
        pub fn new() -> Self {
            Self {
                left: GUEST_MEM as u64 - HEAP_START - 4096,
            }
        }

        /// `len` bytes, or `None` when the budget is spent.
        pub fn alloc(&mut self, d: &mut GuestDriver, len: u32) -> Option<GuestAddress> {
            let need = u64::from(len).next_multiple_of(16) + 16;
            if need > self.left {
                return None;
            }
            self.left -= need;
            Some(d.alloc(len))
        }
    }

    /// A hostile address: anywhere in or just past guest memory (rings included), or anything.
    pub fn wild_addr(u: &mut Unstructured) -> Result<GuestAddress> {
        Ok(GuestAddress(if u.arbitrary()? {
            u.int_in_range(0..=GUEST_MEM as u64 + 4096)?
        } else {
            u.arbitrary()?
        }))
    }

    /// A hostile buffer: a wild address, any length, either direction.
    pub fn wild_buf(u: &mut Unstructured) -> Result<Buf> {
        Ok(Buf {
            addr: wild_addr(u)?,
            len: if u.arbitrary()? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=4096)?
            },
            device_writes: u.arbitrary()?,
        })
    }

    /// How [`add_chain`] queued a chain.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Shape {
        /// It did not fit; nothing was queued.
        NoRoom,
        /// As a descriptor chain.
        Direct,
        /// Through a well-formed indirect table.
        Indirect,
        /// Through an indirect table that is corrupted or misplaced: its effect is unknowable.
        Broken,
    }

    impl Shape {
        /// Whether the device must take the chain as the harness built it: a direct chain, or
        /// a well-formed indirect table when `features` has INDIRECT_DESC.
        pub fn is_known(self, features: u64) -> bool {
            match self {
                Shape::Direct => true,
                Shape::Indirect => features & FEATURE_INDIRECT_DESC != 0,
                Shape::NoRoom | Shape::Broken => false,
            }
        }
    }

    /// Device-writable buffers for a receive-type queue: one to `most` of them, mostly of
    /// lengths `len` picks, sometimes (1 in `wild_one_in`) a [`wild_buf`] or (1 in 16)
    /// device-readable. Returns the buffers and whether a wild one is writable (it may land on
    /// anything, rings included).
    pub fn writable_chain(
        u: &mut Unstructured,
        d: &mut GuestDriver,
        heap: &mut Heap,
        most: u32,
        wild_one_in: u32,
        mut len: impl FnMut(&mut Unstructured) -> Result<u32>,
    ) -> Result<(Vec<Buf>, bool)> {
        let mut bufs = Vec::new();
        let mut wild = false;
        for _ in 0..u.int_in_range(1..=most)? {
            if u.ratio(1, wild_one_in)? {
                let buf = wild_buf(u)?;
                wild |= buf.device_writes;
                bufs.push(buf);
                continue;
            }
            let len = len(u)?;
            let Some(addr) = heap.alloc(d, len) else {
                break;
            };
            bufs.push(Buf {
                addr,
                len,
                device_writes: !u.ratio(1, 16)?,
            });
        }
        Ok((bufs, wild))
    }

    /// Queues `bufs` on the selected queue, directly or (1 in 4) through an indirect table whose
    /// entries are sometimes corrupted (nested, wild `next`). `free` counts the descriptors left
    /// in the table of the queue's `size` entries.
    pub fn add_chain(
        u: &mut Unstructured,
        d: &mut GuestDriver,
        heap: &mut Heap,
        bufs: &[Buf],
        free: &mut u16,
        size: u16,
    ) -> Result<Shape> {
        if bufs.is_empty() {
            return Ok(Shape::NoRoom);
        }
        if !u.ratio(1, 4)? {
            let Ok(needed) = u16::try_from(bufs.len()) else {
                return Ok(Shape::NoRoom);
            };
            if needed > *free {
                return Ok(Shape::NoRoom);
            }
            *free -= needed;
            d.add_chain(bufs.iter().copied());
            return Ok(Shape::Direct);
        }
        if *free == 0 {
            return Ok(Shape::NoRoom);
        }
        let table_len = 16 * bufs.len() as u32;
        let Some(table) = heap.alloc(d, table_len) else {
            return Ok(Shape::NoRoom);
        };
        *free -= 1;
        // A table longer than the queue is a chain longer than the queue (virtio 1.2
        // §2.7.5.3.1), which the device refuses.
        let mut shape = if bufs.len() > usize::from(size) {
            Shape::Broken
        } else {
            Shape::Indirect
        };
        for (i, buf) in bufs.iter().enumerate() {
            let mut flags = if buf.device_writes {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let mut next = (i + 1) as u16;
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            if u.ratio(1, 32)? {
                flags |= u.arbitrary::<u16>()? & (VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT) as u16;
                next = u.arbitrary()?;
                shape = Shape::Broken;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&buf.addr.0.to_le_bytes());
            raw[8..12].copy_from_slice(&buf.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            d.write_bytes(GuestAddress(table.0 + 16 * i as u64), &raw);
        }
        let len = if u.ratio(15, 16)? {
            table_len
        } else {
            shape = Shape::Broken;
            u.arbitrary()?
        };
        let addr = if u.ratio(15, 16)? {
            table
        } else {
            shape = Shape::Broken;
            wild_addr(u)?
        };
        let head = d.add_chain([Buf::readable(addr, len)]);
        d.write_descriptor(head, addr, len, VRING_DESC_F_INDIRECT as u16, 0);
        Ok(shape)
    }

    /// Overwrites a few bytes of queue `index`'s descriptor table or avail ring with fuzz bytes.
    pub fn corrupt_ring(u: &mut Unstructured, d: &mut GuestDriver, index: usize) -> Result<()> {
        let base = QUEUE_STRIDE * index as u64;
        for _ in 0..u.int_in_range(1..=4)? {
            let offset: u64 = u.int_in_range(0..=(AVAIL_RING - DESC_TABLE + 0x200))?;
            let bytes: [u8; 4] = u.arbitrary()?;
            d.write_bytes(GuestAddress(base + DESC_TABLE + offset), &bytes);
        }
        Ok(())
    }

    /// Guest memory the device may write, as `[start, end)` ranges: the used rings of queues
    /// `0..queues` (`avail_event` included) and every device-writable descriptor in their
    /// tables, directly or inside an indirect table one of them points at — whatever chains the
    /// device walked, it may write only through descriptors the driver marked writable.
    fn device_writable(d: &GuestDriver, queues: &[u16]) -> Vec<(u64, u64)> {
        let mut ranges: Vec<_> = (0..queues.len()).map(|i| used_ring(queues, i)).collect();
        ranges.extend(writable_descriptors(d, queues));
        ranges
    }

    /// Queue `index`'s used ring, `avail_event` included, as a `[start, end)` range.
    fn used_ring(queues: &[u16], index: usize) -> (u64, u64) {
        let start = QUEUE_STRIDE * index as u64 + USED_RING;
        (start, start + 4 + 8 * u64::from(queues[index]) + 2)
    }

    /// Every device-writable descriptor in the queues' tables, directly or inside an indirect
    /// table one of them points at, as `[start, end)` ranges.
    fn writable_descriptors(d: &GuestDriver, queues: &[u16]) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut add = |addr: u64, len: u64| {
            if len > 0 {
                ranges.push((addr, addr.saturating_add(len)));
            }
        };
        for (index, &size) in queues.iter().enumerate() {
            let base = QUEUE_STRIDE * index as u64;
            let table = d.read_bytes(GuestAddress(base + DESC_TABLE), 16 * usize::from(size));
            for raw in table.chunks_exact(16) {
                let (addr, len, flags) = fields(raw);
                if flags & VRING_DESC_F_WRITE as u16 != 0 {
                    add(addr, len);
                }
                if flags & VRING_DESC_F_INDIRECT as u16 != 0
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= GUEST_MEM as u64)
                {
                    let inner = d.read_bytes(GuestAddress(addr), len as usize);
                    for raw in inner.chunks_exact(16) {
                        let (addr, len, flags) = fields(raw);
                        if flags & VRING_DESC_F_WRITE as u16 != 0 {
                            add(addr, len);
                        }
                    }
                }
            }
        }
        ranges
    }

    /// Whether a device-writable descriptor (in the queues' tables or an indirect table they
    /// point at) overlaps a ring of the queues: the device may then have rewritten the
    /// descriptor table, avail ring or used ring (entries and index) that the harness reads
    /// back, so checks of the used rings say nothing. Call it before and after each run: a
    /// corrupted descriptor or a broken indirect table can point anywhere.
    pub fn rings_exposed(d: &GuestDriver, queues: &[u16]) -> bool {
        let rings: Vec<(u64, u64)> = (0..queues.len())
            .map(|index| (QUEUE_STRIDE * index as u64, used_ring(queues, index).1))
            .collect();
        writable_descriptors(d, queues)
            .iter()
            .any(|&(s, e)| rings.iter().any(|&(start, end)| s < end && start < e))
    }

    /// The indirect tables the queues' descriptor tables point at, as `[start, end)` ranges.
    fn indirect_tables(d: &GuestDriver, queues: &[u16]) -> Vec<(u64, u64)> {
        let mut tables = Vec::new();
        for (index, &size) in queues.iter().enumerate() {
            let base = QUEUE_STRIDE * index as u64;
            let table = d.read_bytes(GuestAddress(base + DESC_TABLE), 16 * usize::from(size));
            for raw in table.chunks_exact(16) {
                let (addr, len, flags) = fields(raw);
                if flags & VRING_DESC_F_INDIRECT as u16 != 0
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= GUEST_MEM as u64)
                {
                    tables.push((addr, addr + len));
                }
            }
        }
        tables
    }

    fn fields(raw: &[u8]) -> (u64, u64, u16) {
        let word = |r: std::ops::Range<usize>| {
            let mut v = [0u8; 8];
            v[..r.len()].copy_from_slice(&raw[r]);
            u64::from_le_bytes(v)
        };
        (word(0..8), word(8..12), word(12..14) as u16)
    }

    /// Panics if a byte differs between `before` and `after` (the guest bytes from address
    /// `base` on) outside `allowed` (sorted).
    fn assert_writes_within(base: u64, before: &[u8], after: &[u8], allowed: &[(u64, u64)]) {
        // Only slice comparisons (memcmp, outside the instrumented code) over the gaps between
        // the allowed ranges: a byte loop would run libFuzzer's comparison hook once per byte.
        let end = base + before.len().min(after.len()) as u64;
        let check = |from: u64, to: u64| {
            let (from, to) = ((from - base) as usize, (to.min(end) - base) as usize);
            if from < to && before[from..to] != after[from..to] {
                let at = (from..to).find(|&i| before[i] != after[i]).unwrap_or(from);
                panic!(
                    "the device wrote guest memory at {:#x}, outside every device-writable \
                     descriptor and used ring",
                    base + at as u64
                );
            }
        };
        let mut cursor = base;
        for &(start, stop) in allowed {
            if start >= end {
                break;
            }
            if start > cursor {
                check(cursor, start);
            }
            cursor = cursor.max(stop);
        }
        if cursor < end {
            check(cursor, end);
        }
    }

    /// How the driver hands one queue's new chains over before the device runs.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Handover {
        /// Publish, and notify if the device asks (a driver's kick).
        Kick,
        /// Notify without publishing.
        NotifyOnly,
        /// Neither.
        Nothing,
    }

    impl Handover {
        /// Mostly kicks.
        pub fn arbitrary(u: &mut Unstructured) -> Result<Self> {
            Ok(match u.int_in_range(0..=3u8)? {
                0 | 1 => Self::Kick,
                2 => Self::NotifyOnly,
                _ => Self::Nothing,
            })
        }
    }

    /// Hands each queue's chains over as `how` says (`Kick` only publishes while `publish` is
    /// true: a corrupted avail index stays), then notifies and serves the device inline, and
    /// checks that it wrote guest memory only where the driver let it: a device-writable
    /// descriptor (in the tables as they were before or after the run) or a used ring of the
    /// queues (`sizes`, in index order). Returns whether the device went idle.
    pub fn run_checked(
        d: &mut GuestDriver,
        sizes: &[u16],
        how: &[Handover],
        publish: bool,
    ) -> bool {
        let mut notify = Vec::new();
        for (index, how) in how.iter().enumerate() {
            d.select_queue(index);
            let wanted = match how {
                Handover::Kick => !publish || d.publish(),
                Handover::NotifyOnly => true,
                Handover::Nothing => false,
            };
            if wanted {
                notify.push(index);
            }
        }
        ORACLE.with_borrow_mut(|oracle| {
            oracle.refresh(d);
            let mut allowed = device_writable(d, sizes);
            // A writable buffer over a descriptor table lets the device rewrite the table while
            // it walks it: the chains it then reads (and may write through) exist in neither
            // snapshot, so what it may write is unknowable for this run.
            let tables_writable = sizes.iter().enumerate().any(|(index, &size)| {
                let start = QUEUE_STRIDE * index as u64 + DESC_TABLE;
                let end = start + 16 * u64::from(size);
                allowed.iter().any(|&(s, e)| s < end && start < e)
            }) || indirect_tables(d, sizes)
                .iter()
                .any(|&(start, end)| allowed.iter().any(|&(s, e)| s < end && start < e));
            for index in notify {
                d.select_queue(index);
                d.notify();
            }
            let mut idle = false;
            for _ in 0..16 {
                if d.run_device() {
                    idle = true;
                    break;
                }
            }
            allowed.extend(device_writable(d, sizes));
            allowed.sort_unstable();
            oracle.compare(d, (!tables_writable).then_some(&allowed[..]));
            idle
        })
    }

    /// Serves the device under the oracle (as [`run_checked`] with no handover) until `done`
    /// says so or about 3 ms have passed. A device may leave work to a timer (virtio-net's
    /// 50 µs ring waits with notifications off), which a worker served inline sees only once
    /// it has fired; inputs whose work is complete pay nothing.
    pub fn settle(
        d: &mut GuestDriver,
        sizes: &[u16],
        publish: bool,
        mut done: impl FnMut(&mut GuestDriver) -> bool,
    ) {
        for _ in 0..40 {
            if done(d) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(75));
            run_checked(d, sizes, &[], publish);
        }
    }

    /// Guest memory as the oracle last saw it.
    struct Oracle {
        /// A copy of guest memory: as the device left it after the last run, plus what the
        /// driver wrote since (unless `stale`).
        image: Vec<u8>,
        /// Whether `image` belongs to an earlier driver (a new input began).
        stale: bool,
        /// Scratch for the driver's writes.
        writes: Vec<(u64, u64)>,
    }

    thread_local! {
        /// Reused across inputs: a fresh guest-sized allocation is an mmap and page faults.
        static ORACLE: RefCell<Oracle> = const {
            RefCell::new(Oracle { image: Vec::new(), stale: true, writes: Vec::new() })
        };
    }

    /// Bytes of guest memory compared at a time.
    const PAGE: usize = 16 << 10;

    impl Oracle {
        /// Brings `image` up to date with guest memory before the device runs: a whole copy
        /// for a new driver, else just the ranges the driver wrote since the last run (the
        /// device runs only inside [`run_checked`]; a write the driver did not record shows
        /// up as a change in the next comparison, never goes unseen).
        fn refresh(&mut self, d: &GuestDriver) {
            let mem = d.mem();
            if self.stale || self.image.len() != GUEST_MEM {
                self.image.resize(GUEST_MEM, 0);
                mem.read_slice(&mut self.image, GuestAddress(0))
                    .expect("guest memory starts at 0");
                self.stale = false;
                self.writes.clear();
                d.take_writes(&mut self.writes);
                self.writes.clear();
                return;
            }
            self.writes.clear();
            d.take_writes(&mut self.writes);
            for &(start, end) in &self.writes {
                let end = end.min(GUEST_MEM as u64);
                if start < end {
                    let range = start as usize..end as usize;
                    mem.read_slice(&mut self.image[range], GuestAddress(start))
                        .expect("the driver wrote inside guest memory");
                }
            }
        }

        /// Compares guest memory with `image` a page at a time after the device ran: every
        /// change must lie in `allowed` (sorted; `None` when what the device may write is
        /// unknowable), and `image` takes it.
        fn compare(&mut self, d: &GuestDriver, allowed: Option<&[(u64, u64)]>) {
            let mut page = [0u8; PAGE];
            for (index, expected) in self.image.chunks_mut(PAGE).enumerate() {
                let base = (index * PAGE) as u64;
                let now = &mut page[..expected.len()];
                d.mem()
                    .read_slice(now, GuestAddress(base))
                    .expect("guest memory starts at 0");
                if now != expected {
                    if let Some(allowed) = allowed {
                        assert_writes_within(base, expected, now, allowed);
                    }
                    expected.copy_from_slice(now);
                }
            }
        }
    }

    /// `NotEnoughData`, for harness code that ran out of budget.
    pub fn exhausted<T>() -> Result<T> {
        Err(Error::NotEnoughData)
    }
}
