//! The one process runner: from either command line to the microVM's exit status.
//!
//! Two command lines lead here. Firecracker v1.16's (no `--kernel`): every flag of Firecracker's
//! binary is accepted with Firecracker's meaning, those whose feature squib lacks (MMDS, PCI) stop
//! squib at start with one line naming the feature and Firecracker's bad-arguments status (153),
//! never a silent ignore; then the API server and/or a `--config-file`. squib's own (`--kernel`,
//! see [`crate::cli`]): its flags become API actions applied to the same [`VmResources`], and the
//! microVM starts at once without an API socket. Both then run the same controller, VMM, logger,
//! signal handling and exit path. `--no-seccomp` and `--seccomp-filter` are taken out before, in
//! `main` (`seccomp::take_flags`): both command lines have them.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use squib_host::clock::{Clock, now_us};
use tracing::{error, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::controller::{ApiController, InstanceSettings};
use super::http::DEFAULT_MAX_PAYLOAD;
use super::kvm_vmm::KvmVmm;
use super::logger::Logger;
use super::models::{FullVmConfig, LogLevel, LoggerBody};
use super::resources::VmResources;
use super::server::ApiServer;
use super::vmm_control::{ExitNotice, VmmControl};
use crate::cli::{self, CliRun};
use crate::exit::{STATUS_ARG_PARSING, STATUS_BAD_CONFIGURATION, STATUS_GENERIC_ERROR};
use crate::ids::check_instance_id;

/// Where the API socket goes when `--api-sock` is not given (Firecracker's default, which the
/// jailer's clients expect inside the jail).
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's default instance id.
pub const DEFAULT_ID: &str = "anonymous-instance";

/// The usage text of this mode.
pub const USAGE: &str = "usage: squib [--api-sock PATH] [--id ID] [--config-file PATH] [--no-api]
             [--log-path PATH] [--level Off|Error|Warning|Info|Debug|Trace] [--module PATH]
             [--show-level] [--show-log-origin] [--metrics-path PATH] [--boot-timer]
             [--http-api-max-payload-size BYTES] [--no-seccomp | --seccomp-filter FILE]
             [--start-time-us N] [--start-time-cpu-us N] [--parent-cpu-time-us N]
             [--version] [--help] [--snapshot-version] [--describe-snapshot FILE]
       refused until squib has the feature: --mmds-size-limit, --metadata,
             --enable-pci";

/// What the jailer measured before exec'ing squib (`--start-time-us`, `--start-time-cpu-us`,
/// `--parent-cpu-time-us`), as Firecracker's `ProcessTimeReporter` takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartTimes {
    /// `CLOCK_MONOTONIC` µs when the jailer started.
    pub start_time_us: Option<u64>,
    /// `CLOCK_PROCESS_CPUTIME_ID` µs of the jailer process at that point.
    pub start_time_cpu_us: Option<u64>,
    /// CPU µs the jailer's parent spent before forking it.
    pub parent_cpu_time_us: Option<u64>,
}

impl StartTimes {
    /// `api_server.process_startup_time_us`: monotonic µs from the jailer's start to now.
    pub fn startup_time_us(&self) -> Option<u64> {
        self.start_time_us
            .map(|start| now_us(Clock::Monotonic).saturating_sub(start))
    }

    /// When the process started for the boot timer's "since squib started": the jailer's
    /// `--start-time-us` when given (the same monotonic clock as `Instant`), else `exec_time`.
    pub fn process_start(&self, exec_time: Instant) -> Instant {
        self.startup_time_us()
            .and_then(|us| Instant::now().checked_sub(std::time::Duration::from_micros(us)))
            .unwrap_or(exec_time)
    }

    /// `api_server.process_startup_time_cpu_us`: CPU µs since the jailer's measurement, plus the
    /// parent's.
    pub fn startup_time_cpu_us(&self) -> Option<u64> {
        self.start_time_cpu_us.map(|start| {
            now_us(Clock::ProcessCpu)
                .saturating_sub(start)
                .saturating_add(self.parent_cpu_time_us.unwrap_or(0))
        })
    }
}

