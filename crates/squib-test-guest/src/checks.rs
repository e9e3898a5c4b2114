//! The checks: each virtio-blk device on the command line is brought up and exercised the way
//! a Linux driver and its users would, one `ok`/`FAIL` line per check (see `report`).
//!
//! Data written is the run's `pattern`.

use core::fmt;

use crate::cmdline::{Check, Completion, DiskName, MmioDevice, Options};
use crate::dma::DmaBuf;
use crate::interrupts;
use crate::pattern;
use crate::report;
use crate::rng_checks;
use crate::virtio_init;
use crate::virtio_rng::DEVICE_ID_RNG;
use crate::virtio_vsock::DEVICE_ID_VSOCK;

/// virtio's device id for a network card.
pub(crate) const DEVICE_ID_NET: u32 = 1;
use crate::vsock_checks;
use crate::serial::println;
use crate::time::{self, Deadline};
use crate::virtio_blk::{
    BlockDevice, ID_BYTES, Op, RequestError, SECTOR_BYTES, Status, feature, segment,
};

/// Bytes in the scratch buffers (each check's data fits in one).
const SCRATCH_BYTES: usize = 64 * 1024;
/// Requests the in-flight check keeps outstanding (at least 8 must fit the queue).
const IN_FLIGHT: usize = 16;
const MIN_IN_FLIGHT: usize = 8;
const BLOCK: usize = 4096;

/// Where on the disk each check works, in sectors. The disk must hold them all.
const RW_SECTOR: u64 = 64; // 128 sectors
const SEGMENTS_SECTOR: u64 = 256; // 12 sectors
const IN_FLIGHT_SECTOR: u64 = 512; // IN_FLIGHT × 8 sectors
const MIN_CAPACITY: u64 = IN_FLIGHT_SECTOR + (IN_FLIGHT * BLOCK / SECTOR_BYTES) as u64;

/// Runs every selected check on every device, then ends the run.
pub fn run(options: &Options) -> ! {
    let seed = time::tsc();
    println!("# pattern seed {seed:#x}");
    if options.device_count() == 0 {
        report::fail(
            format_args!("virtio-blk"),
            &"no virtio_mmio.device= on the command line",
        );
    }
    let mut scratch = match Scratch::new() {
        Ok(scratch) => scratch,
        Err(error) => report::abort(format_args!("scratch buffers: {error}")),
    };
    let (mut disks, mut nets) = (0, 0);
    for device in options.devices() {
        match virtio_init::device_id(device) {
            Ok(DEVICE_ID_NET) => {
                crate::net_checks::check(nets, device.base, device.size, options.net.as_ref());
                nets += 1;
            }
            Ok(DEVICE_ID_RNG) => rng_checks::check(options, device),
            Ok(DEVICE_ID_VSOCK) => vsock_checks::check(device),
            // Anything else is a disk to the block checks, which report a wrong device id.
            _ => {
                check_disk(options, DiskName(disks), device, &mut scratch, seed);
                disks += 1;
            }
        }
    }
    report::finish()
}

/// Whether the device at that slot says it is a network device (id 1); anything else goes to
/// the block checks, which report a wrong id.
pub fn is_network_device(device: &MmioDevice) -> bool {
    crate::virtio_mmio::Transport::probe(device.base, device.size)
        .is_ok_and(|t| t.device_id() == DEVICE_ID_NET)
}

/// Two 64 KiB buffers: what is written (or expected) and what is read.
#[derive(Debug)]
struct Scratch {
    expected: DmaBuf,
    actual: DmaBuf,
}

impl Scratch {
    fn new() -> Result<Self, crate::dma::OutOfDmaMemory> {
        Ok(Self {
            expected: DmaBuf::new(SCRATCH_BYTES, BLOCK)?,
            actual: DmaBuf::new(SCRATCH_BYTES, BLOCK)?,
        })
    }
}

/// What a failed check saw.
#[derive(Debug)]
enum CheckError {
    Request(RequestError),
    Status {
        request: &'static str,
        expected: Status,
        got: Status,
    },
    Mismatch(pattern::Mismatch),
    TooSmall {
        capacity: u64,
    },
    CapacityChanged {
        first: u64,
        second: u64,
    },
    ReadOnlyFlag {
        offered: bool,
    },
    BadId,
    QueueTooSmall {
        fits: usize,
    },
    DuplicateCompletion {
        tag: u16,
    },
    NoUsedBufferInterrupt {
        interrupt_status: u32,
    },
    InterruptWithoutCompletion,
}

