//! squib in Firecracker mode on KVM: the getting-started sequence with real `curl`, runtime
//! control from a Rust client, and `--config-file` / `--no-api` boots of the project's test guest.
#![forbid(unsafe_code)]

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A guest that prints `WAIT`, polls the i8042 until a scancode arrives (Ctrl+Alt+Del from the
/// API), prints `CAD` and resets the machine: it shows that the guest saw the key press.
fn ctrl_alt_del_guest(dir: &Path) -> PathBuf {
    let poll = vec![
        0xe4, 0x64, // 1: in $0x64, %al
        0xa8, 0x01, // test $1, %al (output buffer full)
        0x74, 0xfa, // jz 1b
        0xe4, 0x60, // in $0x60, %al (take the scancode)
    ];
    let code = common::code(&[
        common::print("WAIT\n"),
        poll,
        common::print("CAD\n"),
        common::out(0x64, 0xfe),
        common::halt_forever(),
    ]);
    common::tiny_guest(dir, "cad-guest", &code)
}

fn curl_available(test: &str) -> bool {
    if Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    eprintln!("SKIPPED {test}: curl is not installed (apt-get install -y curl)");
    false
}

/// One request through `curl --unix-socket`; returns the status and the body.
fn curl(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--unix-socket", sock.to_str().unwrap(), "-X", method])
        .args([
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-w", "\n%{http_code}"]);
    if !body.is_empty() {
        cmd.args(["-d", body]);
    }
    let out = cmd.arg(format!("http://localhost{path}")).output().unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn assert_all_checks_passed(output: &Output) {
    let stdout = common::stdout(output);
    assert!(
        output.status.success(),
        "squib exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        common::stderr(output)
    );
    assert!(stdout.starts_with("squib-test-guest"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.ends_with(" passed, 0 failed")),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL - "), "{stdout}");
}

#[test]
fn getting_started_with_curl_boots_the_test_guest() {
    if !common::kvm_available("getting_started_with_curl") || !curl_available("getting_started") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("squib.sock");
    let rootfs = common::sparse_disk(dir.path(), "rootfs.img", 64 << 20);
    let ro = common::sparse_disk(dir.path(), "ro.img", 8 << 20);
    let child = common::spawn_api(&sock, &[]);

    let (code, body) = curl(&sock, "GET", "/", "");
    assert_eq!(
        (code, json(&body)["state"].as_str()),
        (200, Some("Not started"))
    );
    let guest = common::test_guest().to_str().unwrap();
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
            "/drives/ro",
            format!(
                r#"{{"drive_id":"ro","path_on_host":"{ro}","is_root_device":false,"is_read_only":true,"io_engine":"Async"}}"#
            ),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#.to_owned(),
        ),
    ];
    for (path, body) in &steps {
        assert_eq!(
            curl(&sock, "PUT", path, body),
            (204, String::new()),
            "PUT {path}"
        );
    }
    let config = json(&curl(&sock, "GET", "/vm/config", "").1);
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["machine-config"]["mem_size_mib"], 128);
    let (code, body) = curl(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    assert_eq!(code, 204, "{body}");
    let output = common::wait_with_timeout(child, TIMEOUT);
    assert_all_checks_passed(&output);
    // Firecracker's root device handling: first drive, on the command line.
    assert!(
        common::stdout(&output).contains("root=/dev/vda rw"),
        "{}",
        common::stdout(&output)
    );
    assert!(!sock.exists(), "squib removes its socket on exit");
}

#[test]
fn runtime_control_with_curl_ends_with_ctrl_alt_del() {
    if !common::kvm_available("runtime_control_with_curl") || !curl_available("runtime_control") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("squib.sock");
    let kernel = ctrl_alt_del_guest(dir.path());
    let rootfs = common::sparse_disk(dir.path(), "rootfs.img", 1 << 20);
    let bigger = common::sparse_disk(dir.path(), "bigger.img", 2 << 20);
    let metrics = dir.path().join("metrics.json");
    let child = common::spawn_api(&sock, &["--metrics-path", metrics.to_str().unwrap()]);
    let put = |path: &str, body: String| assert_eq!(curl(&sock, "PUT", path, &body).0, 204);
    put(
        "/boot-source",
        format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display()),
    );
    // A throttled drive boots (the block worker enforces the limiter).
    put(
        "/drives/rootfs",
        format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true,"is_read_only":false,"rate_limiter":{{"ops":{{"size":1000,"refill_time":100}}}}}}"#
        ),
    );
    put("/actions", r#"{"action_type":"InstanceStart"}"#.into());
    assert_eq!(json(&curl(&sock, "GET", "/", "").1)["state"], "Running");
    let swap = format!(r#"{{"drive_id":"rootfs","path_on_host":"{bigger}"}}"#);
    assert_eq!(
        curl(&sock, "PATCH", "/drives/rootfs", &swap),
        (204, String::new())
    );
    let limit =
        r#"{"drive_id":"rootfs","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}"#;
    assert_eq!(
        curl(&sock, "PATCH", "/drives/rootfs", limit),
        (204, String::new())
    );
    let config = json(&curl(&sock, "GET", "/vm/config", "").1);
    assert_eq!(config["drives"][0]["path_on_host"], bigger);
    // The PATCH left `ops` out: it keeps its bucket.
    let limiter = &config["drives"][0]["rate_limiter"];
    assert_eq!(limiter["bandwidth"]["size"], 1_048_576);
    assert_eq!(limiter["ops"]["size"], 1000);
    let (code, body) = curl(
        &sock,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"/x"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        json(&body)["fault_message"]
            .as_str()
            .unwrap()
            .contains("after starting")
    );
    assert_eq!(curl(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert_eq!(json(&curl(&sock, "GET", "/", "").1)["state"], "Paused");
    assert_eq!(curl(&sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    assert_eq!(json(&curl(&sock, "GET", "/", "").1)["state"], "Running");
    put("/actions", r#"{"action_type":"FlushMetrics"}"#.into());
    put("/actions", r#"{"action_type":"SendCtrlAltDel"}"#.into());
    let output = common::wait_with_timeout(child, TIMEOUT);
    let stdout = common::stdout(&output);
    assert!(
        output.status.success(),
        "{:?}\n{}",
        output.status,
        common::stderr(&output)
    );
    assert_eq!(
        stdout, "WAIT\nCAD\n",
        "the guest saw Ctrl+Alt+Del and reset"
    );
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["patch_api_requests"]["drive_count"], 2);
    assert!(line.get("block_rootfs").is_some(), "{line}");
}

#[test]
fn rust_client_controls_a_running_guest_on_one_connection() {
    if !common::kvm_available("rust_client_controls_a_running_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("squib.sock");
    let kernel = ctrl_alt_del_guest(dir.path());
    let child = common::spawn_api(&sock, &["--boot-timer"]);
    let mut c = common::Client(UnixStream::connect(&sock).unwrap(), Vec::new());
    c.0.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, kernel.display());
    assert_eq!(c.call("PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        c.call(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":64}"#
        )
        .0,
        204
    );
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    let info = json(&c.call("GET", "/", "").1);
    assert_eq!(
        (info["id"].as_str(), info["state"].as_str()),
        (Some("api-test"), Some("Running"))
    );
    let (code, body) = c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(
        (code, body.contains("already started")),
        (400, true),
        "{body}"
    );
    for _ in 0..3 {
        assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
        assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Paused");
        assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    }
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#)
            .0,
        204
    );
    let output = common::wait_with_timeout(child, TIMEOUT);
    assert!(output.status.success(), "{}", common::stderr(&output));
    assert_eq!(common::stdout(&output), "WAIT\nCAD\n");
}

#[test]
fn config_file_boots_the_test_guest_with_and_without_the_api() {
    if !common::kvm_available("config_file_boots_the_test_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = common::sparse_disk(dir.path(), "rootfs.img", 64 << 20);
    let ro = common::sparse_disk(dir.path(), "ro.img", 8 << 20);
    let config = serde_json::json!({
        "boot-source": { "kernel_image_path": common::test_guest(), "boot_args": "console=ttyS0" },
        "drives": [
            { "drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true,
              "is_read_only": false, "cache_type": "Writeback" },
            { "drive_id": "ro", "path_on_host": ro, "is_root_device": false, "is_read_only": true }
        ],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "network-interfaces": []
    });
    let file = dir.path().join("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let file = file.to_str().unwrap();

    let output = common::run_squib(&["--no-api", "--config-file", file], TIMEOUT);
    assert_all_checks_passed(&output);

    let sock = dir.path().join("squib.sock");
    let sock_arg = sock.to_str().unwrap();
    let output = common::run_squib(&["--api-sock", sock_arg, "--config-file", file], TIMEOUT);
    assert_all_checks_passed(&output);
    assert!(!sock.exists());

    // A bad file is refused before anything boots, naming the problem.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"machine-config":{"vcpu_count":64,"mem_size_mib":128}}"#,
    )
    .unwrap();
    let output = common::run_squib(
        &["--no-api", "--config-file", bad.to_str().unwrap()],
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(152), "bad configuration");
    assert!(common::stderr(&output).contains("vcpu_count must be between 1 and 32"));
    std::fs::write(&bad, r#"{"balloon":{"amount_mib":1}}"#).unwrap();
    let output = common::run_squib(
        &["--no-api", "--config-file", bad.to_str().unwrap()],
        TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(152), "bad configuration");
    assert!(common::stderr(&output).contains("squib does not support `balloon`"));
    // One that validates but whose microVM cannot be built: Firecracker's 152 too.
    let not_elf = dir.path().join("not-elf");
    std::fs::write(&not_elf, b"not a kernel").unwrap();
    let config = format!(
        r#"{{"boot-source":{{"kernel_image_path":"{}"}}}}"#,
        not_elf.display()
    );
    std::fs::write(&bad, config).unwrap();
    let output = common::run_squib(
        &["--no-api", "--config-file", bad.to_str().unwrap()],
        TIMEOUT,
    );
    assert_eq!(
        output.status.code(),
        Some(152),
        "{}",
        common::stderr(&output)
    );
    assert!(common::stderr(&output).contains("cannot start the microVM"));
}
