//! The virtio-rng device as a hostile guest drives it: queue size, chains of any shape
//! (device-readable buffers, zero lengths, huge lengths, wild addresses, indirect tables), raw
//! ring corruption and bogus `avail.idx`. The worker runs inline (`GuestDriver::inline`).
//!
//! Oracles: nothing panics; the device writes guest memory only through device-writable
//! descriptors and the used ring; every chain is used, or the device asks for a reset; no used
//! length exceeds what the chain could take (64 KiB at most); the counters agree with the used
//! ring (requests served + refused = chains used, bytes = the used lengths' sum).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_fuzz::guest::{Handover, Heap, Shape, add_chain, corrupt_ring, run_checked, wild_buf};
use squib_virtio::device::{FEATURE_INDIRECT_DESC, FEATURE_VERSION_1};
use squib_virtio::mmio::reg;
use squib_virtio::rng::{RngConfig, RngDevice};
use squib_virtio::testing::{Buf, GuestDriver};

const GUEST_MEM: usize = 256 * 1024;
const NEEDS_RESET: u32 = 0x40;
const DRIVER_OK: u32 = 0x04;
/// What one request may take (the device's cap).
const MAX_REQUEST: u32 = 64 << 10;

fn run(u: &mut Unstructured) -> Result<()> {
    let Ok(device) = RngDevice::new(RngConfig::default()) else {
        return Ok(());
    };
    let metrics = device.metrics();
    let mut d = GuestDriver::inline(Box::new(device), GUEST_MEM);
    let offered = d.device_features();
    let features = (offered & u.arbitrary::<u64>()?) | FEATURE_VERSION_1;
    if !d.negotiate(features) {
        return Ok(());
    }
    let max = d.read_reg(reg::QUEUE_NUM_MAX).min(256);
    let size = 1u16 << u.int_in_range(0..=max.trailing_zeros())?;
    d.setup_queue(size);
    d.set_status_bit(DRIVER_OK);

    let mut heap = Heap::new(GUEST_MEM);
    let mut free = size;
    // Per chain: the most it may be filled with, when known.
    let mut caps: Vec<Option<u32>> = Vec::new();
    // The used-ring checks need rings nobody but the driver wrote.
    let mut ring_corrupted = false;
    for _ in 0..u.int_in_range(1..=3)? {
        for _ in 0..u.int_in_range(1..=16)? {
            let mut bufs = Vec::new();
            let mut cap = Some(0u32);
            for _ in 0..u.int_in_range(1..=4)? {
                if u.ratio(1, 10)? {
                    let buf = wild_buf(u, GUEST_MEM)?;
                    // A wild writable buffer may land on the rings.
                    ring_corrupted |= buf.device_writes;
                    bufs.push(buf);
                    cap = None;
                    continue;
                }
                // Mostly small: filling a buffer costs a getrandom call per byte range, and
                // the 64 KiB cap needs only an occasional large one.
                let len: u32 = match u.int_in_range(0..=15)? {
                    0..=9 => u.int_in_range(0..=64)?,
                    10..=13 => u.int_in_range(0..=4096)?,
                    14 => u.int_in_range(60_000..=70_000)?,
                    _ => 0,
                };
                let Some(addr) = heap.alloc(&mut d, len) else {
                    break;
                };
                let device_writes = !u.ratio(1, 16)?;
                cap = cap.map(|c| {
                    if device_writes {
                        c.saturating_add(len)
                    } else {
                        0
                    }
                });
                bufs.push(Buf {
                    addr,
                    len,
                    device_writes,
                });
            }
            match add_chain(u, &mut d, &mut heap, &bufs, &mut free, size, GUEST_MEM)? {
                Shape::NoRoom => break,
                Shape::Direct => {}
                Shape::Indirect if features & FEATURE_INDIRECT_DESC != 0 => {}
                Shape::Indirect | Shape::Broken => cap = None,
            }
            caps.push(cap.map(|c| c.min(MAX_REQUEST)));
        }
        if u.ratio(1, 8)? {
            ring_corrupted = true;
            if u.arbitrary()? {
                corrupt_ring(u, &mut d, 0)?;
            } else {
                let idx: u16 = u.arbitrary()?;
                d.publish_avail_idx(idx);
            }
        }
        let how = [Handover::arbitrary(u)?];
        run_checked(&mut d, &[size], GUEST_MEM, &how, !ring_corrupted);
    }
    run_checked(
        &mut d,
        &[size],
        GUEST_MEM,
        &[Handover::Kick],
        !ring_corrupted,
    );
    let broken = d.read_reg(reg::STATUS) & NEEDS_RESET != 0;

    let mut used = Vec::new();
    while let Some(entry) = d.pop_used() {
        used.push(entry);
    }
    let m = metrics.snapshot();
    // Only on rings the driver alone wrote: with a bogus avail index the device may complete
    // more than a ring's worth, which the used ring cannot show entry by entry.
    if !ring_corrupted {
        assert_eq!(
            used.len() as u64,
            m.entropy_event_count + m.entropy_event_fails,
            "chains used vs requests counted"
        );
        let bytes: u64 = used.iter().map(|e| u64::from(e.len)).sum();
        assert_eq!(bytes, m.entropy_bytes, "used lengths vs bytes counted");
    }
    assert!(used.iter().all(|e| e.len <= MAX_REQUEST));
    if !ring_corrupted {
        assert!(
            broken || used.len() == caps.len(),
            "{} of {} chains used",
            used.len(),
            caps.len()
        );
        // In ring order: the driver's table is used as a ring, so heads repeat only after
        // `size` descriptors; match entries to chains by position.
        for (entry, cap) in used.iter().zip(&caps) {
            if let Some(cap) = cap {
                assert!(
                    entry.len <= *cap,
                    "used length {} > chain capacity {cap}",
                    entry.len
                );
            }
        }
    }
    d.write_reg(reg::STATUS, 0);
    assert_eq!(d.read_reg(reg::STATUS), 0, "reset left status bits set");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
