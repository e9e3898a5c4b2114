//! An io_uring that moves data straight between one file and guest memory: a disk, or a TAP.
//!
//! The block engine's in-flight executor (`squib-virtio`, `block/engine/uring.rs`) drives one
//! [`FileRing`] per device worker: it pushes one submission per request into a numbered *slot*,
//! submits the batch with one `io_uring_enter`, and reaps completions when the ring's eventfd
//! (registered with the kernel, watched by the worker's epoll) fires. No thread pool: the kernel
//! does the I/O asynchronously and only wakes the worker for completions. virtio-net's transmit
//! path (`net/tx_batch.rs`) writes a batch of frames to its TAP the same way, one system call
//! for the batch (a TAP write completes while it is submitted).
//!
//! What makes the API safe to call from unsafe-free code, given that the kernel reads and writes
//! the memory an SQE names *after* the call that queued it returned:
//! - the ring **owns a clone of the guest memory map** (`GuestMemoryMmap` regions are reference
//!   counted: the mmaps stay mapped while the clone lives) and resolves every guest address
//!   against that clone itself, so each pointer handed to the kernel lies in memory the ring
//!   keeps alive;
//! - the ring **owns each slot's iovec array** (allocated once at construction); a slot cannot be
//!   reused while its SQE is in flight ([`PushError::SlotBusy`]);
//! - the ring **owns a duplicate of the file descriptor**, registered as fixed file 0;
//! - **dropping the ring waits for every SQE in flight** to complete (after asking the kernel to
//!   cancel those it still can, so a reset is not held up by a request waiting on a slow file)
//!   before anything it owns is freed; if the kernel refuses to wait, the ring's storage is
//!   leaked rather than freed under the kernel's feet.
//!
//! Guest memory may also be registered as fixed buffers (the kernel then pins it once instead of
//! on every request); when the kernel or the memlock limit refuses, the ring works without.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, squeue, types};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::guest_memory::{self, GuestMemory};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::block_io::DirectIoAlignment;

/// The largest fixed buffer the kernel takes (`io_uring_register(2)`: 1 GiB per buffer).
const MAX_FIXED_BUFFER: u64 = 1 << 30;
/// `user_data` of the cancel entry a drop submits: not a slot, so `reap` skips its completion.
const CANCEL_TAG: u64 = u64::MAX;
/// Fixed file index of the file, when it is registered.
const FILE: types::Fixed = types::Fixed(0);

/// `$body` with `$fd` bound to the ring's file as an SQE names it: the registered fixed file,
/// or the plain descriptor `$plain` when it is `Some` (see [`RingConfig::fixed_file`]).
macro_rules! on_file {
    ($plain:expr, |$fd:ident| $body:expr) => {
        match $plain {
            None => {
                let $fd = FILE;
                $body
            }
            Some(raw) => {
                let $fd = types::Fd(raw);
                $body
            }
        }
    };
}

/// How a ring is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Requests that can be in flight at once (submission slots); at least 1.
    pub slots: u16,
    /// Most guest-memory segments one request may carry.
    pub segments_per_slot: usize,
    /// Register guest memory as fixed buffers (pins it). Falls back without them if refused.
    pub fixed_buffers: bool,
    /// Register the file as a fixed file, which spares the kernel a file lookup per request.
    /// A registered file stays referenced until the kernel tears the ring down, which it does
    /// asynchronously, after the process has exited: a TAP would then stay attached for a few
    /// milliseconds, and a VMM started right after on the same TAP would get `EBUSY`.
    pub fixed_file: bool,
    /// Reads and writes that cannot complete at once fail with `EAGAIN` (`RWF_NOWAIT`)
    /// instead of waiting. io_uring otherwise waits for a pollable file to become ready even
    /// when it is non-blocking: a read of an empty TAP would hold `submit_and_wait` until a
    /// frame came.
    pub never_wait: bool,
    /// Test hook: fail construction as a kernel without io_uring would, with this errno
    /// (`ENOSYS`, `EPERM`), before any system call.
    pub simulate_unavailable: Option<i32>,
}

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// `io_uring_setup` failed: the kernel lacks io_uring, or it is disabled
    /// (`kernel.io_uring_disabled`, a seccomp filter), or out of resources.
    #[error("io_uring is unavailable: {0}")]
    Unavailable(io::Error),
    /// Registering the disk or the eventfd failed.
    #[error("io_uring registration failed: {0}")]
    Register(io::Error),
    /// The configuration asks for no slots.
    #[error("an io_uring needs at least one slot")]
    NoSlots,
}

