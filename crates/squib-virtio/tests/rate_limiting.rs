//! The rate limiter in the virtio-blk data path, driven like a guest: a saturated queue completes
//! requests at the configured rate (±10% over ~2 s, the initial bucket included), a throttled
//! queue still completes everything, in order, and survives a reset, and runtime updates apply
//! at once, even while the worker waits on a long timer.
#![forbid(unsafe_code)]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::mmio::reg::STATUS;
use squib_virtio::rate_limiter::{BucketSpec, RateLimiterSpec};
use squib_virtio::testing::{BlockSlot, Buf, GuestDriver, MemDisk};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::GuestAddress;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const NEEDS_RESET: u32 = 0x40;

fn bucket(size: u64, refill_time_ms: u64) -> BucketSpec {
    BucketSpec {
        size,
        one_time_burst: 0,
        refill_time_ms,
    }
}

fn ops(size: u64, refill_time_ms: u64) -> RateLimiterSpec {
    RateLimiterSpec {
        bandwidth: None,
        ops: Some(bucket(size, refill_time_ms)),
    }
}

/// A writeback device on a patterned disk, throttled by `limiter`, every feature accepted.
fn limited_rig(limiter: Option<RateLimiterSpec>) -> Rig {
    let disk = Arc::new(MemDisk::with_contents(pattern(DISK_SIZE), false));
    let mut config = BlockConfig::new(DRIVE_ID, CacheType::Writeback);
    config.rate_limiter = limiter;
    let device = BlockDevice::new(disk.clone(), config).unwrap();
    let handle = device.handle();
    let driver = GuestDriver::activated(Box::new(device), GUEST_MEM, ALL_RW);
    Rig {
        driver,
        disk,
        handle,
    }
}

/// One reusable request: header/status memory and a data buffer.
struct Slot {
    block: BlockSlot,
    data: GuestAddress,
}

/// Keeps a queue saturated with reads of `len` bytes, as a guest doing streaming I/O would.
struct Pump {
    slots: Vec<Slot>,
    len: u32,
    /// (head descriptor, slot) in submission order: the worker completes in order.
    in_flight: VecDeque<(u16, usize)>,
}

impl Pump {
    fn new(driver: &mut GuestDriver, depth: usize, len: u32) -> Self {
        let slots = (0..depth)
            .map(|_| Slot {
                block: BlockSlot::alloc(driver),
                data: driver.alloc(len),
            })
            .collect();
        let mut pump = Self {
            slots,
            len,
            in_flight: VecDeque::new(),
        };
        for index in 0..depth {
            pump.submit(driver, index);
        }
        driver.kick();
        pump
    }

    fn submit(&mut self, driver: &mut GuestDriver, index: usize) {
        let slot = &self.slots[index];
        let sector = index as u64 * u64::from(self.len) / 512;
        let head = slot.block.submit(
            driver,
            VIRTIO_BLK_T_IN,
            sector,
            &[Buf::writable(slot.data, self.len)],
        );
        self.in_flight.push_back((head, index));
    }

    /// Completes and resubmits requests for `duration`; returns how many completed and the time
    /// actually taken (up to the last completion counted).
    fn run_for(&mut self, driver: &mut GuestDriver, duration: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut completed = 0;
        while start.elapsed() < duration {
            let used = driver
                .wait_used()
                .expect("a throttled request never completed");
            let (head, index) = self.in_flight.pop_front().unwrap();
            assert_eq!(used.head, head, "completed out of order");
            assert_eq!(self.slots[index].block.status(driver), OK);
            completed += 1;
            self.submit(driver, index);
            driver.kick();
        }
        (completed, start.elapsed())
    }
}

fn assert_within_ten_percent(what: &str, got: f64, expected: f64) {
    assert!(
        (got - expected).abs() <= expected * 0.10,
        "{what}: got {got:.0}, expected {expected:.0} ±10%"
    );
}

#[test]
fn ops_bucket_holds_its_rate_within_ten_percent() {
    // 20 operations per 100 ms: 200 ops/s, starting with a full bucket of 20.
    let mut rig = limited_rig(Some(ops(20, 100)));
    let mut pump = Pump::new(&mut rig.driver, 16, 512);
    let (completed, elapsed) = pump.run_for(&mut rig.driver, Duration::from_secs(2));
    let expected = 20.0 + 200.0 * elapsed.as_secs_f64();
    assert_within_ten_percent("operations", completed as f64, expected);
    assert!(rig.handle.metrics().rate_limiter_throttled > 0);
}

