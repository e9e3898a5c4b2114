//! The VMM's own behaviour, with hand-assembled guests: serial output, the exit paths and their
//! statuses, SIGTERM, and the boot failures squib must report rather than crash on.
#![forbid(unsafe_code)]

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{code, fault, halt_forever, out, print, run_squib, tiny_guest};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn serial_output_and_debug_exit_status() {
    if !common::kvm_available("serial_output_and_debug_exit_status") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (value, status) in [(0u8, 1), (3, 7), (0x7f, 255)] {
        let guest = tiny_guest(
            dir.path(),
            "g",
            &code(&[print("hello\n"), out(0x501, value), halt_forever()]),
        );
        let output = run_squib(&["--kernel", guest.to_str().unwrap()], TIMEOUT);
        assert_eq!(common::stdout(&output), "hello\n");
        assert_eq!(
            output.status.code(),
            Some(status),
            "{}",
            common::stderr(&output)
        );
        assert!(
            common::stderr(&output).contains("debug-exit"),
            "{}",
            common::stderr(&output)
        );
    }
}

#[test]
fn i8042_reset_exits_0_with_several_vcpus_and_memory_above_the_gap() {
    if !common::kvm_available("i8042_reset_exits_0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = tiny_guest(
        dir.path(),
        "g",
        &code(&[print("bye\n"), out(0x64, 0xfe), halt_forever()]),
    );
    let output = run_squib(
        &[
            "--kernel",
            guest.to_str().unwrap(),
            "--vcpus",
            "4",
            "--mem-mib",
            "4096",
        ],
        TIMEOUT,
    );
    assert_eq!(common::stdout(&output), "bye\n");
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output).contains("i8042"),
        "{}",
        common::stderr(&output)
    );
}

#[test]
fn triple_fault_exits_4_and_says_why() {
    if !common::kvm_available("triple_fault_exits_4") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = tiny_guest(dir.path(), "g", &code(&[fault(), halt_forever()]));
    let output = run_squib(&["--kernel", guest.to_str().unwrap()], TIMEOUT);
    assert_eq!(output.status.code(), Some(4), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output).contains("triple-faulted"),
        "{}",
        common::stderr(&output)
    );
}

#[test]
fn sigterm_stops_a_running_vm_with_status_0() {
    if !common::kvm_available("sigterm_stops_a_running_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = tiny_guest(dir.path(), "g", &code(&[print("ready\n"), halt_forever()]));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = common::squib()
            .args(["--kernel", guest.to_str().unwrap(), "--vcpus", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the guest runs (its line arrives), then signal.
        let mut stdout = child.stdout.take().unwrap();
        let mut line = [0u8; 6];
        stdout.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"ready\n");
        let started = Instant::now();
        let kill = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let output = common::wait_with_timeout(child, TIMEOUT);
        assert_eq!(
            output.status.code(),
            Some(0),
            "signal {signal}: {}",
            common::stderr(&output)
        );
        assert!(
            common::stderr(&output).contains(&format!("signal {signal}")),
            "{}",
            common::stderr(&output)
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn unloadable_kernel_fails_cleanly() {
    if !common::kvm_available("unloadable_kernel_fails_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("not-elf");
    std::fs::write(&not_elf, b"this is not a kernel").unwrap();
    let output = run_squib(&["--kernel", not_elf.to_str().unwrap()], TIMEOUT);
    assert_eq!(output.status.code(), Some(1));
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("cannot load the kernel") && stderr.contains("not-elf"),
        "{stderr}"
    );
}

#[test]
fn kernel_too_big_for_memory_is_reported() {
    if !common::kvm_available("kernel_too_big_for_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB of code in an 8 MiB VM.
    let guest = tiny_guest(dir.path(), "big", &vec![0x90; 16 << 20]);
    let output = run_squib(
        &["--kernel", guest.to_str().unwrap(), "--mem-mib", "8"],
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(1), "{}", common::stderr(&output));
    assert!(
        common::stderr(&output).contains("cannot load the kernel"),
        "{}",
        common::stderr(&output)
    );
}
