//! The benchmark mode (`guest.bench=randread`): 4 KiB reads at random sector-aligned offsets
//! over a whole disk, `guest.qd` in flight, until `guest.ops` have completed.
//!
//! The host timestamps the `BENCH start` and `BENCH done ops=<n>` lines; the guest's clock is not
//! trusted. Between them the loop runs at CPL3 with no serial output.

use crate::cmdline::{BenchOptions, DiskName, Options};
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::time;
use crate::virtio_blk::{BlockDevice, Op, RequestError, SECTOR_BYTES, Status, segment};
use crate::virtqueue::MAX_SIZE;

const BLOCK: usize = 4096;
const BLOCK_SECTORS: u64 = (BLOCK / SECTOR_BYTES) as u64;

/// Runs the benchmark and ends the run (reset when every request succeeded).
pub fn run(options: &Options) -> ! {
    let bench = options.bench;
    if bench.workload.is_network() {
        crate::net_checks::bench(options);
    }
    let name = DiskName(options.bench_disk);
    let Some(device) = options.devices().nth(options.bench_disk) else {
        report::abort(format_args!("bench: no disk {name} on the command line"));
    };
    let mut disk = match BlockDevice::init(device) {
        Ok(disk) => disk,
        Err(error) => report::abort(format_args!("bench: {name} init: {error}")),
    };
    let fits = disk.max_in_flight();
    if usize::from(bench.queue_depth) > fits {
        report::abort(format_args!(
            "bench: guest.qd={} but only {fits} requests fit {name}'s queue of {}",
            bench.queue_depth,
            disk.queue_size()
        ));
    }
    if disk.capacity() < BLOCK_SECTORS {
        report::abort(format_args!(
            "bench: {name} is smaller than one 4 KiB block"
        ));
    }
    let buffers = match DmaBuf::new(usize::from(bench.queue_depth) * BLOCK, BLOCK) {
        Ok(buffers) => buffers,
        Err(error) => report::abort(format_args!("bench: {error}")),
    };

    println!(
        "# bench randread {name} qd={} ops={} completion={} capacity={} sectors",
        bench.queue_depth,
        bench.ops,
        bench.completion,
        disk.capacity()
    );
    disk.set_completion(bench.completion);
    println!("BENCH start");
    match random_reads(&mut disk, &buffers, bench) {
        Ok(Tally {
            completed,
            failed: 0,
            ..
        }) => {
            println!("BENCH done ops={completed}");
            crate::power::reset()
        }
        Ok(Tally {
            completed,
            failed,
            first_failure,
        }) => {
            println!("BENCH done ops={completed}");
            report::abort(format_args!(
                "bench: {failed} requests failed, the first with {first_failure}"
            ))
        }
        Err(error) => report::abort(format_args!("bench: {error}")),
    }
}

/// What the loop saw.
#[derive(Debug)]
struct Tally {
    completed: u64,
    failed: u64,
    first_failure: Status,
}

fn random_reads(
    disk: &mut BlockDevice,
    buffers: &DmaBuf,
    bench: BenchOptions,
) -> Result<Tally, RequestError> {
    let mut reads = RandomReads {
        buffers,
        slot_of_tag: [0; MAX_SIZE as usize],
        rng: XorShift64::new(time::tsc()),
        last_start: disk.capacity() - BLOCK_SECTORS,
    };
    let mut tally = Tally {
        completed: 0,
        failed: 0,
        first_failure: Status::Ok,
    };
    let mut submitted = 0;
    for slot in 0..usize::from(bench.queue_depth) {
        if submitted == bench.ops {
            break;
        }
        reads.submit(disk, slot)?;
        submitted += 1;
    }
    disk.notify();

    while tally.completed < bench.ops {
        // Collect every completion that is ready, refilling each freed slot, then notify once.
        let mut next = Some(disk.wait(bench.completion)?);
        while let Some(done) = next {
            tally.completed += 1;
            if done.status != Status::Ok {
                if tally.failed == 0 {
                    tally.first_failure = done.status;
                }
                tally.failed += 1;
            }
            if submitted < bench.ops {
                let slot = usize::from(reads.slot_of_tag[usize::from(done.tag)]);
                reads.submit(disk, slot)?;
                submitted += 1;
            }
            next = disk.poll()?;
        }
        disk.notify();
    }
    Ok(tally)
}

/// Request issue: each slot of `buffers` belongs to one request in flight, and a request's
/// tag (its head descriptor) maps back to its slot.
#[derive(Debug)]
struct RandomReads<'a> {
    buffers: &'a DmaBuf,
    slot_of_tag: [u16; MAX_SIZE as usize],
    rng: XorShift64,
    /// The last sector a 4 KiB read may start at.
    last_start: u64,
}

impl RandomReads<'_> {
    fn submit(&mut self, disk: &mut BlockDevice, slot: usize) -> Result<(), RequestError> {
        let sector = self.rng.next() % (self.last_start + 1);
        let data = [segment(self.buffers, slot * BLOCK, BLOCK)];
        let tag = disk.submit(Op::Read, sector, &data)?;
        self.slot_of_tag[usize::from(tag)] = slot as u16;
        Ok(())
    }
}

/// Marsaglia's xorshift64: plenty for spreading offsets, and a handful of instructions.
#[derive(Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
