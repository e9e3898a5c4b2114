//! The seccomp filters on a running squib: every thread filtered while the guest runs (API and
//! command-line modes, virtio workers and block I/O threads included), the test guest's checks
//! passing under them, a forbidden syscall in each thread kind ending the process with 148,
//! `--no-seccomp` and `--seccomp-filter`.
#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const BAD_SYSCALL: i32 = 148;

/// A scratch directory on a file system that takes O_DIRECT (the target directory), so that
/// `direct` disks start the block I/O pool.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// `--kernel` arguments: the test guest, a direct disk on the I/O-thread engine (worker + I/O
/// pool), a read-only sync one and a direct io_uring one; `bench` keeps the guest busy on the
/// first instead of running the checks.
fn cli_args(dir: &Path, bench: bool) -> Vec<String> {
    let disk = common::sparse_disk(dir, "disk.img", 64 << 20);
    let ro = common::sparse_disk(dir, "ro.img", 8 << 20);
    let ring = common::sparse_disk(dir, "ring.img", 8 << 20);
    let mut args = vec![
        "--kernel".to_owned(),
        common::test_guest().to_str().unwrap().to_owned(),
        "--disk".to_owned(),
        format!("{disk},engine=threads,direct"),
        "--disk".to_owned(),
        format!("{ro},ro"),
        "--disk".to_owned(),
        format!("{ring},engine=async,direct"),
    ];
    if bench {
        args.extend([
            "--cmdline".to_owned(),
            "guest.bench=randread guest.ops=1000000000".to_owned(),
        ]);
    }
    args
}

/// `--config-file` arguments for the API mode (the API thread serves while the guest runs).
fn api_args(dir: &Path, bench: bool) -> Vec<String> {
    let disk = common::sparse_disk(dir, "disk.img", 64 << 20);
    let boot_args = if bench {
        "guest.bench=randread guest.ops=1000000000"
    } else {
        ""
    };
    let config = serde_json::json!({
        "boot-source": { "kernel_image_path": common::test_guest(), "boot_args": boot_args },
        "drives": [{ "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
                     "is_read_only": false, "io_engine": "Async" }],
        "machine-config": { "vcpu_count": 2, "mem_size_mib": 128 }
    });
    let file = dir.join("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    vec![
        "--api-sock".to_owned(),
        dir.join("api.sock").to_str().unwrap().to_owned(),
        "--config-file".to_owned(),
        file.to_str().unwrap().to_owned(),
    ]
}

fn spawn(args: &[String], env: Option<(&str, &str)>) -> Child {
    let mut command = common::squib();
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// Each thread's name and `Seccomp:` mode.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .to_owned();
            Some((name.trim().to_owned(), mode))
        })
        .collect()
}

