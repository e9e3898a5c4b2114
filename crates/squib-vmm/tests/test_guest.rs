//! The project's test guest under the `squib` binary: it drives the disks through virtio-blk,
//! prints one `ok - …`/`FAIL - …` line per check and a summary, and powers off (i8042 reset
//! when every check passed, debug-exit 1 otherwise).
#![forbid(unsafe_code)]

mod common;

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
const DISK_BYTES: u64 = 64 << 20;
const READ_ONLY_DISK_BYTES: u64 = 8 << 20;

/// The guest's check lines and its summary counts.
struct Report {
    lines: Vec<String>,
    passed: usize,
    failed: usize,
}

fn report(stdout: &str) -> Report {
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let summary = lines
        .iter()
        .rev()
        .find(|l| l.ends_with(" failed"))
        .expect("no summary line");
    let numbers: Vec<usize> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [passed, failed] = numbers[..] else {
        panic!("bad summary line {summary:?}")
    };
    Report {
        lines,
        passed,
        failed,
    }
}

#[test]
fn guest_passes_every_check_with_a_writable_and_a_read_only_disk() {
    if !common::kvm_available("guest_passes_every_check") {
        return;
    }
    let stderr = guest_checks_pass("");
    assert!(!stderr.contains("io_uring"), "{stderr}");
}

#[test]
fn guest_passes_every_check_on_the_io_uring_engine() {
    if !common::kvm_available("guest_passes_every_check_on_the_io_uring_engine") {
        return;
    }
    let stderr = guest_checks_pass(",engine=async,cache=writeback");
    // Both disks started a ring: the writable one and the read-only one.
    assert_eq!(
        stderr.matches("virtio-blk io_uring engine started").count(),
        2,
        "{stderr}"
    );
}

#[test]
fn guest_passes_every_check_on_the_io_uring_engine_with_cache_bypass() {
    if !common::kvm_available("guest_passes_every_check_on_the_io_uring_engine_with_cache_bypass") {
        return;
    }
    let stderr = guest_checks_pass(",engine=async,cache=writeback,direct");
    assert_eq!(
        stderr.matches("virtio-blk io_uring engine started").count(),
        2,
        "{stderr}"
    );
}

/// Runs the test guest on a writable and a read-only disk, both with the `--disk` `options`
/// (`,key=value...`), asserts every check passed; returns squib's stderr.
fn guest_checks_pass(options: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let disk = common::sparse_disk(dir.path(), "disk.img", DISK_BYTES);
    let ro_disk = common::sparse_disk(dir.path(), "ro.img", READ_ONLY_DISK_BYTES);
    let output = common::run_squib(
        &[
            "--kernel",
            common::test_guest().to_str().unwrap(),
            "--disk",
            &format!("{disk}{options}"),
            "--disk",
            &format!("{ro_disk},ro{options}"),
            "--boot-timer",
        ],
        TIMEOUT,
    );
    let stdout = common::stdout(&output);
    let stderr = common::stderr(&output);
    let report = report(&stdout);
    assert!(
        report.lines[0].starts_with("squib-test-guest"),
        "first line: {:?}",
        report.lines[0]
    );
    let checks: Vec<&String> = report
        .lines
        .iter()
        .filter(|l| l.starts_with("ok - ") || l.starts_with("FAIL - "))
        .collect();
    assert!(
        checks.iter().all(|l| l.starts_with("ok - ")),
        "failed checks:\n{stdout}"
    );
    assert_eq!(report.failed, 0, "{stdout}");
    assert_eq!(
        report.passed,
        checks.len(),
        "summary does not match the check lines:\n{stdout}"
    );
    assert!(report.passed >= 1);
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0001000:5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0002000:6"),
        "{stdout}"
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("Guest-boot-time"),
        "the boot timer did not log: {stderr}"
    );
    assert!(stderr.contains("i8042"), "{stderr}");
    stderr
}

#[test]
fn guest_without_its_disks_fails_and_squib_exits_non_zero() {
    if !common::kvm_available("guest_without_its_disks_fails") {
        return;
    }
    let output = common::run_squib(
        &["--kernel", common::test_guest().to_str().unwrap()],
        TIMEOUT,
    );
    let stdout = common::stdout(&output);
    let report = report(&stdout);
    assert!(
        report.failed >= 1,
        "no check failed without disks:\n{stdout}"
    );
    assert!(
        report.lines.iter().any(|l| l.starts_with("FAIL - ")),
        "{stdout}"
    );
    // debug-exit 1: (1 << 1) | 1.
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout:\n{stdout}\nstderr:\n{}",
        common::stderr(&output)
    );
}
