//! Level 6: the network path — UDP round-trip latency and guest→host / host→guest throughput
//! over a TAP device, squib against QEMU microvm (`virtio-net-device` on the same TAP, userspace
//! back end) booting the same test guest, in the same run.
//!
//! Everything runs in a network namespace of its own (`squibnet-bench-<pid>`, deleted at the
//! end) holding the TAP, a UDP echo server, a sink socket for guest→host runs and, for
//! host→guest runs, a sender that keeps the TAP fed (the last two are `cargo xtask net-peer`,
//! see `net_peer.rs` for why they are what they are); no traffic leaves it. Times come from the host's clock on the guest's `BENCH start` and
//! `BENCH done` serial lines, as for level 3.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Context;
use super::level::{Better, Figure, Level, Verdict};
use super::vm::Vm;
use super::vmm::{Aio, Engine, Spec, Vmm};

const TITLE: &str = "Network (virtio-net on a TAP)";
const GOAL: &str =
    "squib round trip ≤ QEMU microvm's; squib throughput ≥ 1.5× QEMU's userspace back end";
const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const GUEST_MAC: &str = "06:00:0a:00:00:02";
const ECHO_PORT: u16 = 7777;
/// Where guest → host datagrams go: the guest's default sink port (`guest.net` without one).
const SINK_PORT: u16 = 9;
/// The guest's UDP port (`net_checks::GUEST_PORT`).
const GUEST_PORT: u16 = 40_000;
/// An MTU-sized frame: what each throughput datagram puts on the wire.
const FRAME_BYTES: f64 = 1514.0;
const MEM_MIB: u64 = 128;

const ECHO: &str = r#"
import socket, sys
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
e.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, a = e.recvfrom(65536)
    e.sendto(d, a)
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    RoundTrip,
    GuestToHost,
    HostToGuest,
}

impl Workload {
    const ALL: [Workload; 3] = [Self::RoundTrip, Self::GuestToHost, Self::HostToGuest];

    fn key(self) -> &'static str {
        match self {
            Self::RoundTrip => "udp-rr",
            Self::GuestToHost => "udp-tx",
            Self::HostToGuest => "udp-rx",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::RoundTrip => "UDP round trip, 64 bytes",
            Self::GuestToHost => "guest → host, 1472-byte UDP",
            Self::HostToGuest => "host → guest, 1472-byte UDP",
        }
    }

    fn ops(self, quick: bool) -> u64 {
        match (self, quick) {
            (Self::RoundTrip, true) => 2_000,
            (Self::RoundTrip, false) => 20_000,
            (_, true) => 20_000,
            // Over 2 s at squib's rates: the boot-to-steady-state ramp stays out of the figure.
            (_, false) => 1_000_000,
        }
    }
}

