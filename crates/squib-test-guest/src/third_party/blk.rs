//! virtio-blk through the crate's `VirtIOBlk` on its `MmioTransport`: one `ok`/`FAIL` line per
//! check, prefixed `virtio-drivers blk vdX:`.
//!
//! The crate's blocking calls spin forever on a device that never answers, so the first request
//! and every batch go through its non-blocking API, polled against a deadline; once a device
//! has answered, the blocking calls are used as a user would. A request still in flight owns
//! its buffers, so a device that stops answering ends the run (`give_up`) rather than letting
//! the check return and its stack be reused under the device.

use core::fmt;

use virtio_drivers::Error;
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::InterruptStatus;
use virtio_drivers::transport::mmio::{MmioTransport, MmioVersion};

use super::hal::GuestHal;
use crate::apic::{self, NoSuchPin};
use crate::cmdline::{DiskName, MmioDevice, Options};
use crate::dma::{DmaBuf, OutOfDmaMemory};
use crate::interrupts;
use crate::pattern::{self, Mismatch};
use crate::report;
use crate::serial::println;
use crate::time::Deadline;

type Blk = VirtIOBlk<GuestHal, MmioTransport<'static>>;

const BLOCK: usize = 4096;
const SECTORS_PER_BLOCK: u64 = (BLOCK / SECTOR_SIZE) as u64;
/// The crate's queue size for virtio-blk: the most requests it can keep in flight.
const QUEUE_SIZE: usize = 16;
/// Descriptors a read or write takes without indirect descriptors (header, data, status).
const DESCRIPTORS_PER_REQUEST: usize = 3;
/// Reads and writes at the start of each buffer: 128 sectors (64 KiB).
const MULTI_SECTORS: usize = 128;
const MULTI_BYTES: usize = MULTI_SECTORS * SECTOR_SIZE;
/// Where on the disk the checks work, in sectors (the areas the checks mode uses too).
const RW_SECTOR: u64 = 64; // MULTI_SECTORS sectors
const IN_FLIGHT_SECTOR: u64 = 512; // QUEUE_SIZE blocks
const MIN_CAPACITY: u64 = IN_FLIGHT_SECTOR + QUEUE_SIZE as u64 * SECTORS_PER_BLOCK;
/// Requests completed one after the other through the interrupt.
const INTERRUPT_ROUNDS: usize = 4;

/// Two 64 KiB buffers: what is written (or expected) and what is read.
#[derive(Debug)]
pub struct Scratch {
    expected: DmaBuf,
    actual: DmaBuf,
}

impl Scratch {
    pub fn new() -> Result<Self, OutOfDmaMemory> {
        Ok(Self {
            expected: DmaBuf::new(MULTI_BYTES, BLOCK)?,
            actual: DmaBuf::new(MULTI_BYTES, BLOCK)?,
        })
    }
}

/// The device being checked.
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    pub name: DiskName,
    pub device: &'a MmioDevice,
    /// The device offers VIRTIO_F_INDIRECT_DESC, which the crate then uses.
    pub offers_indirect: bool,
}

