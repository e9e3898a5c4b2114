//! The virtio-blk device model without KVM: a simulated guest driver (squib-virtio's `testing`
//! module) feeds the device through the virtio-mmio transport and split rings in a
//! `GuestMemoryMmap`, with EVENT_IDX negotiated, and sleeps on the interrupt eventfd like a
//! guest. The disk is the in-memory `MemDisk`, so the numbers are the device model's cost, not
//! the file engine's.
//!
//! - `bare_backend`: the `read_vectored_at` call alone (4 KiB at random sectors);
//! - `device/qd1`: one request per notification, waiting for each completion;
//! - `device/qd32`: 32 requests per notification (batch), waiting for all of them.
//!
//! A summary prints requests/s, the time each request adds over the bare backend call, and the
//! heap allocations per request counted by `squib_host::alloc_counter` (all threads: driver,
//! transport and worker). `SQUIB_BENCH_QUICK=1` shortens the run for a CI smoke test;
//! `SQUIB_BENCH_TRACK_DIRTY=1` gives the device guest memory with dirty bitmaps, as a microVM
//! with `track_dirty_pages` has (every device write marks its pages).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use squib_host::alloc_counter::{CountingAllocator, allocations};
use squib_virtio::block::backend::{BlockBackend, Segment};
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::device::{FEATURE_EVENT_IDX, FEATURE_VERSION_1};
use squib_virtio::testing::{BlockSlot, Buf, GuestDriver, MemDisk};
use squib_virtio::{GuestMemory, block::BlockHandle};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::GuestAddress;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const BLOCK: u32 = 4096;
const DISK: usize = 64 << 20;
const GUEST_MEM: usize = 32 << 20;
const MAX_DEPTH: usize = 32;

/// Random 4 KiB-aligned sectors (xorshift: reproducible, no dependency).
struct Sectors {
    state: u64,
    blocks: u64,
}

impl Sectors {
    fn new(disk: usize) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
            blocks: (disk / BLOCK as usize) as u64,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.blocks) * u64::from(BLOCK / 512)
    }
}

/// A guest with `MAX_DEPTH` request slots (header, status, 4 KiB buffer each).
struct Guest {
    driver: GuestDriver,
    slots: Vec<(BlockSlot, GuestAddress)>,
    sectors: Sectors,
    handle: BlockHandle,
}

impl Guest {
    fn new(disk: Arc<MemDisk>) -> Self {
        let config = BlockConfig::new("bench", CacheType::Unsafe);
        let device = BlockDevice::new(disk, config).unwrap();
        let handle = device.handle();
        let features = FEATURE_VERSION_1 | FEATURE_EVENT_IDX;
        // SQUIB_BENCH_TRACK_DIRTY=1: guest memory with dirty bitmaps, as with
        // `track_dirty_pages` (every device write marks its pages).
        let track = std::env::var_os("SQUIB_BENCH_TRACK_DIRTY").is_some_and(|v| v == "1");
        let mem =
            squib_host::guest_memory::anonymous(&[(GuestAddress(0), GUEST_MEM)], track).unwrap();
        let mut driver = GuestDriver::activated_with_memory(Box::new(device), mem, features);
        let slots = (0..MAX_DEPTH)
            .map(|_| (BlockSlot::alloc(&mut driver), driver.alloc(BLOCK)))
            .collect();
        Self {
            driver,
            slots,
            sectors: Sectors::new(DISK),
            handle,
        }
    }

    /// Submits `depth` random 4 KiB reads with one notification and waits for all of them.
    fn batch(&mut self, depth: usize) {
        for (slot, buf) in &self.slots[..depth] {
            let sector = self.sectors.next();
            slot.submit(
                &mut self.driver,
                VIRTIO_BLK_T_IN,
                sector,
                &[Buf::writable(*buf, BLOCK)],
            );
        }
        self.driver.kick();
        for _ in 0..depth {
            let used = self
                .driver
                .wait_used()
                .expect("the device stopped completing requests");
            assert_eq!(used.len, BLOCK + 1);
        }
        debug_assert!(
            self.slots[..depth]
                .iter()
                .all(|(slot, _)| { slot.status(&self.driver) == VIRTIO_BLK_S_OK as u8 })
        );
    }
}

/// (requests, time) per benchmark, over every timed batch.
type Tally = Mutex<BTreeMap<&'static str, (u64, Duration)>>;

