//! Firecracker's launchers start squib unchanged: each launcher's exact command line reaches a
//! listening socket and (with /dev/kvm) boots the test guest through the API; Kata's version
//! parse accepts `--version`; log and metrics FIFOs work without a reader, as the go-sdk hands
//! them over.
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use serde_json::Value;
use squib_host::clock::{Clock, now_us};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A uuid4 as the go-sdk generates it for `--id`.
const UUID4: &str = "3f2c9a1e-7b4d-4c8e-9f0a-5d6e7f8a9b0c";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Spawns squib with `args` and waits for its API socket.
fn spawn(args: &[String], sock: &Path) -> Child {
    let mut child = common::squib()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?}: squib exited {status} before listening:\n{}",
                common::stderr(&out)
            );
        }
        assert!(Instant::now() < deadline, "{args:?}: no socket after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// The Kata Containers check: run `--version`, split the first line on spaces, parse field 2
/// as `vX.Y.Z`, compare with Kata's minimum Firecracker version.
fn kata_version_check() -> (u64, u64, u64) {
    let out = common::run_squib(&["--version"], Duration::from_secs(10));
    assert!(out.status.success());
    let stdout = common::stdout(&out);
    let first = stdout.lines().next().unwrap();
    let fields: Vec<&str> = first.split(' ').collect();
    assert!(fields.len() >= 2, "{first:?}");
    let version = fields[1].strip_prefix('v').expect("field 2 starts with v");
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().expect("numeric version part"))
        .collect();
    let [major, minor, patch] = parts[..] else {
        panic!("{version:?} is not X.Y.Z")
    };
    // Kata's minimum (kata-containers' firecracker `fcVersion` check) is far below 1.16.
    assert!((major, minor, patch) >= (1, 0, 0));
    assert!(first.contains("squib"), "{first:?} names squib");
    (major, minor, patch)
}

/// Boots the test guest through the API on `c` and waits for squib to power off.
fn boot_test_guest(c: &mut Client, child: Child, dir: &Path, who: &str) {
    let guest = common::test_guest().to_str().unwrap().to_owned();
    let rootfs = common::sparse_disk(dir, "rootfs.img", 64 << 20);
    let steps = [
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{guest}","boot_args":"console=ttyS0"}}"#),
        ),
        (
            "/drives/rootfs",
            format!(
                r#"{{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true,"is_read_only":false}}"#
            ),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#.to_owned(),
        ),
        ("/actions", r#"{"action_type":"InstanceStart"}"#.to_owned()),
    ];
    for (path, body) in &steps {
        let (code, resp) = c.call("PUT", path, body);
        assert_eq!(code, 204, "{who}: PUT {path}: {resp}");
    }
    let output = common::wait_with_timeout(child, TIMEOUT);
    let stdout = common::stdout(&output);
    assert!(
        output.status.success(),
        "{who}: squib exited {:?}\n{stdout}\n{}",
        output.status,
        common::stderr(&output)
    );
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{who}: {stdout}"
    );
}

struct Launcher {
    name: &'static str,
    /// The exact command line the launcher passes, for this socket.
    args: fn(&Path) -> Vec<String>,
    /// What the instance id must read back as.
    id: &'static str,
}

fn go_sdk(sock: &Path) -> Vec<String> {
    // firecracker-go-sdk's default: `--api-sock <path> --id <uuid4>`, plus `--no-seccomp`
    // when no seccomp filter is configured.
    vec![
        "--api-sock".into(),
        sock.display().to_string(),
        "--id".into(),
        UUID4.into(),
        "--no-seccomp".into(),
    ]
}

fn jailer(sock: &Path) -> Vec<String> {
    // The jailer's exec line: `--id <id> --start-time-us <N> --start-time-cpu-us <N>
    // --parent-cpu-time-us <N>`, then the user's args (here the socket, outside a chroot).
    let start = now_us(Clock::Monotonic).saturating_sub(20_000);
    vec![
        "--id".into(),
        "jailed-vm-1".into(),
        "--start-time-us".into(),
        start.to_string(),
        "--start-time-cpu-us".into(),
        "0".into(),
        "--parent-cpu-time-us".into(),
        "1500".into(),
        "--api-sock".into(),
        sock.display().to_string(),
    ]
}

