//! Level 3: the block device path on KVM — the test guest's 4 KiB random-read loop on a 512 MiB
//! disk, under squib (both engines) and QEMU microvm (both of its AIO back ends), same guest
//! file, same disk file.
//!
//! IOPS come from the host: the time between the arrival of the guest's `BENCH start` and
//! `BENCH done ops=<n>` serial lines. Exits per request come from `perf stat` on KVM's
//! tracepoints, as the difference between two runs with different operation counts, so that
//! boot and set-up cancel out.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use squib_host::uring_baseline::{BLOCK, BareRing};

use super::Context;
use super::level::{Better, Figure, Level, Verdict};
use super::mmio_profile;
use super::vm::Vm;
use super::vmm::{Aio, Disk, Engine, Spec, Vmm};

const TITLE: &str = "Device path on KVM";
const GOAL: &str =
    "squib ≥ 1.5× the IOPS of QEMU microvm (its best AIO back end), every configuration";
const DISK_BYTES: u64 = 512 << 20;
const MEM_MIB: u64 = 128;
/// Seconds of I/O a measured run aims for (its op count is calibrated per configuration).
const RUN_SECONDS: f64 = 1.5;
const QUICK_RUN_SECONDS: f64 = 0.3;
const CALIBRATION_OPS: u64 = 5_000;
/// KVM tracepoints counted per request. PVM does not emit `kvm_exit`; the others it does.
/// An exit to the VMM from guest ring 3 under PVM (shared/testbed/kvm-pvm-probe.md, §7).
const PVM_RING3_EXIT_US: f64 = 25.0;
/// Reads in a profiled run (large enough that boot's accesses round away).
const PROFILE_OPS: u64 = 20_000;
const EXIT_EVENTS: &str =
    "kvm:kvm_exit,kvm:kvm_userspace_exit,kvm:kvm_mmio,kvm:kvm_pio,kvm:kvm_set_irq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    Poll,
    Irq,
}

impl Completion {
    fn word(self) -> &'static str {
        match self {
            Completion::Poll => "poll",
            Completion::Irq => "irq",
        }
    }
}

/// One workload: queue depth, completion style, and whether the host bypasses its page cache.
#[derive(Debug, Clone, Copy)]
struct Workload {
    qd: u32,
    completion: Completion,
    direct: bool,
}

impl Workload {
    fn key(self) -> String {
        let cache = if self.direct { "direct" } else { "cached" };
        format!("{cache}.qd{}.{}", self.qd, self.completion.word())
    }

    fn label(self) -> String {
        let cache = if self.direct {
            "O_DIRECT"
        } else {
            "page cache"
        };
        format!("QD{} {}, {cache}", self.qd, self.completion.word())
    }

    fn cmdline(self, ops: u64) -> String {
        format!(
            "console=ttyS0 guest.bench=randread guest.qd={} guest.ops={ops} guest.completion={}",
            self.qd,
            self.completion.word()
        )
    }
}

pub fn run(ctx: &Context) -> Level {
    match measure(ctx) {
        Ok(level) => level,
        Err(reason) => Level::unavailable(3, TITLE, GOAL, reason),
    }
}

