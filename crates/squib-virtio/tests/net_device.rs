//! virtio-net through the virtio-mmio transport, with a simulated driver and an in-memory TAP:
//! frames both ways byte-exact, rx to the letter of virtio 1.2 §5.1.6.3 (1526-byte buffers,
//! `num_buffers`, mergeable buffers), frames that arrive before buffers, rate limiting, and
//! hostile chains (dropped and counted, never a panic; randomized with a replayable seed).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use squib_virtio::net::backend::NetBackend;
use squib_virtio::net::{NetConfig, NetDevice, NetHandle, RX_BUFFER_MIN, VNET_HDR_LEN};
use squib_virtio::rate_limiter::{BucketSpec, RateLimiterSpec};
use squib_virtio::testing::{Buf, FakeTap, GuestDriver, SocketTap};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vm_memory::GuestAddress;

const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
const GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
const MEM: usize = 4 << 20;
const RX: usize = 0;
const TX: usize = 1;
const HDR: usize = VNET_HDR_LEN;

fn device(config: NetConfig) -> (GuestDriver, Arc<FakeTap>, NetHandle, u64) {
    device_with(config, VERSION_1 | EVENT_IDX)
}

fn device_with(config: NetConfig, features: u64) -> (GuestDriver, Arc<FakeTap>, NetHandle, u64) {
    let tap = Arc::new(FakeTap::new());
    let dev = NetDevice::new(tap.clone(), config).unwrap();
    let handle = dev.handle();
    let driver = GuestDriver::activated(Box::new(dev), MEM, features);
    (driver, tap, handle, features)
}

/// A device whose worker the test runs inline (`GuestDriver::run_device`), so it controls when
/// the device looks at its rings; VERSION_1 only (no EVENT_IDX), both queues of 64, DRIVER_OK.
fn inline_device() -> (GuestDriver, Arc<FakeTap>, NetHandle) {
    let tap = Arc::new(FakeTap::new());
    let (d, handle) = inline_device_on(tap.clone());
    (d, tap, handle)
}

/// Whether this kernel lets the process use io_uring; says loudly that `test` is skipped if not.
fn io_uring_available(test: &str) -> bool {
    match squib_host::uring::probe() {
        Ok(()) => true,
        Err(error) => {
            eprintln!("SKIPPED {test}: no io_uring ({error}); the TAP's ring paths did not run");
            false
        }
    }
}

/// [`inline_device`] on any backend.
fn inline_device_on(backend: Arc<dyn NetBackend>) -> (GuestDriver, NetHandle) {
    let dev = NetDevice::new(backend, NetConfig::default()).unwrap();
    let handle = dev.handle();
    let mut d = GuestDriver::inline(Box::new(dev), MEM);
    assert!(d.negotiate(VERSION_1));
    for queue in [RX, TX] {
        d.select_queue(queue);
        d.setup_queue(64);
    }
    d.set_status_bit(0x04);
    (d, handle)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Posts one rx buffer of `len` bytes; returns its address.
fn post_rx(d: &mut GuestDriver, len: u32) -> (u16, GuestAddress) {
    d.select_queue(RX);
    let addr = d.alloc(len);
    let head = d.add_chain([Buf::writable(addr, len)]);
    d.kick();
    (head, addr)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `payload` with a zero header in two descriptors; returns the used entry.
fn send(d: &mut GuestDriver, payload: &[u8]) -> squib_virtio::testing::Used {
    add_tx_chain(d, payload);
    d.kick();
    d.wait_used().expect("tx completion")
}

/// Queues (without a kick) `payload` with a zero header in two descriptors on the tx queue.
fn add_tx_chain(d: &mut GuestDriver, payload: &[u8]) {
    d.select_queue(TX);
    let hdr = d.alloc(HDR as u32);
    let body = d.alloc(payload.len() as u32);
    d.write_bytes(body, payload);
    d.add_chain([
        Buf::readable(hdr, HDR as u32),
        Buf::readable(body, payload.len() as u32),
    ]);
}

#[test]
fn offers_firecrackers_features_and_the_mac() {
    let mac = "06:00:ac:10:00:02".parse().unwrap();
    let tap = Arc::new(FakeTap::new());
    let dev = NetDevice::new(
        tap,
        NetConfig {
            guest_mac: Some(mac),
            ..NetConfig::default()
        },
    )
    .unwrap();
    let mut d = GuestDriver::new(Box::new(dev), MEM);
    let features = d.device_features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature {bit} not offered");
    }
    assert_ne!(features & VERSION_1, 0);
    assert_ne!(
        features & (1 << 28),
        0,
        "INDIRECT_DESC, as every squib device"
    );
    let mut config = [0u8; 6];
    d.transport().read(0x100, &mut config);
    assert_eq!(config, [6, 0, 0xac, 0x10, 0, 2]);
}

#[test]
fn tx_frames_reach_the_tap_byte_exact() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    let payload = frame(1514, 7);
    let used = send(&mut d, &payload);
    assert_eq!(used.len, 0);
    let sent = tap.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0][HDR..], &payload[..]);
    let m = handle.metrics();
    assert_eq!((m.tx_packets_count, m.tx_bytes_count), (1, 1514));
}

