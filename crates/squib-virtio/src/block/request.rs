//! One virtio-blk request, top to bottom (virtio 1.2 §5.2.6):
//!
//! 1. **parse the chain** into header, data segments and status byte ([`ParsedRequest::parse`]);
//! 2. **validate** the header and data against the request type, the negotiated features and
//!    the disk;
//! 3. **execute** on the [`BlockBackend`] ([`ParsedRequest::execute`]);
//! 4. write the **status byte** and return the **used-ring length** (bytes the device wrote into
//!    guest memory) for the caller to put in the used ring.
//!
//! Every field here comes from the guest. A malformed request completes with IOERR or UNSUPP
//! and never reaches the disk; a chain without a usable status byte completes with used length 0.
//! Data segments are collected into a [`SegmentBuf`] owned by the worker (or by one in-flight
//! slot of its I/O pool) and reused: no heap allocation per request.

use std::time::Instant;

use tracing::debug;

use crate::guest_warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::{BackendError, BlockBackend, SECTOR_SIZE, Segment};
use super::config::{BlockLimits, SEG_MAX, ServeConfig};
use super::metrics::{BlockMetrics, Completed};
use crate::GuestMemory;
use crate::queue::Chain;

/// `struct virtio_blk_outhdr`: le32 type, le32 reserved (ioprio), le64 sector.
const HEADER_LEN: u32 = 16;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags.
const RANGE_LEN: u64 = 16;

/// Everything a request is served against: the disk, guest memory and the negotiated settings.
#[derive(Debug)]
pub(crate) struct RequestContext<'a> {
    pub(crate) mem: &'a GuestMemory,
    pub(crate) backend: &'a dyn BlockBackend,
    /// Disk capacity in bytes (whole sectors).
    pub(crate) capacity: u64,
    pub(crate) serve: &'a ServeConfig,
    pub(crate) metrics: &'a BlockMetrics,
}

/// Whether a request may run concurrently with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// Moves data on the disk (read, write, discard, write-zeroes): may overlap other such
    /// requests, as on any disk with a queue.
    DiskIo,
    /// FLUSH: must not overtake the writes completed before it, so it waits for the requests in
    /// flight to finish.
    Barrier,
    /// Completes without touching the disk (GET_ID, refused requests): cheapest done at once.
    Immediate,
}

/// A request's place in the used ring once it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) head_index: u16,
    pub(crate) used_len: u32,
}

/// The data segments of one request: a fixed-capacity buffer reused for every request it carries.
#[derive(Debug)]
pub(crate) struct SegmentBuf {
    segments: [Segment; SEG_MAX],
    len: usize,
    /// Data descriptors seen, empty ones included: seg_max bounds descriptors, not bytes, so an
    /// indirect table of empty buffers cannot make a request walk more than seg_max of them.
    descriptors: usize,
}

impl SegmentBuf {
    pub(crate) fn new() -> Self {
        Self {
            segments: [Segment {
                addr: GuestAddress(0),
                len: 0,
            }; SEG_MAX],
            len: 0,
            descriptors: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.descriptors = 0;
    }

    /// Counts one data descriptor toward seg_max.
    fn count_empty(&mut self) -> Result<(), RequestError> {
        if self.descriptors >= SEG_MAX {
            return Err(RequestError::TooManySegments);
        }
        self.descriptors += 1;
        Ok(())
    }

    fn push(&mut self, segment: Segment) -> Result<(), RequestError> {
        self.count_empty()?;
        let slot = self
            .segments
            .get_mut(self.len)
            .ok_or(RequestError::TooManySegments)?;
        *slot = segment;
        self.len += 1;
        Ok(())
    }

    pub(crate) fn as_slice(&self) -> &[Segment] {
        &self.segments[..self.len]
    }
}

/// Which way the data descriptors move bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataDirection {
    /// No data descriptors.
    None,
    /// The device reads them (OUT, DISCARD, WRITE_ZEROES).
    DeviceReads,
    /// The device writes them (IN, GET_ID).
    DeviceWrites,
}