#[test]
fn bandwidth_bucket_holds_its_rate_within_ten_percent() {
    // 100 KiB per 100 ms: 1000 KiB/s of 4 KiB reads (250 requests/s), starting with 100 KiB.
    let spec = RateLimiterSpec {
        bandwidth: Some(bucket(100 << 10, 100)),
        ops: None,
    };
    let mut rig = limited_rig(Some(spec));
    let mut pump = Pump::new(&mut rig.driver, 16, 4096);
    let (completed, elapsed) = pump.run_for(&mut rig.driver, Duration::from_secs(2));
    let expected = f64::from(100 << 10) * (1.0 + 10.0 * elapsed.as_secs_f64());
    assert_within_ten_percent("bytes", (completed * 4096) as f64, expected);
    let m = rig.handle.metrics();
    assert!(m.read_bytes >= completed * 4096);
    assert!(m.rate_limiter_throttled > 0);
}

#[test]
fn throttled_queue_completes_every_request_in_order_with_the_right_data() {
    // 5 operations per 100 ms: 30 requests need at least (30 - 5) / 50 s = 0.5 s.
    let mut rig = limited_rig(Some(ops(5, 100)));
    let start = Instant::now();
    let slots: Vec<_> = (0..30u64)
        .map(|i| {
            let slot = BlockSlot::alloc(&mut rig.driver);
            let data = rig.driver.alloc(512);
            let head = slot.submit(
                &mut rig.driver,
                VIRTIO_BLK_T_IN,
                i,
                &[Buf::writable(data, 512)],
            );
            (head, slot, data, i)
        })
        .collect();
    rig.driver.kick();
    let disk = rig.disk.contents();
    for (head, slot, data, sector) in &slots {
        let used = rig
            .driver
            .wait_used()
            .expect("a throttled request was lost");
        assert_eq!(used.head, *head);
        assert_eq!(slot.status(&rig.driver), OK);
        let at = *sector as usize * 512;
        assert_eq!(rig.driver.read_bytes(*data, 512), disk[at..at + 512]);
    }
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "30 requests at 50/s finished in {:?}: not throttled",
        start.elapsed()
    );
    assert!(rig.handle.metrics().rate_limiter_throttled >= 1);
}

#[test]
fn request_larger_than_the_bucket_passes_and_its_excess_is_repaid() {
    // 8 KiB per 100 ms (80 KiB/s). A 32 KiB write can never fit: Firecracker lets such a request
    // through; squib does too (once the bucket is full) and charges the 24 KiB excess as a debt.
    let spec = RateLimiterSpec {
        bandwidth: Some(bucket(8 << 10, 100)),
        ops: None,
    };
    let mut rig = limited_rig(Some(spec));
    let big = rig.driver.alloc(32 << 10);
    rig.driver.write_bytes(big, &[0x5a; 32 << 10]);
    let small = rig.driver.alloc(512);
    let (write, read) = (
        BlockSlot::alloc(&mut rig.driver),
        BlockSlot::alloc(&mut rig.driver),
    );
    let start = Instant::now();
    let write_head = write.submit(
        &mut rig.driver,
        VIRTIO_BLK_T_OUT,
        0,
        &[Buf::readable(big, 32 << 10)],
    );
    let read_head = read.submit(
        &mut rig.driver,
        VIRTIO_BLK_T_IN,
        100,
        &[Buf::writable(small, 512)],
    );
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().map(|u| u.head), Some(write_head));
    assert_eq!(write.status(&rig.driver), OK);
    assert!(rig.disk.contents()[..32 << 10].iter().all(|&b| b == 0x5a));
    // The next 512 bytes wait for the debt and themselves: 24.5 KiB at 80 KiB/s ≈ 306 ms.
    assert_eq!(rig.driver.wait_used().map(|u| u.head), Some(read_head));
    assert_eq!(read.status(&rig.driver), OK);
    assert!(
        start.elapsed() >= Duration::from_millis(280),
        "the oversize request's excess was not charged ({:?})",
        start.elapsed()
    );
}

