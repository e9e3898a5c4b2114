//! Block engines against a raw `pread`/`pwrite` loop: 4 KiB random reads and writes on one
//! page-cached file at 1, 2, 4 and 8 threads, then with cache bypass (`O_DIRECT`).
//!
//! All variants share the file, the open file description (`dup`s of one fd) and the sequence of
//! offsets. Each criterion iteration is one operation; `iter_custom` splits the iterations among
//! N threads started before the clock and released together. A summary of IOPS and ratios to the
//! raw loop is printed at the end (figures: `docs/perf/backend-*.md`).
//!
//! Then the io_uring rows, at queue depth 1 and 32, cached and O_DIRECT: squib's ring
//! (`squib_host::uring::FileRing`, as the device's io_uring executor drives it: guest-memory
//! segments, per-slot iovecs, fixed buffers by default with O_DIRECT) against a bare io_uring
//! loop on plain buffers (`squib_host::uring_baseline`, the limit), with raw `pread`/`pwrite` on
//! as many threads as the queue depth beside them. A second summary prints their ratios.
//!
//! `SQUIB_BENCH_QUICK=1` shrinks the file and the timings for a CI smoke run.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use squib_host::block_io;
use squib_host::uring::{FileRing, RingConfig, RingOp};
use squib_host::uring_baseline::BareRing;
use squib_virtio::GuestMemory;
use squib_virtio::block::backend::{BlockBackend, Segment};
use squib_virtio::block::engine::{AsyncFileBackend, SyncFileBackend};
use vm_memory::GuestAddress;

const BLOCK: usize = 4096;
const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Queue depths of the io_uring rows.
const DEPTHS: [usize; 2] = [1, 32];
/// Offsets in the shared sequence; each thread starts at its own place in it.
const OFFSETS: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Read,
    Write,
}

/// One contender: the raw loop, or an engine behind the trait object the device uses.
enum Contender {
    Raw(File),
    Engine(Arc<dyn BlockBackend>),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Raw(_) => "raw",
            Contender::Engine(engine) if format!("{engine:?}").starts_with("Async") => "async",
            Contender::Engine(_) => "sync",
        }
    }

    /// One 4 KiB operation: raw into `buf`, engines into guest memory at `addr`.
    fn run(&self, op: Op, mem: &GuestMemory, addr: u64, buf: &mut [u8], offset: u64) {
        let segments = [Segment {
            addr: GuestAddress(addr),
            len: BLOCK as u32,
        }];
        match (self, op) {
            (Contender::Raw(file), Op::Read) => file.read_exact_at(buf, offset).unwrap(),
            (Contender::Raw(file), Op::Write) => file.write_all_at(buf, offset).unwrap(),
            (Contender::Engine(e), Op::Read) => e.read_vectored_at(mem, &segments, offset).unwrap(),
            (Contender::Engine(e), Op::Write) => {
                e.write_vectored_at(mem, &segments, offset).unwrap()
            }
        }
    }
}

/// Operations and time spent, per (mode, op, threads, contender), over every timed batch.
type Tally = BTreeMap<(&'static str, Op, usize, &'static str), (u64, Duration)>;

struct Setup {
    mem: GuestMemory,
    offsets: Vec<u64>,
    tally: Mutex<Tally>,
    /// The io_uring rows, keyed by queue depth instead of threads.
    ring_tally: Mutex<Tally>,
}