impl From<RequestError> for CheckError {
    fn from(error: RequestError) -> Self {
        Self::Request(error)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(error) => error.fmt(f),
            Self::Status {
                request,
                expected,
                got,
            } => {
                write!(f, "{request} returned {got}, expected {expected}")
            }
            Self::Mismatch(mismatch) => mismatch.fmt(f),
            Self::TooSmall { capacity } => {
                write!(
                    f,
                    "capacity {capacity} sectors; the checks need at least {MIN_CAPACITY}"
                )
            }
            Self::CapacityChanged { first, second } => {
                write!(f, "capacity read {first}, then {second}")
            }
            Self::ReadOnlyFlag { offered } => write!(
                f,
                "VIRTIO_BLK_F_RO {}offered, but guest.expect_ro says {}",
                if *offered { "" } else { "not " },
                if *offered { "writable" } else { "read-only" }
            ),
            Self::BadId => f.write_str("GET_ID returned an empty or non-printable id"),
            Self::QueueTooSmall { fits } => {
                write!(
                    f,
                    "only {fits} requests fit the queue, {MIN_IN_FLIGHT} needed"
                )
            }
            Self::DuplicateCompletion { tag } => write!(f, "request {tag} completed twice"),
            Self::NoUsedBufferInterrupt { interrupt_status } => write!(
                f,
                "interrupt arrived but InterruptStatus is {interrupt_status:#x} (no used-buffer bit)"
            ),
            Self::InterruptWithoutCompletion => {
                f.write_str("interrupt arrived but the used ring holds no completion")
            }
        }
    }
}

type Outcome = Result<(), CheckError>;

fn check_disk(
    options: &Options,
    name: DiskName,
    device: &MmioDevice,
    scratch: &mut Scratch,
    seed: u64,
) {
    let mut disk = match BlockDevice::init(device) {
        Ok(disk) => disk,
        Err(error) => {
            report::fail(
                format_args!("virtio-blk {name}: init at {:#x}", device.base),
                &error,
            );
            return;
        }
    };
    report::pass(format_args!(
        "virtio-blk {name}: init at {:#x} gsi {} (vector {:#x}): features {:#x}, queue size {}",
        disk.base,
        disk.gsi,
        disk.vector,
        disk.features(),
        disk.queue_size()
    ));

    let capacity = capacity(&disk);
    report::record(
        format_args!(
            "virtio-blk {name}: capacity {} sectors ({} KiB), blk_size {}",
            disk.capacity(),
            disk.capacity() / 2,
            disk.blk_size().unwrap_or(SECTOR_BYTES as u32)
        ),
        &capacity,
    );
    if capacity.is_err() {
        return;
    }

    let read_only = disk.has(feature::RO);
    if let Some(expected) = options.expect_read_only {
        let outcome = if expected.contains(name.0) == read_only {
            Ok(())
        } else {
            Err(CheckError::ReadOnlyFlag { offered: read_only })
        };
        let what = if read_only { "read-only" } else { "writable" };
        report::record(
            format_args!("virtio-blk {name}: {what}, as guest.expect_ro says"),
            &outcome,
        );
    }

    let selected = |check| options.checks.contains(check);
    if selected(Check::Id) {
        let mut id = [0; ID_BYTES];
        let outcome = get_id(&mut disk, scratch, &mut id);
        let shown = core::str::from_utf8(trim_id(&id)).unwrap_or("?");
        report::record(
            format_args!("virtio-blk {name}: GET_ID \"{shown}\""),
            &outcome,
        );
    }
    if selected(Check::ReadWrite) && !read_only {
        report::record(
            format_args!("virtio-blk {name}: write 128 sectors in one segment, read back"),
            &write_read_back(&mut disk, scratch, seed),
        );
        report::record(
            format_args!("virtio-blk {name}: write and read 12 sectors in 3 segments each"),
            &segments(&mut disk, scratch, seed),
        );
        if disk.has(feature::FLUSH) {
            report::record(
                format_args!("virtio-blk {name}: flush, then read back"),
                &flush(&mut disk, scratch, seed),
            );
        } else {
            println!("# virtio-blk {name}: VIRTIO_BLK_F_FLUSH not offered, no flush check");
        }
    }
    if selected(Check::InFlight) {
        let what = if read_only {
            "reads"
        } else {
            "writes, then reads"
        };
        report::record(
            format_args!("virtio-blk {name}: {IN_FLIGHT} requests in flight at once ({what})"),
            &in_flight(&mut disk, scratch, seed, read_only),
        );
    }
    if selected(Check::Interrupt) {
        let gsi = disk.gsi;
        report::record(
            format_args!("virtio-blk {name}: completions by interrupt (GSI {gsi})"),
            &interrupt(&mut disk, scratch),
        );
    }
    if selected(Check::PastEnd) {
        report::record(
            format_args!(
                "virtio-blk {name}: last sector readable, requests past the end get IOERR"
            ),
            &past_end(&mut disk, scratch, read_only),
        );
    }
    if selected(Check::ReadOnly) && read_only {
        report::record(
            format_args!("virtio-blk {name}: write to a read-only disk gets IOERR, data unchanged"),
            &write_refused(&mut disk, scratch, seed),
        );
    }
}

