//! squib run the Firecracker way: Firecracker's process flags, then the API server and/or a
//! `--config-file`, until the microVM stops.
//!
//! ```text
//! squib [--api-sock PATH] [--config-file PATH] [--no-api] [--id ID] [--log-path PATH]
//!       [--level LEVEL] [--metrics-path PATH] [--boot-timer] [--http-api-max-payload-size N]
//!       [--start-time-us N] [--start-time-cpu-us N] [--parent-cpu-time-us N]
//! ```
//!
//! (`--no-seccomp` and `--seccomp-filter` are taken out before, in `main`: both modes have them.)
//!
//! `main` picks this mode whenever `--kernel` is absent: the command-line mode boots from
//! `--kernel`, Firecracker mode from the API or the config file.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{error, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::controller::{ApiController, InstanceSettings};
use super::http::DEFAULT_MAX_PAYLOAD;
use super::kvm_vmm::KvmVmm;
use super::logger::Logger;
use super::models::{FullVmConfig, LogLevel};
use super::server::ApiServer;
use super::store::check_id;
use super::vmm_control::{ExitNotice, VmmControl};
use crate::exit::{STATUS_HOST_ERROR, STATUS_USAGE};

/// Where the API socket goes when `--api-sock` is not given.
pub const DEFAULT_API_SOCK: &str = "/run/squib.socket";
/// Firecracker's default instance id.
pub const DEFAULT_ID: &str = "anonymous-instance";

/// The usage text of this mode.
pub const USAGE: &str = "usage: squib [--api-sock PATH] [--config-file PATH] [--no-api] [--id ID]
             [--log-path PATH] [--level Error|Warning|Info|Debug|Trace|Off]
             [--metrics-path PATH] [--boot-timer] [--http-api-max-payload-size BYTES]
             [--no-seccomp | --seccomp-filter FILE]";

/// Firecracker-mode flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessArgs {
    /// `--api-sock`.
    pub api_sock: PathBuf,
    /// `--config-file`.
    pub config_file: Option<PathBuf>,
    /// `--no-api`.
    pub no_api: bool,
    /// `--id`.
    pub id: String,
    /// `--log-path`.
    pub log_path: Option<PathBuf>,
    /// `--level`.
    pub level: LogLevel,
    /// `--metrics-path`.
    pub metrics_path: Option<PathBuf>,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// `--http-api-max-payload-size`.
    pub max_payload: usize,
}

/// A flag mistake, as one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

/// Whether the arguments ask for the command-line mode (`--kernel`) rather than this one.
pub fn is_cli_mode(args: &[OsString]) -> bool {
    args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--kernel"
            || a.starts_with("--kernel=")
            || matches!(&*a, "-h" | "--help" | "-V" | "--version")
    })
}

/// Parses Firecracker-mode flags (without the program name).
pub fn parse_args(args: &[OsString]) -> Result<ProcessArgs, ArgsError> {
    let err = |m: String| ArgsError(m);
    let mut out = ProcessArgs {
        api_sock: PathBuf::from(DEFAULT_API_SOCK),
        config_file: None,
        no_api: false,
        id: DEFAULT_ID.into(),
        log_path: None,
        level: LogLevel::default(),
        metrics_path: None,
        boot_timer: false,
        max_payload: DEFAULT_MAX_PAYLOAD,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .to_str()
            .ok_or_else(|| err(format!("argument {arg:?} is not UTF-8")))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, ArgsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| err(format!("{name} needs a value"))),
            }
        };
        match name {
            "--api-sock" => out.api_sock = PathBuf::from(value()?),
            "--config-file" => out.config_file = Some(PathBuf::from(value()?)),
            "--no-api" if inline.is_none() => out.no_api = true,
            "--boot-timer" if inline.is_none() => out.boot_timer = true,
            "--id" => {
                out.id = value()?;
                check_id("--id", &out.id).map_err(|e| err(e.to_string()))?;
            }
            "--log-path" => out.log_path = Some(PathBuf::from(value()?)),
            "--level" => {
                let v = value()?;
                out.level = LogLevel::parse(&v)
                    .ok_or_else(|| err(format!("--level {v:?}: unknown level")))?;
            }
            "--metrics-path" => out.metrics_path = Some(PathBuf::from(value()?)),
            "--http-api-max-payload-size" => {
                let v = value()?;
                out.max_payload = v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                    err(format!(
                        "--http-api-max-payload-size {v:?}: expected a positive number"
                    ))
                })?;
            }
            // The jailer's timing flags: accepted (checked to be numbers) so that the jailer's
            // exec line starts squib; issue 9 feeds them into the start-up metrics.
            "--start-time-us" | "--start-time-cpu-us" | "--parent-cpu-time-us" => {
                let v = value()?;
                v.parse::<u64>()
                    .map_err(|_| err(format!("{name} {v:?}: expected a number")))?;
            }
            other => return Err(err(format!("unknown option {other:?}"))),
        }
    }
    if out.no_api && out.config_file.is_none() {
        return Err(err("--no-api requires --config-file".into()));
    }
    Ok(out)
}