/// What a failed check saw.
#[derive(Debug)]
enum CheckError {
    Driver(Error),
    Open(super::OpenError),
    Mismatch(Mismatch),
    Legacy,
    TooSmall { capacity: u64 },
    ReadOnlyFlag { readonly: bool },
    BadId,
    Accepted { request: &'static str },
    WrongError { request: &'static str, got: Error },
    TooFewInFlight { fitted: usize, expected: usize },
    Route(NoSuchPin),
    NoInterrupt { gsi: u32 },
    NoQueueInterrupt { status: u32 },
    InterruptWithoutCompletion,
    CapacityChanged { before: u64, after: u64 },
}

impl From<Error> for CheckError {
    fn from(error: Error) -> Self {
        Self::Driver(error)
    }
}

impl From<Mismatch> for CheckError {
    fn from(mismatch: Mismatch) -> Self {
        Self::Mismatch(mismatch)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver(error) => write!(f, "the driver returned: {error}"),
            Self::Open(error) => error.fmt(f),
            Self::Mismatch(mismatch) => mismatch.fmt(f),
            Self::Legacy => f.write_str("the transport reports legacy virtio-mmio (version 1)"),
            Self::TooSmall { capacity } => write!(
                f,
                "capacity {capacity} sectors; the checks need at least {MIN_CAPACITY}"
            ),
            Self::ReadOnlyFlag { readonly } => write!(
                f,
                "readonly() is {readonly}, but guest.expect_ro says {}",
                if *readonly { "writable" } else { "read-only" }
            ),
            Self::BadId => f.write_str("device_id returned an empty or non-printable id"),
            Self::Accepted { request } => write!(f, "{request} succeeded, expected IoError"),
            Self::WrongError { request, got } => {
                write!(f, "{request} failed with \"{got}\", expected IoError")
            }
            Self::TooFewInFlight { fitted, expected } => write!(
                f,
                "QueueFull after {fitted} requests, expected {expected} to fit"
            ),
            Self::Route(error) => error.fmt(f),
            Self::NoInterrupt { gsi } => write!(f, "no interrupt on GSI {gsi} in time"),
            Self::NoQueueInterrupt { status } => write!(
                f,
                "interrupt arrived but ack_interrupt reported {status:#x} (no queue bit)"
            ),
            Self::InterruptWithoutCompletion => {
                f.write_str("interrupt arrived but the used ring holds no completion")
            }
            Self::CapacityChanged { before, after } => {
                write!(f, "capacity {before} before, {after} after")
            }
        }
    }
}

type Outcome = Result<(), CheckError>;

/// Runs every check on one virtio-blk device.
pub fn check(
    options: &Options,
    disk: Disk<'_>,
    transport: MmioTransport<'static>,
    scratch: &mut Scratch,
    seed: u64,
) {
    let name = disk.name;
    let legacy = transport.version() == MmioVersion::Legacy;
    let blk = match Blk::new(transport) {
        Ok(_) if legacy => Err(CheckError::Legacy),
        other => other.map_err(CheckError::Driver),
    };
    report::record(
        format_args!(
            "virtio-drivers blk {name}: VirtIOBlk::new on MmioTransport at {:#x} (queue size {})",
            disk.device.base, QUEUE_SIZE
        ),
        &blk,
    );
    let Ok(mut owned) = blk else { return };
    let blk = &mut owned;

    let capacity = blk.capacity();
    let outcome = if capacity < MIN_CAPACITY {
        Err(CheckError::TooSmall { capacity })
    } else {
        Ok(())
    };
    report::record(
        format_args!(
            "virtio-drivers blk {name}: capacity() {capacity} sectors ({} KiB)",
            capacity / 2
        ),
        &outcome,
    );
    if outcome.is_err() {
        return;
    }

    let readonly = blk.readonly();
    if let Some(expected) = options.expect_read_only {
        let outcome = if expected.contains(name.0) == readonly {
            Ok(())
        } else {
            Err(CheckError::ReadOnlyFlag { readonly })
        };
        report::record(
            format_args!(
                "virtio-drivers blk {name}: readonly() {readonly}, as guest.expect_ro says"
            ),
            &outcome,
        );
    }

    let buf = &mut scratch.actual.as_mut_slice()[..SECTOR_SIZE];
    report::record(
        format_args!("virtio-drivers blk {name}: first request (read_blocks_nb, polled) completes"),
        &read_polled(blk, name, 0, buf),
    );

    let mut id = [0; 20];
    let outcome = device_id(blk, &mut id);
    let shown = core::str::from_utf8(trim_id(&id)).unwrap_or("?");
    report::record(
        format_args!("virtio-drivers blk {name}: device_id \"{shown}\""),
        &outcome,
    );

    if !readonly {
        report::record(
            format_args!("virtio-drivers blk {name}: write_blocks 1 sector, read_blocks it back"),
            &one_sector(blk, scratch, seed),
        );
        report::record(
            format_args!(
                "virtio-drivers blk {name}: write_blocks {MULTI_SECTORS} sectors in one request, \
                 read back in one and in {} requests",
                MULTI_BYTES / BLOCK
            ),
            &multi_sector(blk, scratch, seed),
        );
        report::record(
            format_args!("virtio-drivers blk {name}: flush, then read back"),
            &flush(blk, scratch, seed),
        );
    }

    let expected = if disk.offers_indirect {
        QUEUE_SIZE
    } else {
        QUEUE_SIZE / DESCRIPTORS_PER_REQUEST
    };
    let what = if readonly {
        "reads"
    } else {
        "writes, then as many reads"
    };
    let indirect = if disk.offers_indirect {
        "indirect descriptors offered"
    } else {
        "no indirect descriptors"
    };
    report::record(
        format_args!(
            "virtio-drivers blk {name}: {expected} {what} in flight at once (*_blocks_nb; {indirect})"
        ),
        &in_flight(blk, name, scratch, seed, readonly, expected),
    );

    let gsi = disk.device.gsi;
    report::record(
        format_args!(
            "virtio-drivers blk {name}: {INTERRUPT_ROUNDS} completions by interrupt (GSI {gsi}), \
             ack_interrupt reports the queue"
        ),
        &interrupt(blk, name, gsi, scratch),
    );

    report::record(
        format_args!(
            "virtio-drivers blk {name}: last sector readable; reads at and across the end{} get IoError",
            if readonly {
                ""
            } else {
                " and a write at the end"
            }
        ),
        &past_end(blk, scratch, readonly),
    );

    if readonly {
        report::record(
            format_args!(
                "virtio-drivers blk {name}: write_blocks refused with IoError, data unchanged"
            ),
            &write_refused(blk, scratch, seed),
        );
    }

    // Last: it consumes the driver (dropping it stops the queue and resets the device).
    report::record(
        format_args!(
            "virtio-drivers blk {name}: dropped (queue stopped by QueueReady = 0, device reset), \
             re-initialised; capacity and data unchanged"
        ),
        &reinitialise(disk, owned, scratch),
    );
}

/// Reads `buf.len()` bytes at `sector` through the non-blocking API, polling with a deadline.
fn read_polled(blk: &mut Blk, name: DiskName, sector: u64, buf: &mut [u8]) -> Outcome {
    let mut request = BlkReq::default();
    let mut response = BlkResp::default();
    // SAFETY: `request`, `buf` and `response` are not touched until `complete_read_blocks`, and
    // `wait_used` returns only once the device has used the request.
    let token = unsafe { blk.read_blocks_nb(sector as usize, &mut request, buf, &mut response) }?;
    wait_used(blk, name, token);
    // SAFETY: the same buffers as submitted with `token`.
    unsafe { blk.complete_read_blocks(token, &request, buf, &mut response) }?;
    Ok(())
}

/// Polls until the device has used `token`, or ends the run (see the module comment).
fn wait_used(blk: &mut Blk, name: DiskName, token: u16) {
    let deadline = Deadline::standard();
    loop {
        match blk.peek_used() {
            Some(used) if used == token => return,
            Some(used) => give_up(name, format_args!("the device used {used}, not {token}")),
            None if deadline.passed() => give_up(
                name,
                format_args!("request {token} not completed in time (is the device live?)"),
            ),
            None => core::hint::spin_loop(),
        }
    }
}

/// Ends the run: a request is stuck in flight, so no later check can be trusted.
fn give_up(name: DiskName, why: fmt::Arguments<'_>) -> ! {
    report::fail(format_args!("virtio-drivers blk {name}: request"), &why);
    report::finish()
}

fn device_id(blk: &mut Blk, id: &mut [u8; 20]) -> Outcome {
    blk.device_id(id)?;
    let trimmed = trim_id(id);
    let printable = trimmed
        .iter()
        .all(|byte| byte.is_ascii_graphic() || *byte == b' ');
    if trimmed.is_empty() || !printable {
        return Err(CheckError::BadId);
    }
    Ok(())
}

/// The id up to its first NUL (a 20-byte id has none).
fn trim_id(id: &[u8; 20]) -> &[u8] {
    let end = id.iter().position(|&byte| byte == 0).unwrap_or(id.len());
    &id[..end]
}

fn one_sector(blk: &mut Blk, scratch: &mut Scratch, seed: u64) -> Outcome {
    let sector = RW_SECTOR + MULTI_SECTORS as u64 - 1;
    let expected = &mut scratch.expected.as_mut_slice()[..SECTOR_SIZE];
    pattern::fill(expected, seed, sector);
    blk.write_blocks(sector as usize, expected)?;
    let actual = &mut scratch.actual.as_mut_slice()[..SECTOR_SIZE];
    actual.fill(0);
    blk.read_blocks(sector as usize, actual)?;
    Ok(pattern::compare(expected, actual, sector)?)
}

fn multi_sector(blk: &mut Blk, scratch: &mut Scratch, seed: u64) -> Outcome {
    let expected = scratch.expected.as_mut_slice();
    // Seed inverted: a pattern unlike the one the single-sector check left on the last sector.
    pattern::fill(expected, !seed, RW_SECTOR);
    blk.write_blocks(RW_SECTOR as usize, expected)?;
    let actual = scratch.actual.as_mut_slice();
    actual.fill(0);
    blk.read_blocks(RW_SECTOR as usize, actual)?;
    pattern::compare(expected, actual, RW_SECTOR)?;
    actual.fill(0);
    for (index, block) in actual.chunks_exact_mut(BLOCK).enumerate() {
        let sector = RW_SECTOR + index as u64 * SECTORS_PER_BLOCK;
        blk.read_blocks(sector as usize, block)?;
    }
    Ok(pattern::compare(expected, actual, RW_SECTOR)?)
}

fn flush(blk: &mut Blk, scratch: &mut Scratch, seed: u64) -> Outcome {
    blk.flush()?;
    let expected = scratch.expected.as_mut_slice();
    pattern::fill(expected, !seed, RW_SECTOR);
    let actual = scratch.actual.as_mut_slice();
    actual.fill(0);
    blk.read_blocks(RW_SECTOR as usize, actual)?;
    Ok(pattern::compare(expected, actual, RW_SECTOR)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// One request of a batch: its buffers stay put while the device owns them.
struct Slot<'a> {
    buf: &'a mut [u8],
    request: BlkReq,
    response: BlkResp,
    token: Option<u16>,
}

/// Submits a 4 KiB request per block of `buf` (block `i` ↔ `sector + 8 i`) until the queue is
/// full, then collects the completions in whatever order the device uses them. Returns how
/// many requests were in flight together.
fn batch(
    blk: &mut Blk,
    name: DiskName,
    op: Op,
    buf: &mut [u8],
    sector: u64,
) -> Result<usize, CheckError> {
    let mut blocks = buf.chunks_exact_mut(BLOCK);
    let mut slots: [Slot<'_>; QUEUE_SIZE] = core::array::from_fn(|_| Slot {
        buf: blocks.next().unwrap_or(&mut []),
        request: BlkReq::default(),
        response: BlkResp::default(),
        token: None,
    });
    let mut first_error = None;
    let mut submitted = 0;
    for (index, slot) in slots.iter_mut().enumerate() {
        if slot.buf.is_empty() {
            break;
        }
        let block = (sector + index as u64 * SECTORS_PER_BLOCK) as usize;
        // SAFETY: the slot's buffers are not touched again until its completion is collected
        // below, and this function does not return while a request is in flight.
        let token = unsafe {
            match op {
                Op::Write => {
                    blk.write_blocks_nb(block, &mut slot.request, slot.buf, &mut slot.response)
                }
                Op::Read => {
                    blk.read_blocks_nb(block, &mut slot.request, slot.buf, &mut slot.response)
                }
            }
        };
        match token {
            Ok(token) => {
                slot.token = Some(token);
                submitted += 1;
            }
            Err(Error::QueueFull) => break,
            Err(error) => {
                first_error = Some(error);
                break;
            }
        }
    }
    let deadline = Deadline::standard();
    let mut outstanding = submitted;
    while outstanding > 0 {
        let Some(token) = blk.peek_used() else {
            if deadline.passed() {
                give_up(
                    name,
                    format_args!("{outstanding} batched requests not completed in time"),
                );
            }
            core::hint::spin_loop();
            continue;
        };
        let Some(slot) = slots.iter_mut().find(|slot| slot.token == Some(token)) else {
            give_up(
                name,
                format_args!("the device used {token}, which is not in flight"),
            );
        };
        slot.token = None;
        outstanding -= 1;
        // SAFETY: the same buffers as submitted with `token`.
        let done = unsafe {
            match op {
                Op::Write => {
                    blk.complete_write_blocks(token, &slot.request, slot.buf, &mut slot.response)
                }
                Op::Read => {
                    blk.complete_read_blocks(token, &slot.request, slot.buf, &mut slot.response)
                }
            }
        };
        if let Err(error) = done {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error.into()),
        None => Ok(submitted),
    }
}

/// Writes (on a writable disk) then reads as many 4 KiB blocks as fit the queue at once; on a
/// read-only disk the reference is the same area read in one request.
fn in_flight(
    blk: &mut Blk,
    name: DiskName,
    scratch: &mut Scratch,
    seed: u64,
    readonly: bool,
    expected_fit: usize,
) -> Outcome {
    let expected = scratch.expected.as_mut_slice();
    if readonly {
        blk.read_blocks(IN_FLIGHT_SECTOR as usize, expected)?;
    } else {
        pattern::fill(expected, seed, IN_FLIGHT_SECTOR);
        let fitted = batch(blk, name, Op::Write, expected, IN_FLIGHT_SECTOR)?;
        if fitted < expected_fit {
            return Err(CheckError::TooFewInFlight {
                fitted,
                expected: expected_fit,
            });
        }
    }
    let actual = scratch.actual.as_mut_slice();
    actual.fill(0);
    let fitted = batch(blk, name, Op::Read, actual, IN_FLIGHT_SECTOR)?;
    if fitted < expected_fit {
        return Err(CheckError::TooFewInFlight {
            fitted,
            expected: expected_fit,
        });
    }
    let len = fitted * BLOCK;
    Ok(pattern::compare(
        &expected[..len],
        &actual[..len],
        IN_FLIGHT_SECTOR,
    )?)
}

/// Reads one block at a time, each completion seen first through the interrupt (the CPL0
/// handler's flag), then `ack_interrupt`, then the used ring. The crate re-arms `used_event`
/// as it pops, so every round must interrupt.
fn interrupt(blk: &mut Blk, name: DiskName, gsi: u32, scratch: &mut Scratch) -> Outcome {
    apic::enable_local_apic();
    apic::route(gsi).map_err(CheckError::Route)?;
    blk.enable_interrupts();
    let outcome = (0..INTERRUPT_ROUNDS).try_for_each(|round| {
        let buf = &mut scratch.actual.as_mut_slice()[..BLOCK];
        let sector = RW_SECTOR + round as u64 * SECTORS_PER_BLOCK;
        blk.ack_interrupt();
        interrupts::clear(gsi);
        let mut request = BlkReq::default();
        let mut response = BlkResp::default();
        // SAFETY: as in `read_polled`: nothing touches the buffers before the completion, and
        // `wait_used` below returns only once the device has used the request.
        let token =
            unsafe { blk.read_blocks_nb(sector as usize, &mut request, buf, &mut response) }?;
        let signalled = interrupts::wait(gsi, Deadline::standard());
        let completed_when_signalled = blk.peek_used() == Some(token);
        let status = blk.ack_interrupt();
        wait_used(blk, name, token);
        // SAFETY: the same buffers as submitted with `token`.
        unsafe { blk.complete_read_blocks(token, &request, buf, &mut response) }?;
        signalled.map_err(|_| CheckError::NoInterrupt { gsi })?;
        if !status.contains(InterruptStatus::QUEUE_INTERRUPT) {
            return Err(CheckError::NoQueueInterrupt {
                status: status.bits(),
            });
        }
        if !completed_when_signalled {
            return Err(CheckError::InterruptWithoutCompletion);
        }
        Ok(())
    });
    blk.disable_interrupts();
    outcome
}

/// The last sector reads; a read at the capacity, a read across the end and (writable disks)
/// a write at the capacity fail with IoError.
fn past_end(blk: &mut Blk, scratch: &mut Scratch, readonly: bool) -> Outcome {
    let last = (blk.capacity() - 1) as usize;
    let buf = &mut scratch.actual.as_mut_slice()[..2 * SECTOR_SIZE];
    blk.read_blocks(last, &mut buf[..SECTOR_SIZE])?;
    refused(
        "read at the capacity",
        blk.read_blocks(last + 1, &mut buf[..SECTOR_SIZE]),
    )?;
    refused("2-sector read across the end", blk.read_blocks(last, buf))?;
    if !readonly {
        refused(
            "write at the capacity",
            blk.write_blocks(last + 1, &buf[..SECTOR_SIZE]),
        )?;
    }
    Ok(())
}

fn refused(request: &'static str, result: Result<(), Error>) -> Outcome {
    match result {
        Err(Error::IoError) => Ok(()),
        Err(got) => Err(CheckError::WrongError { request, got }),
        Ok(()) => Err(CheckError::Accepted { request }),
    }
}

fn write_refused(blk: &mut Blk, scratch: &mut Scratch, seed: u64) -> Outcome {
    let before = &mut scratch.expected.as_mut_slice()[..BLOCK];
    blk.read_blocks(RW_SECTOR as usize, before)?;
    let attempt = &mut scratch.actual.as_mut_slice()[..BLOCK];
    pattern::fill(attempt, seed, RW_SECTOR);
    refused(
        "write to a read-only disk",
        blk.write_blocks(RW_SECTOR as usize, attempt),
    )?;
    attempt.fill(0);
    blk.read_blocks(RW_SECTOR as usize, attempt)?;
    Ok(pattern::compare(before, attempt, RW_SECTOR)?)
}

/// Drops the driver, which stops the queue (QueueReady = 0, waiting to read 0 back, virtio 1.2
/// §4.2.2.2) and resets the device, then opens the transport again and brings up a new driver.
fn reinitialise(disk: Disk<'_>, mut blk: Blk, scratch: &mut Scratch) -> Outcome {
    let before = blk.capacity();
    let expected = scratch.expected.as_mut_slice();
    blk.read_blocks(RW_SECTOR as usize, expected)?;
    // The crate spins until QueueReady reads 0: a device that ignores the write hangs here.
    println!("# virtio-drivers blk {}: dropping the driver", disk.name);
    drop(blk);
    let (transport, _) = super::open(disk.device).map_err(CheckError::Open)?;
    let mut blk = Blk::new(transport)?;
    let after = blk.capacity();
    if after != before {
        return Err(CheckError::CapacityChanged { before, after });
    }
    let actual = scratch.actual.as_mut_slice();
    actual.fill(0);
    // Polled: the first request after re-initialisation proves the device live again.
    read_polled(&mut blk, disk.name, RW_SECTOR, actual)?;
    Ok(pattern::compare(expected, actual, RW_SECTOR)?)
}