/// Why a request could not be queued; nothing was queued and the slot is still free.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// The slot number is not below [`RingConfig::slots`].
    #[error("no slot {0}")]
    NoSuchSlot(u16),
    /// The slot's previous request has not completed.
    #[error("slot {0} is busy")]
    SlotBusy(u16),
    /// More segments than [`RingConfig::segments_per_slot`].
    #[error("too many segments")]
    TooManySegments,
    /// A segment is not inside one region of guest memory.
    #[error("guest memory {0:#x}+{1:#x} is not one mapped range")]
    NotGuestMemory(u64, usize),
    /// The request breaks the file's direct-I/O alignment: it must go through a bounce buffer.
    #[error("the request is not aligned for direct I/O")]
    Misaligned,
    /// An offset or length does not fit the kernel's types.
    #[error("offset or length out of range")]
    OutOfRange,
}

/// What one request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingOp {
    /// Read from the file at `offset` into the segments, in order.
    Read {
        /// File offset.
        offset: u64,
    },
    /// Write the segments, in order, to the file at `offset`.
    Write {
        /// File offset.
        offset: u64,
    },
    /// `fdatasync` the file.
    SyncData,
    /// Deallocate the range (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    PunchHole {
        /// File offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Zero the range (`FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE`).
    ZeroRange {
        /// File offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

/// One finished request.
#[derive(Debug)]
pub struct RingCompletion {
    /// The slot it was pushed into, free again.
    pub slot: u16,
    /// Bytes transferred (0 for sync and fallocate), or the error.
    pub result: io::Result<usize>,
}

/// One registered fixed buffer: a piece of one guest memory region.
#[derive(Clone, Copy, Debug)]
struct FixedBuffer {
    host_start: usize,
    len: u64,
    index: u16,
}

/// An io_uring bound to one file and one guest memory (see the module docs).
pub struct FileRing {
    ring: ManuallyDrop<IoUring>,
    /// Keeps every guest address the kernel may touch mapped.
    mem: ManuallyDrop<GuestMemory>,
    /// `slots * segments_per_slot` iovecs; slot `s` owns `[s * per .. (s + 1) * per]`.
    iovecs: ManuallyDrop<Box<[libc::iovec]>>,
    segments_per_slot: usize,
    busy: Box<[bool]>,
    in_flight: usize,
    /// Pushed but not yet handed to the kernel.
    unsubmitted: usize,
    fixed: Vec<FixedBuffer>,
    /// Kept open for the SQEs that name it; a fixed-file registration holds its own reference.
    _file: OwnedFd,
    /// The descriptor SQEs name when the file is not registered (`None`: fixed file 0).
    plain_fd: Option<RawFd>,
    /// `rw_flags` of every read and write SQE.
    rw_flags: libc::c_int,
    event: EventFd,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory, which `GuestMemoryMmap` (Send +
// Sync) already shares between threads by design, and are only dereferenced by the kernel. The
// ring is used by one thread at a time (every method takes `&mut self` or reads plain fields),
// so moving it to another thread is sound.
unsafe impl Send for FileRing {}

impl std::fmt::Debug for FileRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRing")
            .field("slots", &self.busy.len())
            .field("in_flight", &self.in_flight)
            .field("fixed_buffers", &self.fixed.len())
            .finish_non_exhaustive()
    }
}

/// Whether this kernel lets the process set up an io_uring (a two-entry ring, closed at once).
///
/// # Errors
/// The `io_uring_setup` error: `ENOSYS` without io_uring, `EPERM` when
/// `kernel.io_uring_disabled` or a seccomp filter forbids it.
pub fn probe() -> io::Result<()> {
    IoUring::new(2).map(drop)
}

impl FileRing {
    /// Sets up a ring for `file` and `mem`. The ring keeps a duplicate of the file descriptor and
    /// a clone of the memory map.
    ///
    /// # Errors
    /// [`RingError`] when the kernel has no usable io_uring or refuses the registrations.
    pub fn new(file: impl AsFd, mem: &GuestMemory, config: RingConfig) -> Result<Self, RingError> {
        if config.slots == 0 {
            return Err(RingError::NoSlots);
        }
        if let Some(errno) = config.simulate_unavailable {
            return Err(RingError::Unavailable(io::Error::from_raw_os_error(errno)));
        }
        let slots = usize::from(config.slots);
        let entries = u32::from(config.slots).next_power_of_two();
        // The CQ holds twice the slots: completions can never overflow it.
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            // Disabled until `restrict` has limited what it may do.
            .setup_r_disabled()
            .build(entries)
            .map_err(RingError::Unavailable)?;
        let file = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(RingError::Register)?;
        let event = EventFd::new(EFD_NONBLOCK).map_err(RingError::Register)?;
        let submitter = ring.submitter();
        if config.fixed_file {
            submitter
                .register_files(&[file.as_raw_fd()])
                .map_err(RingError::Register)?;
        }
        submitter
            .register_eventfd(event.as_raw_fd())
            .map_err(RingError::Register)?;
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let segments_per_slot = config.segments_per_slot.max(1);
        let mut this = Self {
            ring: ManuallyDrop::new(ring),
            mem: ManuallyDrop::new(mem.clone()),
            iovecs: ManuallyDrop::new(vec![empty; slots * segments_per_slot].into_boxed_slice()),
            segments_per_slot,
            busy: vec![false; slots].into_boxed_slice(),
            in_flight: 0,
            unsubmitted: 0,
            fixed: Vec::new(),
            plain_fd: (!config.fixed_file).then(|| file.as_raw_fd()),
            rw_flags: if config.never_wait {
                libc::RWF_NOWAIT
            } else {
                0
            },
            _file: file,
            event,
        };
        if config.fixed_buffers {
            this.register_fixed_buffers();
        }
        this.restrict().map_err(RingError::Register)?;
        Ok(this)
    }

    /// Limits the ring to the operations [`FileRing::push`] and the cancel in `Drop` submit, then
    /// enables it. seccomp cannot see what a ring does: without this, code that took over the
    /// thread could open files or sockets through the ring. With it the kernel refuses any other
    /// opcode (`EACCES`), any SQE flag but the fixed-file one, and every further registration.
    fn restrict(&self) -> io::Result<()> {
        let mut restrictions = [
            Restriction::sqe_op(opcode::Read::CODE),
            Restriction::sqe_op(opcode::Write::CODE),
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::ReadFixed::CODE),
            Restriction::sqe_op(opcode::WriteFixed::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_op(opcode::Fallocate::CODE),
            Restriction::sqe_op(opcode::AsyncCancel::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::FIXED_FILE.bits()),
        ];
        let submitter = self.ring.submitter();
        submitter.register_restrictions(&mut restrictions)?;
        submitter.register_enable_rings()
    }

    /// Registers every guest memory region (in pieces of at most 1 GiB) as a fixed buffer. On
    /// failure (the memlock limit, an old kernel) the ring works without: reads and writes then
    /// use the vectored opcodes.
    fn register_fixed_buffers(&mut self) {
        let mut bufs = Vec::new();
        let mut fixed = Vec::new();
        for region in self.mem.iter() {
            let mut at = 0;
            while at < region.len() {
                let len = (region.len() - at).min(MAX_FIXED_BUFFER);
                let Ok(host) = region.get_host_address(MemoryRegionAddress(at)) else {
                    return;
                };
                let Ok(index) = u16::try_from(bufs.len()) else {
                    return;
                };
                bufs.push(libc::iovec {
                    iov_base: host.cast(),
                    iov_len: len as usize,
                });
                fixed.push(FixedBuffer {
                    host_start: host as usize,
                    len,
                    index,
                });
                at += len;
            }
        }
        // SAFETY: each iovec covers `len` bytes inside one guest memory region's mapping (the
        // lengths are clipped to the region), and `self.mem` keeps every region mapped for the
        // ring's whole life: `Drop` closes the ring (ending the registration) before it drops
        // the memory clone. The kernel pins those pages and touches them only for fixed-buffer
        // requests, which `transfer_entry` builds only for ranges inside one registered buffer.
        let registered = unsafe { self.ring.submitter().register_buffers(&bufs) };
        match registered {
            Ok(()) => self.fixed = fixed,
            Err(error) => {
                tracing::info!(%error, "io_uring: guest memory not registered as fixed buffers; using vectored I/O");
            }
        }
    }

    /// Whether guest memory is registered as fixed buffers.
    pub fn has_fixed_buffers(&self) -> bool {
        !self.fixed.is_empty()
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.busy.len()
    }

    /// Requests pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Signalled by the kernel as completions are posted. Never read by the ring: watch it
    /// edge-triggered (`EPOLLET`), where every signal is a new event.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Queues `op` in `slot` (not yet submitted: see [`Self::submit`]). `segments` are
    /// guest-physical `(address, length)` pairs, used by reads and writes only. With `direct`,
    /// the request must meet that direct-I/O alignment, or [`PushError::Misaligned`] is returned.
    ///
    /// # Errors
    /// [`PushError`]; nothing is queued then and the slot stays free.
    pub fn push(
        &mut self,
        slot: u16,
        op: RingOp,
        segments: impl IntoIterator<Item = (GuestAddress, usize)>,
        direct: Option<DirectIoAlignment>,
    ) -> Result<(), PushError> {
        let index = usize::from(slot);
        match self.busy.get(index) {
            None => return Err(PushError::NoSuchSlot(slot)),
            Some(true) => return Err(PushError::SlotBusy(slot)),
            Some(false) => {}
        }
        let entry = match op {
            RingOp::Read { offset } | RingOp::Write { offset } => {
                if let Some(align) = direct
                    && !offset.is_multiple_of(align.offset() as u64)
                {
                    return Err(PushError::Misaligned);
                }
                let read = matches!(op, RingOp::Read { .. });
                let count = self.fill_iovecs(index, segments, direct, read)?;
                self.transfer_entry(index, count, op, offset)?
            }
            RingOp::SyncData => on_file!(self.plain_fd, |fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            RingOp::PunchHole { offset, len } => fallocate(
                self.plain_fd,
                offset,
                len,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )?,
            RingOp::ZeroRange { offset, len } => fallocate(
                self.plain_fd,
                offset,
                len,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            )?,
        };
        let entry = entry.user_data(u64::from(slot));
        // The SQ has at least as many entries as there are slots and each busy slot holds at
        // most one entry, so a free slot always finds room.
        // SAFETY: every pointer in `entry` stays valid until its completion is reaped: iovec
        // arrays are this slot's part of `self.iovecs`, which is neither touched again nor freed
        // while the slot is busy (`push` refuses a busy slot; `Drop` waits for every completion
        // or leaks the storage); the iovecs and fixed-buffer pointers point into guest memory
        // mapped by `self.mem`, which lives as long as the ring, and were resolved from it by
        // `fill_iovecs`; the fd is the registered fixed file 0 or `self._file`'s own descriptor,
        // which `self._file` keeps open until after `Drop` has waited for every completion.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Unreachable by the sizing above; refuse rather than lose the request.
            return Err(PushError::SlotBusy(slot));
        }
        self.busy[index] = true;
        self.in_flight += 1;
        self.unsubmitted += 1;
        Ok(())
    }

    /// Writes the slot's iovecs from `segments`; returns how many. For a read (`into_memory`)
    /// the segments' pages are marked dirty now: the kernel writes them behind vm-memory's back,
    /// and the request completes before any snapshot can look (the devices pause first).
    fn fill_iovecs(
        &mut self,
        slot: usize,
        segments: impl IntoIterator<Item = (GuestAddress, usize)>,
        direct: Option<DirectIoAlignment>,
        into_memory: bool,
    ) -> Result<usize, PushError> {
        let per = self.segments_per_slot;
        let storage = &mut self.iovecs[slot * per..(slot + 1) * per];
        let mut count = 0;
        for (addr, len) in segments {
            let iovec = storage.get_mut(count).ok_or(PushError::TooManySegments)?;
            let slice = self
                .mem
                .get_slice(addr, len)
                .map_err(|_| PushError::NotGuestMemory(addr.0, len))?;
            // The mmap backend (vm-memory without `xen`) maps each region for the region's whole
            // life, so the pointer stays valid after the guard goes, for as long as `self.mem`.
            let host = slice.ptr_guard_mut().as_ptr();
            if let Some(align) = direct
                && (!(host as usize).is_multiple_of(align.memory())
                    || !len.is_multiple_of(align.offset()))
            {
                return Err(PushError::Misaligned);
            }
            if into_memory {
                guest_memory::mark_dirty(&slice);
            }
            *iovec = libc::iovec {
                iov_base: host.cast(),
                iov_len: len,
            };
            count += 1;
        }
        Ok(count)
    }

    /// The read or write SQE for the slot's first `count` iovecs: a fixed-buffer one when there
    /// is one segment inside a registered buffer.
    fn transfer_entry(
        &self,
        slot: usize,
        count: usize,
        op: RingOp,
        offset: u64,
    ) -> Result<squeue::Entry, PushError> {
        // `$new` built on the ring's file `$fd`, at `offset`, with the ring's `rw_flags`.
        macro_rules! transfer {
            (|$fd:ident| $new:expr) => {
                on_file!(self.plain_fd, |$fd| $new
                    .offset(offset)
                    .rw_flags(self.rw_flags)
                    .build())
            };
        }
        let per = self.segments_per_slot;
        let iovecs = &self.iovecs[slot * per..slot * per + count];
        let read = matches!(op, RingOp::Read { .. });
        if let [only] = iovecs
            && let Some(buffer) = self.fixed_buffer_of(only)
        {
            let len = u32::try_from(only.iov_len).map_err(|_| PushError::OutOfRange)?;
            let ptr = only.iov_base.cast::<u8>();
            return Ok(if read {
                transfer!(|fd| opcode::ReadFixed::new(fd, ptr, len, buffer))
            } else {
                transfer!(|fd| opcode::WriteFixed::new(fd, ptr, len, buffer))
            });
        }
        if let [only] = iovecs {
            // One segment: the plain opcodes spare the kernel importing an iovec array.
            let len = u32::try_from(only.iov_len).map_err(|_| PushError::OutOfRange)?;
            let ptr = only.iov_base.cast::<u8>();
            return Ok(if read {
                transfer!(|fd| opcode::Read::new(fd, ptr, len))
            } else {
                transfer!(|fd| opcode::Write::new(fd, ptr, len))
            });
        }
        let count = u32::try_from(count).map_err(|_| PushError::TooManySegments)?;
        Ok(if read {
            transfer!(|fd| opcode::Readv::new(fd, iovecs.as_ptr(), count))
        } else {
            transfer!(|fd| opcode::Writev::new(fd, iovecs.as_ptr(), count))
        })
    }

    /// The fixed buffer wholly containing `iovec`'s host range, if any.
    fn fixed_buffer_of(&self, iovec: &libc::iovec) -> Option<u16> {
        if self.fixed.is_empty() {
            return None;
        }
        let host = iovec.iov_base as usize;
        let len = iovec.iov_len as u64;
        self.fixed.iter().find_map(|buffer| {
            let start = host.checked_sub(buffer.host_start)? as u64;
            (start + len <= buffer.len).then_some(buffer.index)
        })
    }

    /// How many requests are queued and not yet handed to the kernel.
    pub fn queued(&self) -> usize {
        self.unsubmitted
    }

    /// Hands every queued request to the kernel (one `io_uring_enter`); does not wait.
    ///
    /// # Errors
    /// The `io_uring_enter` error other than `EINTR`/`EAGAIN`/`EBUSY` (which leave the requests
    /// queued for the next call).
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(taken) => {
                self.unsubmitted = self.unsubmitted.saturating_sub(taken);
                Ok(())
            }
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Hands every queued request to the kernel and sleeps until at least `want` completions
    /// wait (or a signal interrupts). For callers without an epoll loop: a drain before a
    /// pause, a benchmark.
    ///
    /// # Errors
    /// The `io_uring_enter` error other than `EINTR`.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want.min(self.in_flight)) {
            Ok(_) => {
                self.unsubmitted = 0;
                Ok(())
            }
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Whether a completion waits, without a system call.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Takes every waiting completion, passing each to `complete`; returns how many. Does not
    /// read the eventfd (a system call per batch): watch it edge-triggered.
    pub fn reap(&mut self, mut complete: impl FnMut(RingCompletion)) -> usize {
        let mut reaped = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                return reaped;
            };
            let Ok(slot) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            let Some(busy) = self.busy.get_mut(usize::from(slot)) else {
                continue;
            };
            *busy = false;
            self.in_flight -= 1;
            reaped += 1;
            let result = cqe.result();
            complete(RingCompletion {
                slot,
                result: if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    // Non-negative i32: fits usize.
                    Ok(result as usize)
                },
            });
        }
    }

    /// Asks the kernel to cancel every request in flight (those already at the disk finish
    /// anyway), then waits until each has completed, dropping their completions. Returns false
    /// if the kernel refused to wait.
    fn cancel_and_wait(&mut self) -> bool {
        if self.in_flight > 0 {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL_TAG);
            // SAFETY: a cancel entry carries no pointer, only the match-any flag.
            let pushed = unsafe { self.ring.submission().push(&cancel) };
            // A full SQ (unsubmitted requests) only means no cancel: we wait for them instead.
            let _ = pushed;
        }
        while self.in_flight > 0 {
            self.reap(drop);
            if self.in_flight == 0 {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = 0,
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => return false,
            }
        }
        true
    }
}