fn measure(ctx: &Context) -> Result<Level, String> {
    ctx.squib()?;
    ctx.guest()?;
    let disk = disk_image(ctx)?;
    let direct_ok = supports_direct(&disk);
    let mut notes = Vec::new();
    if !direct_ok {
        notes.push(format!(
            "The disk image's file system ({}) refuses O_DIRECT: only page-cached runs.",
            disk.display()
        ));
    }
    let qemu = ctx.qemu().err();
    let mut vmms = vec![
        Vmm::Squib(Engine::Sync),
        Vmm::Squib(Engine::Threads),
        Vmm::Squib(Engine::Async),
    ];
    if ctx.quick {
        vmms = vec![Vmm::Squib(Engine::Async)];
    }
    match &qemu {
        None if ctx.quick => vmms.push(Vmm::Qemu(Aio::IoUring)),
        None => vmms.extend([Vmm::Qemu(Aio::IoUring), Vmm::Qemu(Aio::Threads)]),
        Some(reason) => notes.push(format!("QEMU not measured: {reason}.")),
    }
    let workloads = workloads(ctx.quick, direct_ok);
    let runs = if ctx.quick { 2 } else { 3 };
    warm_page_cache(&disk)?;

    let mut figures = Vec::new();
    let mut shortfalls = Vec::new();
    let mut qemu_failure: Option<String> = None;
    for workload in &workloads {
        let mut squib_figures: Vec<Figure> = Vec::new();
        let mut qemu_figures: Vec<Figure> = Vec::new();
        for &vmm in &vmms {
            if !vmm.is_squib() && qemu_failure.is_some() {
                continue;
            }
            let disk = Disk {
                path: &disk,
                direct: workload.direct,
            };
            match iops(ctx, vmm, *workload, disk, runs) {
                Ok(samples) => {
                    let figure = Figure::of(
                        format!("device.{}.{}.iops", vmm.key(), workload.key()),
                        format!("{}, {}", vmm.label(), workload.label()),
                        "IOPS",
                    )
                    .samples(&samples, Better::Higher);
                    let Some(figure) = figure else { continue };
                    if vmm.is_squib() {
                        squib_figures.push(figure);
                    } else {
                        qemu_figures.push(figure);
                    }
                }
                Err(e) if !vmm.is_squib() => {
                    qemu_failure = Some(format!("{} failed: {e}", vmm.label()));
                }
                Err(e) => return Err(format!("{}, {}: {e}", vmm.label(), workload.label())),
            }
        }
        // squib figures carry their ratio to QEMU's better back end for this workload.
        let qemu_best = qemu_figures
            .iter()
            .max_by(|a, b| a.value.median.total_cmp(&b.value.median));
        for figure in squib_figures {
            let figure = match qemu_best {
                Some(qemu) => figure.against(qemu),
                None => figure,
            };
            if let Some(ratio) = &figure.ratio
                && ratio.value < 1.5
            {
                shortfalls.push(format!("{} at {:.2}×", figure.label, ratio.value));
            }
            figures.push(figure);
        }
        figures.extend(qemu_figures);
        // One limit per depth and cache mode: the poll and irq workloads share it.
        if workload.completion == Completion::Poll {
            let limit = host_limit(ctx, &disk, *workload, runs)?;
            figures.extend(
                Figure::of(
                    format!("device.host-ring.{}.iops", workload.key()),
                    format!(
                        "host io_uring loop, no VM (the disk's limit), QD{} 4 KiB random reads, {}",
                        workload.qd,
                        if workload.direct {
                            "O_DIRECT"
                        } else {
                            "page cache"
                        }
                    ),
                    "IOPS",
                )
                .samples(&limit, Better::Higher),
            );
        }
    }

    let exits = if ctx.quick {
        Vec::new()
    } else {
        exits_per_request(ctx, &disk, &workloads, &mut notes)
    };
    figures.extend(exits);

    if let Some(failure) = &qemu_failure {
        notes.push(format!(
            "QEMU could not run the guest here, so there is no ratio:\n\n```\n{failure}\n```"
        ));
    }
    notes.push(method_note(runs));
    let verdict = if qemu.is_some() || qemu_failure.is_some() {
        Verdict::Unavailable(format!(
            "no QEMU figures to compare with ({})",
            qemu.or(qemu_failure.map(|f| f.lines().next().unwrap_or_default().to_owned()))
                .unwrap_or_default()
        ))
    } else {
        let (low, high) = ratio_range(&figures);
        let range = format!(
            "squib/QEMU {low:.2}× to {high:.2}× over {} configurations",
            ratios(&figures).count()
        );
        if shortfalls.is_empty() {
            Verdict::Met(range)
        } else {
            Verdict::NotMet(format!("{range}; {} below 1.5×", shortfalls.len()))
        }
    };
    if !shortfalls.is_empty() {
        notes.insert(0, format!("Below the goal: {}.", shortfalls.join("; ")));
    }
    if let Some(note) = limit_note(&figures, &workloads) {
        notes.insert(0, note);
    }
    if let Some(note) = exit_share_note(&figures) {
        notes.insert(0, note);
    }
    Ok(Level {
        number: 3,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    })
}

