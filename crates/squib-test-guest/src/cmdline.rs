//! The kernel command line: the virtio-mmio devices the VMM describes, and the guest's options.
//!
//! Words are separated by spaces; `key=value` words whose key starts with `guest.` are this
//! guest's options (an unknown one is an error, so a typo cannot pass silently), and
//! `virtio_mmio.device=<size>@<base>:<gsi>[:<id>]` describe devices. Everything else (e.g.
//! `console=ttyS0`) is ignored.

use core::fmt;

/// How many virtio-mmio devices the guest drives at most.
pub const MAX_DEVICES: usize = 8;

/// One `virtio_mmio.device=` entry.
#[derive(Debug, Clone, Copy)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// What the run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `guest.mode=boot`: power off right after the boot line (exec → exit timing).
    Boot,
    /// The default: run the checks.
    Test,
    /// `guest.bench=<workload>`: a benchmark, see `BenchOptions`.
    Bench,
    /// `guest.mode=snapshot`: rewrite a memory region round after round, printing progress, so
    /// that a snapshot taken mid-run and restored elsewhere can be checked (`snapshot`).
    Snapshot,
    /// `guest.mode=reset-storm`: fill the first disk's queue with large reads and reset the
    /// device, forever (the host checks that stop and pause stay prompt).
    ResetStorm,
    /// `guest.mode=durable`: write a known pattern to vda, FLUSH, print a line, wait to be killed.
    Durable,
    /// `guest.mode=virtio-drivers`: the same devices driven by the third-party `virtio-drivers`
    /// crate instead of this guest's own driver.
    VirtioDrivers,
}

/// `guest.fault=ud|pf`: raise an exception at CPL3 on purpose, to check the exception path
/// (the run must end with a FAIL line and debug-exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    InvalidOpcode,
    PageFault,
}

/// How completions are collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Poll,
    Interrupt,
}

impl fmt::Display for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Poll => "poll",
            Self::Interrupt => "irq",
        })
    }
}

/// The benchmark workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// 4 KiB reads at random sector-aligned offsets over the whole disk.
    RandRead,
    /// virtio-net: `guest.ops` 64-byte UDP round trips to the echo server, one at a time.
    UdpRoundTrip,
    /// virtio-net: `guest.ops` 1472-byte datagrams to the sink port, as fast as they go.
    UdpSend,
    /// virtio-net: `guest.ops` datagrams received from a host that keeps sending.
    UdpReceive,
}

impl Workload {
    pub fn is_network(self) -> bool {
        !matches!(self, Self::RandRead)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub workload: Workload,
    /// `guest.qd`: requests kept in flight.
    pub queue_depth: u16,
    /// `guest.ops`: requests completed in total.
    pub ops: u64,
    /// `guest.completion=poll|irq`.
    pub completion: Completion,
}

/// The checks that can be selected with `guest.checks=<name>,...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// GET_ID returns the serial.
    Id,
    /// Multi-sector and multi-segment write, FLUSH, read-back (writable disks).
    ReadWrite,
    /// Many requests in flight at once.
    InFlight,
    /// Completion signalled by interrupt.
    Interrupt,
    /// Reads past the end fail with IOERR.
    PastEnd,
    /// Writes to a read-only disk fail and change nothing.
    ReadOnly,
}

impl Check {
    pub const ALL: [Self; 6] = [
        Self::Id,
        Self::ReadWrite,
        Self::InFlight,
        Self::Interrupt,
        Self::PastEnd,
        Self::ReadOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ReadWrite => "rw",
            Self::InFlight => "inflight",
            Self::Interrupt => "irq",
            Self::PastEnd => "past-end",
            Self::ReadOnly => "ro",
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks(u32);

impl Checks {
    pub fn all() -> Self {
        Self(Check::ALL.iter().fold(0, |bits, check| bits | check.bit()))
    }

    pub fn contains(self, check: Check) -> bool {
        self.0 & check.bit() != 0
    }
}

/// Disks named `vda`, `vdb`, … in command-line order; a set of them as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskSet(u32);

impl DiskSet {
    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }
}

/// The name Linux would give the `index`-th virtio disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskName(pub usize);

impl fmt::Display for DiskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // MAX_DEVICES keeps the index within one letter.
        write!(f, "vd{}", char::from(b'a' + self.0 as u8))
    }
}