fn kata(sock: &Path) -> Vec<String> {
    // Kata checks `--version` first, then starts `--api-sock <path>` (the id is the default).
    kata_version_check();
    vec!["--api-sock".into(), sock.display().to_string()]
}

const LAUNCHERS: [Launcher; 3] = [
    Launcher {
        name: "firecracker-go-sdk",
        args: go_sdk,
        id: UUID4,
    },
    Launcher {
        name: "jailer",
        args: jailer,
        id: "jailed-vm-1",
    },
    Launcher {
        name: "kata",
        args: kata,
        id: "anonymous-instance",
    },
];

#[test]
fn each_launchers_command_line_listens_and_boots_the_test_guest() {
    let kvm = common::kvm_available("each_launchers_command_line_boots_the_test_guest");
    for launcher in &LAUNCHERS {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fc.sock");
        let args = (launcher.args)(&sock);
        let child = spawn(&args, &sock);
        let mut c = Client::connect(&sock);
        let (code, body) = c.call("GET", "/", "");
        assert_eq!(code, 200, "{}: {body}", launcher.name);
        let info = json(&body);
        assert_eq!(info["id"], launcher.id, "{}", launcher.name);
        assert_eq!(info["vmm_version"], "1.16.0", "{}", launcher.name);
        let version = json(&c.call("GET", "/version", "").1);
        assert_eq!(version["firecracker_version"], "1.16.0");
        if launcher.name == "jailer" {
            // The jailer's clock readings became the start-up metrics.
            let metrics = dir.path().join("metrics.json");
            let body = format!(r#"{{"metrics_path":"{}"}}"#, metrics.display());
            assert_eq!(c.call("PUT", "/metrics", &body).0, 204);
            let flush = r#"{"action_type":"FlushMetrics"}"#;
            assert_eq!(c.call("PUT", "/actions", flush).0, 204);
            let text = std::fs::read_to_string(&metrics).unwrap();
            let line = json(text.lines().next().unwrap());
            let wall = line["api_server"]["process_startup_time_us"]
                .as_u64()
                .unwrap();
            let cpu = line["api_server"]["process_startup_time_cpu_us"]
                .as_u64()
                .unwrap();
            assert!(wall >= 20_000, "{line}");
            assert!(cpu >= 1_500, "{line}");
        }
        if kvm {
            boot_test_guest(&mut c, child, dir.path(), launcher.name);
        } else {
            let mut child = child;
            child.kill().unwrap();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_default_socket_is_firecrackers() {
    let out = common::run_squib(&["--help"], Duration::from_secs(10));
    assert!(common::stdout(&out).contains("[--api-sock PATH]"));
    // Started without --api-sock in a place it cannot bind, squib names Firecracker's path.
    if Path::new("/run/firecracker.socket").exists() {
        eprintln!("SKIPPED the_default_socket_is_firecrackers: /run/firecracker.socket exists");
        return;
    }
    let mut child = common::squib()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Not root: binding in /run failed; the message names the path.
            let out = child.wait_with_output().unwrap();
            assert!(!status.success());
            assert!(
                common::stderr(&out).contains("/run/firecracker.socket"),
                "{}",
                common::stderr(&out)
            );
            return;
        }
        if UnixStream::connect("/run/firecracker.socket").is_ok() {
            // SIGTERM: squib stops in order and removes its socket.
            let pid = child.id().to_string();
            let killed = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            assert!(killed.success());
            let out = common::wait_with_timeout(child, Duration::from_secs(10));
            assert!(out.status.success(), "SIGTERM: exit 0");
            assert!(!Path::new("/run/firecracker.socket").exists());
            return;
        }
        assert!(Instant::now() < deadline, "neither listening nor exited");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn refused_features_exit_153_naming_them() {
    for (args, feature) in [
        (&["--mmds-size-limit", "1024"][..], "MMDS"),
        (&["--metadata", "/tmp/m.json"], "MMDS"),
        (&["--enable-pci"], "PCI"),
        (&["--id", "not_valid!"], "instance id"),
    ] {
        let out = common::run_squib(args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(153), "{args:?}");
        let stderr = common::stderr(&out);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(feature), "{args:?}: {stderr}");
    }
    let out = common::run_squib(&["--level", "Loud"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(152), "bad configuration");
}

#[test]
fn snapshot_flags_print_versions_as_firecracker_does() {
    let out = common::run_squib(&["--snapshot-version"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2.0.0\n");
    // A file that is no snapshot: one line, Firecracker's generic error status.
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-a-snapshot");
    std::fs::write(&bogus, b"garbage").unwrap();
    let out = common::run_squib(
        &["--describe-snapshot", bogus.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::stderr(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not-a-snapshot"), "{stderr}");
}

#[test]
fn no_seccomp_is_said_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fc.sock");
    let log = dir.path().join("log");
    let args: Vec<String> = go_sdk(&sock)
        .into_iter()
        .chain(["--log-path".into(), log.display().to_string()])
        .chain(["--show-level".into(), "--show-log-origin".into()])
        .collect();
    let mut child = spawn(&args, &sock);
    let text = std::fs::read_to_string(&log).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("no seccomp filter is installed"))
        .unwrap_or_else(|| panic!("{text}"));
    // Firecracker's format: `<time> [<id>:<thread>:<level>:<file>:<line>] <message>`.
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), "2024-01-01T00:00:00.000000000".len(), "{line}");
    let head = rest.strip_prefix('[').unwrap().split(']').next().unwrap();
    let fields: Vec<&str> = head.split(':').collect();
    assert_eq!(fields[0], UUID4, "{line}");
    assert_eq!(fields[2], "WARN", "{line}");
    assert!(fields[3].ends_with(".rs"), "{line}");
    assert!(fields[4].parse::<u32>().is_ok(), "{line}");
}

#[test]
fn metrics_fifo_without_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fc.sock");
    let fifo = dir.path().join("metrics.fifo");
    let log_fifo = dir.path().join("log.fifo");
    mkfifo(&fifo);
    mkfifo(&log_fifo);
    let mut child = spawn(&go_sdk(&sock), &sock);
    let mut c = Client::connect(&sock);
    // The go-sdk hands both FIFOs over before anything reads them.
    let logger = format!(
        r#"{{"log_path":"{}","level":"Debug","show_level":true,"show_log_origin":false}}"#,
        log_fifo.display()
    );
    assert_eq!(c.call("PUT", "/logger", &logger).0, 204);
    let metrics = format!(r#"{{"metrics_path":"{}"}}"#, fifo.display());
    assert_eq!(c.call("PUT", "/metrics", &metrics), (204, String::new()));
    let flush = r#"{"action_type":"FlushMetrics"}"#;
    assert_eq!(c.call("PUT", "/actions", flush).0, 204);
    // A reader attached later receives complete lines, every field in the first.
    let reader = std::fs::File::open(&fifo).unwrap();
    let mut reader = BufReader::new(reader);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let line = json(&first);
    for name in squib_vmm::api::metrics::field_names(&[]) {
        let found = name.split('.').try_fold(&line, |v, k| v.get(k));
        assert!(
            found.is_some(),
            "{name} missing from the first line: {first}"
        );
    }
    // Nobody reads any more: flushes fill the pipe, then are dropped and counted, and the API
    // keeps answering at once (the Debug log goes to a FIFO nobody reads either).
    let started = Instant::now();
    let (mut written, mut dropped) = (0, 0);
    while dropped < 3 {
        match c.call("PUT", "/actions", flush).0 {
            204 => written += 1,
            400 => dropped += 1,
            other => panic!("FlushMetrics answered {other}"),
        }
        assert!(written < 10_000, "the pipe never filled");
    }
    assert_eq!(c.call("GET", "/", "").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a full pipe stalled the API"
    );
    // Drain: every line that went out is whole; the next one counts the drops.
    let mut text = String::new();
    for _ in 0..written {
        text.clear();
        reader.read_line(&mut text).unwrap();
        json(&text);
    }
    assert_eq!(c.call("PUT", "/actions", flush).0, 204);
    text.clear();
    reader.read_line(&mut text).unwrap();
    assert_eq!(json(&text)["logger"]["missed_metrics_count"], dropped);
    // The guest boots and runs with the log FIFO still full and unread.
    if common::kvm_available("metrics_fifo_without_a_reader (guest part)") {
        boot_test_guest(&mut c, child, dir.path(), "unread FIFOs");
    } else {
        child.kill().unwrap();
        let _ = child.wait();
    }
}

#[test]
fn vm_config_reports_the_logger_and_metrics_set_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fc.sock");
    let log = dir.path().join("fc.log");
    let metrics = dir.path().join("fc.metrics");
    let args: Vec<String> = [
        "--api-sock",
        sock.to_str().unwrap(),
        "--log-path",
        log.to_str().unwrap(),
        "--level",
        "Debug",
        "--show-level",
        "--module",
        "squib_vmm",
        "--metrics-path",
        metrics.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = spawn(&args, &sock);
    let mut c = Client::connect(&sock);
    let config = json(&c.call("GET", "/vm/config", "").1);
    let logger = &config["logger"];
    assert_eq!(logger["log_path"], log.to_str().unwrap(), "{config}");
    assert_eq!(logger["level"], "Debug", "{config}");
    assert_eq!(logger["show_level"], true, "{config}");
    assert_eq!(logger["show_log_origin"], false, "{config}");
    assert_eq!(logger["module"], "squib_vmm", "{config}");
    assert_eq!(
        config["metrics"]["metrics_path"],
        metrics.to_str().unwrap(),
        "{config}"
    );
    // A PUT /logger changes what is reported, keeping what it leaves out.
    assert_eq!(c.call("PUT", "/logger", r#"{"level":"Warning"}"#).0, 204);
    let config = json(&c.call("GET", "/vm/config", "").1);
    assert_eq!(config["logger"]["level"], "Warning", "{config}");
    assert_eq!(config["logger"]["show_level"], true, "{config}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn machine_changes_before_instance_start_rebuild_the_prepared_vm_and_still_boot() {
    if !common::kvm_available("machine_changes_before_instance_start") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("fc.sock");
    let child = spawn(&go_sdk(&sock), &sock);
    let mut c = Client::connect(&sock);
    // More changes than squib prepares shells for (MAX_SHELLS): each discards the one before,
    // the last ones are built at InstanceStart; the API answers at once throughout.
    for (vcpus, mib) in [(2, 256), (1, 64), (2, 128), (1, 512), (2, 64), (1, 256)] {
        let body = format!(r#"{{"vcpu_count":{vcpus},"mem_size_mib":{mib}}}"#);
        let started = Instant::now();
        assert_eq!(c.call("PUT", "/machine-config", &body).0, 204);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let patch = r#"{"mem_size_mib":96}"#;
    assert_eq!(c.call("PATCH", "/machine-config", patch).0, 204);
    boot_test_guest(&mut c, child, dir.path(), "after machine changes");
}

#[test]
fn signals_exit_with_firecrackers_statuses() {
    for (signal, status) in [("-TERM", 0), ("-INT", 0), ("-HUP", 156), ("-XCPU", 154)] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fc.sock");
        let child = spawn(&go_sdk(&sock), &sock);
        let killed = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = common::wait_with_timeout(child, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(status), "{signal}");
        assert!(!sock.exists(), "{signal}: the socket is removed");
    }
}