impl Setup {
    /// Runs `iters` operations split among `threads`, timing from their common start.
    fn timed(&self, contender: &Contender, op: Op, threads: usize, iters: u64) -> Duration {
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|thread| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let share = iters / threads as u64
                            + u64::from((thread as u64) < iters % threads as u64);
                        // 8 KiB apart: page-aligned guest buffers that share no page.
                        let addr = (thread * 2 * BLOCK) as u64;
                        let mut buf = aligned_block();
                        let start = thread * (OFFSETS / threads);
                        barrier.wait();
                        for i in 0..share as usize {
                            let offset = self.offsets[(start + i) % OFFSETS];
                            contender.run(op, &self.mem, addr, buf.as_mut_slice(), offset);
                        }
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for worker in workers {
                worker.join().unwrap();
            }
            start.elapsed()
        })
    }

    fn record_ring(&self, key: (&'static str, Op, usize, &'static str), ops: u64, time: Duration) {
        let mut tally = self.ring_tally.lock().unwrap();
        let entry = tally.entry(key).or_default();
        entry.0 += ops;
        entry.1 += time;
    }

    fn record(&self, key: (&'static str, Op, usize, &'static str), ops: u64, time: Duration) {
        let mut tally = self.tally.lock().unwrap();
        let entry = tally.entry(key).or_default();
        entry.0 += ops;
        entry.1 += time;
    }
}

/// A 4 KiB buffer at a 4 KiB-aligned address (what `O_DIRECT` needs), without `unsafe`.
struct AlignedBlock {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + BLOCK]
    }
}

fn aligned_block() -> AlignedBlock {
    let storage = vec![0x5a; 2 * BLOCK];
    let start = storage.as_ptr().align_offset(BLOCK);
    AlignedBlock { storage, start }
}

fn quick() -> bool {
    std::env::var_os("SQUIB_BENCH_QUICK").is_some_and(|v| v == "1")
}

/// A file of `size` bytes of non-zero data (holes would read faster than real data), flushed so
/// the cached runs start from clean pages.
fn create_disk(dir: &Path, size: usize) -> tempfile::NamedTempFile {
    let mut disk = tempfile::NamedTempFile::new_in(dir).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    for _ in 0..size / chunk.len() {
        disk.write_all(&chunk).unwrap();
    }
    disk.as_file().sync_all().unwrap();
    disk
}

/// xorshift64*: a fixed, reproducible sequence of block-aligned offsets below `size`.
fn offsets(size: usize) -> Vec<u64> {
    let blocks = (size / BLOCK) as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..OFFSETS)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks) * BLOCK as u64
        })
        .collect()
}

/// The raw loop and both engines on `dup`s of `file`.
fn contenders(file: &File) -> [Contender; 3] {
    let dup = || file.try_clone().unwrap();
    [
        Contender::Raw(dup()),
        Contender::Engine(Arc::new(AsyncFileBackend::from_file(dup(), false).unwrap())),
        Contender::Engine(Arc::new(SyncFileBackend::from_file(dup(), false).unwrap())),
    ]
}

fn bench_mode(
    c: &mut Criterion,
    setup: &Setup,
    mode: &'static str,
    file: &File,
    threads: &[usize],
) {
    let contenders = contenders(file);
    for op in [Op::Read, Op::Write] {
        let mut group = c.benchmark_group(format!("backend/{mode}/{op:?}").to_lowercase());
        group.throughput(Throughput::Elements(1));
        for &n in threads {
            for contender in &contenders {
                let name = contender.name();
                group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                    b.iter_custom(|iters| {
                        let time = setup.timed(contender, op, n, iters);
                        setup.record((mode, op, n, name), iters, time);
                        time
                    });
                });
            }
        }
        group.finish();
    }
}

/// Runs `count` operations on squib's ring, `depth` in flight, one 4 KiB guest buffer per slot.
fn engine_run(
    ring: &mut FileRing,
    depth: usize,
    op: Op,
    count: u64,
    mut offset: impl FnMut() -> u64,
) {
    let ring_op = |offset| match op {
        Op::Read => RingOp::Read { offset },
        Op::Write => RingOp::Write { offset },
    };
    let segment = |slot: u16| [(GuestAddress(u64::from(slot) * BLOCK as u64), BLOCK)];
    let mut freed = Vec::with_capacity(depth);
    let (mut issued, mut done) = (0, 0);
    for slot in 0..depth.min(count as usize) as u16 {
        ring.push(slot, ring_op(offset()), segment(slot), None)
            .unwrap();
        issued += 1;
    }
    while done < count {
        ring.submit_and_wait(1).unwrap();
        freed.clear();
        ring.reap(|completion| {
            assert_eq!(completion.result.unwrap(), BLOCK, "short ring request");
            freed.push(completion.slot);
        });
        done += freed.len() as u64;
        for &slot in &freed {
            if issued < count {
                ring.push(slot, ring_op(offset()), segment(slot), None)
                    .unwrap();
                issued += 1;
            }
        }
    }
    ring.submit().unwrap();
}