/// Everything the command line says.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    devices: [Option<MmioDevice>; MAX_DEVICES],
    /// `guest.checks=`: which checks run (default: all).
    pub checks: Checks,
    /// `guest.expect_ro=vdb,...`: the disks that must (and the others must not) be read-only.
    pub expect_read_only: Option<DiskSet>,
    /// `guest.disk=vdX`: the disk the benchmark uses (default `vda`).
    pub bench_disk: usize,
    pub bench: BenchOptions,
    pub fault: Option<Fault>,
    /// `guest.pace=fast`: snapshot mode ticks back to back instead of every ~25 ms, so the
    /// first line after a restore marks the moment the guest runs again (benchmarks).
    pub fast_ticks: bool,
    /// `guest.net=<guest ip>,<host ip>,<echo port>[,<sink port>,<count>]`: what the virtio-net
    /// checks talk to.
    pub net: Option<NetOptions>,
    /// `guest.rng_rate=<bytes/s>`: the entropy device's configured rate, to check.
    pub rng_rate: Option<u64>,
}

/// The network the virtio-net checks run on.
#[derive(Debug, Clone, Copy)]
pub struct NetOptions {
    pub guest_ip: [u8; 4],
    pub host_ip: [u8; 4],
    /// A UDP echo server on the host.
    pub echo_port: u16,
    /// A UDP sink on the host and how many 1000-byte datagrams to blast at it.
    pub sink: Option<(u16, u32)>,
}

impl Options {
    /// The devices, in command-line order.
    pub fn devices(&self) -> impl Iterator<Item = &MmioDevice> {
        self.devices.iter().map_while(Option::as_ref)
    }

    pub fn device_count(&self) -> usize {
        self.devices().count()
    }
}

/// A word of the command line this guest cannot accept.
#[derive(Debug, Clone, Copy)]
pub struct CmdlineError {
    word: &'static str,
    problem: &'static str,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.word, self.problem)
    }
}

/// Parses the whole command line.
pub fn parse(cmdline: &'static str) -> Result<Options, CmdlineError> {
    let mut options = Options {
        mode: Mode::Test,
        devices: [None; MAX_DEVICES],
        checks: Checks::all(),
        net: None,
        expect_read_only: None,
        bench_disk: 0,
        bench: BenchOptions {
            workload: Workload::RandRead,
            queue_depth: 32,
            ops: 100_000,
            completion: Completion::Poll,
        },
        fault: None,
        fast_ticks: false,
        rng_rate: None,
    };
    let mut device_count = 0;
    let mut mode_given = None;
    for word in cmdline.split_ascii_whitespace() {
        let error = |problem| CmdlineError { word, problem };
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "virtio_mmio.device" => {
                let slot = options
                    .devices
                    .get_mut(device_count)
                    .ok_or(error("too many devices"))?;
                *slot = Some(parse_device(value).map_err(error)?);
                device_count += 1;
            }
            "guest.mode" => {
                mode_given = Some(match value {
                    "boot" => Mode::Boot,
                    "test" => Mode::Test,
                    "bench" => Mode::Bench,
                    "snapshot" => Mode::Snapshot,
                    "reset-storm" => Mode::ResetStorm,
                    "durable" => Mode::Durable,
                    "virtio-drivers" => Mode::VirtioDrivers,
                    _ => {
                        return Err(error(
                            "expected boot, test, bench, reset-storm, durable, virtio-drivers \
                             or snapshot",
                        ));
                    }
                });
            }
            "guest.bench" => {
                options.bench.workload = match value {
                    "randread" => Workload::RandRead,
                    "udp-rr" => Workload::UdpRoundTrip,
                    "udp-tx" => Workload::UdpSend,
                    "udp-rx" => Workload::UdpReceive,
                    _ => return Err(error("expected randread, udp-rr, udp-tx or udp-rx")),
                };
                options.mode = Mode::Bench;
            }
            "guest.qd" => {
                options.bench.queue_depth = parse_number(value)
                    .and_then(|qd| u16::try_from(qd).ok())
                    .filter(|&qd| qd > 0)
                    .ok_or(error("expected a queue depth from 1 to 65535"))?;
            }
            "guest.ops" => {
                options.bench.ops = parse_number(value)
                    .filter(|&ops| ops > 0)
                    .ok_or(error("expected a positive number"))?;
            }
            "guest.completion" => {
                options.bench.completion = match value {
                    "poll" => Completion::Poll,
                    "irq" => Completion::Interrupt,
                    _ => return Err(error("expected poll or irq")),
                };
            }
            "guest.disk" => {
                options.bench_disk = parse_disk(value).ok_or(error("expected vda..vdh"))?
            }
            "guest.expect_ro" => {
                options.expect_read_only = Some(parse_disks(value).ok_or(error(
                    "expected a comma-separated list of disks (vda..vdh), or none",
                ))?);
            }
            "guest.checks" => {
                options.checks = parse_checks(value).ok_or(error(
                    "expected a comma-separated list of id,rw,inflight,irq,past-end,ro",
                ))?;
            }
            "guest.pace" => {
                options.fast_ticks = match value {
                    "fast" => true,
                    "tsc" => false,
                    _ => return Err(error("expected fast or tsc")),
                };
            }
            "guest.net" => {
                options.net = Some(parse_net(value).ok_or(error(
                    "expected <guest ip>,<host ip>,<echo port>[,<sink port>,<count>]",
                ))?);
            }
            "guest.fault" => {
                options.fault = Some(match value {
                    "ud" => Fault::InvalidOpcode,
                    "pf" => Fault::PageFault,
                    _ => return Err(error("expected ud or pf")),
                });
            }
            "guest.rng_rate" => {
                let rate = parse_number(value).filter(|&rate| rate > 0);
                options.rng_rate = Some(rate.ok_or_else(|| error("expected bytes per second"))?);
            }
            _ if key.starts_with("guest.") => return Err(error("unknown guest option")),
            _ => {}
        }
    }
    if let Some(mode) = mode_given {
        options.mode = mode;
    }
    Ok(options)
}