/// Firecracker-mode flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessArgs {
    /// `--api-sock`.
    pub api_sock: PathBuf,
    /// What starts the microVM.
    pub boot: Boot,
    /// `--no-api`.
    pub no_api: bool,
    /// `--id`.
    pub id: String,
    /// `--log-path`, `--level`, `--module`, `--show-level`, `--show-log-origin`, as the
    /// `PUT /logger` body they amount to.
    pub logger: LoggerBody,
    /// `--metrics-path`.
    pub metrics_path: Option<PathBuf>,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
    /// The jailer's timing flags.
    pub start_times: StartTimes,
}

/// What starts the microVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// An API client's `InstanceStart` (or `PUT /snapshot/load`).
    OnRequest,
    /// `--config-file`: applied and started at once.
    ConfigFile(PathBuf),
    /// squib's own command line (`--kernel` …): applied and started at once.
    CommandLine(Box<CliRun>),
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessCommand {
    /// Run the API server and/or the config file.
    Run(Box<ProcessArgs>),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `--snapshot-version`: the snapshot format version squib writes and loads.
    SnapshotVersion,
    /// `--describe-snapshot FILE`: the format version of a snapshot file.
    DescribeSnapshot(PathBuf),
}

/// A flag mistake, as one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A malformed command line.
    #[error("{0}")]
    Usage(String),
    /// A Firecracker flag whose feature squib does not have.
    #[error("{flag}: squib does not support {feature} yet")]
    Unsupported {
        /// The flag given.
        flag: &'static str,
        /// What squib lacks.
        feature: &'static str,
    },
    /// `--level` names no level (Firecracker counts it as bad configuration).
    #[error(
        "--level {0:?}: invalid value for logger level; possible values: Off, Error, Warning, Info, Debug, Trace"
    )]
    Level(String),
}

impl ArgsError {
    /// Firecracker's exit status for this mistake.
    pub fn status(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Unsupported { .. } => STATUS_ARG_PARSING,
            Self::Level(_) => STATUS_BAD_CONFIGURATION,
        }
    }
}

/// Whether the arguments ask for the command-line mode (`--kernel`) rather than this one.
pub fn is_cli_mode(args: &[OsString]) -> bool {
    args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--kernel" || a.starts_with("--kernel=")
    })
}

/// Firecracker's flags: name, whether it takes a value, and the feature squib lacks for it.
const FLAGS: &[(&str, bool, Option<&str>)] = &[
    ("--api-sock", true, None),
    ("--id", true, None),
    ("--config-file", true, None),
    ("--no-api", false, None),
    ("--log-path", true, None),
    ("--level", true, None),
    ("--module", true, None),
    ("--show-level", false, None),
    ("--show-log-origin", false, None),
    ("--metrics-path", true, None),
    ("--boot-timer", false, None),
    ("--http-api-max-payload-size", true, None),
    ("--start-time-us", true, None),
    ("--start-time-cpu-us", true, None),
    ("--parent-cpu-time-us", true, None),
    ("--version", false, None),
    ("--help", false, None),
    (
        "--mmds-size-limit",
        true,
        Some("MMDS (the microVM metadata service)"),
    ),
    (
        "--metadata",
        true,
        Some("MMDS (the microVM metadata service)"),
    ),
    ("--enable-pci", false, Some("PCI devices")),
    ("--describe-snapshot", true, None),
    ("--snapshot-version", false, None),
];