fn capacity(disk: &BlockDevice) -> Outcome {
    let (first, second) = (disk.capacity(), disk.read_capacity());
    if first != second {
        return Err(CheckError::CapacityChanged { first, second });
    }
    if first < MIN_CAPACITY {
        return Err(CheckError::TooSmall { capacity: first });
    }
    Ok(())
}

fn get_id(disk: &mut BlockDevice, scratch: &mut Scratch, id: &mut [u8; ID_BYTES]) -> Outcome {
    let buf = &mut scratch.actual;
    buf.as_mut_slice()[..ID_BYTES].fill(0);
    let status = disk.run(Op::GetId, 0, &[segment(buf, 0, ID_BYTES)], Completion::Poll)?;
    expect("GET_ID", Status::Ok, status)?;
    id.copy_from_slice(&buf.as_slice()[..ID_BYTES]);
    let trimmed = trim_id(id);
    if trimmed.is_empty()
        || !trimmed
            .iter()
            .all(|byte| byte.is_ascii_graphic() || *byte == b' ')
    {
        return Err(CheckError::BadId);
    }
    Ok(())
}

/// The id up to its first NUL (a 20-byte id has none).
fn trim_id(id: &[u8; ID_BYTES]) -> &[u8] {
    let end = id.iter().position(|&byte| byte == 0).unwrap_or(ID_BYTES);
    &id[..end]
}

fn write_read_back(disk: &mut BlockDevice, scratch: &mut Scratch, seed: u64) -> Outcome {
    let len = 128 * SECTOR_BYTES;
    pattern::fill(&mut scratch.expected.as_mut_slice()[..len], seed, RW_SECTOR);
    let status = disk.run(
        Op::Write,
        RW_SECTOR,
        &[segment(&scratch.expected, 0, len)],
        Completion::Poll,
    )?;
    expect("write", Status::Ok, status)?;
    read_and_compare(disk, scratch, RW_SECTOR, len)
}

fn segments(disk: &mut BlockDevice, scratch: &mut Scratch, seed: u64) -> Outcome {
    let len = 12 * SECTOR_BYTES;
    pattern::fill(
        &mut scratch.expected.as_mut_slice()[..len],
        seed,
        SEGMENTS_SECTOR,
    );
    // Uneven pieces, and a different split for the read, so the device must walk the chain.
    let write_split = [
        segment(&scratch.expected, 0, 512),
        segment(&scratch.expected, 512, 4096),
        segment(&scratch.expected, 4608, 1536),
    ];
    let status = disk.run(Op::Write, SEGMENTS_SECTOR, &write_split, Completion::Poll)?;
    expect("3-segment write", Status::Ok, status)?;
    scratch.actual.as_mut_slice()[..len].fill(0);
    let read_split = [
        segment(&scratch.actual, 0, 2048),
        segment(&scratch.actual, 2048, 1024),
        segment(&scratch.actual, 3072, 3072),
    ];
    let status = disk.run(Op::Read, SEGMENTS_SECTOR, &read_split, Completion::Poll)?;
    expect("3-segment read", Status::Ok, status)?;
    compare(
        &scratch.expected.as_slice()[..len],
        &scratch.actual.as_slice()[..len],
        SEGMENTS_SECTOR,
    )
}

