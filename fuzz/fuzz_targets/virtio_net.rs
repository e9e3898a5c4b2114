//! The virtio-net device as a hostile guest drives it, on an in-memory TAP (`FakeTap`):
//! negotiated features (offloads, MRG_RXBUF), queue sizes, tx chains (header and frame split
//! anyhow, too short, too long, device-writable, wild addresses, indirect tables), rx buffers
//! (too small, device-readable, wild, split across chains), frames the host sends (any length),
//! raw ring corruption and bogus `avail.idx`. The worker runs inline (`GuestDriver::inline`).
//!
//! Oracles: nothing panics; the device writes guest memory only through device-writable
//! descriptors and the used rings; every tx chain is used, or the device asks for a reset; every
//! used rx entry fits its chain; the counters agree with the TAP (frames and bytes sent, frames
//! delivered, dropped or still queued) and with the used rings.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_fuzz::guest::{Handover, Heap, Shape, add_chain, corrupt_ring, run_checked, wild_buf};
use squib_virtio::device::{FEATURE_INDIRECT_DESC, FEATURE_VERSION_1};
use squib_virtio::mmio::reg;
use squib_virtio::net::{MacAddr, NetConfig, NetDevice, VNET_HDR_LEN};
use squib_virtio::testing::{Buf, FakeTap, GuestDriver};

const GUEST_MEM: usize = 256 * 1024;
const NEEDS_RESET: u32 = 0x40;
const DRIVER_OK: u32 = 0x04;
const RX: usize = 0;
const TX: usize = 1;

/// A chain's buffers and, when every buffer is well formed and device-readable, the bytes the
/// device must send for it.
fn tx_chain(
    u: &mut Unstructured,
    d: &mut GuestDriver,
    heap: &mut Heap,
) -> Result<(Vec<Buf>, Option<Vec<u8>>)> {
    let mut bufs = Vec::new();
    let mut bytes = Some(Vec::new());
    for _ in 0..u.int_in_range(1..=4)? {
        if u.ratio(1, 12)? {
            bufs.push(wild_buf(u, GUEST_MEM)?);
            bytes = None;
            continue;
        }
        let len: u32 = match u.int_in_range(0..=4)? {
            0 => VNET_HDR_LEN as u32,
            1 => u.int_in_range(0..=64)?,
            2 => u.int_in_range(0..=1600)?,
            3 => u.int_in_range(60_000..=70_000)?,
            _ => u.int_in_range(0..=9000)?,
        };
        let Some(addr) = heap.alloc(d, len) else {
            break;
        };
        let fill: u8 = u.arbitrary()?;
        let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
        d.write_bytes(addr, &data);
        let device_writes = u.ratio(1, 16)?;
        if device_writes {
            bytes = None;
        }
        if let Some(bytes) = bytes.as_mut() {
            bytes.extend_from_slice(&data);
        }
        bufs.push(Buf {
            addr,
            len,
            device_writes,
        });
    }
    Ok((bufs, bytes))
}

