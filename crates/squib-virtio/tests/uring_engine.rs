//! The io_uring executor with requests held in flight by the kernel: the backend's ring file is
//! the read end of a pipe, so a read submitted to the ring completes only when the test writes
//! bytes into the pipe. Proves that requests in the ring do not hold up the worker, that a full
//! ring leaves requests on the avail ring (back-pressure), that a FLUSH waits for the requests
//! in the ring, and that a reset with requests in the ring cancels them, returns, leaves the used
//! ring alone, and the device serves again.
#![forbid(unsafe_code)]

mod common;

use std::fs::File;
use std::io::{PipeWriter, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use squib_virtio::block::backend::UringTarget;
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::mmio::reg::STATUS;
use squib_virtio::testing::{BlockSlot, Buf, DiskHook, GuestDriver, HookedDisk, MemDisk};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
};
use vm_memory::GuestAddress;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
/// How long the test gives the worker to (wrongly) complete a request it must hold back.
const SETTLE: Duration = Duration::from_millis(100);
const READ_LEN: usize = 512;

/// An io_uring file that is a pipe: ring reads wait for the test's bytes; anything off the
/// ring (writes to a pipe's read end fail there, fsync on a pipe too) falls back to the
/// `MemDisk`.
#[derive(Debug)]
struct PipeRing {
    pipe: File,
    slots: u16,
}

impl DiskHook for PipeRing {
    fn uring_target(&self) -> Option<UringTarget<'_>> {
        Some(UringTarget {
            file: &self.pipe,
            direct: None,
            slots: self.slots,
            fixed_buffers: false,
            simulate_unavailable: false,
        })
    }
}

/// A `MemDisk` whose io_uring file is a pipe, and the pipe's write end.
fn pipe_disk(slots: u16) -> (Arc<HookedDisk<PipeRing>>, PipeWriter) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let ring = PipeRing {
        pipe: File::from(OwnedFd::from(reader)),
        slots,
    };
    let disk = MemDisk::with_contents(pattern(DISK_SIZE), false);
    (Arc::new(HookedDisk::new(disk, ring)), writer)
}

/// Queues a 512-byte read (not yet published); returns its head, slot and buffer.
fn queue_read(driver: &mut GuestDriver, sector: u64) -> (u16, BlockSlot, GuestAddress) {
    let slot = BlockSlot::alloc(driver);
    let data = driver.alloc(READ_LEN as u32);
    let head = slot.submit(
        driver,
        VIRTIO_BLK_T_IN,
        sector,
        &[Buf::writable(data, READ_LEN as u32)],
    );
    (head, slot, data)
}

/// Queues a GET_ID, which completes without touching the disk.
fn queue_get_id(driver: &mut GuestDriver) -> (u16, BlockSlot) {
    let slot = BlockSlot::alloc(driver);
    let id = driver.alloc(20);
    let head = slot.submit(driver, VIRTIO_BLK_T_GET_ID, 0, &[Buf::writable(id, 20)]);
    (head, slot)
}

/// Lets one ring read complete with `byte` as its data.
fn feed(pipe: &mut PipeWriter, byte: u8) {
    pipe.write_all(&[byte; READ_LEN]).expect("feed the pipe");
}

#[test]
fn reads_in_the_ring_do_not_hold_up_the_worker() {
    let (disk, mut pipe) = pipe_disk(8);
    let mut driver = driver_for(disk, CacheType::Writeback, ALL_RW);
    let reads: Vec<_> = (0..4).map(|i| queue_read(&mut driver, i)).collect();
    let (id_head, id_slot) = queue_get_id(&mut driver);
    driver.kick();
    // Four reads wait in the kernel; the GET_ID behind them completes meanwhile.
    let used = driver.wait_used().expect("the GET_ID waited for the reads");
    assert_eq!(used.head, id_head);
    assert_eq!(id_slot.status(&driver), OK);
    for (i, _) in reads.iter().enumerate() {
        feed(&mut pipe, 0xa0 + i as u8);
    }
    let mut seen = Vec::new();
    for _ in &reads {
        seen.push(
            driver
                .wait_used()
                .expect("a ring read never completed")
                .head,
        );
    }
    for (head, slot, data) in &reads {
        assert!(seen.contains(head));
        assert_eq!(slot.status(&driver), OK);
        let bytes = driver.read_bytes(*data, READ_LEN);
        assert!(
            bytes.iter().all(|&b| b == bytes[0]) && (0xa0..0xa4).contains(&bytes[0]),
            "a read did not come from the ring's file"
        );
    }
}

