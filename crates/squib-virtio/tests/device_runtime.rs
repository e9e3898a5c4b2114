//! The shared device runtime, seen through virtio-blk: bounded reset and pause under a guest that
//! keeps its ring full, pause/resume, snapshot and restore of a live queue, and the virtio-mmio
//! conformance points a third-party driver relies on (several status bits in one write, stopping
//! a queue with QueueReady = 0).
#![forbid(unsafe_code)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use squib_virtio::GuestMemory;
use squib_virtio::block::backend::BackendError;
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::mmio::reg;
use squib_virtio::testing::{
    AVAIL_RING, BlockSlot, Buf, DiskAccess, DiskHook, GuestDriver, HookedDisk, MemDisk, USED_RING,
};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::{Bytes, GuestAddress};

const STATUS: u64 = reg::STATUS;
const NEEDS_RESET: u32 = 0x40;

/// Reads that take `delay`: a guest can keep its queue non-empty for as long as it likes.
#[derive(Debug)]
struct SlowReads {
    delay: Duration,
}

impl DiskHook for SlowReads {
    fn around(
        &self,
        access: DiskAccess<'_>,
        io: &mut dyn FnMut() -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        if let DiskAccess::Read { .. } = access {
            thread::sleep(self.delay);
        }
        io()
    }
}

/// Publishes `count` one-sector reads (without notifying); returns their slots.
fn queue_reads(driver: &mut GuestDriver, count: usize) -> Vec<BlockSlot> {
    (0..count)
        .map(|i| {
            let slot = BlockSlot::alloc(driver);
            let data = driver.alloc(512);
            slot.submit(
                driver,
                VIRTIO_BLK_T_IN,
                i as u64,
                &[Buf::writable(data, 512)],
            );
            slot
        })
        .collect()
}

/// Plays a guest that puts every completed chain straight back on the avail ring, until `stop`.
fn refeed(mem: GuestMemory, queue_size: u16, mut avail_idx: u16, stop: Arc<AtomicBool>) {
    let mut seen_used = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let used_idx: u16 = mem
            .load(GuestAddress(USED_RING + 2), Ordering::Acquire)
            .unwrap();
        while seen_used != used_idx {
            let slot = u64::from(seen_used % queue_size);
            let head: u32 = mem
                .read_obj(GuestAddress(USED_RING + 4 + 8 * slot))
                .unwrap();
            let avail_slot = u64::from(avail_idx % queue_size);
            mem.write_obj(head as u16, GuestAddress(AVAIL_RING + 4 + 2 * avail_slot))
                .unwrap();
            avail_idx = avail_idx.wrapping_add(1);
            fence(Ordering::SeqCst);
            mem.store(avail_idx, GuestAddress(AVAIL_RING + 2), Ordering::Release)
                .unwrap();
            seen_used = seen_used.wrapping_add(1);
        }
        thread::yield_now();
    }
}

/// A device on a slow disk with 128 reads in flight and a guest thread that keeps re-queueing
/// them: the ring never runs dry.
fn busy_guest() -> (GuestDriver, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let disk = Arc::new(HookedDisk::new(
        MemDisk::with_contents(pattern(DISK_SIZE), false),
        SlowReads {
            delay: Duration::from_micros(200),
        },
    ));
    let mut driver = driver_for(disk, CacheType::Writeback, ALL_RW & !F_EVENT_IDX);
    let queue_size = driver.read_reg(reg::QUEUE_NUM_MAX).min(256) as u16;
    queue_reads(&mut driver, 128);
    driver.kick();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (mem, stop) = (driver.mem().clone(), Arc::clone(&stop));
        thread::spawn(move || refeed(mem, queue_size, 128, stop))
    };
    // Let the worker get going.
    let start = driver.used_idx();
    while driver.used_idx().wrapping_sub(start) < 64 {
        thread::sleep(Duration::from_millis(1));
    }
    (driver, stop, feeder)
}

#[test]
fn reset_returns_promptly_while_the_guest_keeps_the_ring_full() {
    let (mut driver, stop, feeder) = busy_guest();
    let start = Instant::now();
    driver.write_reg(STATUS, 0);
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    assert!(
        took < Duration::from_secs(1),
        "reset took {took:?} under a guest keeping its ring full"
    );
    assert_eq!(driver.read_reg(STATUS), 0);
    // Nothing is served after the reset returned.
    let used = driver.used_idx();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.used_idx(), used, "the device served after reset");
}

