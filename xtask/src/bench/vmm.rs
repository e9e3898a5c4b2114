//! The two VMMs under test and how each is asked to boot the same guest on the same disk.

use std::path::Path;
use std::process::{Command, ExitStatus};

use super::Context;

/// squib's block engines (`--disk ...,engine=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sync,
    /// io_uring (squib's `Async`).
    Async,
    /// The I/O-thread engine `Async` meant before io_uring (`engine=threads`).
    Threads,
}

/// QEMU's block I/O back ends (`-drive aio=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aio {
    IoUring,
    Threads,
}

/// A VMM configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Squib(Engine),
    Qemu(Aio),
}

/// The disk as both VMMs get it: the same file, page-cached or opened with O_DIRECT.
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    pub path: &'a Path,
    pub direct: bool,
}

/// What to boot: the guest's command line, memory, and optional devices.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub cmdline: &'a str,
    pub mem_mib: u64,
    pub disk: Option<Disk<'a>>,
    /// squib's boot-timer device (QEMU has none).
    pub boot_timer: bool,
    /// Run squib the Firecracker way: this API socket, the VM described by a `--config-file`.
    pub api_sock: Option<&'a Path>,
}

/// QEMU's small firmware: without it microvm boots through SeaBIOS, which takes seconds here.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

impl Vmm {
    /// Stable key used in figure ids.
    pub fn key(self) -> &'static str {
        match self {
            Vmm::Squib(Engine::Sync) => "squib-sync",
            Vmm::Squib(Engine::Async) => "squib-async",
            Vmm::Squib(Engine::Threads) => "squib-threads",
            Vmm::Qemu(Aio::IoUring) => "qemu-io_uring",
            Vmm::Qemu(Aio::Threads) => "qemu-threads",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Vmm::Squib(Engine::Sync) => "squib (sync engine)",
            Vmm::Squib(Engine::Async) => "squib (async engine: io_uring)",
            Vmm::Squib(Engine::Threads) => "squib (threads engine)",
            Vmm::Qemu(Aio::IoUring) => "QEMU microvm (aio=io_uring)",
            Vmm::Qemu(Aio::Threads) => "QEMU microvm (aio=threads)",
        }
    }

    pub fn is_squib(self) -> bool {
        matches!(self, Vmm::Squib(_))
    }

    /// The command that boots `spec` under this VMM.
    pub fn command(self, ctx: &Context, spec: &Spec) -> Result<Command, String> {
        let guest = ctx.guest()?;
        match self {
            Vmm::Squib(engine) if spec.api_sock.is_some() => firecracker_mode(ctx, engine, spec),
            Vmm::Squib(engine) => {
                let mut command = Command::new(ctx.squib()?);
                command
                    .arg("--kernel")
                    .arg(guest)
                    .args(["--cmdline", spec.cmdline])
                    .args(["--vcpus", "1"])
                    .args(["--mem-mib", &spec.mem_mib.to_string()]);
                if let Some(disk) = spec.disk {
                    let engine = match engine {
                        Engine::Sync => "sync",
                        Engine::Async => "async",
                        Engine::Threads => "threads",
                    };
                    let direct = if disk.direct { ",direct" } else { "" };
                    command
                        .arg("--disk")
                        .arg(format!("{},engine={engine}{direct}", disk.path.display()));
                }
                if spec.boot_timer {
                    command.arg("--boot-timer");
                }
                Ok(command)
            }
            Vmm::Qemu(aio) => {
                let mut command = Command::new(ctx.qemu()?);
                command
                    // acpi=off: QEMU then lists its virtio-mmio devices on the command line,
                    // which is how the guest finds them under squib too.
                    .args(["-M", "microvm,acpi=off", "-accel", "kvm"])
                    // MSR 0x10a (arch capabilities) cannot be set under PVM.
                    .args(["-cpu", "host,-arch-capabilities", "-smp", "1"])
                    .args(["-m", &format!("{}M", spec.mem_mib)])
                    .args(["-nodefaults", "-no-user-config", "-display", "none"])
                    .args(["-serial", "stdio", "-bios", QBOOT])
                    .arg("-kernel")
                    .arg(guest)
                    .args(["-append", spec.cmdline])
                    // microvm has no i8042: the guest's reset write to 0x64 ends QEMU (status
                    // 253), and 0x501 is the debug-exit port squib also has.
                    .args(["-device", "isa-debug-exit,iobase=0x64,iosize=1"])
                    .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"])
                    // microvm's virtio-mmio is legacy (version 1) by default; squib's and the
                    // guest's is version 2.
                    .args(["-global", "virtio-mmio.force-legacy=false"]);
                if let Some(disk) = spec.disk {
                    let aio = match aio {
                        Aio::IoUring => "io_uring",
                        Aio::Threads => "threads",
                    };
                    let cache = if disk.direct { "none" } else { "writeback" };
                    command
                        .arg("-drive")
                        .arg(format!(
                            "id=disk0,file={},format=raw,if=none,aio={aio},cache={cache}",
                            disk.path.display()
                        ))
                        .args(["-device", "virtio-blk-device,drive=disk0"]);
                }
                Ok(command)
            }
        }
    }

    /// The base of the virtio-mmio window holding `gpa`, if it is in one: squib's slots are
    /// 4 KiB from 0xc000_1000 (docs/guest-interface.md), QEMU microvm's 512 bytes from
    /// 0xfeb0_0000.
    pub fn virtio_window(self, gpa: u64) -> Option<u64> {
        match self {
            Vmm::Squib(_) => (0xc000_1000..0xc002_0000)
                .contains(&gpa)
                .then_some(gpa & !0xfff),
            Vmm::Qemu(_) => (0xfeb0_0000..0xfeb0_4000)
                .contains(&gpa)
                .then_some(gpa & !0x1ff),
        }
    }

    /// Whether `status` is this VMM's "the guest reset the machine" exit.
    pub fn clean_exit(self, status: ExitStatus) -> bool {
        match self {
            Vmm::Squib(_) => status.code() == Some(0),
            // isa-debug-exit on port 0x64 turns the reset byte 0xfe into (0xfe << 1) | 1.
            Vmm::Qemu(_) => status.code() == Some(253),
        }
    }
}

/// squib started as Firecracker is: `--api-sock` plus a `--config-file` that boots the VM.
fn firecracker_mode(ctx: &Context, engine: Engine, spec: &Spec) -> Result<Command, String> {
    let socket = spec.api_sock.ok_or("no API socket")?;
    let engine = match engine {
        Engine::Sync => "Sync",
        Engine::Async => "Async",
        Engine::Threads => {
            return Err("the threads engine has no API name (command line only)".into());
        }
    };
    let drives: Vec<serde_json::Value> = spec
        .disk
        .iter()
        .map(|disk| {
            serde_json::json!({
                "drive_id": "disk0",
                "path_on_host": disk.path,
                "is_root_device": false,
                "is_read_only": false,
                "io_engine": engine,
            })
        })
        .collect();
    let config = serde_json::json!({
        "boot-source": { "kernel_image_path": ctx.guest()?, "boot_args": spec.cmdline },
        "drives": drives,
        "machine-config": { "vcpu_count": 1, "mem_size_mib": spec.mem_mib },
    });
    let path = ctx.scratch()?.join("squib-config.json");
    std::fs::write(&path, config.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut command = Command::new(ctx.squib()?);
    command
        .arg("--api-sock")
        .arg(socket)
        .arg("--config-file")
        .arg(&path);
    if spec.boot_timer {
        command.arg("--boot-timer");
    }
    Ok(command)
}