/// What the guest did wrong, or what the backend failed at.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the header descriptor is device-writable")]
    HeaderWritable,
    #[error("the header descriptor is {0} bytes, expected exactly {HEADER_LEN}")]
    HeaderLength(u32),
    #[error("the header at {0:#x} is not in guest memory")]
    HeaderOutsideMemory(u64),
    #[error("the chain has more than {SEG_MAX} data descriptors (seg_max)")]
    TooManySegments,
    #[error("the data descriptors mix device-readable and device-writable buffers")]
    MixedDirections,
    #[error("data buffer {addr:#x}+{len:#x} is not in guest memory")]
    DataOutsideMemory { addr: u64, len: u32 },
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("{0} was not negotiated")]
    NotNegotiated(&'static str),
    #[error("{op} needs {expected} data buffers")]
    WrongDirection {
        op: &'static str,
        expected: &'static str,
    },
    #[error("data length {0:#x} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sector {sector:#x} with {len:#x} bytes overflows a byte offset")]
    SectorOverflow { sector: u64, len: u64 },
    #[error("bytes {offset:#x}..{offset:#x}+{len:#x} lie beyond the disk's {capacity:#x} bytes")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("{op} takes exactly one {RANGE_LEN}-byte range, got {len} data bytes")]
    RangeCount { op: &'static str, len: u64 },
    #[error("{op} range flags {flags:#x} are not supported")]
    UnsupportedFlags { op: &'static str, flags: u32 },
    #[error("{op} range of {num_sectors} sectors is empty or above the limit of {max}")]
    RangeLength {
        op: &'static str,
        num_sectors: u32,
        max: u32,
    },
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
}

impl RequestError {
    /// The status byte the driver sees.
    fn status(&self) -> u8 {
        let status = match self {
            Self::UnsupportedType(_) | Self::NotNegotiated(_) | Self::UnsupportedFlags { .. } => {
                VIRTIO_BLK_S_UNSUPP
            }
            _ => VIRTIO_BLK_S_IOERR,
        };
        status as u8
    }
}

/// A validated request. Its data segments stay in the [`SegmentBuf`] it was parsed into, so the
/// request can move to another thread with that buffer and borrow nothing from the worker.
#[derive(Debug)]
enum Request {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

/// A chain taken from the avail ring, parsed and validated, not yet executed.
#[derive(Debug)]
pub(crate) struct ParsedRequest {
    head_index: u16,
    /// Where the status byte goes and what to do; `None` when the chain has no usable status
    /// byte, in which case nothing is done: there is no way to report the outcome.
    reply: Option<(GuestAddress, Result<Request, RequestError>)>,
}

impl ParsedRequest {
    /// Steps 1 and 2: parse `chain` into `segments` and validate it against `ctx`.
    pub(crate) fn parse(
        chain: Chain<'_>,
        ctx: &RequestContext<'_>,
        segments: &mut SegmentBuf,
    ) -> Self {
        let head_index = chain.head_index();
        let (status, layout) = parse_chain(chain, ctx.mem, segments);
        let reply = status.map(|status| {
            (
                status,
                layout.and_then(|layout| validate(layout, segments.as_slice(), ctx)),
            )
        });
        Self { head_index, reply }
    }

    /// What a rate limiter charges for this request: `Some(bytes)` when it will reach the disk
    /// (one operation plus its data bytes, which only reads and writes move, as in Firecracker),
    /// `None` when it completes with an error without touching the disk and so is never
    /// throttled.
    pub(crate) fn throttle_bytes(&self) -> Option<u64> {
        match &self.reply {
            Some((_, Ok(Request::Read { len, .. } | Request::Write { len, .. }))) => Some(*len),
            Some((_, Ok(_))) => Some(0),
            Some((_, Err(_))) | None => None,
        }
    }

    /// How the worker may schedule this request once it has more than one in flight.
    pub(crate) fn kind(&self) -> RequestKind {
        match &self.reply {
            Some((_, Ok(Request::Flush))) => RequestKind::Barrier,
            Some((
                _,
                Ok(
                    Request::Read { .. }
                    | Request::Write { .. }
                    | Request::Discard { .. }
                    | Request::WriteZeroes { .. },
                ),
            )) => RequestKind::DiskIo,
            Some((_, Ok(Request::GetId) | Err(_))) | None => RequestKind::Immediate,
        }
    }

    /// The disk operation of a validated request that reaches the disk, for an executor that
    /// performs it itself (the io_uring engine) and then calls [`Self::complete_performed`].
    pub(crate) fn disk_op(&self) -> Option<DiskOp> {
        match &self.reply {
            Some((_, Ok(request))) => match *request {
                Request::Read { offset, len } => Some(DiskOp::Read { offset, len }),
                Request::Write { offset, len } => Some(DiskOp::Write { offset, len }),
                Request::Flush => Some(DiskOp::Flush),
                Request::Discard { offset, len } => Some(DiskOp::Discard { offset, len }),
                Request::WriteZeroes { offset, len } => Some(DiskOp::WriteZeroes { offset, len }),
                Request::GetId => None,
            },
            Some((_, Err(_))) | None => None,
        }
    }

    /// Steps 3 and 4: execute on the backend with the data segments this request was parsed
    /// into, write the status byte, return the completion.
    pub(crate) fn execute(self, ctx: &RequestContext<'_>, segments: &SegmentBuf) -> Completion {
        self.finish(ctx, |request| {
            let started = Instant::now();
            let written = perform(&request, segments.as_slice(), ctx)?;
            record_success(&request, ctx.metrics, started);
            Ok(written)
        })
    }

    /// Step 4 for a request whose [`Self::disk_op`] an executor performed successfully, having
    /// started it at `started`.
    pub(crate) fn complete_performed(
        self,
        ctx: &RequestContext<'_>,
        started: Instant,
    ) -> Completion {
        self.finish(ctx, |request| {
            record_success(&request, ctx.metrics, started);
            Ok(disk_bytes_written(&request))
        })
    }

    /// Runs step 3 with `run` (which returns the bytes written into guest memory), then writes
    /// the status byte and returns the completion.
    fn finish(
        self,
        ctx: &RequestContext<'_>,
        run: impl FnOnce(Request) -> Result<u32, RequestError>,
    ) -> Completion {
        let head_index = self.head_index;
        let Some((status_addr, request)) = self.reply else {
            ctx.metrics.record_invalid();
            guest_warn!(
                head_index,
                "virtio-blk chain without a usable status descriptor: used len 0"
            );
            return Completion {
                head_index,
                used_len: 0,
            };
        };
        let (status, data_written) = match request.and_then(run) {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(error) => {
                if let RequestError::Backend(_) = error {
                    ctx.metrics.record_io_error();
                    guest_warn!(%error, "virtio-blk request failed");
                } else {
                    ctx.metrics.record_invalid();
                    debug!(%error, "virtio-blk request refused");
                }
                (error.status(), 0)
            }
        };
        if let Err(error) = ctx.mem.write_obj(status, status_addr) {
            // Checked at parse time, so only a memory unplug could get here.
            guest_warn!(%error, "could not write the virtio-blk status byte");
            return Completion {
                head_index,
                used_len: 0,
            };
        }
        Completion {
            head_index,
            used_len: data_written.saturating_add(1),
        }
    }
}

/// What a request does to the disk, for an executor that performs it itself. Offsets and lengths
/// are in bytes, validated against the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiskOp {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

/// The chain's shape once split into header, data and status.
#[derive(Debug)]
struct Layout {
    header: GuestAddress,
    direction: DataDirection,
    /// Total data bytes (fits in u32: virtio-queue ends a chain whose lengths overflow u32).
    data_len: u64,
}

/// Step 1: the first descriptor is the 16-byte header, the last is the status byte, everything
/// between is data, all in one direction. Returns the status address separately because a
/// request with a broken layout still gets an IOERR there.
fn parse_chain(
    mut chain: Chain<'_>,
    mem: &GuestMemory,
    segments: &mut SegmentBuf,
) -> (Option<GuestAddress>, Result<Layout, RequestError>) {
    segments.clear();
    let Some(header) = chain.next() else {
        return (None, Err(RequestError::HeaderLength(0)));
    };
    let mut layout = check_header(&header, mem).map(|header| Layout {
        header,
        direction: DataDirection::None,
        data_len: 0,
    });
    // The status descriptor is only known once the chain ends, so data lags one behind.
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        if let (Some(data), Ok(shape)) = (last.replace(desc), layout.as_mut())
            && let Err(error) = add_data(shape, &data, mem, segments)
        {
            layout = Err(error);
        }
    }
    let status = last.and_then(|desc| usable_status(&desc, mem));
    (status, layout)
}

fn check_header(desc: &Descriptor, mem: &GuestMemory) -> Result<GuestAddress, RequestError> {
    if desc.is_write_only() {
        return Err(RequestError::HeaderWritable);
    }
    if desc.len() != HEADER_LEN {
        return Err(RequestError::HeaderLength(desc.len()));
    }
    if !GuestMemoryBackend::check_range(mem, desc.addr(), HEADER_LEN as usize) {
        return Err(RequestError::HeaderOutsideMemory(desc.addr().0));
    }
    Ok(desc.addr())
}

fn add_data(
    layout: &mut Layout,
    desc: &Descriptor,
    mem: &GuestMemory,
    segments: &mut SegmentBuf,
) -> Result<(), RequestError> {
    let direction = if desc.is_write_only() {
        DataDirection::DeviceWrites
    } else {
        DataDirection::DeviceReads
    };
    match layout.direction {
        DataDirection::None => layout.direction = direction,
        current if current != direction => return Err(RequestError::MixedDirections),
        _ => {}
    }
    let (addr, len) = (desc.addr(), desc.len());
    if len == 0 {
        return segments.count_empty();
    }
    if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
        return Err(RequestError::DataOutsideMemory { addr: addr.0, len });
    }
    segments.push(Segment { addr, len })?;
    layout.data_len += u64::from(len);
    Ok(())
}

/// The status descriptor must end the chain (a last descriptor with NEXT set means virtio-queue
/// cut the chain short: a loop, an index out of range or unreadable memory), be device-writable,
/// and hold at least one byte of guest memory.
fn usable_status(desc: &Descriptor, mem: &GuestMemory) -> Option<GuestAddress> {
    let usable = !desc.has_next()
        && desc.is_write_only()
        && desc.len() >= 1
        && GuestMemoryBackend::check_range(mem, desc.addr(), 1);
    usable.then(|| desc.addr())
}

/// Step 2: interpret the header and check the request against the disk and the features.
fn validate(
    layout: Layout,
    segments: &[Segment],
    ctx: &RequestContext<'_>,
) -> Result<Request, RequestError> {
    let header: [u8; HEADER_LEN as usize] = ctx
        .mem
        .read_obj(layout.header)
        .map_err(|_| RequestError::HeaderOutsideMemory(layout.header.0))?;
    let (request_type, sector) = decode_header(&header);
    let Layout {
        direction,
        data_len: len,
        ..
    } = layout;
    let negotiated = ctx.serve.negotiated;
    match request_type {
        VIRTIO_BLK_T_IN => {
            expect_direction("IN", direction, DataDirection::DeviceWrites)?;
            let offset = sector_range(sector, len, ctx.capacity)?;
            Ok(Request::Read { offset, len })
        }
        VIRTIO_BLK_T_OUT => {
            expect_direction("OUT", direction, DataDirection::DeviceReads)?;
            let offset = sector_range(sector, len, ctx.capacity)?;
            writable(ctx)?;
            Ok(Request::Write { offset, len })
        }
        VIRTIO_BLK_T_FLUSH => {
            if !negotiated.flush {
                return Err(RequestError::NotNegotiated("FLUSH"));
            }
            expect_direction("FLUSH", direction, DataDirection::None)?;
            Ok(Request::Flush)
        }
        VIRTIO_BLK_T_GET_ID => {
            if direction != DataDirection::DeviceWrites {
                return Err(RequestError::WrongDirection {
                    op: "GET_ID",
                    expected: "device-writable",
                });
            }
            Ok(Request::GetId)
        }
        VIRTIO_BLK_T_DISCARD => {
            if !negotiated.discard {
                return Err(RequestError::NotNegotiated("DISCARD"));
            }
            let (offset, len) = range(ctx, RangeOp::Discard, direction, segments, len)?;
            Ok(Request::Discard { offset, len })
        }
        VIRTIO_BLK_T_WRITE_ZEROES => {
            if !negotiated.write_zeroes {
                return Err(RequestError::NotNegotiated("WRITE_ZEROES"));
            }
            let (offset, len) = range(ctx, RangeOp::WriteZeroes, direction, segments, len)?;
            Ok(Request::WriteZeroes { offset, len })
        }
        other => Err(RequestError::UnsupportedType(other)),
    }
}

fn decode_header(header: &[u8; HEADER_LEN as usize]) -> (u32, u64) {
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = *header;
    (u32::from_le_bytes([t0, t1, t2, t3]), u64::from_le_bytes(s))
}

fn expect_direction(
    op: &'static str,
    got: DataDirection,
    expected: DataDirection,
) -> Result<(), RequestError> {
    // An IN or OUT without data is a harmless no-op; anything else must match.
    if got == expected || got == DataDirection::None {
        return Ok(());
    }
    let expected = match expected {
        DataDirection::None => "no",
        DataDirection::DeviceReads => "device-readable",
        DataDirection::DeviceWrites => "device-writable",
    };
    Err(RequestError::WrongDirection { op, expected })
}

fn writable(ctx: &RequestContext<'_>) -> Result<(), RequestError> {
    if ctx.backend.is_read_only() {
        Err(RequestError::ReadOnly)
    } else {
        Ok(())
    }
}

/// `len` bytes starting at `sector`, checked for alignment, overflow and capacity; returns the
/// byte offset.
fn sector_range(sector: u64, len: u64, capacity: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::UnalignedLength(len));
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::SectorOverflow { sector, len })?;
    let end = offset
        .checked_add(len)
        .ok_or(RequestError::SectorOverflow { sector, len })?;
    if end > capacity {
        return Err(RequestError::OutOfRange {
            offset,
            len,
            capacity,
        });
    }
    Ok(offset)
}