fn flush(disk: &mut BlockDevice, scratch: &mut Scratch, seed: u64) -> Outcome {
    let status = disk.run(Op::Flush, 0, &[], Completion::Poll)?;
    expect("FLUSH", Status::Ok, status)?;
    let len = 128 * SECTOR_BYTES;
    pattern::fill(&mut scratch.expected.as_mut_slice()[..len], seed, RW_SECTOR);
    read_and_compare(disk, scratch, RW_SECTOR, len)
}

/// Keeps `IN_FLIGHT` requests outstanding (one notification for all), then checks each.
fn in_flight(disk: &mut BlockDevice, scratch: &mut Scratch, seed: u64, read_only: bool) -> Outcome {
    let fits = disk.max_in_flight();
    if fits < MIN_IN_FLIGHT {
        return Err(CheckError::QueueTooSmall { fits });
    }
    let count = IN_FLIGHT.min(fits);
    let len = count * BLOCK;
    let sector_of = |block: usize| IN_FLIGHT_SECTOR + (block * BLOCK / SECTOR_BYTES) as u64;
    if read_only {
        // The reference: the same blocks read one at a time.
        for block in 0..count {
            let data = [segment(&scratch.expected, block * BLOCK, BLOCK)];
            let status = disk.run(Op::Read, sector_of(block), &data, Completion::Poll)?;
            expect("read", Status::Ok, status)?;
        }
    } else {
        pattern::fill(
            &mut scratch.expected.as_mut_slice()[..len],
            seed,
            IN_FLIGHT_SECTOR,
        );
        batch(disk, Op::Write, &scratch.expected, count, sector_of)?;
    }
    scratch.actual.as_mut_slice()[..len].fill(0);
    batch(disk, Op::Read, &scratch.actual, count, sector_of)?;
    compare(
        &scratch.expected.as_slice()[..len],
        &scratch.actual.as_slice()[..len],
        IN_FLIGHT_SECTOR,
    )
}

/// Submits `count` 4 KiB requests (block `i` of `buf` ↔ `sector_of(i)`), notifies once, and
/// collects every completion by polling.
fn batch(
    disk: &mut BlockDevice,
    op: Op,
    buf: &DmaBuf,
    count: usize,
    sector_of: impl Fn(usize) -> u64,
) -> Outcome {
    let mut pending = [u16::MAX; IN_FLIGHT];
    for (block, tag) in pending.iter_mut().enumerate().take(count) {
        *tag = disk.submit(op, sector_of(block), &[segment(buf, block * BLOCK, BLOCK)])?;
    }
    disk.notify();
    for _ in 0..count {
        let done = disk.wait(Completion::Poll)?;
        let slot = pending.iter_mut().find(|tag| **tag == done.tag);
        let Some(slot) = slot else {
            return Err(CheckError::DuplicateCompletion { tag: done.tag });
        };
        *slot = u16::MAX;
        let request = if op == Op::Write {
            "batched write"
        } else {
            "batched read"
        };
        expect(request, Status::Ok, done.status)?;
    }
    Ok(())
}

/// One request whose completion is seen only through the interrupt (the CPL0 handler's flag,
/// then InterruptStatus), then a batch collected by waiting for interrupts.
fn interrupt(disk: &mut BlockDevice, scratch: &mut Scratch) -> Outcome {
    disk.set_completion(Completion::Interrupt);
    let outcome = interrupt_inner(disk, scratch);
    disk.set_completion(Completion::Poll);
    outcome
}