#[test]
fn rx_fills_an_exactly_1526_byte_buffer_without_mergeable_buffers() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    assert_eq!(RX_BUFFER_MIN, 1526);
    let (head, addr) = post_rx(&mut d, RX_BUFFER_MIN as u32);
    let payload = frame(1514, 3);
    assert!(tap.inject(&payload));
    let used = d.wait_used().expect("rx completion");
    assert_eq!((used.head, used.len), (head, 1526));
    let got = d.read_bytes(addr, 1526);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers must be 1");
    assert_eq!(&got[HDR..], &payload[..]);
    assert_eq!(handle.metrics().rx_packets_count, 1);
}

#[test]
fn frames_that_arrive_before_buffers_wait_and_arrive_in_order() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    for i in 0..3u8 {
        assert!(tap.inject(&frame(100 + usize::from(i), i)));
    }
    wait_until("the device to notice it has no buffers", || {
        handle.metrics().no_rx_avail_buffer >= 1
    });
    assert_eq!(
        tap.pending(),
        3,
        "frames must wait in the TAP, not be consumed"
    );
    let mut bufs = Vec::new();
    for _ in 0..3 {
        bufs.push(post_rx(&mut d, 2048));
    }
    for (i, (head, addr)) in bufs.into_iter().enumerate() {
        let used = d.wait_used().expect("rx completion");
        assert_eq!(used.head, head);
        let len = 100 + i;
        assert_eq!(used.len as usize, HDR + len);
        assert_eq!(
            d.read_bytes(GuestAddress(addr.0 + HDR as u64), len),
            frame(len, i as u8)
        );
    }
    assert_eq!(handle.metrics().rx_fails, 0);
}

/// Out of rx buffers with frames waiting, the device looks at the ring again after a short wait
/// with notifications still off — a driver that recycles one buffer at a time then needs no kick
/// per buffer — and asks for a kick only if the wait found nothing.
#[test]
fn rx_out_of_buffers_looks_again_before_asking_for_a_kick() {
    const NO_NOTIFY: u16 = 1;
    let (mut d, tap, handle) = inline_device();
    for i in 0..3u8 {
        assert!(tap.inject(&frame(100, i)));
    }
    post_rx(&mut d, 2048);
    d.run_device();
    assert_eq!(d.used_idx(), 1);
    assert_eq!(handle.metrics().no_rx_avail_buffer, 1);
    assert_eq!(
        d.used_flags() & NO_NOTIFY,
        NO_NOTIFY,
        "asked for a kick at once"
    );
    // A buffer recycled during the wait, published without a notification: the wait finds it.
    d.select_queue(RX);
    let addr = d.alloc(2048);
    d.add_chain([Buf::writable(addr, 2048)]);
    let _ = d.publish();
    std::thread::sleep(Duration::from_millis(5));
    d.run_device();
    assert_eq!(d.used_idx(), 2, "the refill wait did not look at the ring");
    assert_eq!(
        d.read_bytes(GuestAddress(addr.0 + HDR as u64), 100),
        frame(100, 1)
    );
    // Nothing recycled this time: after the wait the device asks for a kick, and gets the frame
    // in the buffer that kick announces.
    std::thread::sleep(Duration::from_millis(5));
    d.run_device();
    assert_eq!(d.used_flags() & NO_NOTIFY, 0, "never asked for a kick");
    post_rx(&mut d, 2048);
    d.run_device();
    assert_eq!(d.used_idx(), 3);
    assert_eq!(tap.pending(), 0);
    assert_eq!(handle.metrics().rx_fails, 0);
}