/// Before a timed batch of writes: writes back what earlier batches dirtied, outside the timed
/// region. Otherwise whichever contender runs later inherits the others' dirty pages and pays
/// their writeback throttling (the ring rows always ran after the bare loop).
fn settle(file: &File, op: Op) {
    if op == Op::Write {
        file.sync_data().unwrap();
    }
}

/// squib's ring and the bare loop at each queue depth, with `pread`/`pwrite` on as many threads.
fn bench_rings(c: &mut Criterion, setup: &Setup, mode: &'static str, file: &File, direct: bool) {
    for op in [Op::Read, Op::Write] {
        let name = format!("{op:?}").to_lowercase();
        let mut group = c.benchmark_group(format!("backend/{mode}-ring/{name}"));
        group.throughput(Throughput::Elements(1));
        for depth in DEPTHS {
            let mut next = 0usize;
            let mut bare = BareRing::new(file, depth).unwrap();
            group.bench_with_input(BenchmarkId::new("ring-baseline", depth), &depth, |b, _| {
                b.iter_custom(|iters| {
                    settle(file, op);
                    let start = Instant::now();
                    bare.run(iters, op == Op::Write, || {
                        next = (next + 1) % OFFSETS;
                        setup.offsets[next]
                    })
                    .unwrap();
                    let time = start.elapsed();
                    setup.record_ring((mode, op, depth, "baseline"), iters, time);
                    time
                });
            });
            let config = RingConfig {
                slots: depth as u16,
                segments_per_slot: 1,
                // As the engine's default: registered guest memory only with cache bypass.
                fixed_buffers: direct,
                fixed_file: true,
                never_wait: false,
                simulate_unavailable: None,
            };
            let mut ring = FileRing::new(file, &setup.mem, config).unwrap();
            group.bench_with_input(BenchmarkId::new("ring-engine", depth), &depth, |b, _| {
                b.iter_custom(|iters| {
                    settle(file, op);
                    let start = Instant::now();
                    engine_run(&mut ring, depth, op, iters, || {
                        next = (next + 1) % OFFSETS;
                        setup.offsets[next]
                    });
                    let time = start.elapsed();
                    setup.record_ring((mode, op, depth, "engine"), iters, time);
                    time
                });
            });
        }
        group.finish();
        let mut group = c.benchmark_group(format!("backend/{mode}-ring-pread/{name}"));
        group.throughput(Throughput::Elements(1));
        let raw = Contender::Raw(file.try_clone().unwrap());
        for depth in DEPTHS {
            group.bench_with_input(BenchmarkId::new("pread", depth), &depth, |b, &n| {
                b.iter_custom(|iters| {
                    settle(file, op);
                    let time = setup.timed(&raw, op, n, iters);
                    setup.record_ring((mode, op, n, "pread"), iters, time);
                    time
                });
            });
        }
        group.finish();
    }
}

