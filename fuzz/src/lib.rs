//! Shared pieces of squib's fuzz targets: a fake VMM for the API targets and the sandbox that
//! keeps fuzz-chosen paths away from the host's files.
#![forbid(unsafe_code)]

use std::path::{Component, Path};
use std::sync::Once;

use squib_vmm::api::controller::{ApiController, InstanceSettings};
use squib_vmm::api::vmm_control::{ControlError, DriveCounters, ExitNotice, RunState, VmmControl};
use squib_vmm::snapshot::{CreateRequest, LoadRequest};
use squib_vmm::snapshot::state::DeviceConfigs;
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
    fn create_snapshot(&mut self, _: &CreateRequest, _: &DeviceConfigs) -> Result<(), ControlError> {
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

    use libfuzzer_sys::arbitrary::{Error, Result, Unstructured};
    use squib_virtio::testing::{
        AVAIL_RING, Buf, DESC_TABLE, GuestDriver, HEAP_START, QUEUE_STRIDE, USED_RING,
    };
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use vm_memory::{Bytes, GuestAddress};

    /// Buffer memory left for one execution (the driver's allocator never frees).
    #[derive(Debug)]
    pub struct Heap {
        left: u64,
    }

    impl Heap {
        /// The whole heap of a `mem_size`-byte guest.
        pub fn new(mem_size: usize) -> Self {
            Self {
                left: mem_size as u64 - HEAP_START - 4096,
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
    pub fn wild_addr(u: &mut Unstructured, mem_size: usize) -> Result<GuestAddress> {
        Ok(GuestAddress(if u.arbitrary()? {
            u.int_in_range(0..=mem_size as u64 + 4096)?
        } else {
            u.arbitrary()?
        }))
    }

    /// A hostile buffer: a wild address, any length, either direction.
    pub fn wild_buf(u: &mut Unstructured, mem_size: usize) -> Result<Buf> {
        Ok(Buf {
            addr: wild_addr(u, mem_size)?,
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
        mem_size: usize,
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
            wild_addr(u, mem_size)?
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
    pub fn device_writable(d: &GuestDriver, queues: &[u16], mem_size: usize) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut add = |addr: u64, len: u64| {
            if len > 0 {
                ranges.push((addr, addr.saturating_add(len)));
            }
        };
        for (index, &size) in queues.iter().enumerate() {
            let base = QUEUE_STRIDE * index as u64;
            add(base + USED_RING, 4 + 8 * u64::from(size) + 2);
            let table = d.read_bytes(GuestAddress(base + DESC_TABLE), 16 * usize::from(size));
            for raw in table.chunks_exact(16) {
                let (addr, len, flags) = fields(raw);
                if flags & VRING_DESC_F_WRITE as u16 != 0 {
                    add(addr, len);
                }
                if flags & VRING_DESC_F_INDIRECT as u16 != 0
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= mem_size as u64)
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

    /// The indirect tables the queues' descriptor tables point at, as `[start, end)` ranges.
    fn indirect_tables(d: &GuestDriver, queues: &[u16], mem_size: usize) -> Vec<(u64, u64)> {
        let mut tables = Vec::new();
        for (index, &size) in queues.iter().enumerate() {
            let base = QUEUE_STRIDE * index as u64;
            let table = d.read_bytes(GuestAddress(base + DESC_TABLE), 16 * usize::from(size));
            for raw in table.chunks_exact(16) {
                let (addr, len, flags) = fields(raw);
                if flags & VRING_DESC_F_INDIRECT as u16 != 0
                    && addr
                        .checked_add(len)
                        .is_some_and(|end| end <= mem_size as u64)
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

    /// Panics if a byte differs between `before` and `after` outside `allowed`.
    pub fn assert_writes_within(before: &[u8], after: &[u8], allowed: &[(u64, u64)]) {
        // Only slice comparisons (memcmp, outside the instrumented code) over the gaps between
        // the allowed ranges: a byte loop would run libFuzzer's comparison hook once per byte.
        if before == after {
            return;
        }
        let mut allowed = allowed.to_vec();
        allowed.sort_unstable();
        let len = before.len().min(after.len()) as u64;
        let mut cursor = 0u64;
        let check = |from: u64, to: u64| {
            let (from, to) = (from as usize, to.min(len) as usize);
            if from < to && before[from..to] != after[from..to] {
                let at = (from..to).find(|&i| before[i] != after[i]).unwrap_or(from);
                panic!(
                    "the device wrote guest memory at {at:#x}, outside every device-writable \
                     descriptor and used ring"
                );
            }
        };
        for &(start, end) in &allowed {
            if start >= len {
                break;
            }
            if start > cursor {
                check(cursor, start);
            }
            cursor = cursor.max(end);
        }
        if cursor < len {
            check(cursor, len);
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
    /// queues (`sizes`, in index order).
    pub fn run_checked(
        d: &mut GuestDriver,
        sizes: &[u16],
        mem_size: usize,
        how: &[Handover],
        publish: bool,
    ) {
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
        // Two guest-sized buffers reused across executions: a fresh allocation of that size
        // is an mmap and page faults under ASan, which would dominate an execution.
        thread_local! {
            static SNAPSHOTS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SNAPSHOTS.with_borrow_mut(|(before, after)| {
            before.resize(mem_size, 0);
            after.resize(mem_size, 0);
            d.mem()
                .read_slice(before, GuestAddress(0))
                .expect("guest memory starts at 0");
            let mut allowed = device_writable(d, sizes, mem_size);
            // A writable buffer over a descriptor table lets the device rewrite the table while
            // it walks it: the chains it then reads (and may write through) exist in neither
            // snapshot, so what it may write is unknowable for this run.
            let tables_writable = sizes.iter().enumerate().any(|(index, &size)| {
                let start = QUEUE_STRIDE * index as u64 + DESC_TABLE;
                let end = start + 16 * u64::from(size);
                allowed.iter().any(|&(s, e)| s < end && start < e)
            }) || indirect_tables(d, sizes, mem_size)
                .iter()
                .any(|&(start, end)| allowed.iter().any(|&(s, e)| s < end && start < e));
            for index in notify {
                d.select_queue(index);
                d.notify();
            }
            for _ in 0..16 {
                if d.run_device() {
                    break;
                }
            }
            d.mem()
                .read_slice(after, GuestAddress(0))
                .expect("guest memory starts at 0");
            allowed.extend(device_writable(d, sizes, mem_size));
            if !tables_writable {
                assert_writes_within(before, after, &allowed);
            }
        });
    }

    /// `NotEnoughData`, for harness code that ran out of budget.
    pub fn exhausted<T>() -> Result<T> {
        Err(Error::NotEnoughData)
    }
}