/// A driver whose kick brought more than one frame is streaming: tx keeps notifications off and
/// looks at the ring again after a short wait (frames published meanwhile go without a kick)
/// until a wait finds nothing; one frame per kick (request-response) re-enables them at once.
#[test]
fn tx_streams_without_kicks_and_single_frames_keep_them() {
    const NO_NOTIFY: u16 = 1;
    let (mut d, tap, _) = inline_device();
    let queue_frame = |d: &mut GuestDriver, seed: u8| {
        d.select_queue(TX);
        let buf = d.alloc((HDR + 100) as u32);
        d.write_bytes(GuestAddress(buf.0 + HDR as u64), &frame(100, seed));
        d.add_chain([Buf::readable(buf, (HDR + 100) as u32)]);
    };
    // Request-response: one frame, one kick, notifications back on.
    queue_frame(&mut d, 0);
    d.kick();
    assert_eq!(tap.take_sent().len(), 1);
    assert_eq!(
        d.used_flags() & NO_NOTIFY,
        0,
        "one frame per kick must keep kicks"
    );
    // Streaming: two frames on one kick.
    queue_frame(&mut d, 1);
    queue_frame(&mut d, 2);
    d.kick();
    assert_eq!(tap.take_sent().len(), 2);
    assert_eq!(
        d.used_flags() & NO_NOTIFY,
        NO_NOTIFY,
        "a stream asked for kicks"
    );
    // The next frame is published without a kick: the wait sends it.
    queue_frame(&mut d, 3);
    let _ = d.publish();
    std::thread::sleep(Duration::from_millis(5));
    d.run_device();
    let sent = tap.take_sent();
    assert_eq!(sent.len(), 1, "the stream wait did not send the frame");
    assert_eq!(sent[0][HDR..], frame(100, 3));
    assert_eq!(d.used_idx(), 4);
    // A wait that finds nothing ends the stream.
    std::thread::sleep(Duration::from_millis(5));
    d.run_device();
    assert_eq!(d.used_flags() & NO_NOTIFY, 0, "the stream never ended");
}

#[test]
fn a_frame_too_large_for_the_posted_buffer_is_dropped_and_counted() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    let (_, _) = post_rx(&mut d, 200);
    assert!(tap.inject(&frame(1000, 1)));
    assert!(tap.inject(&frame(50, 2)));
    let used = d.wait_used().expect("the small frame arrives");
    assert_eq!(used.len as usize, HDR + 50);
    assert_eq!(handle.metrics().rx_fails, 1);
}

#[test]
fn mergeable_buffers_split_a_frame_and_count_them() {
    // With a guest offload the largest frame is 64 KiB, so every posted buffer is gathered.
    let (mut d, tap, _handle, _) = device_with(
        NetConfig::default(),
        VERSION_1 | EVENT_IDX | MRG_RXBUF | GUEST_CSUM | GUEST_TSO4,
    );
    let mut addrs = Vec::new();
    for _ in 0..4 {
        addrs.push(post_rx(&mut d, 1000).1);
    }
    let payload = frame(2488, 9); // 2500 bytes with the header: three buffers
    assert!(tap.inject(&payload));
    let lens: Vec<u32> = (0..3).map(|_| d.wait_used().unwrap().len).collect();
    assert_eq!(lens, [1000, 1000, 500]);
    let first = d.read_bytes(addrs[0], 1000);
    assert_eq!(&first[10..12], &3u16.to_le_bytes());
    let mut got = first[HDR..].to_vec();
    got.extend(d.read_bytes(addrs[1], 1000));
    got.extend(d.read_bytes(addrs[2], 500));
    assert_eq!(got, payload);
    // The fourth buffer was handed back and takes the next frame.
    assert!(tap.inject(&frame(10, 1)));
    assert_eq!(d.wait_used().unwrap().len as usize, HDR + 10);
}