fn interrupt_inner(disk: &mut BlockDevice, scratch: &mut Scratch) -> Outcome {
    disk.acknowledge_interrupt();
    interrupts::clear(disk.gsi);
    let tag = disk.submit(Op::Read, 0, &[segment(&scratch.actual, 0, BLOCK)])?;
    disk.notify();
    interrupts::wait(disk.gsi, Deadline::standard())
        .map_err(|error| RequestError::NoInterrupt { gsi: error.gsi })?;
    let interrupt_status = disk.acknowledge_interrupt();
    if !BlockDevice::used_buffer_flagged(interrupt_status) {
        return Err(CheckError::NoUsedBufferInterrupt { interrupt_status });
    }
    let done = disk.poll()?.ok_or(CheckError::InterruptWithoutCompletion)?;
    if done.tag != tag {
        return Err(RequestError::Unexpected {
            expected: tag,
            got: done.tag,
        }
        .into());
    }
    expect("read", Status::Ok, done.status)?;

    // Then MIN_IN_FLIGHT at once, every completion awaited by interrupt.
    for block in 0..MIN_IN_FLIGHT {
        let sector = (block * BLOCK / SECTOR_BYTES) as u64;
        disk.submit(
            Op::Read,
            sector,
            &[segment(&scratch.actual, block * BLOCK, BLOCK)],
        )?;
    }
    disk.notify();
    for _ in 0..MIN_IN_FLIGHT {
        let done = disk.wait(Completion::Interrupt)?;
        expect("read", Status::Ok, done.status)?;
    }
    Ok(())
}

fn past_end(disk: &mut BlockDevice, scratch: &mut Scratch, read_only: bool) -> Outcome {
    let capacity = disk.capacity();
    let one = [segment(&scratch.actual, 0, SECTOR_BYTES)];
    let two = [segment(&scratch.actual, 0, 2 * SECTOR_BYTES)];
    expect(
        "read of the last sector",
        Status::Ok,
        disk.run(Op::Read, capacity - 1, &one, Completion::Poll)?,
    )?;
    expect(
        "read at the capacity",
        Status::IoErr,
        disk.run(Op::Read, capacity, &one, Completion::Poll)?,
    )?;
    expect(
        "read across the end",
        Status::IoErr,
        disk.run(Op::Read, capacity - 1, &two, Completion::Poll)?,
    )?;
    expect(
        "read far past the end",
        Status::IoErr,
        disk.run(
            Op::Read,
            u64::MAX / SECTOR_BYTES as u64,
            &one,
            Completion::Poll,
        )?,
    )?;
    if !read_only {
        let write = [segment(&scratch.actual, 0, SECTOR_BYTES)];
        expect(
            "write at the capacity",
            Status::IoErr,
            disk.run(Op::Write, capacity, &write, Completion::Poll)?,
        )?;
    }
    Ok(())
}

fn write_refused(disk: &mut BlockDevice, scratch: &mut Scratch, seed: u64) -> Outcome {
    let len = 8 * SECTOR_BYTES;
    let before = [segment(&scratch.expected, 0, len)];
    expect(
        "read",
        Status::Ok,
        disk.run(Op::Read, RW_SECTOR, &before, Completion::Poll)?,
    )?;
    // A pattern the disk cannot already hold (the seed is new each run).
    pattern::fill(&mut scratch.actual.as_mut_slice()[..len], !seed, RW_SECTOR);
    let attempt = [segment(&scratch.actual, 0, len)];
    expect(
        "write",
        Status::IoErr,
        disk.run(Op::Write, RW_SECTOR, &attempt, Completion::Poll)?,
    )?;
    read_and_compare(disk, scratch, RW_SECTOR, len)
}

/// Reads `len` bytes at `sector` into `actual` and compares them with `expected`.
fn read_and_compare(
    disk: &mut BlockDevice,
    scratch: &mut Scratch,
    sector: u64,
    len: usize,
) -> Outcome {
    scratch.actual.as_mut_slice()[..len].fill(0);
    let status = disk.run(
        Op::Read,
        sector,
        &[segment(&scratch.actual, 0, len)],
        Completion::Poll,
    )?;
    expect("read", Status::Ok, status)?;
    compare(
        &scratch.expected.as_slice()[..len],
        &scratch.actual.as_slice()[..len],
        sector,
    )
}

fn expect(request: &'static str, expected: Status, got: Status) -> Outcome {
    if got == expected {
        Ok(())
    } else {
        Err(CheckError::Status {
            request,
            expected,
            got,
        })
    }
}

fn compare(expected: &[u8], actual: &[u8], first_sector: u64) -> Outcome {
    pattern::compare(expected, actual, first_sector).map_err(CheckError::Mismatch)
}
