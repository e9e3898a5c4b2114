//! Level 4: start-up and memory — exec → first guest output, exec → the boot-timer line,
//! exec → process exit for a guest that powers off at once, start on request (a VM configured
//! ahead: `InstanceStart` → first guest output, against QEMU started with `-S` and resumed with
//! QMP `cont`), and the VMM's resident memory outside guest RAM, squib against QEMU microvm
//! (with qboot) on the same guest file.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Context;
use super::api::Client;
use super::device_path::disk_image;
use super::level::{Better, Figure, Level, Verdict};
use super::vm::{self, Vm};
use super::vmm::{Aio, Disk, Engine, Spec, Vmm};

const TITLE: &str = "Start-up and memory";
const GOAL: &str = "squib ≤ 7 ms median exec → first guest output, ≤ 4 MiB RSS outside guest RAM";
const FIRST_OUTPUT_GOAL_MS: f64 = 7.0;
const OUTSIDE_RAM_GOAL_MIB: f64 = 4.0;
const MEM_MIB: u64 = 128;
const BOOT_CMDLINE: &str = "console=ttyS0 guest.mode=boot";
/// The test guest has no idle mode; its lightest steady state is the read loop at queue depth 1
/// with interrupt completions (mostly halted, waiting for the next completion), which also
/// gives the VMM the disk a real microVM has. Memory is read after its `BENCH start` line.
const STEADY_CMDLINE: &str =
    "console=ttyS0 guest.bench=randread guest.qd=1 guest.ops=1000000000 guest.completion=irq";
const STEADY_MARKER: &str = "BENCH start";
/// Time for the VMM to settle after the marker, before smaps is read.
const SETTLE: Duration = Duration::from_millis(300);
/// Start on request: how long the configured VM waits before the start request (a control
/// plane configures ahead of the request that needs the VM).
const CONFIGURED_AHEAD: Duration = Duration::from_millis(100);
/// Goal for `InstanceStart` → first guest output (issue 9).
const START_ON_REQUEST_GOAL_MS: f64 = 1.0;

/// One boot's timings, in milliseconds since exec.
struct Boot {
    first_output: f64,
    boot_timer: Option<f64>,
    /// squib's own split of the boot-timer time: (before the vCPUs started, after), in ms.
    split: Option<(f64, f64)>,
    exit: f64,
}

pub fn run(ctx: &Context) -> Level {
    match measure(ctx) {
        Ok(level) => level,
        Err(reason) => Level::unavailable(4, TITLE, GOAL, reason),
    }
}