/// Runs squib in Firecracker mode; returns the process exit status.
pub fn run(args: &[OsString], process_start: Instant) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("squib: {e}\n{USAGE}");
            return i32::from(STATUS_USAGE);
        }
    };
    let logger = match Logger::install(args.level, args.log_path.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("squib: {e}");
            return i32::from(STATUS_USAGE);
        }
    };
    let console_in = std::io::stdin().is_terminal()
        && squib_host::terminal::enter_raw_mode(std::io::stdin().as_fd()).unwrap_or(false);
    let status = match serve(&args, logger, KvmVmm::new(process_start, console_in)) {
        Ok(status) => status,
        Err(status) => status,
    };
    squib_host::terminal::restore();
    status
}

fn serve(args: &ProcessArgs, logger: Option<Logger>, vmm: KvmVmm) -> Result<i32, i32> {
    let host_err = |what: &str, e: &dyn std::fmt::Display| {
        error!("{what}: {e}");
        i32::from(STATUS_HOST_ERROR)
    };
    let settings = InstanceSettings {
        id: args.id.clone(),
        boot_timer: args.boot_timer,
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
    let mut controller = ApiController::new(settings, vmm, logger, wake);
    if let Some(path) = &args.metrics_path {
        controller
            .configure_metrics(path)
            .map_err(|e| host_err("--metrics-path", &e))?;
    }
    if let Some(path) = &args.config_file {
        boot_from_file(&mut controller, path)?;
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
        i32::from(STATUS_USAGE)
    };
    let text = std::fs::read(path).map_err(|e| fail(&e))?;
    let config: FullVmConfig = serde_json::from_slice(&text).map_err(|e| fail(&e))?;
    controller
        .apply_config_file(&config)
        .map_err(|e| fail(&e))?;
    controller.start().map_err(|e| {
        error!("cannot start the microVM: {e}");
        i32::from(STATUS_HOST_ERROR)
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
                Err(e) => warn!("not waiting for SIGTERM/SIGINT: {e}"),
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

    #[test]
    fn defaults_and_every_flag() {
        let d = parse_args(&[]).unwrap();
        assert_eq!(d.api_sock, Path::new(DEFAULT_API_SOCK));
        assert_eq!(
            (d.id.as_str(), d.max_payload, d.no_api),
            (DEFAULT_ID, 51_200, false)
        );
        let a = parse_args(&args(&[
            "--api-sock",
            "/tmp/a.sock",
            "--config-file=/tmp/c.json",
            "--no-api",
            "--id",
            "vm_1",
            "--log-path",
            "/tmp/log",
            "--level",
            "debug",
            "--metrics-path",
            "/tmp/m",
            "--boot-timer",
            "--http-api-max-payload-size",
            "100",
        ]))
        .unwrap();
        assert_eq!(a.api_sock, Path::new("/tmp/a.sock"));
        assert_eq!(a.config_file.as_deref(), Some(Path::new("/tmp/c.json")));
        assert!(a.no_api && a.boot_timer);
        assert_eq!(
            (a.id.as_str(), a.level, a.max_payload),
            ("vm_1", LogLevel::Debug, 100)
        );
    }

    #[test]
    fn refuses_bad_flags() {
        for (list, want) in [
            (&["--no-api"][..], "--no-api requires --config-file"),
            (&["--id", "a b"], "invalid --id"),
            (&["--level", "loud"], "unknown level"),
            (&["--http-api-max-payload-size", "0"], "positive number"),
            (&["--api-sock"], "--api-sock needs a value"),
            (&["--bogus"], "unknown option"),
            (&["--no-api=1", "--config-file", "x"], "unknown option"),
        ] {
            let e = parse_args(&args(list)).unwrap_err().to_string();
            assert!(e.contains(want), "{list:?}: {e}");
        }
    }

    #[test]
    fn the_jailer_exec_line_parses() {
        let a = parse_args(&args(&[
            "--id=vm1",
            "--start-time-us=1875026170",
            "--start-time-cpu-us=1833",
            "--parent-cpu-time-us=12",
            "--api-sock",
            "/run/firecracker.socket",
        ]))
        .unwrap();
        assert_eq!(a.id, "vm1");
        let e = parse_args(&args(&["--start-time-us", "soon"])).unwrap_err();
        assert!(e.to_string().contains("expected a number"), "{e}");
    }

    #[test]
    fn kernel_flag_selects_the_command_line_mode() {
        assert!(is_cli_mode(&args(&["--kernel", "k"])));
        assert!(is_cli_mode(&args(&["--kernel=k"])));
        assert!(is_cli_mode(&args(&["--help"])));
        assert!(!is_cli_mode(&args(&["--api-sock", "/tmp/s"])));
        assert!(!is_cli_mode(&[]));
    }
}