/// Parses Firecracker-mode flags (without the program name), as Firecracker's parser does:
/// `--name value` or `--name=value`, each flag at most once, no positional arguments.
pub fn parse_args(args: &[OsString]) -> Result<ProcessCommand, ArgsError> {
    let usage = |m: String| ArgsError::Usage(m);
    let mut given: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| usage(format!("argument {arg:?} is not valid UTF-8")))?;
        // squib's short forms of the two informational flags.
        let arg = match arg {
            "-h" => "--help",
            "-V" => "--version",
            other => other,
        };
        if !arg.starts_with("--") {
            return Err(usage(format!("unexpected argument {arg:?}")));
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (arg, None),
        };
        let &(name, takes_value, _) = FLAGS
            .iter()
            .find(|(n, ..)| *n == name)
            .ok_or_else(|| usage(format!("unknown option {name}")))?;
        if given.iter().any(|(n, _)| *n == name) {
            return Err(usage(format!("{name} was given more than once")));
        }
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => match it.next().and_then(|v| v.to_str()) {
                Some(v) if !v.starts_with("--") => Some(v.to_owned()),
                _ => return Err(usage(format!("{name} needs a value"))),
            },
            (false, Some(_)) => return Err(usage(format!("{name} takes no value"))),
            (false, None) => None,
        };
        given.push((name, value));
    }
    let flag = |name: &str| given.iter().any(|(n, _)| *n == name);
    let value = |name: &str| {
        given
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    };
    if flag("--help") {
        return Ok(ProcessCommand::Help);
    }
    if flag("--version") {
        return Ok(ProcessCommand::Version);
    }
    // Firecracker's order: --snapshot-version before --describe-snapshot.
    if flag("--snapshot-version") {
        return Ok(ProcessCommand::SnapshotVersion);
    }
    if let Some(path) = value("--describe-snapshot") {
        return Ok(ProcessCommand::DescribeSnapshot(PathBuf::from(path)));
    }
    if let Some(&(flag, _, Some(feature))) = FLAGS
        .iter()
        .find(|(n, _, feature)| feature.is_some() && flag(n))
    {
        return Err(ArgsError::Unsupported { flag, feature });
    }
    let number = |name: &str| -> Result<Option<u64>, ArgsError> {
        value(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| usage(format!("{name} {v:?}: expected a non-negative integer")))
            })
            .transpose()
    };
    let id = value("--id").unwrap_or_else(|| DEFAULT_ID.into());
    check_instance_id(&id).map_err(|e| usage(format!("--id: {e}")))?;
    let level = value("--level")
        .map(|v| LogLevel::parse(&v).ok_or(ArgsError::Level(v)))
        .transpose()?;
    let max_payload = match value("--http-api-max-payload-size") {
        None => DEFAULT_MAX_PAYLOAD,
        Some(v) => v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
            usage(format!(
                "--http-api-max-payload-size {v:?}: expected a positive number"
            ))
        })?,
    };
    let out = ProcessArgs {
        api_sock: PathBuf::from(value("--api-sock").unwrap_or_else(|| DEFAULT_API_SOCK.into())),
        boot: value("--config-file")
            .map_or(Boot::OnRequest, |p| Boot::ConfigFile(PathBuf::from(p))),
        no_api: flag("--no-api"),
        id,
        logger: LoggerBody {
            level,
            log_path: value("--log-path"),
            show_level: flag("--show-level").then_some(true),
            show_log_origin: flag("--show-log-origin").then_some(true),
            module: value("--module"),
        },
        metrics_path: value("--metrics-path").map(PathBuf::from),
        boot_timer: flag("--boot-timer"),
        max_payload,
        start_times: StartTimes {
            start_time_us: number("--start-time-us")?,
            start_time_cpu_us: number("--start-time-cpu-us")?,
            parent_cpu_time_us: number("--parent-cpu-time-us")?,
        },
    };
    if out.no_api && out.boot == Boot::OnRequest {
        return Err(usage("--no-api requires --config-file".into()));
    }
    Ok(ProcessCommand::Run(Box::new(out)))
}

/// The `--help` text: Firecracker's first line, then both modes' usage.
pub fn help_text() -> String {
    format!(
        "{}\n\n{}\n{USAGE}",
        crate::version::version_line(),
        crate::cli::USAGE
    )
}

/// Parses squib's own command line (`--kernel` …) into the same process arguments: no API
/// socket, Firecracker's defaults for the rest.
pub fn parse_command_line(args: &[OsString]) -> Result<ProcessCommand, ArgsError> {
    match cli::parse(args.iter().cloned()) {
        Ok(cli::Command::Help) => Ok(ProcessCommand::Help),
        Ok(cli::Command::Version) => Ok(ProcessCommand::Version),
        Err(e) => Err(ArgsError::Usage(format!("{e}\n{}", cli::USAGE))),
        Ok(cli::Command::Run(run)) => Ok(ProcessCommand::Run(Box::new(ProcessArgs {
            api_sock: PathBuf::from(DEFAULT_API_SOCK),
            no_api: true,
            id: DEFAULT_ID.into(),
            logger: LoggerBody::default(),
            metrics_path: None,
            boot_timer: run.boot_timer,
            max_payload: DEFAULT_MAX_PAYLOAD,
            start_times: StartTimes::default(),
            boot: Boot::CommandLine(run),
        }))),
    }
}