fn measure(ctx: &Context) -> Result<Level, String> {
    ctx.squib()?;
    ctx.guest()?;
    let runs = if ctx.quick { 3 } else { 10 };
    let memory_runs = if ctx.quick { 1 } else { 3 };
    let mut notes = Vec::new();
    let squib = Vmm::Squib(Engine::Async);
    let qemu = Vmm::Qemu(Aio::IoUring);

    let squib_boots = boots(ctx, squib, runs)?;
    let squib_memory = memory(ctx, squib, memory_runs)?;
    let squib_on_request = on_request(ctx, squib, runs, Prepared::Ahead)?;
    let squib_cold_start = on_request(ctx, squib, runs, Prepared::Nothing)?;
    let (qemu_boots, qemu_memory, qemu_on_request) = match ctx.qemu() {
        Ok(_) => match (
            boots(ctx, qemu, runs),
            memory(ctx, qemu, memory_runs),
            on_request(ctx, qemu, runs, Prepared::Ahead),
        ) {
            (Ok(b), Ok(m), Ok(r)) => (b, m, r),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                notes.push(format!("QEMU could not be measured:\n\n```\n{e}\n```"));
                (Vec::new(), Vec::new(), Vec::new())
            }
        },
        Err(e) => {
            notes.push(format!("QEMU not measured: {e}."));
            (Vec::new(), Vec::new(), Vec::new())
        }
    };

    let mut figures = Vec::new();
    let first = |boots: &[Boot]| boots.iter().map(|b| b.first_output).collect::<Vec<_>>();
    let exit = |boots: &[Boot]| boots.iter().map(|b| b.exit).collect::<Vec<_>>();
    let pair =
        |figures: &mut Vec<Figure>, id: &str, what: &str, unit, ours: &[f64], theirs: &[f64]| {
            let peer = Figure::of(
                format!("startup.qemu.{id}"),
                format!("QEMU microvm + qboot: {what}"),
                unit,
            )
            .samples(theirs, Better::Lower);
            let own = Figure::of(
                format!("startup.squib.{id}"),
                format!("squib: {what}"),
                unit,
            )
            .samples(ours, Better::Lower)
            .map(|f| match &peer {
                Some(peer) => f.against(peer),
                None => f,
            });
            figures.extend(own);
            figures.extend(peer);
        };
    pair(
        &mut figures,
        "first-output",
        "exec → first guest output",
        "ms",
        &first(&squib_boots),
        &first(&qemu_boots),
    );
    pair(
        &mut figures,
        "start-on-request",
        "start request → first guest output (squib: InstanceStart; QEMU: -S, QMP cont)",
        "ms",
        &squib_on_request,
        &qemu_on_request,
    );
    figures.extend(
        Figure::of(
            "startup.squib.start-cold",
            "squib: InstanceStart → first guest output, nothing built ahead",
            "ms",
        )
        .samples(&squib_cold_start, Better::Lower),
    );
    if let (Some(ahead), Some(cold)) = (median_of(&squib_on_request), median_of(&squib_cold_start))
    {
        notes.push(format!(
            "Start on request, squib against itself in this run: {ahead:.2} ms median with the VM \
             built ahead, {cold:.2} ms with nothing built ahead ({:.2}×).",
            ahead / cold
        ));
    }
    let timer: Vec<f64> = squib_boots.iter().filter_map(|b| b.boot_timer).collect();
    figures.extend(
        Figure::of(
            "startup.squib.boot-timer",
            "squib: exec → boot-timer line",
            "ms",
        )
        .samples(&timer, Better::Lower),
    );
    pair(
        &mut figures,
        "exit",
        "exec → process exit (guest.mode=boot)",
        "ms",
        &exit(&squib_boots),
        &exit(&qemu_boots),
    );
    pair(
        &mut figures,
        "rss-outside-guest",
        "RSS outside guest RAM",
        "MiB",
        &squib_memory,
        &qemu_memory,
    );
    let setup: Vec<f64> = squib_boots
        .iter()
        .filter_map(|b| b.split.map(|s| s.0))
        .collect();
    let guest: Vec<f64> = squib_boots
        .iter()
        .filter_map(|b| b.split.map(|s| s.1))
        .collect();
    figures.extend(
        Figure::of(
            "startup.squib.setup",
            "squib: its start → vCPUs running (squib's clock)",
            "ms",
        )
        .samples(&setup, Better::Lower),
    );
    figures.extend(
        Figure::of(
            "startup.squib.guest",
            "squib: vCPUs running → boot-timer write (squib's clock)",
            "ms",
        )
        .samples(&guest, Better::Lower),
    );
    if let Ok(profile) = slow_syscalls(ctx, squib) {
        notes.push(profile);
    }
    if timer.is_empty() {
        notes.push("No boot-timer line was seen in squib's output with `--boot-timer`.".into());
    }
    notes.push(format!(
        "Method: {runs} boots per VMM of the test guest with `{BOOT_CMDLINE}` ({MEM_MIB} MiB, 1 \
         vCPU); times are host `Instant`s from just before the exec to the first byte on the \
         VMM's stdout (the guest serial), to the boot-timer line, and to the VMM's exit as \
         `wait()` sees it. Memory: {memory_runs} boots with the 512 MiB disk attached and \
         `{STEADY_CMDLINE}` (the test guest has no idle mode; this is its lightest steady \
         state); {} ms after its `{STEADY_MARKER}` line, `/proc/PID/smaps` is read and the RSS of the anonymous mapping of \
         {MEM_MIB} MiB (the guest RAM) is subtracted from the total RSS. References measured \
         on these machines with a tiny PVH guest: Firecracker 1.17 ≈ 7.9 ms to first output, \
         ≈ 4.8 MB outside guest RAM; QEMU microvm + qboot ≈ 55 ms, ≈ 36 MB.",
        SETTLE.as_millis()
    ));
    notes.push(format!(
        "Start on request (goal ≤ {START_ON_REQUEST_GOAL_MS} ms median for squib): {runs} runs \
         per VMM. squib is started with only `--api-sock`, gets `PUT /boot-source` (the same \
         guest and command line) and `PUT /machine-config` (1 vCPU, {MEM_MIB} MiB), waits {} \
         ms as a VM configured ahead would, and the time runs from just before `PUT /actions \
         InstanceStart` is written to the first byte of guest output. QEMU is started with `-S` \
         and a QMP socket, gets `qmp_capabilities`, waits as long, and the time runs from just \
         before `cont` is written. squib builds the VM, its memory slots and vCPUs ahead \
         (`VmShell`); the devices and the kernel load still happen at InstanceStart. The \
         baseline (nothing built ahead) is the same sequence after {} machine-config changes, \
         which use up the shells squib builds ahead, so InstanceStart builds everything.",
        CONFIGURED_AHEAD.as_millis(),
        COLD_SIZES.len()
    ));
    if let Some(ms) = median_of(&squib_on_request) {
        let met = if ms <= START_ON_REQUEST_GOAL_MS {
            "met"
        } else {
            "not met"
        };
        notes.push(format!(
            "Start on request: squib {ms:.2} ms median, goal ≤ {START_ON_REQUEST_GOAL_MS} ms \
             {met}."
        ));
    }

    let median = |id: &str| figures.iter().find(|f| f.id == id).map(|f| f.value.median);
    let (first_ms, rss_mib) = (
        median("startup.squib.first-output"),
        median("startup.squib.rss-outside-guest"),
    );
    let verdict = match (first_ms, rss_mib) {
        (Some(ms), Some(mib)) => {
            let text = format!("{ms:.2} ms to first output, {mib:.2} MiB outside guest RAM");
            if ms <= FIRST_OUTPUT_GOAL_MS && mib <= OUTSIDE_RAM_GOAL_MIB {
                Verdict::Met(text)
            } else {
                Verdict::NotMet(text)
            }
        }
        _ => Verdict::Unavailable("squib produced no start-up figures".into()),
    };
    Ok(Level {
        number: 4,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    })
}

