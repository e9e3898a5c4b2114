//! `cargo xtask fuzz [--smoke] [--seconds N] [--runs N] [--no-sanitizer] [TARGET...]`: builds
//! and runs the cargo-fuzz targets in `fuzz/` (libFuzzer, so a nightly toolchain; everything
//! else stays on the pinned one).
//!
//! Each target starts from its committed seeds (`fuzz/corpus/<target>`) and writes what it finds
//! to `target/fuzz-corpus/<target>`, so runs never dirty the checkout; a crash leaves its input in
//! `fuzz/artifacts/<target>/` and fails the task. `--smoke` runs each target for a few seconds
//! (CI: the targets build and still run); the default is 60 s each. `--runs N` also stops a
//! target after N executions. `--no-sanitizer` builds without AddressSanitizer: several times
//! faster, and enough for code that is `forbid(unsafe_code)` (the device targets). Without a nightly toolchain
//! the task says so loudly and does nothing; cargo-fuzz is installed when missing.

use std::process::Command;

use crate::setup;

/// The targets, in the order they run.
const TARGETS: [&str; 8] = [
    "virtio_blk",
    "virtio_net",
    "virtio_net_ring",
    "virtio_vsock",
    "virtio_rng",
    "mmio_registers",
    "api_request",
    "config_file",
];
const SMOKE_SECONDS: u64 = 10;
const DEFAULT_SECONDS: u64 = 60;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut runs: Option<u64> = None;
    let mut sanitizer = true;
    let mut targets: Vec<&str> = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => seconds = SMOKE_SECONDS,
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a number")?;
            }
            "--runs" => {
                runs = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--runs takes a number")?,
                );
            }
            "--no-sanitizer" => sanitizer = false,
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(target) => targets.push(target),
                None => {
                    return Err(format!(
                        "unknown fuzz target `{name}` (targets: {})",
                        TARGETS.join(", ")
                    ));
                }
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let toolchains = setup::output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!(
            "SKIPPED: cargo xtask fuzz needs a nightly toolchain for libFuzzer \
             (`rustup toolchain install nightly`); no target was built or run"
        );
        return Ok(());
    }
    if !setup::on_path("cargo-fuzz") {
        eprintln!("installing cargo-fuzz");
        setup::run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    let workspace = setup::workspace();
    let fuzz_dir = workspace.join("fuzz");
    for target in targets {
        let found = setup::target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&found).map_err(|e| format!("{}: {e}", found.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        eprintln!("==> fuzz {target} for {seconds} s");
        let mut command = Command::new("cargo");
        command.args(["+nightly", "fuzz", "run", "-O"]);
        if !sanitizer {
            command.args(["--sanitizer", "none"]);
        }
        command.arg(target).arg(&found).arg(&seeds).args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
        ]);
        if let Some(runs) = runs {
            command.arg(format!("-runs={runs}"));
        }
        command
            .current_dir(&fuzz_dir)
            // The fuzz workspace has its own target dir and flags (sanitizer, coverage).
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO");
        setup::run_command(&mut command).map_err(|e| {
            format!("fuzz target {target} failed (its input is in fuzz/artifacts/{target}/): {e}")
        })?;
    }
    Ok(())
}