/// The namespace, its TAP and the helpers started in it; all removed on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("squibnet-bench-{}", std::process::id());
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.ip(&["netns", "add", &ns.name], false)?;
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"], true)?;
        ns.ip(
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"],
            true,
        )?;
        ns.ip(&["link", "set", "tap0", "up"], true)?;
        ns.ip(&["link", "set", "lo", "up"], true)?;
        ns.ip(
            &[
                "neigh",
                "add",
                GUEST_IP,
                "lladdr",
                GUEST_MAC,
                "dev",
                "tap0",
                "nud",
                "permanent",
            ],
            true,
        )?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str], inside: bool) -> Result<(), String> {
        let mut command = Command::new("ip");
        if inside {
            command.args(["-n", &self.name]);
        }
        let status = command
            .args(args)
            .status()
            .map_err(|e| format!("ip: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`ip {}` failed ({status})", args.join(" ")))
        }
    }

    /// `command` run inside the namespace.
    fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    }

    /// Starts a Python helper in the namespace and waits for its `ready` line.
    fn python(&mut self, script: &str, args: &[&str]) -> Result<usize, String> {
        let mut command = Command::new("python3");
        command.args(["-c", script]).args(args);
        self.helper(command)
    }

    /// Starts `cargo xtask net-peer <args>` (this binary) in the namespace.
    fn peer(&mut self, args: &[&str]) -> Result<usize, String> {
        let exe = std::env::current_exe().map_err(|e| format!("xtask's own path: {e}"))?;
        let mut command = Command::new(exe);
        command.arg("net-peer").args(args);
        self.helper(command)
    }

    /// Starts `command` in the namespace and waits for its `ready` line.
    fn helper(&mut self, command: Command) -> Result<usize, String> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = self
            .wrap(&command)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        self.children.push(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("{program}: {e}"))?;
        if line.trim() != "ready" {
            return Err(format!("a helper in the namespace did not start: {line:?}"));
        }
        Ok(self.children.len() - 1)
    }

    /// The TAP's `tx_packets` and `tx_dropped` (towards the guest), read inside the namespace.
    fn tap_tx_counters(&self) -> Option<(u64, u64)> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat"])
            .args([
                "/sys/class/net/tap0/statistics/tx_packets",
                "/sys/class/net/tap0/statistics/tx_dropped",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        let mut numbers = text.lines().map(|l| l.trim().parse::<u64>().ok());
        Some((numbers.next()??, numbers.next()??))
    }

    fn stop(&mut self, index: usize) {
        if let Some(child) = self.children.get_mut(index) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.stop(index);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(ctx: &Context) -> Level {
    match measure(ctx) {
        Ok(level) => level,
        Err(reason) => Level::unavailable(6, TITLE, GOAL, reason),
    }
}

fn prerequisites() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("needs root for a network namespace and a TAP device".into());
    }
    for (path, what) in [("/dev/kvm", "/dev/kvm"), ("/dev/net/tun", "/dev/net/tun")] {
        if !Path::new(path).exists() {
            return Err(format!("{what} is absent"));
        }
    }
    for tool in ["ip", "python3"] {
        if !crate::setup::on_path(tool) {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

fn measure(ctx: &Context) -> Result<Level, String> {
    prerequisites()?;
    ctx.squib()?;
    ctx.guest()?;
    let mut notes = Vec::new();
    let qemu = ctx.qemu().err();
    let mut vmms = vec![Vmm::Squib(Engine::Sync)];
    match &qemu {
        None => vmms.push(Vmm::Qemu(Aio::Threads)),
        Some(reason) => notes.push(format!("QEMU not measured: {reason}.")),
    }
    if Path::new("/dev/vhost-net").exists() {
        notes.push(
            "/dev/vhost-net exists, but QEMU's vhost=on back end is not measured yet.".into(),
        );
    } else {
        notes.push(
            "/dev/vhost-net does not exist on this machine, so QEMU runs its userspace \
             virtio-net back end only (vhost=off); there is no vhost figure."
                .into(),
        );
    }
    let runs = if ctx.quick { 1 } else { 3 };
    let mut ns = Netns::create()?;
    ns.python(ECHO, &[HOST_IP, &ECHO_PORT.to_string()])?;
    ns.peer(&[
        "sink",
        HOST_IP,
        &SINK_PORT.to_string(),
        GUEST_IP,
        &GUEST_PORT.to_string(),
    ])?;

    let mut figures = Vec::new();
    let mut ok = true;
    let mut verdicts = Vec::new();
    for workload in Workload::ALL {
        let mut per_vmm: Vec<Figure> = Vec::new();
        for &vmm in &vmms {
            let mut samples = Vec::new();
            let mut drops = Vec::new();
            for _ in 0..runs {
                let (sample, dropped) = one_run(ctx, &mut ns, vmm, workload)?;
                samples.push(sample);
                drops.extend(dropped);
            }
            if !drops.is_empty() {
                let percents: Vec<String> = drops.iter().map(|d| format!("{d:.0} %")).collect();
                notes.push(format!(
                    "{}, {}: the full TAP dropped {} of the frames the sender offered during \
                     each run (near 0 would mean the sender, not the device path, set the \
                     rate; the sender backs off once the TAP drops, so a few % already means \
                     the device path did).",
                    if vmm.is_squib() {
                        "squib"
                    } else {
                        "QEMU microvm"
                    },
                    workload.label(),
                    percents.join(", ")
                ));
            }
            let (unit, better) = match workload {
                Workload::RoundTrip => ("µs", Better::Lower),
                _ => ("Mbit/s", Better::Higher),
            };
            let name = if vmm.is_squib() {
                "squib"
            } else {
                "QEMU microvm (userspace virtio-net)"
            };
            let figure = Figure::of(
                format!(
                    "net.{}.{}",
                    if vmm.is_squib() { "squib" } else { "qemu" },
                    workload.key()
                ),
                format!("{name}, {}", workload.label()),
                unit,
            )
            .samples(&samples, better);
            per_vmm.extend(figure);
        }
        if let [squib, qemu] = per_vmm.as_slice() {
            let squib = squib.clone().against(qemu);
            if let Some(ratio) = &squib.ratio {
                let (met, goal) = match workload {
                    Workload::RoundTrip => (ratio.value <= 1.0, "≤ 1"),
                    _ => (ratio.value >= 1.5, "≥ 1.5"),
                };
                ok &= met;
                verdicts.push(format!(
                    "{} {:.2}× (goal {goal})",
                    workload.key(),
                    ratio.value
                ));
            }
            figures.push(squib);
            figures.push(qemu.clone());
        } else {
            figures.extend(per_vmm);
        }
    }
    notes.push(format!(
        "Each figure is the median of {runs} boot(s). Round trip = the time between the guest's \
         BENCH lines / datagrams, one 64-byte datagram in flight to a Python echo server in the \
         namespace (its own latency is in both VMMs' figures). Throughput counts 1514-byte \
         frames: guest → host datagrams go to port {SINK_PORT} of a socket that is connected to \
         the guest's address and never read (the kernel finds it without a route lookup and \
         drops the datagram once its buffer is full); host → guest datagrams come from `cargo \
         xtask net-peer send`, which hands the kernel 44 datagrams per send (UDP segmentation \
         offload: the TAP still gets one frame per datagram) and backs off (50 µs to 1 ms) \
         whenever the TAP dropped, so its queue stays full while the sender leaves the core to \
         the VMM; the guest counts from the first datagram. Both peers are the same for both \
         VMMs and are built to cost the host as little per frame as possible (see \
         xtask/src/bench/net_peer.rs). The guest accepts neither MRG_RXBUF nor offloads, sets \
         VRING_AVAIL_F_NO_INTERRUPT and polls its rings."
    ));
    let verdict = if qemu.is_some() {
        Verdict::Unavailable("no QEMU figures to compare with".into())
    } else if ok {
        Verdict::Met(verdicts.join(", "))
    } else {
        Verdict::NotMet(verdicts.join(", "))
    };
    Ok(Level {
        number: 6,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    })
}

/// One boot of the guest in `workload`'s bench mode; returns µs per round trip or Mbit/s, and
/// for host → guest the percentage of offered frames the full TAP dropped between the BENCH lines.
fn one_run(
    ctx: &Context,
    ns: &mut Netns,
    vmm: Vmm,
    workload: Workload,
) -> Result<(f64, Option<f64>), String> {
    let ops = workload.ops(ctx.quick);
    let cmdline = format!(
        "console=ttyS0 guest.bench={} guest.ops={ops} guest.net={GUEST_IP},{HOST_IP},{ECHO_PORT}",
        workload.key()
    );
    let sender = match workload {
        Workload::HostToGuest => {
            Some(ns.peer(&["send", GUEST_IP, &GUEST_PORT.to_string(), "tap0"])?)
        }
        _ => None,
    };
    let command = vm_command(ctx, vmm, &cmdline)?;
    let result = (|| {
        let mut vm = Vm::spawn(ns.wrap(&command))?;
        let (start, _) = vm.wait_for_marker("BENCH start", Duration::from_secs(60))?;
        let before = sender.and_then(|_| ns.tap_tx_counters());
        let (done, _) = vm.wait_for_marker("BENCH done", Duration::from_secs(300))?;
        let after = sender.and_then(|_| ns.tap_tx_counters());
        let dropped = before
            .zip(after)
            .and_then(|((sent0, drop0), (sent1, drop1))| {
                let (sent, dropped) = (sent1.saturating_sub(sent0), drop1.saturating_sub(drop0));
                (sent + dropped > 0).then(|| dropped as f64 * 100.0 / (sent + dropped) as f64)
            });
        let (_, status) = vm.wait_exit(Duration::from_secs(30))?;
        if !vmm.clean_exit(status) {
            return Err(format!(
                "{} exited with {status}; last output:\n{}",
                vmm.label(),
                vm.transcript_tail(20)
            ));
        }
        let seconds = (done - start).as_secs_f64();
        let value = match workload {
            Workload::RoundTrip => seconds / ops as f64 * 1e6,
            _ => ops as f64 * FRAME_BYTES * 8.0 / seconds / 1e6,
        };
        Ok((value, dropped))
    })();
    if let Some(index) = sender {
        ns.stop(index);
    }
    result
}

/// squib with the interface in a config file, or QEMU with `virtio-net-device` on the TAP.
fn vm_command(ctx: &Context, vmm: Vmm, cmdline: &str) -> Result<Command, String> {
    if vmm.is_squib() {
        let config = serde_json::json!({
            "boot-source": { "kernel_image_path": ctx.guest()?, "boot_args": cmdline },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB },
            "network-interfaces": [{
                "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC
            }],
        });
        let path = ctx.scratch()?.join("squib-net-config.json");
        std::fs::write(&path, config.to_string())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut command = Command::new(ctx.squib()?);
        command.arg("--no-api").arg("--config-file").arg(&path);
        return Ok(command);
    }
    let spec = Spec {
        cmdline,
        mem_mib: MEM_MIB,
        disk: None,
        boot_timer: false,
        api_sock: None,
    };
    let mut command = vmm.command(ctx, &spec)?;
    command
        .args([
            "-netdev",
            "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off",
        ])
        .args([
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={GUEST_MAC}"),
        ]);
    Ok(command)
}
