//! Several requests in flight on one device: with a backend that asks for concurrency
//! (`BlockBackend::concurrent_io`), requests really overlap on the host, never more of them than
//! asked; a FLUSH waits for the writes in flight; and a reset with requests in flight returns only
//! once they are done, leaves the used ring alone, and the device serves again afterwards.
#![forbid(unsafe_code)]

mod common;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use squib_virtio::block::CacheType;
use squib_virtio::block::backend::BackendError;
use squib_virtio::mmio::reg::STATUS;
use squib_virtio::testing::{
    BlockSlot, Buf, DiskAccess, DiskHook, GuestDriver, HookedDisk, MemDisk,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestAddress;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
/// How long a gated request waits before the test calls it stuck.
const PATIENCE: Duration = Duration::from_secs(5);

/// What the gate has seen.
#[derive(Debug, Default)]
struct GateState {
    /// Reads and writes inside the backend now.
    active: usize,
    /// The most that were inside at once.
    max_active: usize,
    /// Reads and writes that left the backend.
    finished: usize,
    /// Set by the test to let every request through.
    open: bool,
    /// A request gave up waiting: the device did not keep enough in flight.
    timed_out: bool,
    /// `write` and `flush`, in the order they finished.
    log: Vec<&'static str>,
}

/// Holds reads and writes until `release_at` of them are inside the disk at once (or the test
/// opens it), so they can only all finish if the device overlaps them.
#[derive(Debug)]
struct Gate {
    concurrency: usize,
    release_at: usize,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// A `MemDisk` behind a [`Gate`].
type GateDisk = HookedDisk<Gate>;

fn gate_disk(concurrency: usize, release_at: usize) -> Arc<GateDisk> {
    let gate = Gate {
        concurrency,
        release_at,
        state: Mutex::new(GateState::default()),
        changed: Condvar::new(),
    };
    Arc::new(HookedDisk::new(
        MemDisk::with_contents(pattern(DISK_SIZE), false),
        gate,
    ))
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) {
        self.state().open = true;
        self.changed.notify_all();
    }

    /// Waits until `count` requests are inside the backend at once.
    fn wait_active(&self, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        let mut state = self.state();
        while state.active < count {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} requests in flight", state.active);
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `io` once the gate lets this request through.
    fn gated(
        &self,
        what: &'static str,
        io: &mut dyn FnMut() -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + PATIENCE;
        let mut state = self.state();
        state.active += 1;
        state.max_active = state.max_active.max(state.active);
        self.changed.notify_all();
        while !state.open && state.max_active < self.release_at {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.timed_out = true;
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(state);
        let result = io();
        let mut state = self.state();
        state.active -= 1;
        state.finished += 1;
        state.log.push(what);
        self.changed.notify_all();
        result
    }
}

impl DiskHook for Gate {
    fn around(
        &self,
        access: DiskAccess<'_>,
        io: &mut dyn FnMut() -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        match access {
            DiskAccess::Read { .. } => self.gated("read", io),
            DiskAccess::Write { .. } => self.gated("write", io),
            DiskAccess::Flush => {
                self.state().log.push("flush");
                io()
            }
            DiskAccess::Discard { .. } | DiskAccess::WriteZeroes { .. } => io(),
        }
    }

    fn concurrent_io(&self) -> usize {
        self.concurrency
    }
}

/// Queues a 4 KiB read of sector `sector` (not yet published); returns its head, slot and buffer.
fn queue_read(driver: &mut GuestDriver, sector: u64) -> (u16, BlockSlot, GuestAddress) {
    let slot = BlockSlot::alloc(driver);
    let data = driver.alloc(4096);
    let head = slot.submit(
        driver,
        VIRTIO_BLK_T_IN,
        sector,
        &[Buf::writable(data, 4096)],
    );
    (head, slot, data)
}

#[test]
fn reads_overlap_up_to_the_backends_concurrency() {
    const CONCURRENCY: usize = 4;
    let disk = gate_disk(CONCURRENCY, CONCURRENCY);
    let mut driver = driver_for(disk.clone(), CacheType::Writeback, ALL_RW);
    // Twice the concurrency: the second half can only start once the first has overlapped.
    let reads: Vec<_> = (0..2 * CONCURRENCY as u64)
        .map(|i| queue_read(&mut driver, i * 8))
        .collect();
    driver.kick();
    let mut done = Vec::new();
    for _ in &reads {
        let used = driver.wait_used().expect("a read never completed");
        done.push(used.head);
    }
    let state = disk.hook().state();
    assert!(!state.timed_out, "reads ran one after the other");
    assert_eq!(
        state.max_active, CONCURRENCY,
        "never more in flight than asked"
    );
    drop(state);
    let expected = pattern(DISK_SIZE);
    for (i, (head, slot, data)) in reads.iter().enumerate() {
        assert!(done.contains(head));
        assert_eq!(slot.status(&driver), OK);
        let at = i * 8 * 512;
        assert_eq!(driver.read_bytes(*data, 4096), expected[at..at + 4096]);
    }
}

#[test]
fn a_flush_waits_for_the_writes_in_flight() {
    // The gate stays shut until the test opens it: the writes are held in flight.
    let disk = gate_disk(4, usize::MAX);
    let mut driver = driver_for(disk.clone(), CacheType::Writeback, ALL_RW);
    let payload = vec![0x5a; 4096];
    let mut heads = Vec::new();
    for i in 0..2u64 {
        let slot = BlockSlot::alloc(&mut driver);
        let data = driver.alloc(4096);
        driver.write_bytes(data, &payload);
        heads.push(slot.submit(
            &mut driver,
            VIRTIO_BLK_T_OUT,
            i * 8,
            &[Buf::readable(data, 4096)],
        ));
    }
    let flush = BlockSlot::alloc(&mut driver);
    heads.push(flush.submit(&mut driver, VIRTIO_BLK_T_FLUSH, 0, &[]));
    driver.kick();
    disk.hook().wait_active(2);
    // Give the worker ample time to (wrongly) run the flush past the held writes.
    thread::sleep(Duration::from_millis(50));
    assert!(
        disk.hook().state().log.is_empty(),
        "the flush overtook the writes"
    );
    disk.hook().open();
    for _ in &heads {
        driver.wait_used().expect("a request never completed");
    }
    assert_eq!(flush.status(&driver), OK);
    assert_eq!(disk.hook().state().log, ["write", "write", "flush"]);
    assert_eq!(disk.disk().contents()[..4096], payload[..]);
}

#[test]
fn a_reset_with_requests_in_flight_waits_for_them_and_the_device_serves_again() {
    const CONCURRENCY: usize = 4;
    let disk = gate_disk(CONCURRENCY, usize::MAX);
    let mut driver = driver_for(disk.clone(), CacheType::Writeback, ALL_RW);
    for i in 0..CONCURRENCY as u64 {
        queue_read(&mut driver, i * 8);
    }
    driver.kick();
    disk.hook().wait_active(CONCURRENCY);
    let opener = {
        let disk = disk.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            disk.hook().open();
        })
    };
    // The reset returns only once the I/O threads are done with guest memory.
    driver.write_reg(STATUS, 0);
    {
        let state = disk.hook().state();
        assert_eq!(state.active, 0, "an I/O thread outlived the reset");
        assert_eq!(state.finished, CONCURRENCY);
        assert!(!state.timed_out);
    }
    assert_eq!(
        driver.used_idx(),
        0,
        "completions reached the ring after the reset"
    );
    opener.join().unwrap();

    driver.reprobe(ALL_RW);
    let (head, slot, data) = queue_read(&mut driver, 16);
    driver.kick();
    let used = driver.wait_used().expect("no service after the reset");
    assert_eq!(used.head, head);
    assert_eq!(slot.status(&driver), OK);
    assert_eq!(
        driver.read_bytes(data, 4096),
        pattern(DISK_SIZE)[16 * 512..16 * 512 + 4096]
    );
}
