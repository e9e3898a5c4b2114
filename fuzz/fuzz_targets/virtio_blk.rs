//! The virtio-blk device as a hostile guest drives it: negotiated features, queue size, request
//! types, sectors, segment counts, lengths, directions and addresses, missing or short headers
//! and status bytes, raw descriptor-table and avail-ring corruption and indirect tables all come
//! from the fuzz input. The disk is a `ShadowDisk`: the device must never send it an
//! out-of-range operation or a write to a read-only disk, and every change it makes must be
//! explained by a request the guest submitted (same type, same offset, same bytes).
//!
//! The device must also write guest memory only through device-writable descriptors and the used
//! ring (`squib_fuzz::guest::run_checked`, the oracle the other device targets share).
//!
//! The device's worker runs inline (`squib_fuzz::guest::driver`): the same epoll dispatch and
//! handler as the worker thread, served on this thread at each notification, so an execution
//! costs no thread start or hand-off.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_fuzz::guest::{
    Handover, Heap, Shape, activate, add_chain, assert_all_used, corrupt_ring, driver, exhausted,
    needs_reset, ramp, run_checked, wild_buf,
};
use squib_fuzz::shadow_disk::{Change, ShadowDisk};
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::testing::{Buf, GuestDriver};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::GuestAddress;

const DISK_SIZE: usize = 64 * 1024;

/// What the harness knows about one submitted request.
#[derive(Debug)]
struct Submitted {
    kind: u32,
    sector: u64,
    /// Readable data segments the harness placed (address, length).
    readable: Vec<(GuestAddress, u32)>,
    /// Discard / write-zeroes ranges written (sector, sectors).
    ranges: Vec<(u64, u32)>,
}

/// The disk's first contents, made once (a byte loop per input costs a traced comparison per
/// byte).
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| (0..DISK_SIZE).map(|i| (i / 512 * 7 + i) as u8).collect())
}

fn kind(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0..=6)? {
        0 => VIRTIO_BLK_T_IN,
        1 => VIRTIO_BLK_T_OUT,
        2 => VIRTIO_BLK_T_FLUSH,
        3 => VIRTIO_BLK_T_GET_ID,
        4 => VIRTIO_BLK_T_DISCARD,
        5 => VIRTIO_BLK_T_WRITE_ZEROES,
        _ => u.arbitrary()?,
    })
}

fn sector(u: &mut Unstructured) -> Result<u64> {
    Ok(if u.ratio(7, 8)? {
        u.int_in_range(0..=(DISK_SIZE as u64 / 512 + 2))?
    } else {
        u.arbitrary()?
    })
}

/// Builds one request; returns its buffers and what the harness knows about it (`None` when a
/// hostile buffer makes the request's effect unknowable).
fn request(
    u: &mut Unstructured,
    d: &mut GuestDriver,
    heap: &mut Heap,
) -> Result<(Vec<Buf>, Submitted, bool)> {
    let kind = kind(u)?;
    let sector = sector(u)?;
    let mut hostile = false;
    let mut alloc = |d: &mut GuestDriver, len: u32| heap.alloc(d, len);
    let mut bufs = Vec::new();
    let mut submitted = Submitted {
        kind,
        sector,
        readable: Vec::new(),
        ranges: Vec::new(),
    };
    // Header.
    let Some(header) = alloc(d, 16) else {
        return exhausted();
    };
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write_bytes(header, &raw);
    let header_len = if u.ratio(15, 16)? {
        16
    } else {
        u.int_in_range(0..=32)?
    };
    bufs.push(Buf {
        addr: header,
        len: header_len,
        device_writes: u.ratio(1, 32)?,
    });
    // Data.
    for _ in 0..u.int_in_range(0..=4)? {
        if u.ratio(1, 10)? {
            hostile = true;
            bufs.push(wild_buf(u)?);
            continue;
        }
        let len: u32 = match u.int_in_range(0..=3)? {
            0 => 512,
            1 => 512 * u.int_in_range(1..=8)?,
            2 => 16,
            _ => u.int_in_range(0..=5000)?,
        };
        let Some(addr) = alloc(d, len) else { break };
        let device_writes = match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => !u.ratio(1, 16)?,
            _ => u.ratio(1, 16)?,
        };
        if !device_writes {
            if matches!(kind, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) {
                let mut range = vec![0u8; len as usize];
                for chunk in range.chunks_exact_mut(16) {
                    let s = sector_small(u)?;
                    let n: u32 = u.int_in_range(0..=12)?;
                    let flags: u32 = if u.ratio(1, 8)? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=1)?
                    };
                    chunk[0..8].copy_from_slice(&s.to_le_bytes());
                    chunk[8..12].copy_from_slice(&n.to_le_bytes());
                    chunk[12..16].copy_from_slice(&flags.to_le_bytes());
                    submitted.ranges.push((s, n));
                }
                d.write_bytes(addr, &range);
            } else {
                d.write_bytes(addr, ramp(u.arbitrary()?, len as usize));
            }
            submitted.readable.push((addr, len));
        }
        bufs.push(Buf {
            addr,
            len,
            device_writes,
        });
    }
    // Status.
    match u.int_in_range(0..=15)? {
        0 => {} // no status descriptor
        1 => {
            if let Some(addr) = alloc(d, 1) {
                bufs.push(Buf::readable(addr, 1));
            }
        }
        2 => {
            if let Some(addr) = alloc(d, 16) {
                bufs.push(Buf::writable(addr, u.int_in_range(0..=16)?));
            }
        }
        _ => {
            if let Some(addr) = alloc(d, 1) {
                bufs.push(Buf::writable(addr, 1));
            }
        }
    }
    Ok((bufs, submitted, hostile))
}