/// Waits until the threads named in `wanted` (name prefixes) all run; returns every thread.
fn wait_for_threads(child: &mut Child, wanted: &[&str]) -> Vec<(String, String)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let threads = thread_modes(child.id());
        if wanted
            .iter()
            .all(|w| threads.iter().any(|(name, _)| name.starts_with(w)))
        {
            return threads;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("threads {wanted:?} never all ran (saw {threads:?})\nstderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: Child) -> std::process::Output {
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    common::wait_with_timeout(child, TIMEOUT)
}

/// `PATCH /vm` through `curl --unix-socket`; returns the HTTP status.
fn patch_vm(sock: &Path, body: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(sock)
        .args(["-X", "PATCH", "-d", body, "http://localhost/vm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The threads each mode runs while the guest runs.
const CLI_THREADS: &[&str] = &["squib", "signals", "vcpu0", "squib-blk", "squib-blk-io"];
const API_THREADS: &[&str] = &[
    "squib",
    "signals",
    "vmm-wait",
    "vcpu0",
    "vcpu1",
    "squib-blk",
];

#[test]
fn every_thread_is_filtered_while_the_guest_runs() {
    if !common::kvm_available("every_thread_is_filtered_while_the_guest_runs") {
        return;
    }
    for (mode, wanted) in [("cli", CLI_THREADS), ("api", API_THREADS)] {
        let dir = scratch();
        let args = if mode == "cli" {
            cli_args(dir.path(), true)
        } else {
            api_args(dir.path(), true)
        };
        let mut child = spawn(&args, None);
        let threads = wait_for_threads(&mut child, wanted);
        let mut unfiltered: Vec<_> = threads.into_iter().filter(|(_, m)| m != "2").collect();
        if mode == "api" {
            // Pause stops the device workers; resume restarts them from the API thread.
            let sock = dir.path().join("api.sock");
            for state in ["Paused", "Resumed"] {
                let body = format!(r#"{{"state":"{state}"}}"#);
                assert_eq!(patch_vm(&sock, &body), "204", "{state}");
            }
            let threads = wait_for_threads(&mut child, wanted);
            unfiltered.extend(threads.into_iter().filter(|(_, m)| m != "2"));
        }
        let output = stop(child);
        assert!(
            unfiltered.is_empty(),
            "{mode}: threads without a filter: {unfiltered:?}"
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{mode}: {}",
            common::stderr(&output)
        );
    }
}

#[test]
fn the_test_guest_passes_every_check_under_the_filters() {
    if !common::kvm_available("the_test_guest_passes_every_check_under_the_filters") {
        return;
    }
    for mode in ["cli", "api"] {
        let dir = scratch();
        let args = if mode == "cli" {
            cli_args(dir.path(), false)
        } else {
            api_args(dir.path(), false)
        };
        let output = common::wait_with_timeout(spawn(&args, None), TIMEOUT);
        let (stdout, stderr) = (common::stdout(&output), common::stderr(&output));
        assert_eq!(output.status.code(), Some(0), "{mode}: {stdout}\n{stderr}");
        assert!(stdout.contains(" passed, 0 failed"), "{mode}: {stdout}");
        assert!(!stderr.contains("no filter installed"), "{mode}: {stderr}");
    }
}

#[test]
fn a_forbidden_syscall_in_any_thread_ends_squib_with_148() {
    if !common::kvm_available("a_forbidden_syscall_in_any_thread_ends_squib_with_148") {
        return;
    }
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED a_forbidden_syscall...: the trigger exists in debug builds only");
        return;
    }
    for (mode, kind) in [
        ("cli", "vcpu"),
        ("cli", "vmm"),
        ("cli", "device"),
        ("cli", "blk_io"),
        ("api", "api"),
    ] {
        let dir = scratch();
        let args = if mode == "cli" {
            cli_args(dir.path(), true)
        } else {
            api_args(dir.path(), true)
        };
        let child = spawn(&args, Some(("SQUIB_TEST_FORBIDDEN_SYSCALL", kind)));
        let output = common::wait_with_timeout(child, TIMEOUT);
        let stderr = common::stderr(&output);
        assert_eq!(output.status.code(), Some(BAD_SYSCALL), "{kind}: {stderr}");
        // getppid: 110 on x86_64.
        assert!(
            stderr.contains("syscall 110 outside its allowlist"),
            "{kind}: {stderr}"
        );
    }
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    if !common::kvm_available("no_seccomp_leaves_every_thread_unfiltered") {
        return;
    }
    let dir = scratch();
    let mut args = cli_args(dir.path(), true);
    args.push("--no-seccomp".into());
    // The trigger does nothing without filters: getppid is then just a syscall.
    let mut child = spawn(&args, Some(("SQUIB_TEST_FORBIDDEN_SYSCALL", "vcpu")));
    let threads = wait_for_threads(&mut child, CLI_THREADS);
    let output = stop(child);
    assert!(threads.iter().all(|(_, m)| m == "0"), "{threads:?}");
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    assert!(common::stderr(&output).contains("seccomp: no filter installed"));
}

#[test]
fn seccomp_filter_loads_a_compiled_file_and_refuses_a_bad_one() {
    if !common::kvm_available("seccomp_filter_loads_a_compiled_file_and_refuses_a_bad_one") {
        return;
    }
    let dir = scratch();
    let file = dir.path().join("filters.bpf");
    std::fs::write(&file, squib_vmm::seccomp::built_in_filters()).unwrap();
    let mut args = cli_args(dir.path(), true);
    args.extend([
        "--seccomp-filter".to_owned(),
        file.to_str().unwrap().to_owned(),
    ]);
    let mut child = spawn(&args, None);
    let threads = wait_for_threads(&mut child, CLI_THREADS);
    let output = stop(child);
    assert!(threads.iter().all(|(_, m)| m == "2"), "{threads:?}");
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));

    // Firecracker's own files have only `vmm`, `api` and `vcpu`: squib names what is missing.
    let mut map =
        squib_vmm::seccomp::bpf_file::decode(squib_vmm::seccomp::built_in_filters()).unwrap();
    map.retain(|name, _| matches!(name.as_str(), "vmm" | "api" | "vcpu"));
    std::fs::write(&file, squib_vmm::seccomp::bpf_file::encode(&map)).unwrap();
    let output = common::wait_with_timeout(spawn(&args, None), TIMEOUT);
    assert_eq!(
        output.status.code(),
        Some(153),
        "bad arguments: Firecracker's status"
    );
    assert!(
        common::stderr(&output).contains("no filter for the `device` thread category"),
        "{}",
        common::stderr(&output)
    );
    std::fs::write(&file, b"not a filter").unwrap();
    let output = common::wait_with_timeout(spawn(&args, None), TIMEOUT);
    assert_eq!(
        output.status.code(),
        Some(153),
        "bad arguments: Firecracker's status"
    );
    assert!(common::stderr(&output).contains("ends early"));
}