fn median_of(samples: &[f64]) -> Option<f64> {
    super::stats::percentile(samples, 50.0)
}

/// What squib has built when the start request comes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prepared {
    /// What it builds ahead by itself.
    Ahead,
    /// Nothing: machine changes used up its shells (`MAX_SHELLS`).
    Nothing,
}

/// Machine sizes (MiB) that use up the shells squib builds ahead before the final 128 MiB.
const COLD_SIZES: [u64; 4] = [64, 96, 112, 120];

/// Start on request, `runs` times: ms from the start request to the first guest output.
fn on_request(
    ctx: &Context,
    vmm: Vmm,
    runs: usize,
    prepared: Prepared,
) -> Result<Vec<f64>, String> {
    (0..runs)
        .map(|i| {
            let socket = ctx.scratch()?.join(format!("on-request-{i}.sock"));
            let _ = std::fs::remove_file(&socket);
            let (mut vm, requested) = match vmm {
                Vmm::Squib(_) => squib_on_request(ctx, &socket, prepared)?,
                Vmm::Qemu(_) => qemu_on_request(ctx, vmm, &socket)?,
            };
            let (_, status) = vm.wait_exit(Duration::from_secs(60))?;
            let _ = std::fs::remove_file(&socket);
            if !vmm.clean_exit(status) {
                return Err(format!(
                    "{} exited with {status}:\n{}",
                    vmm.label(),
                    vm.transcript_tail(20)
                ));
            }
            let first = vm
                .first_output()
                .ok_or_else(|| format!("{} printed nothing", vmm.label()))?;
            let requested = vm.since_spawn(requested);
            Ok(first.saturating_sub(requested).as_secs_f64() * 1e3)
        })
        .collect()
}

