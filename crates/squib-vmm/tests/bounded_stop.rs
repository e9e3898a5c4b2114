//! Stop and pause finish in bounded time whatever the guest does: the test guest's reset-storm
//! mode fills its disk's queue with large reads and resets the device, forever, while the test
//! sends SIGTERM, or pauses the microVM through the API and asks `GET /` meanwhile.
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous for a loaded 2-core machine, far below the seconds an unbounded drain takes.
const STOP_BUDGET: Duration = Duration::from_secs(2);

/// Waits until the guest prints `STORM running`; hands back its stdout reader thread's channel
/// (the pipe must keep draining or the guest's serial writes would block).
fn wait_for_storm(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("STORM running") => return rx,
            Ok(line) if line.starts_with("FAIL") => panic!("guest failed: {line}"),
            Ok(_) => {}
            Err(_) => panic!("the guest never started its reset storm"),
        }
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
}

/// Waits for `child` to exit; returns how long it took, failing after 30 s.
fn time_exit(child: &mut Child, since: Instant) -> Duration {
    while child.try_wait().unwrap().is_none() {
        if since.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("squib did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    since.elapsed()
}

#[test]
fn sigterm_stops_squib_promptly_under_a_reset_storm() {
    if !common::kvm_available("sigterm_stops_squib_promptly_under_a_reset_storm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = common::sparse_disk(dir.path(), "disk.img", 64 << 20);
    let mut child = common::squib()
        .args(["--kernel", common::test_guest().to_str().unwrap()])
        .args(["--disk", &disk, "--mem-mib", "128"])
        .args(["--cmdline", "guest.mode=reset-storm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _lines = wait_for_storm(child.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    sigterm(&child);
    let took = time_exit(&mut child, sent);
    let status = child.wait().unwrap();
    eprintln!("SIGTERM → exit under a reset storm: {took:?}");
    assert!(
        took < STOP_BUDGET,
        "SIGTERM → exit took {took:?} under a reset storm"
    );
    assert_eq!(status.code(), Some(0), "a requested stop exits 0");
}

/// One HTTP/1.1 request over the API socket; returns (status, body).
fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn pause_and_get_are_answered_promptly_under_a_reset_storm() {
    if !common::kvm_available("pause_and_get_are_answered_promptly_under_a_reset_storm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = common::sparse_disk(dir.path(), "disk.img", 64 << 20);
    let sock = dir.path().join("api.sock");
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": common::test_guest(),
            "boot_args": "guest.mode=reset-storm"
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": disk,
            "is_root_device": false,
            "is_read_only": false
        }],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 }
    });
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut child = common::squib()
        .args(["--api-sock", sock.to_str().unwrap()])
        .args(["--config-file", config_path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = wait_for_storm(child.stdout.take().unwrap());

    let start = Instant::now();
    let (status, body) = api(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    let pause_took = start.elapsed();
    assert_eq!(status, 204, "pause refused: {body}");
    eprintln!("PATCH /vm Paused under a reset storm: {pause_took:?}");
    assert!(pause_took < STOP_BUDGET, "pause took {pause_took:?}");
    let start = Instant::now();
    let (status, body) = api(&sock, "GET", "/", "");
    let get_took = start.elapsed();
    assert_eq!(status, 200);
    assert!(body.contains("Paused"), "GET / while paused: {body}");
    assert!(
        get_took < STOP_BUDGET,
        "GET / took {get_took:?} while paused"
    );

    let (status, body) = api(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(status, 204, "resume refused: {body}");

    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    sigterm(&child);
    let took = time_exit(&mut child, sent);
    assert!(took < STOP_BUDGET, "SIGTERM → exit took {took:?}");
    drop(lines);
}