/// The two requests that carry `virtio_blk_discard_write_zeroes` ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeOp {
    Discard,
    WriteZeroes,
}

impl RangeOp {
    fn name(self) -> &'static str {
        match self {
            Self::Discard => "DISCARD",
            Self::WriteZeroes => "WRITE_ZEROES",
        }
    }

    /// §5.2.6.2: any other flag is UNSUPP, and DISCARD must not carry the unmap flag.
    fn allowed_flags(self) -> u32 {
        match self {
            Self::Discard => 0,
            Self::WriteZeroes => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        }
    }

    fn max_sectors(self, limits: &BlockLimits) -> u32 {
        match self {
            Self::Discard => limits.max_discard_sectors,
            Self::WriteZeroes => limits.max_write_zeroes_sectors,
        }
    }
}

/// The single range of a DISCARD or WRITE_ZEROES (max_discard_seg = max_write_zeroes_seg = 1),
/// as a checked byte range.
fn range(
    ctx: &RequestContext<'_>,
    op: RangeOp,
    direction: DataDirection,
    segments: &[Segment],
    data_len: u64,
) -> Result<(u64, u64), RequestError> {
    let name = op.name();
    if direction != DataDirection::DeviceReads {
        return Err(RequestError::WrongDirection {
            op: name,
            expected: "device-readable",
        });
    }
    if data_len != RANGE_LEN {
        return Err(RequestError::RangeCount {
            op: name,
            len: data_len,
        });
    }
    let mut raw = [0u8; RANGE_LEN as usize];
    gather(ctx.mem, segments, &mut raw)?;
    let [
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
        n0,
        n1,
        n2,
        n3,
        f0,
        f1,
        f2,
        f3,
    ] = raw;
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let num_sectors = u32::from_le_bytes([n0, n1, n2, n3]);
    let flags = u32::from_le_bytes([f0, f1, f2, f3]);

    if flags & !op.allowed_flags() != 0 {
        return Err(RequestError::UnsupportedFlags { op: name, flags });
    }
    let max = op.max_sectors(&ctx.serve.limits);
    if num_sectors == 0 || num_sectors > max {
        return Err(RequestError::RangeLength {
            op: name,
            num_sectors,
            max,
        });
    }
    let len = u64::from(num_sectors) * SECTOR_SIZE;
    let offset = sector_range(sector, len, ctx.capacity)?;
    writable(ctx)?;
    Ok((offset, len))
}