fn print_ring_summary(tally: &Tally) {
    println!(
        "\nring summary: IOPS over every timed batch; engine = squib's ring, bare = io_uring alone"
    );
    println!(
        "{:<7} {:<6} {:>5} {:>12} {:>12} {:>12} {:>11} {:>12}",
        "mode", "op", "qd", "pread", "bare", "engine", "engine/bare", "engine/pread"
    );
    let iops = |key| {
        tally
            .get(&key)
            .map_or(f64::NAN, |&(ops, time): &(u64, Duration)| {
                ops as f64 / time.as_secs_f64()
            })
    };
    let mut rows: Vec<_> = tally.keys().map(|&(m, o, t, _)| (m, o, t)).collect();
    rows.dedup();
    for (mode, op, depth) in rows {
        let pread = iops((mode, op, depth, "pread"));
        let bare = iops((mode, op, depth, "baseline"));
        let engine = iops((mode, op, depth, "engine"));
        println!(
            "{mode:<7} {:<6} {depth:>5} {pread:>12.0} {bare:>12.0} {engine:>12.0} {:>11.2} {:>12.2}",
            format!("{op:?}").to_lowercase(),
            engine / bare,
            engine / pread
        );
    }
}

fn print_summary(tally: &Tally) {
    println!("\nbackend summary: IOPS over every timed batch, ratio to the raw loop");
    println!(
        "{:<7} {:<6} {:>7} {:>12} {:>12} {:>12} {:>9} {:>9} {:>11}",
        "mode", "op", "threads", "raw", "async", "sync", "async/raw", "sync/raw", "async/sync"
    );
    let iops = |key| {
        tally
            .get(&key)
            .map_or(f64::NAN, |&(ops, time): &(u64, Duration)| {
                ops as f64 / time.as_secs_f64()
            })
    };
    let mut rows: Vec<_> = tally.keys().map(|&(m, o, t, _)| (m, o, t)).collect();
    rows.dedup();
    for (mode, op, threads) in rows {
        let raw = iops((mode, op, threads, "raw"));
        let a = iops((mode, op, threads, "async"));
        let s = iops((mode, op, threads, "sync"));
        println!(
            "{mode:<7} {:<6} {threads:>7} {raw:>12.0} {a:>12.0} {s:>12.0} {:>9.2} {:>9.2} {:>11.2}",
            format!("{op:?}").to_lowercase(),
            a / raw,
            s / raw,
            a / s
        );
    }
}

fn main() {
    let quick = quick();
    let (size, warm_up, measure) = if quick {
        (
            64 << 20,
            Duration::from_millis(200),
            Duration::from_millis(500),
        )
    } else {
        (512 << 20, Duration::from_secs(1), Duration::from_secs(2))
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .configure_from_args();

    // The system temp directory: ext4 on squib's machines, which supports O_DIRECT.
    let disk = create_disk(&std::env::temp_dir(), size);
    let setup = Setup {
        // 32 slots of one 4 KiB block for the ring rows; 16 threads 8 KiB apart for the others.
        mem: squib_host::guest_memory::anonymous(&[(GuestAddress(0), 32 * 2 * BLOCK)], false)
            .unwrap(),
        offsets: offsets(size),
        tally: Mutex::new(BTreeMap::new()),
        ring_tally: Mutex::new(BTreeMap::new()),
    };

    let cached = File::options()
        .read(true)
        .write(true)
        .open(disk.path())
        .unwrap();
    // Warm the page cache: the cached runs measure the engines, not the disk.
    let mut buf = vec![0; 1 << 20];
    for at in (0..size).step_by(buf.len()) {
        cached.read_exact_at(&mut buf, at as u64).unwrap();
    }
    bench_mode(&mut c, &setup, "cached", &cached, &THREADS);
    bench_rings(&mut c, &setup, "cached", &cached, false);

    let direct = File::options()
        .read(true)
        .write(true)
        .open(disk.path())
        .unwrap();
    match block_io::set_f_nocache(&direct) {
        Ok(()) => {
            bench_mode(&mut c, &setup, "direct", &direct, &[1, 4]);
            bench_rings(&mut c, &setup, "direct", &direct, true);
        }
        Err(e) => eprintln!(
            "SKIPPED the O_DIRECT runs: {} refuses cache bypass ({e})",
            std::env::temp_dir().display()
        ),
    }

    c.final_summary();
    print_summary(&setup.tally.lock().unwrap());
    print_ring_summary(&setup.ring_tally.lock().unwrap());
}