#[test]
fn guest_offloads_reach_the_tap() {
    let (_d, tap, _h, _) = device_with(
        NetConfig::default(),
        VERSION_1 | GUEST_CSUM | GUEST_TSO4 | MRG_RXBUF,
    );
    let offloads = tap.offloads();
    assert!(offloads.csum && offloads.tso4 && !offloads.tso6 && !offloads.ufo);
}

#[test]
fn hostile_tx_chains_are_dropped_and_counted() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    d.select_queue(TX);
    // A device-writable descriptor.
    let a = d.alloc(100);
    d.add_chain([Buf::writable(a, 100)]);
    // Shorter than a header.
    d.add_chain([Buf::readable(a, 5)]);
    // Outside guest memory.
    d.add_chain([Buf::readable(GuestAddress(MEM as u64 - 8), 64)]);
    d.kick();
    for _ in 0..3 {
        assert_eq!(d.wait_used().expect("dropped chains are returned").len, 0);
    }
    assert_eq!(handle.metrics().tx_malformed_frames, 3);
    assert!(tap.take_sent().is_empty());
    // The device still works.
    send(&mut d, &frame(60, 0));
    assert_eq!(tap.take_sent().len(), 1);
}

#[test]
fn hostile_rx_chains_go_back_unused_and_the_next_good_one_gets_the_frame() {
    let (mut d, tap, handle, _) = device(NetConfig::default());
    d.select_queue(RX);
    let a = d.alloc(2048);
    d.add_chain([Buf::readable(a, 2048)]); // device-readable
    d.add_chain([Buf::writable(a, 4)]); // too short for the header
    let good = d.alloc(2048);
    let good_head = d.add_chain([Buf::writable(good, 2048)]);
    d.kick();
    assert!(tap.inject(&frame(64, 5)));
    let used: Vec<_> = (0..3).map(|_| d.wait_used().unwrap()).collect();
    assert_eq!((used[0].len, used[1].len), (0, 0));
    assert_eq!((used[2].head, used[2].len as usize), (good_head, HDR + 64));
    assert_eq!(handle.metrics().rx_malformed_buffers, 2);
}

#[test]
fn tx_rate_limiter_holds_frames_until_its_timer() {
    let ops = BucketSpec {
        size: 1,
        one_time_burst: 0,
        refill_time_ms: 200,
    };
    let (mut d, tap, handle, _) = device(NetConfig {
        tx_rate_limiter: Some(RateLimiterSpec {
            bandwidth: None,
            ops: Some(ops),
        }),
        ..NetConfig::default()
    });
    let start = Instant::now();
    send(&mut d, &frame(60, 0));
    send(&mut d, &frame(60, 1));
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(150),
        "second frame after {elapsed:?}"
    );
    assert_eq!(tap.take_sent().len(), 2);
    assert!(handle.metrics().tx_rate_limiter_throttled >= 1);
    // Lifting the limit lets frames through at once.
    handle
        .update_rate_limiters(
            None,
            Some(RateLimiterSpec {
                bandwidth: None,
                ops: Some(BucketSpec {
                    size: 0,
                    one_time_burst: 0,
                    refill_time_ms: 0,
                }),
            }),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    for i in 0..5 {
        send(&mut d, &frame(60, i));
    }
    assert!(start.elapsed() < Duration::from_millis(150));
}