fn record(tally: &Tally, name: &'static str, requests: u64, time: Duration) {
    let mut tally = tally.lock().unwrap();
    let entry = tally.entry(name).or_default();
    entry.0 += requests;
    entry.1 += time;
}

fn bench_bare_backend(c: &mut Criterion, disk: &Arc<MemDisk>, mem: &GuestMemory, tally: &Tally) {
    let mut group = c.benchmark_group("device_model");
    group.throughput(Throughput::Elements(1));
    let mut sectors = Sectors::new(DISK);
    let segment = [Segment {
        addr: GuestAddress(0x10000),
        len: BLOCK,
    }];
    group.bench_function("bare_backend", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                disk.read_vectored_at(mem, &segment, sectors.next() * 512)
                    .unwrap();
            }
            let elapsed = start.elapsed();
            record(tally, "bare_backend", iters, elapsed);
            elapsed
        })
    });
    group.finish();
}

fn bench_device(c: &mut Criterion, guest: &mut Guest, depth: usize, tally: &Tally) {
    let name = if depth == 1 {
        "device/qd1"
    } else {
        "device/qd32"
    };
    let mut group = c.benchmark_group("device_model");
    group.throughput(Throughput::Elements(depth as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                guest.batch(depth);
            }
            let elapsed = start.elapsed();
            record(tally, name, iters * depth as u64, elapsed);
            elapsed
        })
    });
    group.finish();
}

/// Heap allocations per request at `depth`, after a warm-up (thread start-up and lazy
/// initialisation allocate once).
fn allocations_per_request(guest: &mut Guest, depth: usize, batches: usize) -> f64 {
    for _ in 0..4 {
        guest.batch(depth);
    }
    let before = allocations();
    for _ in 0..batches {
        guest.batch(depth);
    }
    (allocations() - before) as f64 / (batches * depth) as f64
}

fn main() {
    let quick = std::env::var_os("SQUIB_BENCH_QUICK").is_some_and(|v| v == "1");
    let (warm_up, measure) = if quick {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_secs(1), Duration::from_secs(5))
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .configure_from_args();

    let disk = Arc::new(MemDisk::with_contents(vec![0x5a; DISK], false));
    let mem = squib_host::guest_memory::anonymous(&[(GuestAddress(0), GUEST_MEM)], false).unwrap();
    let tally = Tally::default();
    let mut guest = Guest::new(Arc::clone(&disk));

    bench_bare_backend(&mut c, &disk, &mem, &tally);
    bench_device(&mut c, &mut guest, 1, &tally);
    bench_device(&mut c, &mut guest, MAX_DEPTH, &tally);

    let batches = if quick { 20 } else { 200 };
    let allocs_qd1 = allocations_per_request(&mut guest, 1, batches * MAX_DEPTH);
    let allocs_qd32 = allocations_per_request(&mut guest, MAX_DEPTH, batches);

    let tally = tally.into_inner().unwrap();
    let per_request = |name| {
        tally
            .get(name)
            .filter(|(n, _)| *n > 0)
            .map(|(n, t)| t.as_nanos() as f64 / *n as f64)
    };
    let bare = per_request("bare_backend");
    println!("\ndevice_model summary (4 KiB random reads, MemDisk, EVENT_IDX on)");
    println!(
        "{:<14} {:>12} {:>12} {:>16} {:>12}",
        "", "requests/s", "ns/request", "added over bare", "allocs/req"
    );
    for (name, allocs) in [
        ("bare_backend", None),
        ("device/qd1", Some(allocs_qd1)),
        ("device/qd32", Some(allocs_qd32)),
    ] {
        let Some(ns) = per_request(name) else {
            continue;
        };
        let added = match (allocs, bare) {
            (Some(_), Some(bare)) => format!("{:.0} ns", ns - bare),
            _ => "-".into(),
        };
        let allocs = allocs.map_or("-".into(), |a| format!("{a:.3}"));
        println!(
            "{name:<14} {:>12.0} {:>12.0} {:>16} {:>12}",
            1e9 / ns,
            ns,
            added,
            allocs
        );
    }
    let metrics = guest.handle.metrics();
    println!(
        "device metrics: {} reads, {} invalid, mean backend latency {} ns",
        metrics.reads,
        metrics.invalid_requests,
        metrics.latency_total_ns / metrics.reads.max(1)
    );
    c.final_summary();
}