/// squib configured over its API, then `InstanceStart`; returns the VM and when the request
/// was sent.
fn squib_on_request(
    ctx: &Context,
    socket: &Path,
    prepared: Prepared,
) -> Result<(Vm, Instant), String> {
    let mut command = Command::new(ctx.squib()?);
    command.arg("--api-sock").arg(socket);
    let vm = Vm::spawn(command)?;
    let mut client = Client::connect(socket)?;
    let guest = ctx.guest()?.display().to_string();
    let boot = serde_json::json!({ "kernel_image_path": guest, "boot_args": BOOT_CMDLINE });
    let machine = |mib: u64| serde_json::json!({ "vcpu_count": 1, "mem_size_mib": mib });
    let mut requests = vec![("/boot-source", boot)];
    if prepared == Prepared::Nothing {
        requests.extend(COLD_SIZES.map(|mib| ("/machine-config", machine(mib))));
    }
    requests.push(("/machine-config", machine(MEM_MIB)));
    for (uri, body) in requests {
        let status = client.request("PUT", uri, &body.to_string())?;
        if status != 204 {
            return Err(format!("PUT {uri} answered {status}"));
        }
    }
    std::thread::sleep(CONFIGURED_AHEAD);
    let requested = Instant::now();
    let status = client.request("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)?;
    if status != 204 {
        return Err(format!("InstanceStart answered {status}"));
    }
    Ok((vm, requested))
}

/// QEMU started paused (`-S`) with a QMP socket, then `cont`; returns the VM and when `cont`
/// was sent.
fn qemu_on_request(ctx: &Context, vmm: Vmm, socket: &Path) -> Result<(Vm, Instant), String> {
    let spec = Spec {
        cmdline: BOOT_CMDLINE,
        mem_mib: MEM_MIB,
        disk: None,
        boot_timer: false,
        api_sock: None,
    };
    let mut command = vmm.command(ctx, &spec)?;
    command
        .arg("-S")
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()));
    let vm = Vm::spawn(command)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("QMP {}: {e}", socket.display())),
        }
    };
    let qmp_err = |e: std::io::Error| format!("QMP: {e}");
    let mut writer = stream.try_clone().map_err(qmp_err)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(qmp_err)?; // the greeting
    let mut command = |json: &str, reader: &mut BufReader<UnixStream>| -> Result<(), String> {
        writer.write_all(json.as_bytes()).map_err(qmp_err)?;
        loop {
            let mut reply = String::new();
            if reader.read_line(&mut reply).map_err(qmp_err)? == 0 {
                return Err("QMP closed".into());
            }
            // Events (`{"event": ...}`) may come first.
            if reply.contains("\"return\"") {
                return Ok(());
            }
            if reply.contains("\"error\"") {
                return Err(format!("QMP {json}: {reply}"));
            }
        }
    };
    command(r#"{"execute":"qmp_capabilities"}"#, &mut reader)?;
    std::thread::sleep(CONFIGURED_AHEAD);
    let requested = Instant::now();
    command(r#"{"execute":"cont"}"#, &mut reader)?;
    Ok((vm, requested))
}

fn boots(ctx: &Context, vmm: Vmm, runs: usize) -> Result<Vec<Boot>, String> {
    let spec = Spec {
        cmdline: BOOT_CMDLINE,
        mem_mib: MEM_MIB,
        disk: None,
        boot_timer: vmm.is_squib(),
        api_sock: None,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (0..runs)
        .map(|_| {
            let mut vm = Vm::spawn(vmm.command(ctx, &spec)?)?;
            let (exit, status) = vm.wait_exit(Duration::from_secs(60))?;
            if !vmm.clean_exit(status) {
                return Err(format!(
                    "{} exited with {status}:\n{}",
                    vmm.label(),
                    vm.transcript_tail(20)
                ));
            }
            let first_output = vm
                .first_output()
                .ok_or_else(|| format!("{} printed nothing", vmm.label()))?;
            let timer_line = vm
                .wait_for_line(Duration::ZERO, |_, line| is_boot_timer_line(line))
                .ok();
            Ok(Boot {
                first_output: ms(first_output),
                boot_timer: timer_line.as_ref().map(|(at, _)| ms(*at)),
                split: timer_line.and_then(|(_, line)| boot_timer_split(&line)),
                exit: ms(exit),
            })
        })
        .collect()
}

/// The boot-timer line's squib clocks, `<total> us since squib started, <guest> us since the
/// vCPUs started` (after Firecracker's `Guest-boot-time = ...` part), as (set-up, guest) in ms:
/// where start-up time goes, by squib's clock.
fn boot_timer_split(line: &str) -> Option<(f64, f64)> {
    let number_before = |marker: &str| -> Option<f64> {
        let head = &line[..line.find(marker)?];
        head.split_whitespace().last()?.parse().ok()
    };
    let total = number_before(" us since squib started")?;
    let guest = number_before(" us since the vCPUs started")?;
    Some(((total - guest) / 1e3, guest / 1e3))
}

/// squib's boot-timer device logs one line when the guest writes to it.
fn is_boot_timer_line(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("boot-time") || line.contains("boot time") || line.contains("boot_timer")
}

/// MiB outside guest RAM, one sample per boot.
fn memory(ctx: &Context, vmm: Vmm, runs: usize) -> Result<Vec<f64>, String> {
    let image = disk_image(ctx)?;
    let spec = Spec {
        cmdline: STEADY_CMDLINE,
        mem_mib: MEM_MIB,
        disk: Some(Disk {
            path: &image,
            direct: false,
        }),
        boot_timer: false,
        api_sock: None,
    };
    (0..runs)
        .map(|_| {
            let mut vm = Vm::spawn(vmm.command(ctx, &spec)?)?;
            vm.wait_for_marker(STEADY_MARKER, Duration::from_secs(30))?;
            std::thread::sleep(SETTLE);
            let memory = vm::memory(vm.pid(), MEM_MIB)?;
            vm.kill();
            Ok(memory.outside_guest_kib() as f64 / 1024.0)
        })
        .collect()
}

/// One boot of squib under `strace -f -T`: the system calls that took 0.3 ms or more, as a
/// report note (strace slows every call down; the durations rank, they do not add up to a boot).
fn slow_syscalls(ctx: &Context, vmm: Vmm) -> Result<String, String> {
    let spec = Spec {
        cmdline: BOOT_CMDLINE,
        mem_mib: MEM_MIB,
        disk: None,
        boot_timer: false,
        api_sock: None,
    };
    let inner = vmm.command(ctx, &spec)?;
    let trace = ctx.scratch()?.join("startup.strace");
    let mut command = std::process::Command::new("strace");
    command.args(["-f", "-T", "-o"]).arg(&trace).arg("--");
    command.arg(inner.get_program()).args(inner.get_args());
    let mut vm = Vm::spawn(command)?;
    vm.wait_exit(Duration::from_secs(60))?;
    let text = std::fs::read_to_string(&trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    let mut slow = slow_calls(&text, 0.3);
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rows: Vec<String> = slow
        .iter()
        .take(8)
        .map(|(call, ms)| format!("| `{call}` | {ms:.2} ms |"))
        .collect();
    Ok(format!(
        "Where squib's start-up goes: one boot under `strace -f -T`, the calls of 0.3 ms or more \
         (strace inflates every call; `KVM_RUN` is guest time):\n\n| call | duration |\n|---|---:|\n{}",
        rows.join("\n")
    ))
}

/// (call with its first argument, ms) for every call of `strace -f -T` output lasting ≥ `min_ms`;
/// a call split into `<unfinished ...>` and `<... resumed>` is named from its first half.
fn slow_calls(strace: &str, min_ms: f64) -> Vec<(String, f64)> {
    let mut unfinished: std::collections::HashMap<&str, String> = Default::default();
    let mut calls = Vec::new();
    for line in strace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let name = |text: &str| -> String {
            let (call, args) = text.split_once('(').unwrap_or((text, ""));
            let first = args
                .split(',')
                .nth(1)
                .map(str::trim)
                .and_then(|a| a.split_whitespace().next())
                .filter(|a| a.starts_with("KVM_"));
            first.map_or_else(|| call.to_owned(), |request| format!("{call} {request}"))
        };
        if rest.ends_with("<unfinished ...>") {
            unfinished.insert(pid, name(rest));
            continue;
        }
        let call = if rest.starts_with("<...") {
            unfinished.remove(pid)
        } else {
            Some(name(rest))
        };
        let duration = rest
            .rsplit_once('<')
            .and_then(|(_, d)| d.strip_suffix('>'))
            .and_then(|d| d.parse::<f64>().ok());
        if let (Some(call), Some(seconds)) = (call, duration)
            && seconds * 1e3 >= min_ms
        {
            calls.push((call, seconds * 1e3));
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_boot_timer_line() {
        let line = "2026-11-24T10:45:50Z  INFO Guest-boot-time =   9800 us 9 ms,   9100 CPU us 9 \
                    CPU ms; 10526 us since squib started, 4391 us since the vCPUs started";
        let (setup, guest) = boot_timer_split(line).unwrap();
        assert!((setup - 6.135).abs() < 1e-9 && (guest - 4.391).abs() < 1e-9);
        assert!(boot_timer_split("Guest-boot-time = soon").is_none());
    }

    #[test]
    fn finds_slow_calls_across_unfinished_halves() {
        let strace = "\
11 ioctl(4, KVM_SET_USER_MEMORY_REGION, {slot=0}) <unfinished ...>
12 ioctl(4, KVM_CREATE_VCPU, 0) = 5 <0.000222>
11 <... ioctl resumed>) = 0 <0.003692>
12 ioctl(5, KVM_RUN, 0) = -1 EINTR (Interrupted system call) <0.004099>
";
        assert_eq!(
            slow_calls(strace, 0.3),
            vec![
                ("ioctl KVM_SET_USER_MEMORY_REGION".to_owned(), 3.692),
                ("ioctl KVM_RUN".to_owned(), 4.099)
            ]
        );
    }
}
