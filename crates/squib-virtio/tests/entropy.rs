//! virtio-rng driven like a guest: random bytes land in writable buffers and differ between
//! requests, hostile chains (device-readable buffers, zero length, memory outside the guest's,
//! huge lengths) complete short and are counted without stopping the queue, and the rate limiter
//! holds the byte rate.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use squib_virtio::device::FEATURE_VERSION_1;
use squib_virtio::rate_limiter::{BucketSpec, RateLimiterSpec};
use squib_virtio::rng::{RngConfig, RngDevice, RngMetrics};
use squib_virtio::testing::{Buf, GuestDriver};
use vm_memory::GuestAddress;

const GUEST_MEM: usize = 4 << 20;

fn rig(config: RngConfig) -> (GuestDriver, Arc<RngMetrics>) {
    let device = RngDevice::new(config).unwrap();
    let metrics = device.metrics();
    let driver = GuestDriver::activated(Box::new(device), GUEST_MEM, FEATURE_VERSION_1);
    (driver, metrics)
}

fn request(driver: &mut GuestDriver, bufs: &[Buf]) -> u32 {
    let head = driver.add_chain(bufs.iter().copied());
    driver.kick();
    let used = driver
        .wait_used()
        .expect("the device completed the request");
    assert_eq!(used.head, head);
    used.len
}

#[test]
fn random_bytes_fill_every_writable_buffer_and_differ_between_requests() {
    let (mut driver, metrics) = rig(RngConfig::default());
    let a = driver.alloc(300);
    let b = driver.alloc(200);
    driver.write_bytes(a, &[0; 300]);
    assert_eq!(
        request(
            &mut driver,
            &[
                Buf::writable(a, 100),
                Buf::writable(GuestAddress(a.0 + 100), 200)
            ]
        ),
        300
    );
    let first = driver.read_bytes(a, 300);
    assert_eq!(request(&mut driver, &[Buf::writable(b, 200)]), 200);
    let second = driver.read_bytes(b, 200);
    assert_ne!(&first[..200], &second[..]);
    // 300 zero bytes surviving a fill has probability 2^-2400.
    assert!(first[200..].iter().any(|&byte| byte != 0));
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.entropy_event_count, 2);
    assert_eq!(snapshot.entropy_bytes, 500);
    assert_eq!(snapshot.entropy_event_fails, 0);
}

#[test]
fn hostile_chains_complete_short_are_counted_and_the_queue_serves_on() {
    let (mut driver, metrics) = rig(RngConfig::default());
    let buf = driver.alloc(4096);
    let readable = Buf::readable(buf, 64);
    // A device-readable buffer, alone or before a writable one: nothing is written.
    driver.write_bytes(buf, &[0xAA; 64]);
    assert_eq!(request(&mut driver, &[readable]), 0);
    assert_eq!(request(&mut driver, &[Buf::writable(buf, 64), readable]), 0);
    assert_eq!(driver.read_bytes(buf, 64), vec![0xAA; 64]);
    // Memory outside the guest's.
    let outside = GuestAddress(GUEST_MEM as u64 - 16);
    assert_eq!(request(&mut driver, &[Buf::writable(outside, 64)]), 0);
    assert_eq!(
        request(
            &mut driver,
            &[Buf::writable(GuestAddress(u64::MAX - 8), 64)]
        ),
        0
    );
    assert_eq!(metrics.snapshot().entropy_event_fails, 4);
    // Zero length: served, nothing written.
    assert_eq!(request(&mut driver, &[Buf::writable(buf, 0)]), 0);
    // A huge claim is capped: the used length says what was filled.
    let big = driver.alloc(1 << 20);
    let used = request(&mut driver, &[Buf::writable(big, 1 << 20)]);
    assert_eq!(used, 64 << 10);
    // The queue still works.
    assert_eq!(request(&mut driver, &[Buf::writable(buf, 32)]), 32);
}

#[test]
fn randomized_chains_never_stop_the_queue() {
    let (mut driver, metrics) = rig(RngConfig::default());
    let base = driver.alloc(1 << 16);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..500 {
        let count = 1 + (next() % 4) as usize;
        let bufs: Vec<Buf> = (0..count)
            .map(|_| {
                let r = next();
                let addr = match r % 5 {
                    0 => GuestAddress(r >> 8),
                    _ => GuestAddress(base.0 + (r >> 16) % (1 << 16)),
                };
                let len = (next() % 70_000) as u32;
                if r % 7 == 0 {
                    Buf::readable(addr, len)
                } else {
                    Buf::writable(addr, len)
                }
            })
            .collect();
        let used = request(&mut driver, &bufs);
        assert!(used <= 64 << 10);
    }
    assert_eq!(
        metrics.snapshot().entropy_event_count + metrics.snapshot().entropy_event_fails,
        500
    );
}

#[test]
fn the_rate_limiter_holds_the_byte_rate() {
    // 4 KiB per 100 ms: 16 requests of 1 KiB, the first 4 from the full bucket, take >= 1.2 s.
    let spec = RateLimiterSpec {
        bandwidth: Some(BucketSpec {
            size: 4096,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    };
    let (mut driver, metrics) = rig(RngConfig {
        rate_limiter: Some(spec),
    });
    let buf = driver.alloc(1024);
    let start = Instant::now();
    for _ in 0..16 {
        assert_eq!(request(&mut driver, &[Buf::writable(buf, 1024)]), 1024);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(280),
        "16 KiB at 40 KiB/s took only {elapsed:?}"
    );
    let snapshot = metrics.snapshot();
    assert!(snapshot.entropy_rate_limiter_throttled > 0);
    assert!(snapshot.rate_limiter_event_count > 0);
}

#[test]
fn pause_save_and_resume_keep_serving() {
    let (mut driver, metrics) = rig(RngConfig::default());
    let buf = driver.alloc(64);
    assert_eq!(request(&mut driver, &[Buf::writable(buf, 64)]), 64);
    driver.transport().pause();
    let state = driver.transport().save_state().unwrap();
    assert_eq!(state.device, squib_virtio::persist::DeviceState::Entropy);
    driver.transport().resume().unwrap();
    assert_eq!(request(&mut driver, &[Buf::writable(buf, 64)]), 64);
    assert_eq!(metrics.snapshot().entropy_event_count, 2);
}