/// An rx chain's buffers, and whether one is wild (it may overlap anything, tx frames
/// included).
fn rx_chain(
    u: &mut Unstructured,
    d: &mut GuestDriver,
    heap: &mut Heap,
) -> Result<(Vec<Buf>, bool)> {
    let mut bufs = Vec::new();
    let mut wild = false;
    for _ in 0..u.int_in_range(1..=3)? {
        if u.ratio(1, 12)? {
            bufs.push(wild_buf(u, GUEST_MEM)?);
            wild = true;
            continue;
        }
        let len: u32 = match u.int_in_range(0..=3)? {
            0 => 1526,
            1 => u.int_in_range(0..=64)?,
            2 => u.int_in_range(0..=4096)?,
            _ => 65_562,
        };
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

fn run(u: &mut Unstructured) -> Result<()> {
    let tap = Arc::new(FakeTap::new());
    let config = NetConfig {
        guest_mac: if u.arbitrary()? {
            Some(MacAddr::from(u.arbitrary::<[u8; 6]>()?))
        } else {
            None
        },
        ..NetConfig::default()
    };
    let Ok(device) = NetDevice::new(tap.clone(), config) else {
        return Ok(());
    };
    let handle = device.handle();
    let mut d = GuestDriver::inline(Box::new(device), GUEST_MEM);
    let offered = d.device_features();
    let features = (offered & u.arbitrary::<u64>()?) | FEATURE_VERSION_1;
    if !d.negotiate(features) {
        return Ok(());
    }
    let mut sizes = [0u16; 2];
    for (index, size) in sizes.iter_mut().enumerate() {
        d.select_queue(index);
        let max = d.read_reg(reg::QUEUE_NUM_MAX).min(256);
        *size = 1u16 << u.int_in_range(0..=max.trailing_zeros())?;
        d.setup_queue(*size);
    }
    d.set_status_bit(DRIVER_OK);
    if d.read_reg(reg::STATUS) & NEEDS_RESET != 0 {
        return Ok(());
    }

    let mut heap = Heap::new(GUEST_MEM);
    let mut free = sizes;
    let mut added = [0u16; 2];
    let mut expected_frames = Vec::new();
    let mut hostile = false;
    let mut injected = 0u64;
    // The used-ring checks need rings nobody but the driver wrote.
    let mut ring_corrupted = false;
    // Rounds: the driver queues chains and the host frames, then notifies and the device runs.
    for _ in 0..u.int_in_range(1..=3)? {
        for _ in 0..u.int_in_range(1..=12)? {
            match u.int_in_range(0..=3)? {
                0 => {
                    d.select_queue(TX);
                    let (bufs, bytes) = tx_chain(u, &mut d, &mut heap)?;
                    match add_chain(
                        u,
                        &mut d,
                        &mut heap,
                        &bufs,
                        &mut free[TX],
                        sizes[TX],
                        GUEST_MEM,
                    )? {
                        Shape::NoRoom => break,
                        Shape::Direct => {}
                        Shape::Indirect => hostile |= features & FEATURE_INDIRECT_DESC == 0,
                        Shape::Broken => hostile = true,
                    }
                    added[TX] += 1;
                    match bytes {
                        Some(bytes) => expected_frames.push(bytes),
                        None => hostile = true,
                    }
                }
                1 => {
                    d.select_queue(RX);
                    let (bufs, wild) = rx_chain(u, &mut d, &mut heap)?;
                    match add_chain(
                        u,
                        &mut d,
                        &mut heap,
                        &bufs,
                        &mut free[RX],
                        sizes[RX],
                        GUEST_MEM,
                    )? {
                        Shape::NoRoom => break,
                        Shape::Direct | Shape::Indirect => {}
                        Shape::Broken => hostile = true,
                    }
                    added[RX] += 1;
                    // A wild writable buffer may land on anything, rings and tx frames included.
                    (hostile, ring_corrupted) = (hostile | wild, ring_corrupted | wild);
                }
                2 => {
                    let len = match u.int_in_range(0..=3)? {
                        0 => u.int_in_range(0..=64)?,
                        1 => u.int_in_range(0..=1514)?,
                        2 => u.int_in_range(1514..=1600)?,
                        _ => u.int_in_range(0..=70_000)?,
                    };
                    let fill: u8 = u.arbitrary()?;
                    let frame: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                    if tap.inject(&frame) {
                        injected += 1;
                    }
                }
                _ => {
                    let index = usize::from(u.arbitrary::<bool>()?);
                    d.select_queue(index);
                    (hostile, ring_corrupted) = (true, true);
                    if u.arbitrary()? {
                        corrupt_ring(u, &mut d, index)?;
                    } else {
                        let idx: u16 = u.arbitrary()?;
                        d.publish_avail_idx(idx);
                    }
                }
            }
        }
        // Publish (as a driver does, or not) and notify (or not) each queue, then serve.
        let how = [Handover::arbitrary(u)?, Handover::arbitrary(u)?];
        run_checked(&mut d, &sizes, GUEST_MEM, &how, !ring_corrupted);
    }
    // Finally everything is published and notified.
    run_checked(
        &mut d,
        &sizes,
        GUEST_MEM,
        &[Handover::Kick; 2],
        !ring_corrupted,
    );
    let broken = d.read_reg(reg::STATUS) & NEEDS_RESET != 0;

    // Used entries, per queue.
    let mut used = [Vec::new(), Vec::new()];
    for index in [RX, TX] {
        d.select_queue(index);
        while let Some(entry) = d.pop_used() {
            used[index].push(entry);
        }
    }
    let m = handle.metrics();
    let sent = tap.take_sent();
    assert_eq!(
        sent.len() as u64,
        m.tx_packets_count,
        "frames sent vs counted"
    );
    let sent_bytes: u64 = sent.iter().map(|f| (f.len() - VNET_HDR_LEN) as u64).sum();
    assert_eq!(sent_bytes, m.tx_bytes_count, "bytes sent vs counted");
    if !ring_corrupted {
        assert!(
            used[TX].iter().all(|e| e.len == 0),
            "a tx chain was used with a length"
        );
        // Every tx chain is used (sent, refused or dropped as malformed), or the device broke.
        assert!(
            broken || used[TX].len() == usize::from(added[TX]),
            "{} of {} tx chains used",
            used[TX].len(),
            added[TX]
        );
        assert_eq!(
            used[TX].len() as u64,
            m.tx_packets_count + m.tx_malformed_frames + m.tx_fails,
            "tx chains used vs counted"
        );
        assert!(used[RX].len() <= usize::from(added[RX]));
    }
    if !hostile && !broken {
        // Well-formed chains go out whole, in order.
        let mut expected = expected_frames
            .iter()
            .filter(|f| (VNET_HDR_LEN..=VNET_HDR_LEN + 65_550).contains(&f.len()));
        for frame in &sent {
            assert_eq!(
                Some(frame),
                expected.next(),
                "a frame changed on its way out"
            );
        }
    }
    // Frames from the host: delivered, dropped (counted) or still waiting in the TAP.
    assert_eq!(
        m.rx_packets_count + m.rx_fails + tap.pending() as u64,
        injected,
        "host frames unaccounted for"
    );
    let rx_bytes: u64 = used[RX].iter().map(|e| u64::from(e.len)).sum();
    assert!(
        rx_bytes >= m.rx_bytes_count,
        "rx used lengths {rx_bytes} < bytes delivered {}",
        m.rx_bytes_count
    );
    d.write_reg(reg::STATUS, 0);
    assert_eq!(d.read_reg(reg::STATUS), 0, "reset left status bits set");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