#[test]
fn reset_while_throttled_is_prompt_and_keeps_the_buckets() {
    // One operation per second: after the first request the worker waits on a ~1 s timer.
    let mut rig = limited_rig(Some(ops(1, 1000)));
    let start = Instant::now();
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    for sector in 0..3 {
        slot.submit(
            &mut rig.driver,
            VIRTIO_BLK_T_IN,
            sector,
            &[Buf::writable(data, 512)],
        );
    }
    rig.driver.kick();
    assert!(rig.driver.wait_used().is_some());
    thread::sleep(Duration::from_millis(50));
    assert!(
        rig.driver.pop_used().is_none(),
        "the limiter let a request through"
    );

    let reset = Instant::now();
    rig.driver.reprobe(ALL_RW);
    assert!(
        reset.elapsed() < Duration::from_millis(500),
        "reset waited {:?} for a throttled worker",
        reset.elapsed()
    );
    assert_eq!(rig.driver.read_reg(STATUS) & NEEDS_RESET, 0);

    // The reset did not refill the bucket: the next request still waits for the refill.
    let head = slot.submit(
        &mut rig.driver,
        VIRTIO_BLK_T_IN,
        1,
        &[Buf::writable(data, 512)],
    );
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().map(|u| u.head), Some(head));
    assert_eq!(slot.status(&rig.driver), OK);
    assert_eq!(
        rig.driver.read_bytes(data, 512),
        rig.disk.contents()[512..1024]
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the reset refilled the bucket ({:?})",
        start.elapsed()
    );
}

#[test]
fn runtime_update_raises_the_rate() {
    // 2 operations per 100 ms (20/s), then 40 per 100 ms (400/s).
    let mut rig = limited_rig(Some(ops(2, 100)));
    let mut pump = Pump::new(&mut rig.driver, 16, 512);
    let window = Duration::from_millis(500);
    let (slow, slow_elapsed) = pump.run_for(&mut rig.driver, window);
    rig.handle.update_rate_limiter(ops(40, 100)).unwrap();
    let (fast, fast_elapsed) = pump.run_for(&mut rig.driver, window);
    let slow_limit = 2.0 + 20.0 * slow_elapsed.as_secs_f64();
    assert!(
        slow as f64 <= slow_limit * 1.1,
        "{slow} before the update, at most {slow_limit:.0} allowed"
    );
    // The new bucket starts full: 40 plus 400/s.
    let fast_expected = 40.0 + 400.0 * fast_elapsed.as_secs_f64();
    assert!(
        fast as f64 >= fast_expected * 0.8,
        "{fast} after the update, about {fast_expected:.0} expected"
    );
}

#[test]
fn update_adds_a_limiter_and_removing_it_releases_a_waiting_request_at_once() {
    let mut rig = limited_rig(None);
    // One operation per 10 s: the second request would wait ~10 s for the timer.
    rig.handle.update_rate_limiter(ops(1, 10_000)).unwrap();
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    for sector in 0..2 {
        slot.submit(
            &mut rig.driver,
            VIRTIO_BLK_T_IN,
            sector,
            &[Buf::writable(data, 512)],
        );
    }
    rig.driver.kick();
    assert!(rig.driver.wait_used().is_some());
    thread::sleep(Duration::from_millis(200));
    assert!(
        rig.driver.pop_used().is_none(),
        "the added limiter did not throttle"
    );

    let removed = Instant::now();
    rig.handle.update_rate_limiter(ops(0, 0)).unwrap();
    assert!(rig.driver.wait_used().is_some());
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "the update waited for the old timer ({:?})",
        removed.elapsed()
    );
    assert_eq!(rig.handle.metrics().rate_limiter_throttled, 1);
}

#[test]
fn update_with_an_unrepresentable_bucket_is_refused() {
    let rig = limited_rig(None);
    assert!(rig.handle.update_rate_limiter(ops(1, u64::MAX)).is_err());
    let mut config = BlockConfig::new(DRIVE_ID, CacheType::Unsafe);
    config.rate_limiter = Some(ops(1, u64::MAX));
    let disk = Arc::new(MemDisk::new(DISK_SIZE));
    assert!(BlockDevice::new(disk, config).is_err());
}
