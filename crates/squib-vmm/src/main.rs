//! `squib`: one process per microVM.
#![forbid(unsafe_code)]

use std::time::Instant;

use squib_vmm::devices::serial;
use squib_vmm::exit::{STATUS_ARG_PARSING, STATUS_GENERIC_ERROR};
use squib_vmm::seccomp;

/// How long guest output still queued for stdout may delay the exit.
const CONSOLE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn main() {
    let process_start = Instant::now();
    // Before any thread exists, so that every thread inherits the mask (see `block_signals`).
    if let Err(err) = squib_vmm::block_signals() {
        eprintln!("squib: cannot block signals: {err}");
        std::process::exit(i32::from(STATUS_GENERIC_ERROR));
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // Load the filters before any thread starts; each thread installs its own.
    let filters = match seccomp::take_flags(&mut args) {
        Ok(source) => source,
        Err(err) => {
            eprintln!("squib: {err}");
            std::process::exit(i32::from(STATUS_ARG_PARSING));
        }
    };
    if let Err(err) = seccomp::init(&filters) {
        eprintln!("squib: {err}");
        std::process::exit(i32::from(STATUS_ARG_PARSING));
    }
    // One runner for both command lines: Firecracker's and squib's own (`--kernel` …).
    let status = squib_vmm::api::process::run(&args, process_start);
    // Exit without tearing the VM down: the kernel does it faster at process exit (closing a
    // VM fd alone can take ~15 ms here).
    serial::flush_stdout(CONSOLE_FLUSH_TIMEOUT);
    std::process::exit(status);
}