fn ratios(figures: &[Figure]) -> impl Iterator<Item = f64> + '_ {
    figures
        .iter()
        .filter_map(|f| f.ratio.as_ref().map(|r| r.value))
}

fn ratio_range(figures: &[Figure]) -> (f64, f64) {
    ratios(figures).fold((f64::INFINITY, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// How close each VMM came to the host's own limit, and whether the goal fits under it: where
/// 1.5× QEMU is above what the disk does without a VM, no VMM can meet the goal there.
fn limit_note(figures: &[Figure], workloads: &[Workload]) -> Option<String> {
    let median = |id: String| figures.iter().find(|f| f.id == id).map(|f| f.value.median);
    let mut rows = Vec::new();
    for workload in workloads {
        let limit_key = Workload {
            completion: Completion::Poll,
            ..*workload
        }
        .key();
        let Some(limit) = median(format!("device.host-ring.{limit_key}.iops")) else {
            continue;
        };
        let key = workload.key();
        let squib = median(format!("device.squib-async.{key}.iops"));
        let qemu = [Aio::IoUring, Aio::Threads]
            .into_iter()
            .filter_map(|aio| median(format!("device.{}.{key}.iops", Vmm::Qemu(aio).key())))
            .reduce(f64::max);
        let (Some(squib), Some(qemu)) = (squib, qemu) else {
            continue;
        };
        rows.push(format!(
            "| {} | {:.0}% | {:.0}% | {:.2}× |",
            workload.label(),
            100.0 * squib / limit,
            100.0 * qemu / limit,
            1.5 * qemu / limit
        ));
    }
    (!rows.is_empty()).then(|| {
        format!(
            "The host's limit: each VMM's IOPS as a share of a bare io_uring loop on the same \
             file with no VM (same depth and cache mode), and what the goal (1.5× QEMU's best) \
             would be as a multiple of that limit. At QD 32 the loop is the file's throughput \
             (with O_DIRECT, the disk's): above 1.00× there no VMM can meet the goal on this \
             disk. At QD 1 it is the latency of a loop that sleeps in `io_uring_enter` for each \
             read, which a polling VMM can beat (shares above 100%):\n\n| workload | squib (io_uring) | QEMU (best) | 1.5× QEMU / limit \
             |\n|---|---:|---:|---:|\n{}",
            rows.join("\n")
        )
    })
}

/// Under PVM, how much of squib's time per request its exits to the VMM account for.
fn exit_share_note(figures: &[Figure]) -> Option<String> {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return None;
    }
    let mut rows = Vec::new();
    for exits in figures
        .iter()
        .filter(|f| f.id.starts_with("exits.squib-async.") && f.id.ends_with(".kvm_userspace_exit"))
    {
        let workload = exits
            .id
            .trim_start_matches("exits.squib-async.")
            .trim_end_matches(".kvm_userspace_exit");
        let iops = figures
            .iter()
            .find(|f| f.id == format!("device.squib-async.{workload}.iops"))?;
        let per_request_us = 1e6 / iops.value.median;
        let exit_us = exits.value.median * PVM_RING3_EXIT_US;
        rows.push(format!(
            "| {workload} | {:.0} µs | {:.2} | {:.0} µs | {:.0}% |",
            per_request_us,
            exits.value.median,
            exit_us,
            100.0 * exit_us / per_request_us
        ));
    }
    (!rows.is_empty()).then(|| {
        format!(
            "Why: under PVM an exit to the VMM from guest ring 3 costs ≈ {PVM_RING3_EXIT_US} µs \
             (shared/testbed), and both VMMs see the same guest accesses (profiles below). \
             Share of squib's (async engine) time per request (1 / IOPS: with requests in \
             flight, the guest's vCPU is the serial part) that its exits to the VMM \
             account for:\n\n| workload | time per request | exits to the VMM per request | \
             × {PVM_RING3_EXIT_US} µs | share |\n|---|---:|---:|---:|---:|\n{}",
            rows.join("\n")
        )
    })
}

fn workloads(quick: bool, direct_ok: bool) -> Vec<Workload> {
    let mut workloads = Vec::new();
    let caches: &[bool] = match (quick, direct_ok) {
        (false, true) => &[false, true],
        _ => &[false],
    };
    let completions: &[Completion] = if quick {
        &[Completion::Poll]
    } else {
        &[Completion::Poll, Completion::Irq]
    };
    for &direct in caches {
        for qd in [1, 32] {
            for &completion in completions {
                workloads.push(Workload {
                    qd,
                    completion,
                    direct,
                });
            }
        }
    }
    workloads
}

/// IOPS of `runs` runs, each sized by a short calibration run to last about [`RUN_SECONDS`].
fn iops(
    ctx: &Context,
    vmm: Vmm,
    workload: Workload,
    disk: Disk,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let calibration = one_run(ctx, vmm, workload, disk, CALIBRATION_OPS)?;
    let seconds = if ctx.quick {
        QUICK_RUN_SECONDS
    } else {
        RUN_SECONDS
    };
    let ops = ((calibration * seconds) as u64).clamp(CALIBRATION_OPS, 5_000_000);
    (0..runs)
        .map(|_| one_run(ctx, vmm, workload, disk, ops))
        .collect()
}

/// What the host itself reaches on the guest's workload: a bare io_uring loop
/// (`squib_host::uring_baseline`) doing 4 KiB reads at random block offsets of the same file, at
/// the same depth and cache mode, with no VM. No VMM can beat it, so it says how much of a
/// ratio against QEMU is there to be won.
fn host_limit(
    ctx: &Context,
    disk: &Path,
    workload: Workload,
    runs: usize,
) -> Result<Vec<f64>, String> {
    const O_DIRECT: i32 = 0o40000; // x86_64
    let fail = |e: std::io::Error| format!("host io_uring loop on {}: {e}", disk.display());
    let mut options = OpenOptions::new();
    options.read(true);
    if workload.direct {
        options.custom_flags(O_DIRECT);
    }
    let file = options.open(disk).map_err(fail)?;
    let mut ring = BareRing::new(&file, workload.qd as usize).map_err(fail)?;
    let blocks = DISK_BYTES / BLOCK as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next_offset = move || {
        // xorshift64: cheap, and the same sequence every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % blocks * BLOCK as u64
    };
    let mut timed = |ops: u64| -> Result<f64, String> {
        let start = Instant::now();
        ring.run(ops, false, &mut next_offset).map_err(fail)?;
        Ok(ops as f64 / start.elapsed().as_secs_f64())
    };
    let calibration = timed(CALIBRATION_OPS)?;
    let seconds = if ctx.quick {
        QUICK_RUN_SECONDS
    } else {
        RUN_SECONDS
    };
    let ops = ((calibration * seconds) as u64).clamp(CALIBRATION_OPS, 50_000_000);
    (0..runs).map(|_| timed(ops)).collect()
}

/// Boots the guest in bench mode for `ops` reads; returns IOPS timed by the host.
fn one_run(
    ctx: &Context,
    vmm: Vmm,
    workload: Workload,
    disk: Disk,
    ops: u64,
) -> Result<f64, String> {
    let cmdline = workload.cmdline(ops);
    let spec = Spec {
        cmdline: &cmdline,
        mem_mib: MEM_MIB,
        disk: Some(disk),
        boot_timer: false,
        api_sock: None,
    };
    let mut vm = Vm::spawn(vmm.command(ctx, &spec)?)?;
    let timeout = Duration::from_secs(120);
    let (start, _) = vm.wait_for_marker("BENCH start", Duration::from_secs(30))?;
    let (done, line) = vm.wait_for_marker("BENCH done", timeout)?;
    let (_, status) = vm.wait_exit(Duration::from_secs(30))?;
    if !vmm.clean_exit(status) {
        return Err(format!(
            "exited with {status}; last output:\n{}",
            vm.transcript_tail(20)
        ));
    }
    let done_ops = marker_ops(&line).unwrap_or(ops);
    Ok(done_ops as f64 / (done - start).as_secs_f64())
}

/// The `ops=<n>` of a `BENCH done` line.
fn marker_ops(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("ops=")?.parse().ok())
}

/// KVM exits per request for squib (and QEMU for context), counted by `perf stat`.
fn exits_per_request(
    ctx: &Context,
    disk: &Path,
    workloads: &[Workload],
    notes: &mut Vec<String>,
) -> Vec<Figure> {
    if let Err(reason) = perf_usable() {
        notes.push(format!("Exits per request: not available ({reason})."));
        return Vec::new();
    }
    let mut figures = Vec::new();
    for workload in workloads.iter().filter(|w| !w.direct) {
        for vmm in [Vmm::Squib(Engine::Async), Vmm::Qemu(Aio::IoUring)] {
            if !vmm.is_squib() && ctx.qemu().is_err() {
                continue;
            }
            let disk = Disk {
                path: disk,
                direct: workload.direct,
            };
            match exits(ctx, vmm, *workload, disk) {
                Ok(counts) => {
                    for (event, per_request) in counts {
                        let name = event.trim_start_matches("kvm:");
                        let figure = Figure::of(
                            format!("exits.{}.{}.{name}", vmm.key(), workload.key()),
                            format!("{name} per request: {}, {}", vmm.label(), workload.label()),
                            "",
                        )
                        .samples(&[per_request], Better::Lower);
                        figures.extend(figure);
                    }
                }
                Err(e) => notes.push(format!("Exits per request for {}: {e}", vmm.label())),
            }
        }
    }
    for workload in workloads.iter().filter(|w| !w.direct) {
        for vmm in [Vmm::Squib(Engine::Async), Vmm::Qemu(Aio::IoUring)] {
            if !vmm.is_squib() && ctx.qemu().is_err() {
                continue;
            }
            let disk = Disk {
                path: disk,
                direct: false,
            };
            let cmdline = workload.cmdline(PROFILE_OPS);
            let spec = Spec {
                cmdline: &cmdline,
                mem_mib: MEM_MIB,
                disk: Some(disk),
                boot_timer: false,
                api_sock: None,
            };
            let profiled = vmm
                .command(ctx, &spec)
                .and_then(|command| mmio_profile::profile(ctx, &command, PROFILE_OPS));
            match profiled {
                Ok(rows) => notes.push(format!(
                    "Guest MMIO accesses per request, {}, {} (`perf record -e kvm:kvm_mmio`, \
                     {PROFILE_OPS} reads, boot included):\n\n{}",
                    vmm.label(),
                    workload.label(),
                    mmio_profile::table(&rows, |gpa| vmm.virtio_window(gpa))
                )),
                Err(e) => notes.push(format!("MMIO profile for {}: {e}", vmm.label())),
            }
        }
    }
    notes.push(format!(
        "Exits per request: `perf stat -e {EXIT_EVENTS}` around two runs of 10 000 and 30 000 \
         reads; (count₂ − count₁) / 20 000, so boot and set-up cancel out. \
         `kvm_userspace_exit`: exits that reach the VMM process; `kvm_mmio`/`kvm_pio`: guest \
         MMIO/port accesses KVM handled or passed on (ioeventfd notifications included); \
         `kvm_set_irq`: interrupts raised (irqfd). `kvm_exit` (every exit) is listed only where \
         the KVM module emits it — PVM does not, so there the total is not available."
    ));
    figures
}

fn perf_usable() -> Result<(), String> {
    let out = Command::new("perf")
        .args(["stat", "-x,", "-e", EXIT_EVENTS, "--", "true"])
        .output()
        .map_err(|e| format!("perf: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`perf stat -e {EXIT_EVENTS}` fails: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn exits(
    ctx: &Context,
    vmm: Vmm,
    workload: Workload,
    disk: Disk,
) -> Result<Vec<(String, f64)>, String> {
    const OPS: [u64; 2] = [10_000, 30_000];
    let mut counts = Vec::new();
    for ops in OPS {
        let cmdline = workload.cmdline(ops);
        let spec = Spec {
            cmdline: &cmdline,
            mem_mib: MEM_MIB,
            disk: Some(disk),
            boot_timer: false,
            api_sock: None,
        };
        let inner = vmm.command(ctx, &spec)?;
        let out_file = ctx.scratch()?.join("perf-stat.csv");
        let mut command = Command::new("perf");
        command
            .args(["stat", "-x,", "-e", EXIT_EVENTS, "-o"])
            .arg(&out_file)
            .arg("--");
        command.arg(inner.get_program()).args(inner.get_args());
        let mut vm = Vm::spawn(command)?;
        vm.wait_for_marker("BENCH done", Duration::from_secs(120))?;
        vm.wait_exit(Duration::from_secs(30))?;
        let text = std::fs::read_to_string(&out_file)
            .map_err(|e| format!("{}: {e}", out_file.display()))?;
        counts.push(parse_perf_csv(&text));
    }
    let span = (OPS[1] - OPS[0]) as f64;
    Ok(counts[1]
        .iter()
        .filter(|(_, after)| *after > 0.0)
        .filter_map(|(event, after)| {
            let before = counts[0].iter().find(|(e, _)| e == event)?.1;
            Some((event.clone(), (after - before) / span)).filter(|(_, per)| *per >= 0.005)
        })
        .collect())
}

/// `perf stat -x,` lines: `count,unit,event,...`.
fn parse_perf_csv(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let count = fields.first()?.trim().parse().ok()?;
            Some((fields.get(2)?.trim().to_owned(), count))
        })
        .collect()
}

fn method_note(runs: usize) -> String {
    format!(
        "Method: the test guest reads 4 KiB blocks at random offsets of a 512 MiB disk image \
         (`guest.bench=randread`), keeping `guest.qd` requests in flight and reaping completions \
         by polling the used ring or by interrupt. The host timestamps the guest's `BENCH start` \
         and `BENCH done` serial lines as they arrive; IOPS = ops / elapsed. Each configuration \
         gets a calibration run whose rate sizes the measured runs to about {RUN_SECONDS} s; the \
         figure is the median of {runs} runs. squib runs the release binary with `--disk \
         PATH,engine=sync|async|threads[,direct]`; QEMU runs `-M microvm,acpi=off` with `-drive \
         aio=io_uring|threads,cache=writeback|none` and `virtio-blk-device` on the same file; \
         squib's ratio is taken against the faster QEMU back end for the same workload. The host's \
         limit is a bare io_uring loop (`squib_host::uring_baseline`, no VM) doing the same reads \
         at the same depth and cache mode on the same file, timed the same way. \
         \"page cache\" rows read a file the host has cached; O_DIRECT rows bypass it (squib \
         `direct`, QEMU `cache=none`)."
    )
}

/// The 512 MiB disk image, filled with non-zero data (holes would read faster than data).
pub fn disk_image(ctx: &Context) -> Result<PathBuf, String> {
    let path = ctx.scratch()?.join("disk-512m.img");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == DISK_BYTES) {
        return Ok(path);
    }
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::create(&path).map_err(fail)?;
    let mut block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for chunk in 0..DISK_BYTES >> 20 {
        block[..8].copy_from_slice(&chunk.to_le_bytes());
        file.write_all(&block).map_err(fail)?;
    }
    file.sync_all().map_err(fail)?;
    Ok(path)
}

/// Reads the whole image once so that page-cached runs start from a warm cache.
fn warm_page_cache(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while file
        .read(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?
        > 0
    {}
    Ok(())
}

/// Whether the image's file system accepts O_DIRECT (tmpfs, for one, does not).
fn supports_direct(path: &Path) -> bool {
    const O_DIRECT: i32 = 0o40000; // x86_64
    OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(path)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_done_marker_and_perf_csv() {
        assert_eq!(marker_ops("BENCH done ops=200000 errors=0"), Some(200_000));
        let csv =
            "# started on x\n\n1234,,kvm:kvm_exit,100.00,,\n56,,kvm:kvm_userspace_exit,100.00,,\n";
        assert_eq!(
            parse_perf_csv(csv),
            vec![
                ("kvm:kvm_exit".into(), 1234.0),
                ("kvm:kvm_userspace_exit".into(), 56.0)
            ]
        );
    }
}
