//! `cargo xtask bench`: squib measured against the limit and a peer, in one run.
//!
//! Eight levels, from the block engine up to the whole VMM, its network path, the vsock device
//! and snapshot restore; each compares against a baseline measured in the same run (raw host
//! I/O, QEMU microvm, an idle guest, a host-only socket loop), because the machines are shared
//! and noisy. Every figure is a median with min–max over several runs. The result
//! is a table on stdout and a markdown report in `docs/perf/report-<date>.md`;
//! `--compare <report>` checks the ratios against a stored report.

mod api;
mod backend;
mod compare;
mod criterion;
mod device_model;
mod device_path;
mod level;
mod machine;
mod mmio_profile;
pub(crate) mod net_peer;
mod network;
mod report;
mod snapshot;
mod startup;
mod stats;
mod vm;
mod vmm;
mod vsock;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use crate::setup;
use level::Level;

const USAGE: &str = "usage: cargo xtask bench [--quick] [--no-report] [--levels 1,2,3,4,5,6,7,8]
                         [--compare docs/perf/<report>.md] [--threshold PERCENT]

  --quick        a few seconds per level (the CI smoke run)
  --no-report    print the table only; write no report file
  --levels       run only these levels (1 backend, 2 device model, 3 device path on KVM,
                 4 start-up and memory, 5 API responsiveness, 6 network, 7 vsock,
                 8 snapshot restore)
  --compare      compare the ratios with a stored report; exit non-zero when one regressed
                 by more than --threshold percent (default 10)";

/// The parsed command line.
#[derive(Debug)]
struct Options {
    quick: bool,
    write_report: bool,
    levels: Vec<u8>,
    compare: Option<PathBuf>,
    threshold_percent: f64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            quick: false,
            write_report: true,
            levels: vec![1, 2, 3, 4, 5, 6, 7, 8],
            compare: None,
            threshold_percent: 10.0,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--no-report" => options.write_report = false,
                "--compare" => options.compare = Some(PathBuf::from(value()?)),
                "--threshold" => {
                    options.threshold_percent = value()?
                        .parse()
                        .map_err(|_| format!("--threshold takes a number\n{USAGE}"))?;
                }
                "--levels" => {
                    options.levels = value()?
                        .split(',')
                        .map(|n| n.trim().parse().ok().filter(|n| (1..=8).contains(n)))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("--levels takes numbers 1 to 8\n{USAGE}"))?;
                }
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            }
        }
        Ok(options)
    }
}

/// What every level shares: paths, the mode, and the artefacts built on first use.
#[derive(Debug)]
pub struct Context {
    pub workspace: PathBuf,
    pub target_dir: PathBuf,
    pub cargo: String,
    pub quick: bool,
    squib: OnceCell<Result<PathBuf, String>>,
    guest: OnceCell<Result<PathBuf, String>>,
    qemu: OnceCell<Result<PathBuf, String>>,
}

impl Context {
    fn new(quick: bool) -> Result<Context, String> {
        let workspace = setup::workspace();
        let target_dir = setup::target_dir();
        Ok(Context {
            workspace,
            target_dir,
            cargo: setup::cargo(),
            quick,
            squib: OnceCell::new(),
            guest: OnceCell::new(),
            qemu: OnceCell::new(),
        })
    }

    /// The release `squib` binary users get, built on first use; `SQUIB_BENCH_SQUIB=<binary>`
    /// runs the suite with another build instead (A/B runs of two versions in one session).
    pub fn squib(&self) -> Result<&Path, String> {
        self.squib
            .get_or_init(|| {
                if let Some(path) = std::env::var_os("SQUIB_BENCH_SQUIB") {
                    return Ok(PathBuf::from(path));
                }
                setup::run(
                    &self.cargo,
                    &[
                        "build",
                        "--release",
                        "--locked",
                        "-p",
                        "squib-vmm",
                        "--bin",
                        "squib",
                    ],
                )
                .map_err(|e| format!("squib does not build: {e}"))?;
                Ok(self.target_dir.join("release/squib"))
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// The project's test guest ELF (`cargo xtask test-guest`), built on first use;
    /// `SQUIB_BENCH_GUEST=<elf>` runs the suite with another build of it instead.
    pub fn guest(&self) -> Result<&Path, String> {
        self.guest
            .get_or_init(|| {
                if let Some(path) = std::env::var_os("SQUIB_BENCH_GUEST") {
                    return Ok(PathBuf::from(path));
                }
                setup::guest_target()?;
                let printed = setup::output(&self.cargo, &["xtask", "test-guest"])
                    .map_err(|e| format!("the test guest does not build: {e}"))?;
                let path = printed.lines().last().map(str::trim).unwrap_or_default();
                let path = PathBuf::from(path);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(format!(
                        "`cargo xtask test-guest` printed no ELF path: {printed:?}"
                    ))
                }
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// `qemu-system-x86_64`, installed on first use (outside `--quick`, which never installs).
    pub fn qemu(&self) -> Result<&Path, String> {
        self.qemu
            .get_or_init(|| {
                if !setup::on_path("qemu-system-x86_64") {
                    if self.quick {
                        return Err("qemu-system-x86_64 is not installed (--quick does not \
                                    install it; a full run does)"
                            .into());
                    }
                    setup::qemu()?;
                }
                Ok(PathBuf::from("qemu-system-x86_64"))
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// A scratch directory for disk images and sockets, under the target directory.
    pub fn scratch(&self) -> Result<PathBuf, String> {
        let dir = self.target_dir.join("bench");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let options = Options::parse(args)?;
    let ctx = Context::new(options.quick)?;
    let mut machine = machine::Machine::describe(&ctx.workspace);
    let mut levels: Vec<Level> = Vec::new();
    for number in &options.levels {
        let level = match number {
            1 => backend::run(&ctx),
            2 => device_model::run(&ctx),
            3 => device_path::run(&ctx),
            4 => startup::run(&ctx),
            5 => api::run(&ctx),
            6 => network::run(&ctx),
            7 => vsock::run(&ctx),
            _ => snapshot::run(&ctx),
        };
        eprintln!("{}", report::level_table(&level));
        levels.push(level);
    }
    machine.finish(&ctx.workspace);
    println!("{}", report::summary(&machine, &levels, options.quick));
    if options.write_report {
        let path = report::write(&ctx, &machine, &levels, options.quick)?;
        println!("report: {}", path.display());
    }
    match &options.compare {
        Some(stored) => compare::against(stored, &levels, options.threshold_percent),
        None => Ok(()),
    }
}