fn parse_net(value: &str) -> Option<NetOptions> {
    let mut parts = value.split(',');
    let guest_ip = parse_ip(parts.next()?)?;
    let host_ip = parse_ip(parts.next()?)?;
    let echo_port = parts.next()?.parse().ok()?;
    let sink = match (parts.next(), parts.next()) {
        (None, _) => None,
        (Some(port), Some(count)) => Some((port.parse().ok()?, count.parse().ok()?)),
        (Some(_), None) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(NetOptions {
        guest_ip,
        host_ip,
        echo_port,
        sink,
    })
}

fn parse_ip(text: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = text.split('.');
    for byte in &mut ip {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `<size>[K|M|G]@<base>:<gsi>[:<id>]`, numbers decimal or `0x` hex (as Linux accepts them).
fn parse_device(value: &str) -> Result<MmioDevice, &'static str> {
    const SHAPE: &str = "expected <size>@<base>:<irq>";
    let (size, rest) = value.split_once('@').ok_or(SHAPE)?;
    let (base, rest) = rest.split_once(':').ok_or(SHAPE)?;
    let gsi = rest.split_once(':').map_or(rest, |(gsi, _id)| gsi);
    let (digits, shift) = match size.as_bytes().last() {
        Some(b'K' | b'k') => (&size[..size.len() - 1], 10),
        Some(b'M' | b'm') => (&size[..size.len() - 1], 20),
        Some(b'G' | b'g') => (&size[..size.len() - 1], 30),
        _ => (size, 0),
    };
    let size = parse_number(digits)
        .and_then(|size| size.checked_mul(1 << shift))
        .ok_or("bad size")?;
    let base = parse_number(base).ok_or("bad base address")?;
    let gsi = parse_number(gsi)
        .and_then(|gsi| u32::try_from(gsi).ok())
        .ok_or("bad irq")?;
    Ok(MmioDevice { base, size, gsi })
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn parse_disk(name: &str) -> Option<usize> {
    match name.as_bytes() {
        [b'v', b'd', letter] => {
            let index = usize::from(letter.checked_sub(b'a')?);
            (index < MAX_DEVICES).then_some(index)
        }
        _ => None,
    }
}

fn parse_disks(list: &str) -> Option<DiskSet> {
    if list == "none" {
        return Some(DiskSet::default());
    }
    list.split(',')
        .try_fold(0, |bits, name| Some(bits | 1 << parse_disk(name)?))
        .map(DiskSet)
}

fn parse_checks(list: &str) -> Option<Checks> {
    list.split(',')
        .try_fold(0, |bits, name| {
            let check = Check::ALL.iter().find(|check| check.name() == name)?;
            Some(bits | check.bit())
        })
        .map(Checks)
}