/// Runs squib with either command line; returns the process exit status.
pub fn run(args: &[OsString], process_start: Instant) -> i32 {
    let parsed = if is_cli_mode(args) {
        parse_command_line(args)
    } else {
        parse_args(args)
    };
    let args = match parsed {
        Ok(ProcessCommand::Run(a)) => a,
        Ok(ProcessCommand::Help) => {
            println!("{}", help_text());
            return 0;
        }
        Ok(ProcessCommand::Version) => {
            // Firecracker prints an empty line after the version; parsers read the first.
            println!("{}\n", crate::version::version_line());
            return 0;
        }
        Ok(ProcessCommand::SnapshotVersion) => {
            println!("{}", crate::snapshot::supported_version());
            return 0;
        }
        Ok(ProcessCommand::DescribeSnapshot(path)) => {
            return match crate::snapshot::describe(&path) {
                Ok(version) => {
                    println!("{version}");
                    0
                }
                Err(e) => {
                    eprintln!("squib: {}: {e}", path.display());
                    i32::from(STATUS_GENERIC_ERROR)
                }
            };
        }
        Err(e) => {
            eprintln!("squib: {e}");
            return i32::from(e.status());
        }
    };
    // squib's command line is applied before anything is logged, so that its mistakes are one
    // `squib: …` line and the usage, as a parser's would be.
    let mut resources = VmResources::default();
    if let Boot::CommandLine(run) = &args.boot
        && let Err(e) = run.configure(&mut resources)
    {
        eprintln!("squib: {e}\n{}", cli::USAGE);
        return i32::from(STATUS_ARG_PARSING);
    }
    let logger = match Logger::install(&args.logger, &args.id) {
        Ok(l) => l,
        Err(e) => {
            // Firecracker's status for a logger it cannot set up (a bad level is 152, above).
            eprintln!("squib: {e}");
            return i32::from(STATUS_GENERIC_ERROR);
        }
    };
    info!("Running {}", crate::version::version_line());
    if !crate::seccomp::enabled() {
        warn!("--no-seccomp: no seccomp filter is installed");
    }
    // Whatever ends the process from here restores the terminal first.
    std::panic::set_hook(Box::new(|info| {
        squib_host::terminal::restore();
        eprintln!("squib: {info}");
    }));
    let stdin = std::io::stdin();
    let raw = stdin.is_terminal()
        && squib_host::terminal::enter_raw_mode(stdin.as_fd()).unwrap_or_else(|e| {
            warn!("stdin stays in line mode: {e}");
            false
        });
    // squib's command line hands the guest stdin whatever it is; Firecracker's only a terminal.
    let console_in = raw || matches!(args.boot, Boot::CommandLine(_));
    let process_start = args.start_times.process_start(process_start);
    let vmm = KvmVmm::new(process_start, console_in);
    let status = match serve(&args, resources, logger, vmm) {
        Ok(status) => status,
        Err(status) => status,
    };
    squib_host::terminal::restore();
    status
}

fn serve(
    args: &ProcessArgs,
    resources: VmResources,
    logger: Option<Logger>,
    vmm: KvmVmm,
) -> Result<i32, i32> {
    let host_err = |what: &str, e: &dyn std::fmt::Display| {
        error!("{what}: {e}");
        i32::from(STATUS_GENERIC_ERROR)
    };
    let settings = InstanceSettings {
        id: args.id.clone(),
        boot_timer: args.boot_timer,
        boot_options: match &args.boot {
            Boot::CommandLine(run) => run.boot_options,
            _ => Default::default(),
        },
    };
    let mut server = if args.no_api {
        None
    } else {
        Some(ApiServer::bind(&args.api_sock, args.max_payload).map_err(|e| host_err("API", &e))?)
    };
    let wake = match &server {
        Some(s) => s.wake_event().map_err(|e| host_err("API", &e))?,
        None => EventFd::new(EFD_NONBLOCK).map_err(|e| host_err("eventfd", &e))?,
    };
    let stopper_wake = wake.try_clone().map_err(|e| host_err("eventfd", &e))?;
    spawn_signal_waiter(vmm.stopper(ExitNotice::new(stopper_wake)));
    let loop_wake = wake.try_clone().map_err(|e| host_err("eventfd", &e))?;
    let mut controller = ApiController::new(settings, vmm, logger, wake).with_resources(resources);
    if server.is_some() {
        // As Firecracker: measured once the API socket listens, and only with the API.
        controller.record_startup_times(
            args.start_times.startup_time_us(),
            args.start_times.startup_time_cpu_us(),
        );
    }
    if let Some(path) = &args.metrics_path {
        controller
            .configure_metrics(path)
            .map_err(|e| host_err("--metrics-path", &e))?;
    }
    match &args.boot {
        Boot::ConfigFile(path) => boot_from_file(&mut controller, path)?,
        Boot::CommandLine(_) => controller.start().map_err(|e| {
            error!("cannot start the microVM: {e}");
            i32::from(STATUS_GENERIC_ERROR)
        })?,
        // Start on request: build what the (default) machine size determines while the client
        // configures the rest.
        Boot::OnRequest => controller.prepare_ahead(),
    }
    match &mut server {
        Some(server) => server
            .run(&mut controller)
            .map_err(|e| host_err("API server", &e)),
        None => wait_for_exit(&mut controller, &loop_wake).map_err(|e| host_err("wait", &e)),
    }
}