#[test]
fn a_full_ring_leaves_requests_on_the_avail_ring() {
    let (disk, mut pipe) = pipe_disk(2);
    let mut driver = driver_for(disk, CacheType::Writeback, ALL_RW);
    queue_read(&mut driver, 0);
    queue_read(&mut driver, 1);
    let (id_head, id_slot) = queue_get_id(&mut driver);
    driver.kick();
    // Both slots busy: the GET_ID must stay on the avail ring, although it needs no slot.
    thread::sleep(SETTLE);
    assert_eq!(driver.used_idx(), 0, "a request went past a full ring");
    // One read completes: its slot frees, and the worker pops the GET_ID.
    feed(&mut pipe, 1);
    let mut heads = vec![driver.wait_used().expect("no read completed").head];
    heads.push(driver.wait_used().expect("the GET_ID stayed stuck").head);
    assert!(heads.contains(&id_head));
    assert_eq!(id_slot.status(&driver), OK);
    feed(&mut pipe, 2);
    driver.wait_used().expect("the second read never completed");
    assert_eq!(driver.used_idx(), 3);
}

#[test]
fn a_flush_waits_for_the_requests_in_the_ring() {
    let (disk, mut pipe) = pipe_disk(8);
    let mut driver = driver_for(disk, CacheType::Writeback, ALL_RW);
    let (read_head, _, _) = queue_read(&mut driver, 0);
    let flush = BlockSlot::alloc(&mut driver);
    let flush_head = flush.submit(&mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]);
    driver.kick();
    thread::sleep(SETTLE);
    assert_eq!(
        driver.used_idx(),
        0,
        "the flush overtook the read in the ring"
    );
    feed(&mut pipe, 7);
    assert_eq!(driver.wait_used().expect("read").head, read_head);
    assert_eq!(driver.wait_used().expect("flush").head, flush_head);
    assert_eq!(flush.status(&driver), OK);
}

#[test]
fn a_reset_with_requests_in_the_ring_cancels_them_and_the_device_serves_again() {
    let (disk, mut pipe) = pipe_disk(8);
    let mut driver = driver_for(disk, CacheType::Writeback, ALL_RW);
    let reads: Vec<_> = (0..3).map(|i| queue_read(&mut driver, i)).collect();
    let (id_head, _) = queue_get_id(&mut driver);
    driver.kick();
    // The GET_ID completing means the worker has popped (and submitted) the reads before it.
    assert_eq!(driver.wait_used().expect("GET_ID").head, id_head);
    let started = Instant::now();
    // Nothing will ever feed these reads: the reset must cancel them rather than wait.
    driver.write_reg(STATUS, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the reset waited for reads that never complete"
    );
    assert_eq!(
        driver.used_idx(),
        1,
        "completions reached the ring after the reset"
    );
    for (_, slot, _) in &reads {
        assert_eq!(
            slot.status(&driver),
            squib_virtio::testing::STATUS_UNTOUCHED,
            "a cancelled read wrote its status"
        );
    }

    driver.reprobe(ALL_RW);
    let (head, slot, data) = queue_read(&mut driver, 16);
    driver.kick();
    feed(&mut pipe, 0x42);
    let used = driver.wait_used().expect("no service after the reset");
    assert_eq!(used.head, head);
    assert_eq!(slot.status(&driver), OK);
    assert_eq!(driver.read_bytes(data, READ_LEN), [0x42; READ_LEN]);
}

/// A swapped-in backend is served by a ring on its own file, and the old backend's file is
/// closed once the requests on it are done: a ring left bound to the old file would serve the
/// new disk off the ring (from its `MemDisk`, at once) and keep the old file open.
#[test]
fn a_swapped_backend_gets_a_ring_of_its_own_and_the_old_file_is_closed() {
    let (old, mut old_pipe) = pipe_disk(8);
    let device = BlockDevice::new(old, BlockConfig::new(DRIVE_ID, CacheType::Writeback)).unwrap();
    let handle = device.handle();
    let mut driver = GuestDriver::activated(Box::new(device), GUEST_MEM, ALL_RW);
    let (head, _, data) = queue_read(&mut driver, 0);
    driver.kick();
    feed(&mut old_pipe, 0x11);
    assert_eq!(driver.wait_used().expect("read on the old disk").head, head);
    assert_eq!(driver.read_bytes(data, READ_LEN), [0x11; READ_LEN]);

    let (new, mut new_pipe) = pipe_disk(8);
    handle.swap_backend(new).unwrap();
    let (head, slot, data) = queue_read(&mut driver, 1);
    driver.kick();
    thread::sleep(SETTLE);
    assert_eq!(
        driver.used_idx(),
        1,
        "the read after the swap did not go to the new disk's ring"
    );
    feed(&mut new_pipe, 0x22);
    assert_eq!(driver.wait_used().expect("read on the new disk").head, head);
    assert_eq!(slot.status(&driver), OK);
    assert_eq!(driver.read_bytes(data, READ_LEN), [0x22; READ_LEN]);

    let error = old_pipe
        .write_all(&[0; READ_LEN])
        .expect_err("the old disk's file is still open (by its ring)");
    assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
}