fn sector_small(u: &mut Unstructured) -> Result<u64> {
    Ok(if u.ratio(15, 16)? {
        u.int_in_range(0..=(DISK_SIZE as u64 / 512 + 2))?
    } else {
        u.arbitrary()?
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    let read_only: bool = u.arbitrary()?;
    let cache = if u.arbitrary()? {
        CacheType::Writeback
    } else {
        CacheType::Unsafe
    };
    let disk = Arc::new(ShadowDisk::new(pattern().to_vec(), read_only));
    let Ok(device) = BlockDevice::new(disk.clone(), BlockConfig::new("fuzz", cache)) else {
        return Ok(());
    };
    let mut d = driver(Box::new(device));
    let Some((features, [size])) = activate(u, &mut d)? else {
        return Ok(());
    };

    let mut heap = Heap::new();
    let mut known = Vec::new();
    let mut hostile = false;
    let mut free = size;
    for _ in 0..u.int_in_range(1..=16)? {
        let Ok((bufs, submitted, wild)) = request(u, &mut d, &mut heap) else {
            break;
        };
        let shape = add_chain(u, &mut d, &mut heap, &bufs, &mut free, size)?;
        if shape == Shape::NoRoom {
            break;
        }
        hostile |= wild || !shape.is_known(features);
        known.push(submitted);
    }
    // Raw corruption of the descriptor table or the avail ring after the fact.
    let mut ring_corrupted = false;
    if u.ratio(1, 8)? {
        (hostile, ring_corrupted) = (true, true);
        corrupt_ring(u, &mut d, 0)?;
    }
    // A bogus avail.idx stays: the device is notified, the real index is not published.
    let bogus_idx = u.ratio(1, 16)?;
    if bogus_idx {
        (hostile, ring_corrupted) = (true, true);
        let idx: u16 = u.arbitrary()?;
        d.publish_avail_idx(idx);
    }
    // Every published request completes, or the device asks for a reset. A corrupted ring may
    // legitimately leave requests unserved (a wrong avail.idx).
    let expected = known.len();
    let mut idle = run_checked(&mut d, &[size], &[Handover::Kick], !bogus_idx);
    for _ in 0..4 {
        if idle || usize::from(d.used_idx()) == expected || needs_reset(&mut d) {
            break;
        }
        idle = run_checked(&mut d, &[size], &[], !bogus_idx);
    }
    if !ring_corrupted {
        let broken = needs_reset(&mut d);
        assert_all_used("request", d.used_idx().into(), expected, broken);
    }
    // Reset: drops the handler, so the disk is quiescent.
    d.write_reg(squib_virtio::mmio::reg::STATUS, 0);

    let changes = disk.changes();
    if read_only {
        assert!(changes.is_empty());
        assert!(disk.contents() == pattern(), "a read-only disk changed");
        return Ok(());
    }
    // Replaying the logged changes on the original must give the disk: nothing else wrote it.
    let mut replay = pattern().to_vec();
    for change in &changes {
        match change {
            Change::Write(offset, bytes) => {
                let at = *offset as usize;
                replay[at..at + bytes.len()].copy_from_slice(bytes);
            }
            Change::Zero(offset, len) => {
                replay[*offset as usize..(*offset + *len) as usize].fill(0);
            }
        }
    }
    assert!(
        disk.contents() == replay,
        "the disk changed outside the device's operations"
    );
    if hostile {
        return Ok(());
    }
    // Each change is explained by a submitted request of that type, at that place, with the
    // bytes the guest put in its buffers.
    for change in &changes {
        let explained = known.iter().any(|r| match change {
            Change::Write(offset, bytes) => {
                r.kind == VIRTIO_BLK_T_OUT && r.sector.checked_mul(512) == Some(*offset) && {
                    let mut data = Vec::new();
                    for (addr, len) in &r.readable {
                        let mut part = d.read_bytes(*addr, *len as usize);
                        data.append(&mut part);
                    }
                    data == *bytes
                }
            }
            Change::Zero(offset, len) => {
                matches!(r.kind, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES)
                    && r.ranges.iter().any(|&(s, n)| {
                        s.checked_mul(512) == Some(*offset) && u64::from(n) * 512 == *len
                    })
            }
        });
        assert!(explained, "unexplained disk change {change:?}");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