/// Applies the `--config-file` and starts the microVM at once.
fn boot_from_file<V: VmmControl>(
    controller: &mut ApiController<V>,
    path: &Path,
) -> Result<(), i32> {
    let fail = |e: &dyn std::fmt::Display| {
        error!("--config-file {}: {e}", path.display());
        i32::from(STATUS_BAD_CONFIGURATION)
    };
    let text = std::fs::read(path).map_err(|e| fail(&e))?;
    let config: FullVmConfig = serde_json::from_slice(&text).map_err(|e| fail(&e))?;
    controller
        .apply_config_file(&config)
        .map_err(|e| fail(&e))?;
    // As Firecracker: a config file whose microVM cannot be built is a bad configuration too.
    controller.start().map_err(|e| {
        error!("cannot start the microVM from {}: {e}", path.display());
        i32::from(STATUS_BAD_CONFIGURATION)
    })?;
    info!("microVM started from {}", path.display());
    Ok(())
}

/// `--no-api`: no server, only the periodic metrics, until the microVM stops.
fn wait_for_exit<V: VmmControl>(
    controller: &mut ApiController<V>,
    wake: &EventFd,
) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        wake.as_raw_fd(),
        EpollEvent::new(EventSet::IN, 0),
    )?;
    let mut events = [EpollEvent::default(); 1];
    loop {
        if let Some(status) = controller.exit_status() {
            return Ok(status);
        }
        let now = Instant::now();
        let timeout = controller.tick(now).map_or(-1, |due| {
            i32::try_from(due.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX)
        });
        match epoll.wait(timeout, &mut events) {
            Ok(_) => {
                let _ = wake.read();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn spawn_signal_waiter(stopper: super::kvm_vmm::Stopper) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vmm);
            match squib_host::signals::wait(&crate::TERMINATION_SIGNALS) {
                Ok(signal) => stopper.stop(signal),
                Err(e) => warn!("not waiting for termination signals: {e}"),
            }
        });
    if let Err(e) = spawned {
        warn!("SIGTERM/SIGINT will not stop squib in order: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn run_args(list: &[&str]) -> ProcessArgs {
        match parse_args(&args(list)).unwrap() {
            ProcessCommand::Run(a) => *a,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_every_flag() {
        let d = run_args(&[]);
        assert_eq!(d.api_sock, Path::new("/run/firecracker.socket"));
        assert_eq!(
            (d.id.as_str(), d.max_payload, d.no_api),
            (DEFAULT_ID, 51_200, false)
        );
        assert_eq!(d.logger, LoggerBody::default());
        assert_eq!(d.start_times, StartTimes::default());
        let a = run_args(&[
            "--api-sock",
            "/tmp/a.sock",
            "--config-file=/tmp/c.json",
            "--no-api",
            "--id",
            "5f0f8e4a-3c1b-4c47-9a5e-1d2f3a4b5c6d",
            "--log-path",
            "/tmp/log",
            "--level",
            "debug",
            "--module",
            "squib_vmm::api",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/tmp/m",
            "--boot-timer",
            "--http-api-max-payload-size",
            "100",
            "--start-time-us",
            "123",
            "--start-time-cpu-us=45",
            "--parent-cpu-time-us",
            "6",
        ]);
        assert_eq!(a.api_sock, Path::new("/tmp/a.sock"));
        assert_eq!(a.boot, Boot::ConfigFile(PathBuf::from("/tmp/c.json")));
        assert!(a.no_api && a.boot_timer);
        assert_eq!(
            (a.id.as_str(), a.max_payload),
            ("5f0f8e4a-3c1b-4c47-9a5e-1d2f3a4b5c6d", 100)
        );
        assert_eq!(
            a.logger,
            LoggerBody {
                level: Some(LogLevel::Debug),
                log_path: Some("/tmp/log".into()),
                show_level: Some(true),
                show_log_origin: Some(true),
                module: Some("squib_vmm::api".into()),
            }
        );
        assert_eq!(
            a.start_times,
            StartTimes {
                start_time_us: Some(123),
                start_time_cpu_us: Some(45),
                parent_cpu_time_us: Some(6),
            }
        );
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(
            parse_args(&args(&["--id", "x", "--version"])),
            Ok(ProcessCommand::Version)
        );
        assert_eq!(parse_args(&args(&["--help"])), Ok(ProcessCommand::Help));
        assert_eq!(parse_args(&args(&["-h"])), Ok(ProcessCommand::Help));
        assert_eq!(parse_args(&args(&["-V"])), Ok(ProcessCommand::Version));
        assert!(help_text().starts_with("Firecracker v1.16.0 (squib "));
    }

    #[test]
    fn snapshot_flags_are_informational() {
        assert_eq!(
            parse_args(&args(&["--snapshot-version"])),
            Ok(ProcessCommand::SnapshotVersion)
        );
        assert_eq!(
            parse_args(&args(&["--describe-snapshot", "/tmp/s"])),
            Ok(ProcessCommand::DescribeSnapshot(PathBuf::from("/tmp/s")))
        );
        assert_eq!(
            parse_args(&args(&["--snapshot-version", "--describe-snapshot=s"])),
            Ok(ProcessCommand::SnapshotVersion)
        );
    }

    #[test]
    fn refuses_bad_flags_with_firecracker_statuses() {
        for (list, want, status) in [
            (&["--no-api"][..], "--no-api requires --config-file", 153),
            (&["--id", "a b"], "invalid instance id", 153),
            (&["--id", "vm_1"], "invalid char (_)", 153),
            (&["--level", "loud"], "invalid value for logger level", 152),
            (
                &["--http-api-max-payload-size", "0"],
                "positive number",
                153,
            ),
            (&["--api-sock"], "--api-sock needs a value", 153),
            (&["--api-sock", "--no-api"], "--api-sock needs a value", 153),
            (&["--bogus"], "unknown option --bogus", 153),
            (&["--no-api=1", "--config-file", "x"], "takes no value", 153),
            (&["--id", "a", "--id", "b"], "more than once", 153),
            (&["stray"], "unexpected argument", 153),
            (&["--start-time-us", "-1"], "non-negative integer", 153),
            (&["--mmds-size-limit", "10"], "MMDS", 153),
            (&["--metadata", "m.json"], "MMDS", 153),
            (
                &["--enable-pci"],
                "--enable-pci: squib does not support PCI",
                153,
            ),
            (
                &["--describe-snapshot"],
                "--describe-snapshot needs a value",
                153,
            ),
        ] {
            let e = parse_args(&args(list)).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(want), "{list:?}: {text}");
            assert!(!text.contains('\n'), "{list:?}: not one line: {text}");
            assert_eq!(e.status(), status, "{list:?}");
        }
    }

    #[test]
    fn only_kernel_selects_the_command_line_mode() {
        assert!(is_cli_mode(&args(&["--kernel", "k"])));
        assert!(is_cli_mode(&args(&["--kernel=k"])));
        assert!(!is_cli_mode(&args(&["--help"])));
        assert!(!is_cli_mode(&args(&["--version"])));
        assert!(!is_cli_mode(&args(&["--api-sock", "/tmp/s"])));
        assert!(!is_cli_mode(&[]));
    }

    #[test]
    fn start_times_follow_firecracker() {
        let none = StartTimes::default();
        assert_eq!(
            (none.startup_time_us(), none.startup_time_cpu_us()),
            (None, None)
        );
        let now = now_us(Clock::Monotonic);
        let t = StartTimes {
            start_time_us: Some(now - 5_000),
            start_time_cpu_us: Some(0),
            parent_cpu_time_us: Some(1_000_000_000),
        };
        assert!(t.startup_time_us().unwrap() >= 5_000);
        assert!(t.startup_time_cpu_us().unwrap() > 1_000_000_000);
        let exec = Instant::now();
        assert!(t.process_start(exec) + std::time::Duration::from_millis(5) <= exec);
        assert_eq!(none.process_start(exec), exec);
    }
}
