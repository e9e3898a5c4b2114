//! `squib`: one process per microVM.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Instant;

use squib_host::{signals, terminal};
use squib_vmm::cli::{self, Command};
use squib_vmm::devices::serial::{self, Stdout};
use squib_vmm::exit::{ExitReason, STATUS_ARG_PARSING, STATUS_GENERIC_ERROR};
use squib_vmm::seccomp::{self, ThreadKind};
use squib_vmm::vmm::{StartOptions, Vmm};

/// How long guest output still queued for stdout may delay the exit.
const CONSOLE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Before any thread exists, so that every thread inherits the mask (see `block_signals`).
    if let Err(err) = squib_vmm::block_signals() {
        eprintln!("squib: cannot block signals: {err}");
        return ExitCode::from(STATUS_GENERIC_ERROR);
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // Both modes: load the filters before any thread starts; each thread installs its own.
    let filters = match seccomp::take_flags(&mut args) {
        Ok(source) => source,
        Err(err) => {
            eprintln!("squib: {err}");
            return ExitCode::from(STATUS_ARG_PARSING);
        }
    };
    if let Err(err) = seccomp::init(&filters) {
        eprintln!("squib: {err}");
        return ExitCode::from(STATUS_ARG_PARSING);
    }
    // Without --kernel, squib runs the Firecracker way (API socket and/or --config-file), and
    // answers --help and --version as Firecracker does.
    if !squib_vmm::api::process::is_cli_mode(&args) {
        let status = squib_vmm::api::process::run(&args, process_start);
        serial::flush_stdout(CONSOLE_FLUSH_TIMEOUT);
        std::process::exit(status);
    }
    let config = match cli::parse(args) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            println!("{}", squib_vmm::api::process::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("{}\n", squib_vmm::version::version_line());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("squib: {err}\n{}", cli::USAGE);
            return ExitCode::from(STATUS_ARG_PARSING);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Whatever ends the process from here restores the terminal first.
    std::panic::set_hook(Box::new(|info| {
        terminal::restore();
        eprintln!("squib: {info}");
    }));

    let stdin = std::io::stdin();
    let raw = terminal::enter_raw_mode(stdin.as_fd()).unwrap_or_else(|err| {
        tracing::warn!("stdin stays in line mode: {err}");
        false
    });
    tracing::debug!(raw, "console input");
    let options = StartOptions {
        process_start,
        console_out: Box::new(Stdout),
        console_in: Some(Box::new(stdin)),
        caller: ThreadKind::Vmm,
    };
    let vmm = match Vmm::start(&config, options) {
        Ok(vmm) => vmm,
        Err(err) => {
            terminal::restore();
            tracing::error!("cannot start the microVM: {err}");
            return ExitCode::from(STATUS_GENERIC_ERROR);
        }
    };

    let handle = vmm.handle();
    let waiter = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 << 10)
        .spawn(move || {
            seccomp::enter_or_exit(ThreadKind::Vmm);
            match signals::wait(&squib_vmm::TERMINATION_SIGNALS) {
                Ok(signal) => handle.request_exit(ExitReason::Signal(signal)),
                Err(err) => tracing::warn!("not waiting for SIGTERM/SIGINT: {err}"),
            }
        });
    if let Err(err) = waiter {
        tracing::warn!("SIGTERM/SIGINT will not stop the microVM in order: {err}");
    }

    let reason = vmm.wait();
    terminal::restore();
    // Exit without tearing the VM down: the kernel does it faster at process exit (closing a
    // VM fd alone can take ~15 ms here).
    serial::flush_stdout(CONSOLE_FLUSH_TIMEOUT);
    std::process::exit(i32::from(reason.status()));
}