#[test]
fn pause_returns_promptly_under_load_and_resume_serves_on() {
    let (mut driver, stop, feeder) = busy_guest();
    let start = Instant::now();
    driver.transport().pause();
    let took = start.elapsed();
    let used = driver.used_idx();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.used_idx(), used, "the device served while paused");
    assert!(took < Duration::from_secs(1), "pause took {took:?}");
    driver.transport().resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while driver.used_idx() == used && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    assert_ne!(driver.used_idx(), used, "no request served after resume");
}

#[test]
fn status_bits_may_be_added_several_at_a_time() {
    let device = BlockDevice::new(
        Arc::new(MemDisk::with_contents(pattern(DISK_SIZE), false)),
        BlockConfig::new(DRIVE_ID, CacheType::Writeback),
    )
    .unwrap();
    let mut driver = GuestDriver::new(Box::new(device), GUEST_MEM);
    // ACKNOWLEDGE | DRIVER in one write, as the virtio-drivers crate does.
    driver.write_reg(STATUS, 0x3);
    assert_eq!(driver.read_reg(STATUS), 0x3);
    driver.write_reg(reg::DRIVER_FEATURES_SEL, 0);
    driver.write_reg(reg::DRIVER_FEATURES, F_SEG_MAX as u32);
    driver.write_reg(reg::DRIVER_FEATURES_SEL, 1);
    driver.write_reg(reg::DRIVER_FEATURES, (F_VERSION_1 >> 32) as u32);
    driver.write_reg(STATUS, 0xb);
    assert_eq!(driver.read_reg(STATUS), 0xb);
    driver.setup_queue(64);
    driver.write_reg(STATUS, 0xf);
    assert_eq!(driver.read_reg(STATUS), 0xf, "DRIVER_OK not taken");
    let slot = queue_reads(&mut driver, 1)[0];
    driver.kick();
    assert!(driver.wait_used().is_some(), "the device never served");
    assert_eq!(slot.status(&driver), VIRTIO_BLK_S_OK as u8);
    // Skipping a step is still refused.
    let mut skipping = GuestDriver::new(
        Box::new(
            BlockDevice::new(
                Arc::new(MemDisk::new(DISK_SIZE)),
                BlockConfig::new(DRIVE_ID, CacheType::Writeback),
            )
            .unwrap(),
        ),
        GUEST_MEM,
    );
    skipping.write_reg(STATUS, 0x5);
    assert_eq!(
        skipping.read_reg(STATUS),
        0,
        "ACKNOWLEDGE|DRIVER_OK accepted"
    );
}

#[test]
fn queue_ready_zero_after_driver_ok_stops_the_queue() {
    let Rig { mut driver, .. } = rig();
    driver.write_reg(reg::QUEUE_SEL, 0);
    driver.write_reg(reg::QUEUE_READY, 0);
    assert_eq!(driver.read_reg(reg::QUEUE_READY), 0, "QueueReady reads 1");
    let used = driver.used_idx();
    queue_reads(&mut driver, 1);
    driver.kick();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(driver.used_idx(), used, "a stopped queue was served");
    assert_eq!(driver.read_reg(STATUS) & NEEDS_RESET, 0);
    // A reset and a fresh probe bring it back.
    driver.reprobe(ALL_RW);
    queue_reads(&mut driver, 1);
    driver.kick();
    assert!(driver.wait_used().is_some(), "not served after a reset");
}

