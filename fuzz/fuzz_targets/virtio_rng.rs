//! The virtio-rng device as a hostile guest drives it: queue size, chains of any shape
//! (device-readable buffers, zero lengths, huge lengths, wild addresses, indirect tables), raw
//! ring corruption and bogus `avail.idx`. The worker runs inline (`squib_fuzz::guest::driver`).
//!
//! Oracles: nothing panics; the device writes guest memory only through device-writable
//! descriptors and the used ring; every chain is used, or the device asks for a reset; no used
//! length exceeds what the chain could take (64 KiB at most); the counters agree with the used
//! ring (requests served + refused = chains used, bytes = the used lengths' sum).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_fuzz::guest::{
    Handover, Heap, Shape, activate, add_chain, assert_all_used, corrupt_ring, driver, needs_reset,
    pop_all, reset, rings_exposed, run_checked, writable_chain,
};
use squib_virtio::rng::{RngConfig, RngDevice};

/// What one request may take (the device's cap).
const MAX_REQUEST: u32 = 64 << 10;

/// Mostly small: filling a buffer costs a getrandom call per byte range, and the 64 KiB cap
/// needs only an occasional large one.
fn len(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0..=15)? {
        0..=9 => u.int_in_range(0..=64)?,
        10..=13 => u.int_in_range(0..=4096)?,
        14 => u.int_in_range(60_000..=70_000)?,
        _ => 0,
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    let Ok(device) = RngDevice::new(RngConfig::default()) else {
        return Ok(());
    };
    let metrics = device.metrics();
    let mut d = driver(Box::new(device));
    let Some((features, [size])) = activate(u, &mut d)? else {
        return Ok(());
    };

    let mut heap = Heap::new();
    let mut free = size;
    // Per chain: the most it may be filled with, when known.
    let mut caps: Vec<Option<u32>> = Vec::new();
    // The used-ring checks need rings nobody but the driver wrote.
    let mut ring_corrupted = false;
    for _ in 0..u.int_in_range(1..=3)? {
        for _ in 0..u.int_in_range(1..=16)? {
            let (bufs, wild) = writable_chain(u, &mut d, &mut heap, 4, 10, len)?;
            // A wild writable buffer may land on the rings.
            ring_corrupted |= wild;
            // Writable bytes after the last device-readable buffer (whose chain the device
            // refuses with 0 bytes), wild ones included: an upper bound either way.
            let cap = bufs.iter().fold(0u32, |cap, buf| {
                if buf.device_writes {
                    cap.saturating_add(buf.len)
                } else {
                    0
                }
            });
            let shape = add_chain(u, &mut d, &mut heap, &bufs, &mut free, size)?;
            if shape == Shape::NoRoom {
                break;
            }
            caps.push(shape.is_known(features).then_some(cap.min(MAX_REQUEST)));
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
        ring_corrupted |= rings_exposed(&d, &[size]);
        run_checked(&mut d, &[size], &how, !ring_corrupted);
        ring_corrupted |= rings_exposed(&d, &[size]);
    }
    ring_corrupted |= rings_exposed(&d, &[size]);
    run_checked(&mut d, &[size], &[Handover::Kick], !ring_corrupted);
    ring_corrupted |= rings_exposed(&d, &[size]);
    let broken = needs_reset(&mut d);

    let used = pop_all(&mut d, 0);
    let m = metrics.snapshot();
    // Only on rings the driver alone wrote: with a bogus avail index the device may complete
    // more than a ring's worth, which the used ring cannot show entry by entry, and a
    // writable descriptor over the rings lets the device fill them with random bytes.
    if !ring_corrupted {
        assert!(used.iter().all(|e| e.len <= MAX_REQUEST));
        assert_eq!(
            used.len() as u64,
            m.entropy_event_count + m.entropy_event_fails,
            "chains used vs requests counted"
        );
        let bytes: u64 = used.iter().map(|e| u64::from(e.len)).sum();
        assert_eq!(bytes, m.entropy_bytes, "used lengths vs bytes counted");
        assert_all_used("rng", used.len(), caps.len(), broken);
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
    reset(&mut d);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