/// Copies the first `out.len()` bytes of `segments` into `out`.
fn gather(mem: &GuestMemory, segments: &[Segment], out: &mut [u8]) -> Result<(), RequestError> {
    let mut filled = 0;
    for segment in segments {
        let Some(rest) = out.get_mut(filled..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let take = rest.len().min(segment.len as usize);
        mem.read_slice(&mut rest[..take], segment.addr)
            .map_err(|_| RequestError::DataOutsideMemory {
                addr: segment.addr.0,
                len: segment.len,
            })?;
        filled += take;
    }
    Ok(())
}

/// Copies `bytes` into the front of `segments`; returns how many bytes fit.
fn scatter(mem: &GuestMemory, segments: &[Segment], bytes: &[u8]) -> Result<u32, RequestError> {
    let mut written = 0;
    for segment in segments {
        let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) else {
            break;
        };
        let take = rest.len().min(segment.len as usize);
        mem.write_slice(&rest[..take], segment.addr).map_err(|_| {
            RequestError::DataOutsideMemory {
                addr: segment.addr.0,
                len: segment.len,
            }
        })?;
        written += take;
    }
    // At most DRIVE_SERIAL_LEN bytes.
    Ok(u32::try_from(written).unwrap_or(u32::MAX))
}

/// Step 3: run the request on the backend (GET_ID answers from the serial instead); returns the
/// bytes written into guest memory.
fn perform(
    request: &Request,
    segments: &[Segment],
    ctx: &RequestContext<'_>,
) -> Result<u32, RequestError> {
    let backend = ctx.backend;
    match *request {
        Request::Read { offset, .. } => backend.read_vectored_at(ctx.mem, segments, offset)?,
        Request::Write { offset, .. } => backend.write_vectored_at(ctx.mem, segments, offset)?,
        Request::Flush => backend.flush()?,
        Request::GetId => return scatter(ctx.mem, segments, ctx.serve.serial.as_bytes()),
        Request::Discard { offset, len } => backend.discard(offset, len)?,
        Request::WriteZeroes { offset, len } => backend.write_zeroes(offset, len)?,
    }
    Ok(disk_bytes_written(request))
}

/// The bytes a request that reached the disk wrote into guest memory: a read's data.
fn disk_bytes_written(request: &Request) -> u32 {
    match *request {
        // `len` is a sum of u32 descriptor lengths that virtio-queue keeps below 2^32.
        Request::Read { len, .. } => u32::try_from(len).unwrap_or(u32::MAX),
        _ => 0,
    }
}

/// Records a request that succeeded after starting at `started`.
fn record_success(request: &Request, metrics: &BlockMetrics, started: Instant) {
    let completed = match *request {
        Request::Read { len, .. } => Completed::Read { bytes: len },
        Request::Write { len, .. } => Completed::Write { bytes: len },
        Request::Flush => Completed::Flush,
        Request::GetId => Completed::GetId,
        Request::Discard { .. } => Completed::Discard,
        Request::WriteZeroes { .. } => Completed::WriteZeroes,
    };
    metrics.record_success(completed, started.elapsed());
}
