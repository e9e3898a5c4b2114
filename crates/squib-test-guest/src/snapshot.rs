//! The snapshot mode (`guest.mode=snapshot`): work a host can snapshot mid-run and restore
//! elsewhere, and that notices when the restored machine is not the one that was saved.
//!
//! A 1 MiB region is split into 64 chunks. Round `r` rewrites chunk `r % 64` with data derived
//! from `r` and records the chunk's FNV-1a hash in a table; a running value, kept in registers
//! and on the stack, folds every hash in. Every round prints `SNAP tick <r>`; rounds are paced
//! by the TSC. After the last round the guest re-hashes every chunk: each must match its table
//! entry and the table must fold to the running value. A restore that lost or mixed up memory,
//! registers or the stack fails that check.
//!
//! With a disk (`vda`), every chunk's first 4 KiB also goes to disk block `chunk` (from sector
//! 1024) in the same round, so I/O runs before and after the snapshot; at the end each block is
//! read back and must equal its chunk: data written before the snapshot, the device's restored
//! queue state and new I/O after it all have to be right. Each round also reads the block it
//! just wrote back into its own 4 KiB slot of a second region (slot `round % READ_SLOTS`), which
//! only the device writes, and records the hash it must have: at the end every slot must match.
//! Those pages are dirtied by the device alone, so a Diff snapshot that misses device writes
//! restores them stale. Then the summary, and the usual exit.

use crate::checks::DEVICE_ID_NET;
use crate::cmdline::{Completion, Options};
use crate::net_checks;
use crate::rng_checks;
use crate::virtio_init;
use crate::virtio_rng::{DEVICE_ID_RNG, RngDevice};
use crate::virtio_vsock::DEVICE_ID_VSOCK;
use crate::vsock_checks::{self, SnapshotVsock};
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::time;
use crate::virtio_blk::{BlockDevice, Op, RequestError, Status, segment};

const REGION: usize = 1 << 20;
const CHUNKS: usize = 64;
const CHUNK: usize = REGION / CHUNKS;
const ROUNDS: u64 = 150;
/// With `guest.pace=fast`: about a minute of back-to-back rounds, ended by the host.
const FAST_ROUNDS: u64 = 200_000;
/// TSC cycles between rounds (~20–40 ms): the run lasts seconds, long enough for a host to
/// pause it after the first ticks.
const PACE_CYCLES: u64 = 1 << 26;

