//! The virtio-net target's harness, shared by `virtio_net` (on `FakeTap`: frames move one call
//! each) and `virtio_net_ring` (on `SocketTap`: through the TAP's io_uring, where rx reads run
//! in batches that move frames between chains). The harness is the `virtio_net` target's, moved
//! here unchanged but for the host end, which [`HostTap`] abstracts.
//!
//! It drives the device as a hostile guest: negotiated features (offloads, MRG_RXBUF), queue
//! sizes, tx chains (header and frame split anyhow, too short, too long, device-writable, wild
//! addresses, indirect tables), rx buffers (too small, device-readable, wild, split across
//! chains), frames the host sends (any length), raw ring corruption and bogus `avail.idx`. The
//! worker runs inline (`guest::driver`).
//!
//! Oracles: nothing panics; the device writes guest memory only through device-writable
//! descriptors and the used rings; every tx chain is used, or the device asks for a reset; every
//! used rx entry fits its chain; the counters agree with the TAP (frames and bytes sent, frames
//! delivered, dropped or still queued) and with the used rings.

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use squib_virtio::net::backend::NetBackend;
use squib_virtio::net::{MacAddr, NetConfig, NetDevice, VNET_HDR_LEN};
use squib_virtio::testing::{Buf, FakeTap, GuestDriver, SocketTap};

use crate::guest::{
    Handover, Heap, Shape, activate, add_chain, assert_all_used, corrupt_ring, driver, needs_reset,
    pop_all, ramp, reset, rings_exposed, run_checked, settle, wild_buf, writable_chain,
};

/// The host's end of a test TAP.
pub trait HostTap: NetBackend + 'static {
    /// The host sends `frame` (no header); false when the TAP was full and dropped it.
    fn inject_frame(&self, frame: &[u8]) -> bool;
    /// Frames the guest sent (header included), in order; clears them.
    fn take_sent(&self) -> Vec<Vec<u8>>;
    /// Frames the device has not read (a `SocketTap` counts them by reading them).
    fn not_read(&self) -> u64;
}

impl HostTap for FakeTap {
    fn inject_frame(&self, frame: &[u8]) -> bool {
        self.inject(frame)
    }
    fn take_sent(&self) -> Vec<Vec<u8>> {
        FakeTap::take_sent(self)
    }
    fn not_read(&self) -> u64 {
        self.pending() as u64
    }
}

impl HostTap for SocketTap {
    fn inject_frame(&self, frame: &[u8]) -> bool {
        self.inject(&[&[0u8; VNET_HDR_LEN][..], frame].concat())
    }
    fn take_sent(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.receive()).collect()
    }
    fn not_read(&self) -> u64 {
        self.drain_unread() as u64
    }
}

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
            bufs.push(wild_buf(u)?);
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
        let data = ramp(u.arbitrary()?, len as usize);
        d.write_bytes(addr, data);
        let device_writes = u.ratio(1, 16)?;
        if device_writes {
            bytes = None;
        }
        if let Some(bytes) = bytes.as_mut() {
            bytes.extend_from_slice(data);
        }
        bufs.push(Buf {
            addr,
            len,
            device_writes,
        });
    }
    Ok((bufs, bytes))
}

/// An rx buffer's length.
fn rx_len(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0..=3)? {
        0 => 1526,
        1 => u.int_in_range(0..=64)?,
        2 => u.int_in_range(0..=4096)?,
        _ => 65_562,
    })
}

/// One input against a device on `tap`.
pub fn run<T: HostTap>(u: &mut Unstructured, tap: Arc<T>) -> Result<()> {
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
    let mut d = driver(Box::new(device));
    let Some((features, sizes)) = activate::<2>(u, &mut d)? else {
        return Ok(());
    };

    let mut heap = Heap::new();
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
                    let shape = add_chain(u, &mut d, &mut heap, &bufs, &mut free[TX], sizes[TX])?;
                    if shape == Shape::NoRoom {
                        break;
                    }
                    hostile |= !shape.is_known(features);
                    added[TX] += 1;
                    match bytes {
                        Some(bytes) => expected_frames.push(bytes),
                        None => hostile = true,
                    }
                }
                1 => {
                    d.select_queue(RX);
                    let (bufs, wild) = writable_chain(u, &mut d, &mut heap, 3, 12, rx_len)?;
                    match add_chain(u, &mut d, &mut heap, &bufs, &mut free[RX], sizes[RX])? {
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
                    if tap.inject_frame(ramp(u.arbitrary()?, len)) {
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
        // A writable descriptor over the rings (a wild or corrupted one, a broken indirect
        // table) lets the device write frames over what the checks below read.
        ring_corrupted |= rings_exposed(&d, &sizes);
        run_checked(&mut d, &sizes, &how, !ring_corrupted);
        ring_corrupted |= rings_exposed(&d, &sizes);
    }
    // Finally everything is published and notified.
    run_checked(&mut d, &sizes, &[Handover::Kick; 2], !ring_corrupted);
    // Frames a streaming guest queued while notifications were off go out when the device's
    // tx timer fires.
    if !ring_corrupted {
        settle(&mut d, &sizes, true, |d| {
            d.select_queue(TX);
            needs_reset(d) || d.used_idx() == added[TX]
        });
    }
    ring_corrupted |= rings_exposed(&d, &sizes);
    let broken = needs_reset(&mut d);
    let used = [pop_all(&mut d, RX), pop_all(&mut d, TX)];
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
        assert_all_used("tx", used[TX].len(), usize::from(added[TX]), broken);
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
        m.rx_packets_count + m.rx_fails + tap.not_read(),
        injected,
        "host frames unaccounted for"
    );
    let rx_bytes: u64 = used[RX].iter().map(|e| u64::from(e.len)).sum();
    assert!(
        ring_corrupted || rx_bytes >= m.rx_bytes_count,
        "rx used lengths {rx_bytes} < bytes delivered {}",
        m.rx_bytes_count
    );
    reset(&mut d);
    Ok(())
}
