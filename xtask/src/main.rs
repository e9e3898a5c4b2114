//! `cargo xtask <task>`: squib's developer tasks.
#![forbid(unsafe_code)]

mod bench;
mod bzimage;
mod demo;
mod fuzz;
mod guest_kernel;
mod lint_unsafe;
mod setup;
mod snapshot;
mod test;
mod test_guest;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task> [args]

tasks:
  demo           build squib and the test guest, boot it with two disks (the main job)
  test           install what the tests need, run the whole test suite
  lint-unsafe    enforce I-CRATE-2: unsafe code only in squib-host, each block argued
  test-guest     build the project's test guest; prints the ELF's path last
  guest-kernel   fetch Debian's cloud kernel and build an initramfs; prints their paths last
  bench          run the benchmark suite and write a report to docs/perf/
  snapshot-merge BASE DIFF   apply a Diff snapshot's memory file onto its base's, in place
  snapshot-uffd-handler SOCKET MEM_FILE   example page-fault handler for Uffd snapshot loads
  fuzz           run the cargo-fuzz targets (nightly): --smoke, --seconds N, [TARGET...]
  net-peer       level 6's sender and sink, run by the bench inside its network namespace";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "demo" => demo::run(rest),
        "test" => test::run(rest),
        "lint-unsafe" => lint_unsafe::run(rest),
        "test-guest" => test_guest::run(rest),
        "guest-kernel" => guest_kernel::run(rest),
        "bench" => bench::run(rest),
        "snapshot-merge" => snapshot::merge(rest),
        "snapshot-uffd-handler" => snapshot::uffd_handler(rest),
        "fuzz" => fuzz::run(rest),
        "net-peer" => bench::net_peer::run(rest),
        other => Err(format!("unknown task `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {task}: {message}");
            ExitCode::FAILURE
        }
    }
}
