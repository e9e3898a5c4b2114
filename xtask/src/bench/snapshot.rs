//! Level 8: snapshot restore — `/snapshot/load` → the guest's first serial line after resume,
//! and the load call's own duration, at 128 MiB and 1 GiB; `/snapshot/create` Full and Diff.
//! Peer in the same run: QEMU microvm saving the same guest to a file (`migrate "exec:cat > f"`)
//! and restoring it (`-incoming defer`, then `migrate_incoming "exec:cat f"` → first line).
//!
//! The guest is the test guest in snapshot mode with back-to-back ticks (`guest.mode=snapshot
//! guest.pace=fast`): it prints a `SNAP tick` line every fraction of a millisecond, so the first
//! line after a restore marks the guest running again. All times are host clock.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Context;
use super::api::Client;
use super::level::{Better, Figure, Level, Verdict};
use super::vm::Vm;
use super::vmm::{Aio, Spec, Vmm};

const TITLE: &str = "Snapshot restore";
const GOAL: &str = "`/snapshot/load` → guest running ≤ 7 ms median at 128 MiB and 1 GiB, ≥ 10× \
                    faster than QEMU's restore; Full create at 1 GiB ≤ 0.8 s";
const LOAD_GOAL_MS: f64 = 7.0;
const CREATE_GOAL_MS: f64 = 800.0;
const CMDLINE: &str = "console=ttyS0 guest.mode=snapshot guest.pace=fast";
const SIZES_MIB: [u64; 2] = [128, 1024];
const TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(ctx: &Context) -> Level {
    match measure(ctx) {
        Ok(level) => level,
        Err(reason) => Level::unavailable(6, TITLE, GOAL, reason),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn measure(ctx: &Context) -> Result<Level, String> {
    ctx.squib()?;
    ctx.guest()?;
    let runs = if ctx.quick { 3 } else { 10 };
    let mut figures = Vec::new();
    let mut verdicts = Vec::new();
    let mut notes = Vec::new();
    for mib in SIZES_MIB {
        let squib = squib_figures(ctx, mib, runs)?;
        let qemu = match ctx.qemu() {
            Ok(_) => qemu_restore(ctx, mib, runs.min(5)),
            Err(e) => Err(e),
        };
        let first = Figure::of(
            format!("snapshot.{mib}.load_to_output"),
            format!("squib /snapshot/load → first guest line, {mib} MiB"),
            "ms",
        )
        .samples(&squib.load_to_output, Better::Lower);
        let peer = qemu.as_ref().ok().and_then(|samples| {
            Figure::of(
                format!("snapshot.{mib}.qemu_restore"),
                format!("QEMU migrate_incoming → first guest line, {mib} MiB"),
                "ms",
            )
            .samples(samples, Better::Lower)
        });
        if let Err(e) = &qemu {
            notes.push(format!("QEMU peer at {mib} MiB unavailable: {e}"));
        }
        let first = first.map(|f| match &peer {
            Some(peer) => f.against(peer),
            None => f,
        });
        if let Some(f) = &first {
            let speedup = peer
                .as_ref()
                .map(|p| p.value.median / f.value.median)
                .unwrap_or(f64::NAN);
            verdicts.push((
                f.value.median <= LOAD_GOAL_MS && (peer.is_none() || speedup >= 10.0),
                format!(
                    "{mib} MiB: load → running {:.2} ms ({speedup:.0}× QEMU)",
                    f.value.median
                ),
            ));
        }
        figures.extend(first);
        figures.extend(peer);
        figures.extend(
            Figure::of(
                format!("snapshot.{mib}.load_call"),
                format!("squib /snapshot/load call, {mib} MiB"),
                "ms",
            )
            .samples(&squib.load_call, Better::Lower),
        );
        let full = Figure::of(
            format!("snapshot.{mib}.create_full"),
            format!("squib /snapshot/create Full, {mib} MiB"),
            "ms",
        )
        .samples(&squib.create_full, Better::Lower);
        if mib == 1024
            && let Some(f) = &full
        {
            verdicts.push((
                f.value.median <= CREATE_GOAL_MS,
                format!("Full create at 1 GiB {:.0} ms", f.value.median),
            ));
        }
        figures.extend(full);
        figures.extend(
            Figure::of(
                format!("snapshot.{mib}.create_diff"),
                format!("squib /snapshot/create Diff, {mib} MiB"),
                "ms",
            )
            .samples(&squib.create_diff, Better::Lower),
        );
    }
    let text = verdicts
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let verdict = if verdicts.is_empty() {
        Verdict::Unavailable("nothing measured".into())
    } else if verdicts.iter().all(|(met, _)| *met) {
        Verdict::Met(text)
    } else {
        Verdict::NotMet(text)
    };
    notes.push(format!(
        "Method: the test guest in snapshot mode (`{CMDLINE}`, 1 vCPU, no disk: Diff snapshots \
         of microVMs with devices are refused) is booted through the API, paused after its \
         second tick and snapshotted (Full, timed on the API call); it is resumed for 50 ms \
         and a Diff is timed the same way (track_dirty_pages). Then {runs} times: a \
         fresh squib process with only its API socket, `PUT /snapshot/load` (File backend, \
         resume_vm) — the call's own duration, and the time from sending it to the guest's \
         first serial line. QEMU peer: microvm with the same guest and memory, saved with HMP \
         `migrate \"exec:cat > file\"` while running, restored by a QEMU started with \
         `-incoming defer`; the figure is from `migrate_incoming \"exec:cat file\"` to the \
         guest's first line (process start excluded on both sides). Memory files live under \
         target/bench (page cache warm after the first run)."
    ));
    Ok(Level {
        number: 8,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    })
}

struct SquibSamples {
    load_to_output: Vec<f64>,
    load_call: Vec<f64>,
    create_full: Vec<f64>,
    create_diff: Vec<f64>,
}

fn api_ok(client: &mut Client, method: &str, uri: &str, body: &str) -> Result<(), String> {
    match client.request(method, uri, body)? {
        (204, _) => Ok(()),
        (code, answer) => Err(format!("{method} {uri}: {code} {answer}")),
    }
}

fn squib_api(ctx: &Context, socket: &Path) -> Result<Vm, String> {
    let _ = std::fs::remove_file(socket);
    let mut command = Command::new(ctx.squib()?);
    command.arg("--api-sock").arg(socket);
    Vm::spawn(command)
}

fn squib_figures(ctx: &Context, mib: u64, runs: usize) -> Result<SquibSamples, String> {
    let dir = ctx.scratch()?;
    let socket = dir.join("snap-src.sock");
    let (state, mem) = (dir.join("snap.state"), dir.join("snap.mem"));
    let (diff_state, diff_mem) = (dir.join("snap-diff.state"), dir.join("snap-diff.mem"));
    let mut samples = SquibSamples {
        load_to_output: Vec::new(),
        load_call: Vec::new(),
        create_full: Vec::new(),
        create_diff: Vec::new(),
    };
    let create = |path: &Path, mem: &Path, kind: &str| {
        format!(
            r#"{{"snapshot_path":"{}","mem_file_path":"{}","snapshot_type":"{kind}"}}"#,
            path.display(),
            mem.display()
        )
    };
    // The source: boot, snapshot Full, run on, snapshot Diff.
    {
        let mut vm = squib_api(ctx, &socket)?;
        let mut client = Client::connect(&socket)?;
        let guest = ctx.guest()?;
        api_ok(
            &mut client,
            "PUT",
            "/boot-source",
            &format!(
                r#"{{"kernel_image_path":"{}","boot_args":"{CMDLINE}"}}"#,
                guest.display()
            ),
        )?;
        api_ok(
            &mut client,
            "PUT",
            "/machine-config",
            &format!(r#"{{"vcpu_count":1,"mem_size_mib":{mib},"track_dirty_pages":true}}"#),
        )?;
        api_ok(
            &mut client,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )?;
        vm.wait_for_marker("SNAP tick 2", TIMEOUT)?;
        api_ok(&mut client, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
        let start = Instant::now();
        api_ok(
            &mut client,
            "PUT",
            "/snapshot/create",
            &create(&state, &mem, "Full"),
        )?;
        samples.create_full.push(ms(start.elapsed()));
        api_ok(&mut client, "PATCH", "/vm", r#"{"state":"Resumed"}"#)?;
        // Ticks come back to back (`guest.pace=fast`): let it run a little.
        std::thread::sleep(Duration::from_millis(50));
        api_ok(&mut client, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
        let start = Instant::now();
        api_ok(
            &mut client,
            "PUT",
            "/snapshot/create",
            &create(&diff_state, &diff_mem, "Diff"),
        )?;
        samples.create_diff.push(ms(start.elapsed()));
        vm.kill();
    }
    let load = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
        state.display(),
        mem.display()
    );
    for run in 0..runs {
        let socket = dir.join(format!("snap-load{run}.sock"));
        let mut vm = squib_api(ctx, &socket)?;
        let mut client = Client::connect(&socket)?;
        let sent = Instant::now();
        api_ok(&mut client, "PUT", "/snapshot/load", &load)?;
        samples.load_call.push(ms(sent.elapsed()));
        let spawned_to_sent = sent.duration_since(vm.spawned());
        let (at, _) = vm.wait_for_marker("SNAP tick", TIMEOUT)?;
        samples
            .load_to_output
            .push(ms(at.saturating_sub(spawned_to_sent)));
        vm.kill();
    }
    Ok(samples)
}

/// QEMU's HMP monitor on a Unix socket.
struct Monitor(BufReader<UnixStream>);

impl Monitor {
    fn connect(path: &Path) -> Result<Monitor, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("QEMU monitor {}: {e}", path.display())),
            }
        };
        let mut monitor = Monitor(BufReader::new(stream));
        monitor.until_prompt()?;
        Ok(monitor)
    }

    fn until_prompt(&mut self) -> Result<String, String> {
        let mut text = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            std::io::Read::read_exact(&mut self.0, &mut byte)
                .map_err(|e| format!("QEMU monitor: {e}"))?;
            text.push(byte[0]);
            if text.ends_with(b"(qemu) ") {
                return Ok(String::from_utf8_lossy(&text).into_owned());
            }
        }
    }

    fn command(&mut self, line: &str) -> Result<String, String> {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("QEMU monitor: {e}"))?;
        self.until_prompt()
    }
}