#[test]
fn rx_rate_limiter_delays_frames_and_counts() {
    let bw = BucketSpec {
        size: 1000,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    let (mut d, tap, handle, _) = device(NetConfig {
        rx_rate_limiter: Some(RateLimiterSpec {
            bandwidth: Some(bw),
            ops: None,
        }),
        ..NetConfig::default()
    });
    for _ in 0..4 {
        post_rx(&mut d, 2048);
    }
    let start = Instant::now();
    for i in 0..4 {
        assert!(tap.inject(&frame(1000, i)));
    }
    for _ in 0..4 {
        d.wait_used().expect("rx completion");
    }
    // A frame is admitted for one byte and charged in full once received, so the bucket (full
    // at the start) pays the first frame, the second goes into debt, and the third and fourth
    // each wait ~100 ms for the debt before them.
    assert!(
        start.elapsed() >= Duration::from_millis(180),
        "{:?}",
        start.elapsed()
    );
    assert!(handle.metrics().rx_rate_limiter_throttled >= 1);
}

// ---- randomized hostile chains ----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("SQUIB_FUZZ_SEED")
        .ok()
        .and_then(|s| {
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(0x5eed_0e70)
}

/// The host end of a test TAP, for the randomized test: both kinds of backend.
trait HostEnd {
    /// Sends a frame (no header) to the guest.
    fn put(&self, frame: &[u8]);
    /// Lengths (header included) of the frames the guest sent since the last call.
    fn sent_lengths(&self) -> Vec<usize>;
    /// Whether frames may still wait for the guest (`FakeTap` knows; a socket may).
    fn may_hold_frames(&self) -> bool;
}

impl HostEnd for FakeTap {
    fn put(&self, frame: &[u8]) {
        self.inject(frame);
    }
    fn sent_lengths(&self) -> Vec<usize> {
        self.take_sent().iter().map(Vec::len).collect()
    }
    fn may_hold_frames(&self) -> bool {
        self.pending() > 0
    }
}

impl HostEnd for SocketTap {
    fn put(&self, frame: &[u8]) {
        self.inject(&[&[0u8; HDR][..], frame].concat());
    }
    fn sent_lengths(&self) -> Vec<usize> {
        std::iter::from_fn(|| self.receive())
            .map(|f| f.len())
            .collect()
    }
    fn may_hold_frames(&self) -> bool {
        true
    }
}

/// Random chains on both queues — random directions, lengths (0 to beyond the largest frame),
/// addresses (in memory, straddling its end, outside it), descriptor loops written by hand — with
/// frames injected meanwhile. The device must not panic or stall; afterwards a reset brings it
/// back and a valid frame goes each way. With `FakeTap` frames move one call each.
#[test]
fn random_hostile_chains_never_break_the_device() {
    let tap = Arc::new(FakeTap::new());
    hostile_rounds(tap.clone(), tap);
}

/// The same through the TAP's io_uring (a backend with a descriptor), where rx reads run in
/// batches that move frames between chains.
#[test]
fn random_hostile_chains_never_break_the_device_through_the_io_uring() {
    if !io_uring_available("random_hostile_chains_never_break_the_device_through_the_io_uring") {
        return;
    }
    let tap = Arc::new(SocketTap::new());
    hostile_rounds(tap.clone(), tap);
}

fn hostile_rounds(backend: Arc<dyn NetBackend>, tap: Arc<dyn HostEnd>) {
    let seed = seed();
    let iterations: u64 = std::env::var("SQUIB_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut rng = Rng(seed | 1);
    let features = VERSION_1 | EVENT_IDX;
    let dev = NetDevice::new(backend, NetConfig::default()).unwrap();
    let handle = dev.handle();
    let mut d = GuestDriver::activated(Box::new(dev), MEM, features);
    for round in 0..iterations {
        let queue = if rng.below(2) == 0 { RX } else { TX };
        d.select_queue(queue);
        let segments = 1 + rng.below(4);
        let mut bufs = Vec::new();
        for _ in 0..segments {
            let len = match rng.below(4) {
                0 => rng.below(16) as u32,
                1 => rng.below(2048) as u32,
                2 => 65_562 + rng.below(100) as u32,
                _ => 1526,
            };
            let addr = match rng.below(5) {
                0 => GuestAddress(MEM as u64 - rng.below(64)),
                1 => GuestAddress(u64::MAX - rng.below(4096)),
                _ => d.alloc(len.min(4096)),
            };
            bufs.push(Buf {
                addr,
                len,
                device_writes: rng.below(3) != 0,
            });
        }
        if rng.below(10) == 0 {
            // A descriptor that points at itself.
            let head = d.add_chain([Buf::readable(GuestAddress(0x10000), 16)]);
            d.write_descriptor(head, GuestAddress(0x10000), 16, 1, head);
        } else {
            d.add_chain(bufs);
        }
        d.kick();
        if rng.below(3) == 0 {
            tap.put(&frame(rng.below(1600) as usize, round as u8));
        }
        while d.pop_used().is_some() {}
    }
    // Whatever state the rings are in, a reset brings the device back.
    d.reprobe(features);
    tap.sent_lengths();
    let (_, addr) = post_rx(&mut d, 2048);
    // Drain what the hostile rounds left in the TAP: post a buffer per frame until one stays
    // unused.
    let mut quiet = 0;
    while tap.may_hold_frames() && quiet < 20 {
        post_rx(&mut d, 2048);
        std::thread::sleep(Duration::from_millis(1));
        d.select_queue(RX);
        let mut any = false;
        while d.pop_used().is_some() {
            any = true;
        }
        quiet = if any { 0 } else { quiet + 1 };
    }
    let payload = frame(333, 1);
    tap.put(&payload);
    post_rx(&mut d, 2048);
    let mut found = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !found && Instant::now() < deadline {
        d.select_queue(RX);
        if let Some(used) = d.pop_used() {
            found = used.len as usize == HDR + 333;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(found, "seed {seed:#x}: no rx after reset");
    let _ = addr;
    send(&mut d, &frame(77, 2));
    assert!(
        tap.sent_lengths().contains(&(HDR + 77)),
        "seed {seed:#x}: no tx after reset"
    );
    let m = handle.metrics();
    eprintln!(
        "seed {seed:#x}: {} malformed tx, {} malformed rx, {} rx fails",
        m.tx_malformed_frames, m.rx_malformed_buffers, m.rx_fails
    );
}

/// Ping-pong: every frame the guest sends comes straight back from the host side (a thread
/// echoing the fake TAP), one at a time, without EVENT_IDX; none may be lost.
#[test]
fn echoed_frames_are_never_lost_one_at_a_time() {
    let (mut d, tap, handle, _) = device_with(NetConfig::default(), VERSION_1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo = {
        let (tap, stop) = (Arc::clone(&tap), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for frame in tap.take_sent() {
                    assert!(tap.inject(&frame[HDR..]));
                }
                std::thread::yield_now();
            }
        })
    };
    let mut rx_slots = Vec::new();
    for _ in 0..16 {
        rx_slots.push(post_rx(&mut d, 2048).1);
    }
    d.select_queue(TX);
    let hdr = d.alloc(HDR as u32);
    let body = d.alloc(64);
    for round in 0..5_000u32 {
        d.select_queue(TX);
        d.write_bytes(body, &round.to_le_bytes());
        d.add_chain([Buf::readable(hdr, HDR as u32), Buf::readable(body, 64)]);
        d.kick();
        let sent = d.wait_used();
        assert!(sent.is_some(), "round {round}: tx not completed");
        d.select_queue(RX);
        let used = d.wait_used();
        assert!(
            used.is_some(),
            "round {round}: echo lost; {:?}",
            handle.metrics()
        );
        let used = used.unwrap();
        let addr = rx_slots[usize::from(used.head) % 16];
        // Re-post the same buffer.
        d.add_chain([Buf::writable(addr, 2048)]);
        d.kick();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echo.join().unwrap();
}

#[test]
fn save_and_restore_keep_the_queues_and_refuse_another_mac() {
    let features = VERSION_1 | EVENT_IDX | GUEST_CSUM;
    let (mut d, tap, _h, _) = device_with(NetConfig::default(), features);
    d.transport().pause();
    let state = d.transport().save_state().unwrap();
    assert_eq!(
        state.device,
        squib_virtio::persist::DeviceState::Net(squib_virtio::net::NetState { guest_mac: None })
    );
    // Restored onto its queues (the VMM restores onto a new device; the queues come from the
    // state either way), the device serves both directions again.
    d.transport().restore_state(&state).unwrap();
    d.transport().resume().unwrap();
    assert!(
        tap.offloads().csum,
        "the negotiated offloads are applied again"
    );
    let payload = frame(100, 1);
    send(&mut d, &payload);
    let sent = tap.take_sent();
    assert_eq!(&sent[0][HDR..], &payload[..]);
    let (head, addr) = post_rx(&mut d, RX_BUFFER_MIN as u32);
    let incoming = frame(200, 2);
    assert!(tap.inject(&incoming));
    let used = d.wait_used().expect("rx completion after the restore");
    assert_eq!(used.head, head);
    assert_eq!(&d.read_bytes(addr, used.len as usize)[HDR..], &incoming[..]);

    // A device configured with another MAC is not the one that was saved.
    let mac = "06:00:00:00:00:01".parse().unwrap();
    let config = NetConfig {
        guest_mac: Some(mac),
        ..NetConfig::default()
    };
    let (mut other, ..) = device_with(config, features);
    other.transport().pause();
    let err = other.transport().restore_state(&state).unwrap_err();
    assert!(err.to_string().contains("guest_mac"), "{err}");
}

/// Frames read through the io_uring (a backend with a descriptor): a batch whose first read
/// finds a runt (dropped, counted) and whose second finds a frame moves that frame down into
/// the runt's chain, so the guest sees its chains used in order; what the last batch did not
/// fill goes back to the ring; tx goes through the ring too.
#[test]
fn batched_rx_moves_frames_past_a_dropped_one_and_gives_back_unused_chains() {
    if !io_uring_available(
        "batched_rx_moves_frames_past_a_dropped_one_and_gives_back_unused_chains",
    ) {
        return;
    }
    let tap = Arc::new(SocketTap::new());
    let (mut d, handle) = inline_device_on(tap.clone());
    let chains: Vec<(u16, GuestAddress)> = (0..4)
        .map(|_| post_rx(&mut d, RX_BUFFER_MIN as u32))
        .collect();
    let with_header = |payload: &[u8]| [&[0u8; HDR][..], payload].concat();
    let (a, b, c) = (frame(100, 1), frame(1514, 2), frame(60, 3));
    for datagram in [
        with_header(&a),
        vec![9; 5],
        with_header(&b),
        with_header(&c),
    ] {
        assert!(tap.inject(&datagram));
    }
    // Batches grow from one read: [a] fills its chain, [runt, b] moves b down, [c], then a
    // read that finds nothing gives its chain back.
    d.run_device();
    let used: Vec<(u16, u32)> = (0..3)
        .map(|_| {
            let u = d.wait_used().expect("rx completion");
            (u.head, u.len)
        })
        .collect();
    assert_eq!(
        used,
        [
            (chains[0].0, (HDR + a.len()) as u32),
            (chains[1].0, (HDR + b.len()) as u32),
            (chains[2].0, (HDR + c.len()) as u32),
        ]
    );
    for ((_, addr), payload) in chains.iter().zip([&a, &b, &c]) {
        let got = d.read_bytes(*addr, HDR + payload.len());
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers must be 1");
        assert_eq!(&got[HDR..], &payload[..]);
    }
    let metrics = handle.metrics();
    assert_eq!((metrics.rx_packets_count, metrics.rx_fails), (3, 1));
    assert_eq!(d.used_idx(), 3, "the fourth chain was used");
    // The fourth chain went back to the ring: the next frame lands in it.
    let e = frame(200, 4);
    assert!(tap.inject(&with_header(&e)));
    d.run_device();
    let u = d.wait_used().expect("rx completion");
    assert_eq!((u.head, u.len), (chains[3].0, (HDR + e.len()) as u32));
    // Transmit through the ring: byte-exact, in order.
    let sent: Vec<Vec<u8>> = (0..3).map(|i| frame(300 + i, i as u8)).collect();
    for payload in &sent {
        add_tx_chain(&mut d, payload);
    }
    d.kick();
    d.run_device();
    for payload in &sent {
        assert_eq!(
            tap.receive().expect("a frame on the TAP"),
            with_header(payload)
        );
    }
    assert_eq!(handle.metrics().tx_packets_count, 3);
}