impl Drop for FileRing {
    fn drop(&mut self) {
        if self.cancel_and_wait() {
            // SAFETY: nothing is in flight, so the kernel holds no pointer into the iovecs or
            // guest memory; each field is dropped exactly once, here, and never used again. The
            // ring goes first so its fixed-buffer registration ends before the mapping may.
            unsafe {
                ManuallyDrop::drop(&mut self.ring);
                ManuallyDrop::drop(&mut self.iovecs);
                ManuallyDrop::drop(&mut self.mem);
            }
        } else {
            // The kernel may still write through the iovecs into guest memory: leak the ring,
            // the iovecs and the memory map (ManuallyDrop fields are simply not dropped).
            tracing::error!("io_uring: cannot wait for requests in flight; leaking the ring");
        }
    }
}

fn fallocate(
    plain_fd: Option<RawFd>,
    offset: u64,
    len: u64,
    mode: libc::c_int,
) -> Result<squeue::Entry, PushError> {
    // off_t is signed: both must fit.
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(PushError::OutOfRange);
    }
    Ok(on_file!(plain_fd, |fd| opcode::Fallocate::new(fd, len)
        .offset(offset)
        .mode(mode)
        .build()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::Bytes;

    use super::*;

    fn setup(slots: u16, fixed_buffers: bool) -> (tempfile::NamedTempFile, GuestMemory, FileRing) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let contents: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&contents).unwrap();
        // Dirty pages tracked: reads into guest memory must mark theirs.
        let mem = guest_memory::anonymous(
            &[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)],
            true,
        )
        .unwrap();
        let config = RingConfig {
            slots,
            segments_per_slot: 2,
            fixed_buffers,
            fixed_file: true,
            never_wait: false,
            simulate_unavailable: None,
        };
        let ring = FileRing::new(file.as_file(), &mem, config).unwrap();
        (file, mem, ring)
    }

    fn wait_one(ring: &mut FileRing) -> RingCompletion {
        let mut done = None;
        while done.is_none() {
            ring.submit_and_wait(1).unwrap();
            ring.reap(|c| done = Some(c));
        }
        done.unwrap()
    }

    /// The ring refuses what `FileRing` never submits: an opcode outside its list (here a
    /// no-op) completes with `EACCES`, and a registration after set-up fails.
    #[test]
    fn the_ring_refuses_other_opcodes_and_registrations() {
        let (_file, _mem, mut ring) = setup(2, false);
        let nop = opcode::Nop::new().build().user_data(1);
        // SAFETY: a no-op carries no pointer.
        unsafe { ring.ring.submission().push(&nop).unwrap() };
        ring.ring.submit_and_wait(1).unwrap();
        let result = ring.ring.completion().next().unwrap().result();
        assert_eq!(result, -libc::EACCES);
        let fd = ring._file.as_raw_fd();
        assert!(ring.ring.submitter().register_files(&[fd]).is_err());
    }

    /// With `never_wait`, a read of an empty stream completes at once with `WouldBlock` (without
    /// it io_uring would wait for data, even on a non-blocking descriptor).
    #[test]
    fn a_never_waiting_read_of_an_empty_stream_completes_with_would_block() {
        let mem = guest_memory::anonymous(&[(GuestAddress(0), 0x10000)], false).unwrap();
        let (reader, _writer) = std::io::pipe().unwrap();
        let config = RingConfig {
            slots: 1,
            segments_per_slot: 1,
            fixed_buffers: false,
            fixed_file: false,
            never_wait: true,
            simulate_unavailable: None,
        };
        let mut ring = FileRing::new(&reader, &mem, config).unwrap();
        let read = RingOp::Read { offset: 0 };
        ring.push(0, read, [(GuestAddress(0), 100)], None).unwrap();
        let done = wait_one(&mut ring);
        assert_eq!(
            done.result.map_err(|e| e.kind()).unwrap_err(),
            std::io::ErrorKind::WouldBlock
        );
    }

    /// A stream (a pipe here, a TAP in virtio-net) takes a batch of writes in push order,
    /// each from its own guest-memory segments, with one `io_uring_enter`.
    #[test]
    fn a_batch_of_writes_reaches_a_stream_in_push_order() {
        let mem = guest_memory::anonymous(&[(GuestAddress(0), 0x10000)], false).unwrap();
        for (i, byte) in [b'a', b'b', b'c'].into_iter().enumerate() {
            mem.write_slice(&[byte; 100], GuestAddress(0x1000 * i as u64))
                .unwrap();
        }
        let (reader, writer) = std::io::pipe().unwrap();
        let config = RingConfig {
            slots: 4,
            segments_per_slot: 2,
            fixed_buffers: false,
            fixed_file: false,
            never_wait: false,
            simulate_unavailable: None,
        };
        let mut ring = FileRing::new(&writer, &mem, config).unwrap();
        // Slot numbers need not follow the order: the stream sees the push order.
        for (slot, at) in [(2u16, 0x2000u64), (0, 0x0), (3, 0x1000)] {
            let segments = [(GuestAddress(at), 40), (GuestAddress(at + 40), 60)];
            ring.push(slot, RingOp::Write { offset: 0 }, segments, None)
                .unwrap();
        }
        assert_eq!(ring.queued(), 3);
        ring.submit_and_wait(3).unwrap();
        let mut done = Vec::new();
        while done.len() < 3 {
            ring.reap(|c| done.push((c.slot, c.result.unwrap())));
            if done.len() < 3 {
                ring.submit_and_wait(1).unwrap();
            }
        }
        done.sort_unstable();
        assert_eq!(done, [(0, 100), (2, 100), (3, 100)]);
        drop(ring);
        drop(writer);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &reader, &mut got).unwrap();
        let expected: Vec<u8> = [b'c', b'a', b'b'].iter().flat_map(|&b| [b; 100]).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn reads_and_writes_guest_memory_with_and_without_fixed_buffers() {
        for fixed in [false, true] {
            let (file, mem, mut ring) = setup(4, fixed);
            // Two segments, one in each region.
            let segments = [
                (GuestAddress(0xff00), 0x100),
                (GuestAddress(0x10000), 0x300),
            ];
            ring.push(1, RingOp::Read { offset: 512 }, segments, None)
                .unwrap();
            let done = wait_one(&mut ring);
            assert_eq!((done.slot, done.result.unwrap()), (1, 0x400));
            // The kernel wrote those pages behind vm-memory: the ring marked them dirty.
            let dirty: Vec<_> = mem.iter().map(guest_memory::take_dirty_pages).collect();
            assert_eq!(
                dirty,
                [vec![(15, 1)], vec![(0, 1)]],
                "fixed buffers: {fixed}"
            );
            let mut got = [0u8; 0x100];
            mem.read_slice(&mut got, GuestAddress(0xff00)).unwrap();
            assert_eq!(got[0], (512 % 251) as u8);
            // One segment: the fixed-buffer opcode when registered.
            mem.write_slice(&[0xab; 512], GuestAddress(0x2000)).unwrap();
            ring.push(
                0,
                RingOp::Write { offset: 4096 },
                [(GuestAddress(0x2000), 512)],
                None,
            )
            .unwrap();
            assert_eq!(wait_one(&mut ring).result.unwrap(), 512);
            let dirty: Vec<_> = mem.iter().map(guest_memory::take_dirty_pages).collect();
            assert_eq!(
                dirty,
                [vec![(2, 1)], vec![]],
                "only the test's own write_slice"
            );
            ring.push(2, RingOp::SyncData, [], None).unwrap();
            assert_eq!(wait_one(&mut ring).result.unwrap(), 0);
            let on_disk = std::fs::read(file.path()).unwrap();
            assert!(on_disk[4096..4608].iter().all(|&b| b == 0xab));
            assert_eq!(ring.in_flight(), 0);
        }
    }

    #[test]
    fn refuses_what_it_cannot_submit_safely() {
        let (_file, _mem, mut ring) = setup(2, false);
        let ok = [(GuestAddress(0), 512)];
        let read = RingOp::Read { offset: 0 };
        assert_eq!(ring.push(2, read, ok, None), Err(PushError::NoSuchSlot(2)));
        // Across the end of guest memory, and across two regions in one segment.
        assert_eq!(
            ring.push(0, read, [(GuestAddress(0x1ff00), 512)], None),
            Err(PushError::NotGuestMemory(0x1ff00, 512))
        );
        assert!(matches!(
            ring.push(0, read, [(GuestAddress(0xff00), 512)], None),
            Err(PushError::NotGuestMemory(..))
        ));
        assert_eq!(
            ring.push(0, read, [(GuestAddress(0), 512); 3], None),
            Err(PushError::TooManySegments)
        );
        let align = DirectIoAlignment::new(4096, 512).unwrap();
        assert_eq!(
            ring.push(0, read, [(GuestAddress(0x200), 512)], Some(align)),
            Err(PushError::Misaligned)
        );
        assert_eq!(
            ring.push(0, RingOp::Read { offset: 100 }, ok, Some(align)),
            Err(PushError::Misaligned)
        );
        assert_eq!(
            ring.push(
                0,
                RingOp::PunchHole {
                    offset: u64::MAX,
                    len: 1
                },
                [],
                None
            ),
            Err(PushError::OutOfRange)
        );
        assert_eq!(ring.in_flight(), 0, "a refused push queued something");
        ring.push(0, read, ok, Some(align)).unwrap();
        assert_eq!(ring.push(0, read, ok, None), Err(PushError::SlotBusy(0)));
        assert_eq!(wait_one(&mut ring).result.unwrap(), 512);
    }

    #[test]
    fn a_kernel_without_io_uring_is_a_clear_error() {
        let file = tempfile::tempfile().unwrap();
        let mem = guest_memory::anonymous(&[(GuestAddress(0), 0x1000)], false).unwrap();
        let config = RingConfig {
            slots: 1,
            segments_per_slot: 1,
            fixed_buffers: false,
            fixed_file: true,
            never_wait: false,
            simulate_unavailable: Some(libc::ENOSYS),
        };
        let error = FileRing::new(&file, &mem, config).unwrap_err();
        assert!(
            matches!(&error, RingError::Unavailable(e) if e.raw_os_error() == Some(libc::ENOSYS))
        );
        assert!(
            error.to_string().contains("io_uring is unavailable"),
            "{error}"
        );
    }
}