fn fnv1a(data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in data {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn fill(chunk: &mut [u8], round: u64) {
    let mut x = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in chunk.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

fn fold(hashes: &[u64]) -> u64 {
    hashes.iter().fold(0u64, |acc, &h| acc.rotate_left(5) ^ h)
}

/// Read-back slots: more than `ROUNDS`, so a normal run never reuses one.
const READ_SLOTS: usize = 160;

/// First sector of the disk blocks, clear of the ones the checks use.
const DISK_SECTOR: u64 = 1024;
const BLOCK: usize = 4096;

/// Writes the first 4 KiB of chunk `index` to its disk block.
fn write_block(disk: &mut BlockDevice, region: &DmaBuf, index: usize) -> Result<(), DiskError> {
    let sector = DISK_SECTOR + (index * BLOCK / 512) as u64;
    let seg = segment(region, index * CHUNK, BLOCK);
    match disk.run(Op::Write, sector, &[seg], Completion::Poll) {
        Ok(Status::Ok) => Ok(()),
        Ok(status) => Err(DiskError::Status(status)),
        Err(error) => Err(DiskError::Request(error)),
    }
}

/// Reads disk block `index` into read-back slot `slot`.
fn read_block(
    disk: &mut BlockDevice,
    readback: &DmaBuf,
    index: usize,
    slot: usize,
) -> Result<(), DiskError> {
    let sector = DISK_SECTOR + (index * BLOCK / 512) as u64;
    let seg = segment(readback, slot * BLOCK, BLOCK);
    match disk.run(Op::Read, sector, &[seg], Completion::Poll) {
        Ok(Status::Ok) => Ok(()),
        Ok(status) => Err(DiskError::Status(status)),
        Err(error) => Err(DiskError::Request(error)),
    }
}

/// The devices after the disk, set up (and used once) before the rounds, so their drivers are
/// live when the host snapshots; after the rounds (in the restored machine) each must do new
/// I/O: the rng reads, the net interface echoes over its (new) TAP, and the vsock device
/// resets its transport (TRANSPORT_RESET: connections do not survive a snapshot) and a new
/// connection echoes.
struct Extras {
    rng: Option<(RngDevice, DmaBuf, DmaBuf)>,
    net: Option<net_checks::Cx>,
    vsock: Option<SnapshotVsock>,
}

fn prepare_extras(options: &Options) -> Extras {
    let mut extras = Extras {
        rng: None,
        net: None,
        vsock: None,
    };
    for device in options.devices().skip(1) {
        match virtio_init::device_id(device) {
            Ok(DEVICE_ID_RNG) => {
                let rng = RngDevice::init(device)
                    .unwrap_or_else(|e| report::abort(format_args!("snapshot: rng init: {e}")));
                let (Ok(a), Ok(b)) = (DmaBuf::new(4096, 4096), DmaBuf::new(4096, 4096)) else {
                    report::abort(format_args!("snapshot: rng buffers"));
                };
                let mut rng = (rng, a, b);
                if let Err(e) = rng_checks::two_reads(&mut rng.0, &rng.1, &rng.2) {
                    report::abort(format_args!("snapshot: rng before the snapshot: {e}"));
                }
                extras.rng = Some(rng);
            }
            Ok(DEVICE_ID_NET) => {
                let Some(net) = options.net.as_ref() else {
                    report::abort(format_args!("snapshot: a net device needs guest.net="));
                };
                let cx = net_checks::snapshot_prepare(device.base, device.size, net)
                    .unwrap_or_else(|e| report::abort(format_args!("snapshot: net: {e}")));
                extras.net = Some(cx);
            }
            Ok(DEVICE_ID_VSOCK) => {
                let vsock = vsock_checks::snapshot_prepare(device)
                    .unwrap_or_else(|e| report::abort(format_args!("snapshot: vsock: {e}")));
                extras.vsock = Some(vsock);
            }
            Ok(id) => report::abort(format_args!("snapshot: unexpected device type {id}")),
            Err(e) => report::abort(format_args!("snapshot: device probe: {e}")),
        }
    }
    extras
}

fn check_extras(extras: &mut Extras) {
    if let Some((rng, a, b)) = extras.rng.as_mut() {
        report::record(
            format_args!("snapshot: virtio-rng reads after the restore"),
            &rng_checks::two_reads(rng, a, b),
        );
    }
    if let Some(cx) = extras.net.as_mut() {
        report::record(
            format_args!("snapshot: virtio-net echoes after the restore"),
            &net_checks::snapshot_after_restore(cx),
        );
    }
    if let Some(vsock) = extras.vsock.as_mut() {
        report::record(
            format_args!("snapshot: virtio-vsock transport reset, then a new connection echoes"),
            &vsock_checks::snapshot_after_restore(vsock),
        );
    }
}

/// Runs the rounds and ends the run.
pub fn run(options: &Options) -> ! {
    let mut region = match DmaBuf::new(REGION, 4096) {
        Ok(region) => region,
        Err(error) => report::abort(format_args!("snapshot: {error}")),
    };
    let mut disk = options.devices().next().map(|device| {
        BlockDevice::init(device)
            .unwrap_or_else(|error| report::abort(format_args!("snapshot: vda init: {error}")))
    });
    let mut hashes = [0u64; CHUNKS];
    for (i, chunk) in region.as_mut_slice().chunks_exact_mut(CHUNK).enumerate() {
        fill(chunk, i as u64 + 1_000_000);
        hashes[i] = fnv1a(chunk);
    }
    let readback = match DmaBuf::new(READ_SLOTS * BLOCK, BLOCK) {
        Ok(buf) => buf,
        Err(error) => report::abort(format_args!("snapshot: {error}")),
    };
    let mut read_hashes = [fnv1a(&[0u8; BLOCK]); READ_SLOTS];
    let mut disk_result = Ok(0u64);
    if let Some(disk) = disk.as_mut() {
        for i in 0..CHUNKS {
            if let Err(error) = write_block(disk, &region, i) {
                report::abort(format_args!("snapshot: vda write: {error}"));
            }
        }
    }
    let mut extras = prepare_extras(options);
    let mut running = fold(&hashes);
    println!(
        "SNAP ready region={:#x} disk={}",
        region.addr(),
        if disk.is_some() { "vda" } else { "none" }
    );
    let (rounds, pace) = if options.fast_ticks {
        (FAST_ROUNDS, 0)
    } else {
        (ROUNDS, PACE_CYCLES)
    };
    let mut next = time::tsc();
    for round in 1..=rounds {
        let index = (round as usize) % CHUNKS;
        let chunk = &mut region.as_mut_slice()[index * CHUNK..(index + 1) * CHUNK];
        fill(chunk, round);
        hashes[index] = fnv1a(chunk);
        running = fold(&hashes);
        if let (Some(disk), Ok(writes)) = (disk.as_mut(), &mut disk_result) {
            let slot = (round as usize) % READ_SLOTS;
            match write_block(disk, &region, index)
                .and_then(|()| read_block(disk, &readback, index, slot))
            {
                Ok(()) => {
                    *writes += 1;
                    read_hashes[slot] =
                        fnv1a(&region.as_slice()[index * CHUNK..index * CHUNK + BLOCK]);
                }
                Err(error) => disk_result = Err(error),
            }
        }
        println!("SNAP tick {round}");
        next = next.wrapping_add(pace);
        while time::tsc() < next {
            core::hint::spin_loop();
        }
    }
    let mismatched = region
        .as_slice()
        .chunks_exact(CHUNK)
        .zip(&hashes)
        .filter(|(chunk, hash)| fnv1a(chunk) != **hash)
        .count();
    let outcome = if mismatched != 0 {
        Err(SnapshotCheck::Chunks(mismatched))
    } else if fold(&hashes) != running {
        Err(SnapshotCheck::Running)
    } else {
        Ok(())
    };
    report::record(
        format_args!("snapshot: memory checksum after {rounds} rounds"),
        &outcome,
    );
    if disk.is_some() {
        let stale = readback
            .as_slice()
            .chunks_exact(BLOCK)
            .zip(&read_hashes)
            .filter(|(slot, hash)| fnv1a(slot) != **hash)
            .count();
        let outcome = match &disk_result {
            Ok(_) if stale != 0 => Err(DiskError::Stale(stale)),
            Ok(_) => Ok(()),
            Err(_) => Err(DiskError::Aborted),
        };
        report::record(
            format_args!("snapshot: vda reads into memory match after {rounds} rounds"),
            &outcome,
        );
    }
    if let Some(disk) = disk.as_mut() {
        let outcome = disk_result.and_then(|writes| verify_disk(disk, &region).map(|()| writes));
        report::record(
            format_args!("snapshot: vda blocks equal their chunks after {rounds} rounds of writes"),
            &outcome,
        );
    }
    check_extras(&mut extras);
    report::finish()
}

/// Reads every disk block back and compares it with its chunk.
fn verify_disk(disk: &mut BlockDevice, region: &DmaBuf) -> Result<(), DiskError> {
    let scratch = DmaBuf::new(BLOCK, BLOCK).map_err(|_| DiskError::NoMemory)?;
    for i in 0..CHUNKS {
        let sector = DISK_SECTOR + (i * BLOCK / 512) as u64;
        match disk.run(
            Op::Read,
            sector,
            &[segment(&scratch, 0, BLOCK)],
            Completion::Poll,
        ) {
            Ok(Status::Ok) => {}
            Ok(status) => return Err(DiskError::Status(status)),
            Err(error) => return Err(DiskError::Request(error)),
        }
        if scratch.as_slice() != &region.as_slice()[i * CHUNK..i * CHUNK + BLOCK] {
            return Err(DiskError::Mismatch(i));
        }
    }
    Ok(())
}

enum DiskError {
    Status(Status),
    Request(RequestError),
    Mismatch(usize),
    Stale(usize),
    Aborted,
    NoMemory,
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "request status {status}"),
            Self::Request(error) => write!(f, "{error}"),
            Self::Mismatch(i) => write!(f, "block {i} differs from its memory chunk"),
            Self::Stale(n) => write!(
                f,
                "{n} of {READ_SLOTS} read-back slots do not hold what the device read"
            ),
            Self::Aborted => f.write_str("a disk request failed during the rounds"),
            Self::NoMemory => f.write_str("DMA arena exhausted"),
        }
    }
}

enum SnapshotCheck {
    Chunks(usize),
    Running,
}

impl core::fmt::Display for SnapshotCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Chunks(n) => write!(f, "{n} of {CHUNKS} chunks do not match their hash"),
            Self::Running => write!(f, "the hash table does not fold to the running value"),
        }
    }
}
