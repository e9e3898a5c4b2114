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

/// The boot-timer line reads as Firecracker's test suite reads it:
/// `Guest-boot-time = <us> us <ms> ms, <cpu us> CPU us <cpu ms> CPU ms`.
fn assert_firecracker_boot_time_line(stderr: &str) {
    let line = stderr
        .lines()
        .find(|l| l.contains("Guest-boot-time"))
        .unwrap();
    let tail = line.split_once("Guest-boot-time =").unwrap().1;
    let words: Vec<&str> = tail.split_whitespace().collect();
    let us: u64 = words[0].parse().unwrap();
    let ms: u64 = words[2].trim_end_matches(',').parse().unwrap();
    let cpu_us: u64 = words[4].parse().unwrap();
    assert_eq!(
        (words[1], words[3], words[5], words[6]),
        ("us", "ms,", "CPU", "us"),
        "{line}"
    );
    assert_eq!(ms, us / 1000, "{line}");
    assert!(us > 0 && cpu_us <= us * 4, "{line}");
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
        stdout.contains("virtio_mmio.device=4K@0xc0001000:5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xc0002000:6"),
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
    assert_firecracker_boot_time_line(&stderr);
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

/// The guest's `guest.mode=durable` pattern: 64 KiB at sector 1024, byte at disk offset `o` is
/// `(o / 512 * 7 + o) as u8 ^ 0xa5` (see `crates/squib-test-guest/src/durable.rs`).
const DURABLE_SECTOR: u64 = 1024;
const DURABLE_BYTES: usize = 64 * 1024;

fn durable_byte(offset: u64) -> u8 {
    (offset / 512 * 7 + offset) as u8 ^ 0xa5
}

/// A write the guest FLUSHed on a Writeback drive is in the file even when squib is SIGKILLed
/// right after the FLUSH completed, with either engine.
#[test]
fn data_flushed_by_the_guest_survives_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::FileExt;
    use std::process::Stdio;

    if !common::kvm_available("data_flushed_by_the_guest_survives_sigkill") {
        return;
    }
    for engine in ["sync", "async"] {
        let dir = tempfile::tempdir().unwrap();
        let disk = common::sparse_disk(dir.path(), "disk.img", DISK_BYTES);
        let mut child = common::squib()
            .args([
                "--kernel",
                common::test_guest().to_str().unwrap(),
                "--cmdline",
                "guest.mode=durable",
                "--disk",
                &format!("{disk},cache=writeback,engine={engine}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("DURABLE flushed") || line.starts_with("FAIL") {
                    let _ = tx.send(line);
                    break;
                }
            }
        });
        let line = rx.recv_timeout(TIMEOUT);
        // SIGKILL: no shutdown path, no flush at exit.
        child.kill().unwrap();
        child.wait().unwrap();
        let line = line.unwrap_or_else(|_| panic!("{engine}: the guest never reported its FLUSH"));
        assert_eq!(
            line,
            format!("DURABLE flushed sector={DURABLE_SECTOR} bytes={DURABLE_BYTES}"),
            "{engine}"
        );
        let file = std::fs::File::open(&disk).unwrap();
        let mut data = vec![0u8; DURABLE_BYTES];
        let base = DURABLE_SECTOR * 512;
        file.read_exact_at(&mut data, base).unwrap();
        let wrong = (0..DURABLE_BYTES)
            .filter(|&i| data[i] != durable_byte(base + i as u64))
            .count();
        assert_eq!(
            wrong, 0,
            "{engine}: {wrong} bytes of the flushed write are missing"
        );
    }
}

/// The same disks driven by a third-party driver, the `virtio-drivers` crate built into the
/// test guest (`guest.mode=virtio-drivers`): squib must work for drivers it was not written
/// alongside (multi-bit status writes, QueueReady = 0 to stop a queue, a reset and a second
/// initialisation, requests in flight through the crate's non-blocking API).
#[test]
fn third_party_virtio_drivers_pass_every_check_on_a_writable_and_a_read_only_disk() {
    if !common::kvm_available("third_party_virtio_drivers_pass_every_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = common::sparse_disk(dir.path(), "disk.img", DISK_BYTES);
    let ro_disk = common::sparse_disk(dir.path(), "ro.img", READ_ONLY_DISK_BYTES);
    let output = common::run_squib(
        &[
            "--kernel",
            common::test_guest().to_str().unwrap(),
            "--disk",
            &disk,
            "--disk",
            &format!("{ro_disk},ro"),
            "--cmdline",
            "guest.mode=virtio-drivers guest.expect_ro=vdb",
        ],
        TIMEOUT,
    );
    let stdout = common::stdout(&output);
    let stderr = common::stderr(&output);
    let report = report(&stdout);
    let checks: Vec<&String> = report
        .lines
        .iter()
        .filter(|l| l.starts_with("ok - ") || l.starts_with("FAIL - "))
        .collect();
    assert!(
        checks.iter().all(|l| l.starts_with("ok - ")),
        "failed checks:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(report.failed, 0, "{stdout}");
    assert_eq!(report.passed, checks.len(), "{stdout}");
    // Every check ran on the disk it applies to (a check that silently did not run fails here).
    let writable = [
        "VirtIOBlk::new on MmioTransport",
        "capacity() 131072 sectors",
        "readonly() false",
        "first request (read_blocks_nb, polled) completes",
        "device_id \"",
        "write_blocks 1 sector",
        "write_blocks 128 sectors in one request",
        "flush, then read back",
        "writes, then as many reads in flight at once",
        "completions by interrupt (GSI 5)",
        "a write at the end get IoError",
        "re-initialised; capacity and data unchanged",
    ];
    let read_only = [
        "VirtIOBlk::new on MmioTransport",
        "capacity() 16384 sectors",
        "readonly() true",
        "first request (read_blocks_nb, polled) completes",
        "device_id \"",
        "reads in flight at once",
        "completions by interrupt (GSI 6)",
        "reads at and across the end get IoError",
        "write_blocks refused with IoError, data unchanged",
        "re-initialised; capacity and data unchanged",
    ];
    for (disk, expected) in [("vda", &writable[..]), ("vdb", &read_only[..])] {
        let prefix = format!("ok - virtio-drivers blk {disk}: ");
        for what in expected {
            assert!(
                checks
                    .iter()
                    .any(|l| l.starts_with(&prefix) && l.contains(what)),
                "no passed check `{what}` on {disk}:\n{stdout}"
            );
        }
        let ran = checks.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(ran, expected.len(), "checks on {disk}:\n{stdout}");
    }
    assert!(
        !stderr.contains("invalid device status transition"),
        "the driver's status writes were refused:\n{stderr}"
    );
    // Dropping the driver clears its stopped queue's registers, which the spec allows.
    assert!(
        !stderr.contains("queue configured after DRIVER_OK"),
        "a conforming queue teardown was warned about:\n{stderr}"
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
