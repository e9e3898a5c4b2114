//! `cargo xtask demo`: squib's main job on a fresh machine — boot a microVM with disks.
//!
//! Builds `squib` (release) and the project's test guest, makes a writable and a read-only disk
//! image under `target/demo/`, and boots the guest with both. The guest drives the disks through
//! virtio-blk, prints one line per check on the serial console, and powers off; this task exits
//! with squib's status (0 when every check passed).

use std::fs::File;
use std::path::Path;
use std::process::Command;

use crate::setup;

const DISK_BYTES: u64 = 64 << 20;
const READ_ONLY_DISK_BYTES: u64 = 8 << 20;

pub fn run(args: &[String]) -> Result<(), String> {
    setup::guest_target()?;
    let cargo = setup::cargo();
    setup::run(
        &cargo,
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "squib-vmm",
            "--bin",
            "squib",
        ],
    )?;
    let guest_output = setup::output(&cargo, &["xtask", "test-guest"])?;
    let guest = guest_output
        .lines()
        .last()
        .ok_or("`cargo xtask test-guest` printed no path")?
        .trim()
        .to_owned();

    let workspace = setup::workspace();
    let demo_dir = workspace.join("target/demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| format!("{}: {e}", demo_dir.display()))?;
    let disk = demo_dir.join("disk.img");
    let read_only_disk = demo_dir.join("ro.img");
    sparse_file(&disk, DISK_BYTES)?;
    sparse_file(&read_only_disk, READ_ONLY_DISK_BYTES)?;

    let squib = setup::target_dir().join("release/squib");
    let mut command = Command::new(&squib);
    command
        .arg("--kernel")
        .arg(&guest)
        .arg("--disk")
        .arg(&disk)
        .arg("--disk")
        .arg(format!("{},ro", read_only_disk.display()))
        .arg("--boot-timer")
        .args(args);
    eprintln!("xtask demo: {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", squib.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        _ => Err(format!("squib exited with {status}")),
    }
}

/// Creates (or truncates) `path` as a sparse file of `bytes` bytes.
fn sparse_file(path: &Path, bytes: u64) -> Result<(), String> {
    File::create(path)
        .and_then(|file| file.set_len(bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}