fn qemu_command(ctx: &Context, mib: u64, monitor: &Path) -> Result<Command, String> {
    let spec = Spec {
        cmdline: CMDLINE,
        mem_mib: mib,
        disk: None,
        boot_timer: false,
        api_sock: None,
    };
    let mut command = Vmm::Qemu(Aio::IoUring).command(ctx, &spec)?;
    let _ = std::fs::remove_file(monitor);
    command
        .arg("-monitor")
        .arg(format!("unix:{},server=on,wait=off", monitor.display()));
    Ok(command)
}

/// QEMU's restore: (migrate_incoming → first guest line) per run, ms.
fn qemu_restore(ctx: &Context, mib: u64, runs: usize) -> Result<Vec<f64>, String> {
    let dir = ctx.scratch()?;
    let monitor_path = dir.join("qemu-mon.sock");
    let image = dir.join("qemu-snap.bin");
    {
        let mut vm = Vm::spawn(qemu_command(ctx, mib, &monitor_path)?)?;
        vm.wait_for_marker("SNAP tick 2", TIMEOUT)?;
        let mut monitor = Monitor::connect(&monitor_path)?;
        monitor.command(&format!("migrate \"exec:cat > {}\"", image.display()))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let info = monitor.command("info migrate")?;
            if info.contains("completed") {
                break;
            }
            if info.contains("failed") || Instant::now() > deadline {
                return Err(format!("QEMU migrate to file: {info}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        vm.kill();
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut command = qemu_command(ctx, mib, &monitor_path)?;
        command.args(["-incoming", "defer"]);
        let mut vm = Vm::spawn(command)?;
        let mut monitor = Monitor::connect(&monitor_path)?;
        let sent = Instant::now();
        monitor.command(&format!(
            "migrate_incoming \"exec:cat {}\"",
            image.display()
        ))?;
        let spawned_to_sent = sent.duration_since(vm.spawned());
        let (at, _) = vm.wait_for_marker("SNAP tick", TIMEOUT)?;
        samples.push(ms(at.saturating_sub(spawned_to_sent)));
        vm.kill();
    }
    Ok(samples)
}