#[test]
fn a_paused_device_saves_its_queue_and_a_fresh_transport_resumes_from_it() {
    let disk = Arc::new(MemDisk::with_contents(pattern(DISK_SIZE), false));
    let mut driver = driver_for(disk.clone(), CacheType::Writeback, ALL_RW);
    // Some traffic, so the saved progress is not the initial state.
    for _ in 0..3 {
        queue_reads(&mut driver, 1);
        driver.kick();
        assert!(driver.wait_used().is_some());
    }
    assert!(
        driver.transport().save_state().is_err(),
        "a running device was saved"
    );
    driver.transport().pause();
    let state = driver.transport().save_state().unwrap();
    assert_eq!(state.queues[0].next_avail, 3);
    assert_eq!(state.queues[0].next_used, 3);
    // A second process: same guest memory (as a memory file would give), a new transport.
    let device = BlockDevice::new(disk, BlockConfig::new(DRIVE_ID, CacheType::Writeback)).unwrap();
    let mut restored =
        squib_virtio::mmio::MmioTransport::new(Box::new(device), driver.mem().clone()).unwrap();
    restored.restore_state(&state).unwrap();
    assert_eq!(restored.status(), state.status);
    restored.resume().unwrap();
    // The guest goes on where it stopped: a new request on the restored device is served.
    let slot = BlockSlot::alloc(&mut driver);
    let data = driver.alloc(512);
    slot.submit(&mut driver, VIRTIO_BLK_T_IN, 1, &[Buf::writable(data, 512)]);
    driver.publish_avail_idx(4);
    restored.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    while driver.used_idx() != 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(driver.used_idx(), 4, "the restored device did not serve");
    assert_eq!(slot.status(&driver), VIRTIO_BLK_S_OK as u8);
    assert_eq!(driver.read_bytes(data, 512), pattern(DISK_SIZE)[512..1024]);
}

#[test]
fn a_snapshot_that_does_not_fit_is_refused_without_changing_the_device() {
    let mut driver = driver_for(
        Arc::new(MemDisk::new(DISK_SIZE)),
        CacheType::Writeback,
        ALL_RW,
    );
    driver.transport().pause();
    let good = driver.transport().save_state().unwrap();
    let fresh = || {
        let device = BlockDevice::new(
            Arc::new(MemDisk::new(DISK_SIZE)),
            BlockConfig::new(DRIVE_ID, CacheType::Writeback),
        )
        .unwrap();
        squib_virtio::mmio::MmioTransport::new(Box::new(device), driver.mem().clone()).unwrap()
    };
    let mut wrong_type = good.clone();
    wrong_type.device_type = 1;
    let mut rings_outside = good.clone();
    rings_outside.queues[0].desc_table = 1 << 40;
    let mut unoffered = good.clone();
    unoffered.acked_features |= 1 << 50;
    for (what, state) in [
        ("device type", wrong_type),
        ("rings outside memory", rings_outside),
        ("unoffered features", unoffered),
    ] {
        let mut transport = fresh();
        assert!(transport.restore_state(&state).is_err(), "{what} accepted");
        assert_eq!(transport.status(), 0, "{what}: half-restored");
    }
}

/// `GuestDriver::inline` (what the fuzz targets use): the worker runs on the caller's thread and
/// only when notified, with the same dispatch as a thread — requests complete during the
/// notification, and a broken ring still ends in DEVICE_NEEDS_RESET and a clean reset.
#[test]
fn an_inline_worker_serves_on_notification_only_and_breaks_like_a_thread() {
    let contents: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let disk = Arc::new(MemDisk::with_contents(contents.clone(), false));
    let device = BlockDevice::new(disk, BlockConfig::new("inline", CacheType::Writeback)).unwrap();
    let mut d = GuestDriver::inline(Box::new(device), 1 << 20);
    assert!(d.negotiate(squib_virtio::device::FEATURE_VERSION_1));
    d.setup_queue(16);
    d.set_status_bit(0x04);
    let slot = BlockSlot::alloc(&mut d);
    let data = d.alloc(512);
    slot.submit(&mut d, VIRTIO_BLK_T_IN, 1, &[Buf::writable(data, 512)]);
    d.publish_avail_idx(1);
    // Published but not notified: nothing runs behind the driver's back.
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        d.used_idx(),
        0,
        "an inline worker served without a notification"
    );
    d.notify();
    assert_eq!(
        d.used_idx(),
        1,
        "the notification did not serve the request"
    );
    assert_eq!(slot.status(&d), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.read_bytes(data, 512), contents[512..1024]);
    // An avail index more than the queue size ahead is a broken ring.
    d.publish_avail_idx(1 + 100);
    d.notify();
    assert_ne!(
        d.read_reg(STATUS) & NEEDS_RESET,
        0,
        "a broken ring did not ask for a reset"
    );
    d.write_reg(STATUS, 0);
    assert_eq!(d.read_reg(STATUS), 0);
}
