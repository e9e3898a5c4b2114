//! Snapshots on KVM with the project's test guest in its snapshot mode: a running guest is
//! paused, snapshotted, its process killed, and a new squib process loads the snapshot and
//! resumes it; the guest then checks its memory and prints its verdict. Damaged snapshot files
//! are refused before any VM exists.
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
const MEM_MIB: u64 = 128;

/// A squib process in API mode whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    sock: PathBuf,
}

impl Running {
    fn spawn(sock: &Path) -> Self {
        Self::spawn_in(sock, None)
    }

    /// squib with its working directory at `cwd` (clones resolve a relative drive path there).
    fn spawn_in(sock: &Path, cwd: Option<&Path>) -> Self {
        match cwd {
            None => Self::adopt(common::spawn_api(sock, &[]), sock),
            Some(cwd) => {
                let mut command = common::squib();
                command.current_dir(cwd);
                Self::spawn_with(sock, command)
            }
        }
    }

    /// `command` (a squib, perhaps behind `ip netns exec`) serving the API on `sock`.
    fn spawn_with(sock: &Path, mut command: std::process::Command) -> Self {
        let child = command
            .args(["--api-sock", sock.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "the API socket never answered");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self::adopt(child, sock)
    }

    fn adopt(mut child: Child, sock: &Path) -> Self {
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            sock: sock.to_owned(),
        }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        common::Client::connect(&self.sock).call(method, path, body)
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let (code, answer) = self.call(method, path, body);
        assert_eq!(code, 204, "{method} {path} {body}: {answer}");
    }

    /// Waits for a stdout line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no `{prefix}` line; stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit; returns its stdout lines and exit status.
    fn finish(mut self) -> (Vec<String>, Output) {
        let output = common::wait_with_timeout(self.child, TIMEOUT);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        (self.seen, output)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Boots the test guest in snapshot mode through the API (with `disk` as `vda`, a path relative
/// to `cwd` or absolute) and waits for its third tick.
fn boot_snapshot_guest(
    sock: &Path,
    machine: &str,
    disk: Option<&str>,
    cwd: Option<&Path>,
) -> Running {
    boot_snapshot_guest_on(sock, machine, disk, cwd, "Sync")
}

/// [`boot_snapshot_guest`] with the disk on `io_engine` (`Sync`, or `Async`: io_uring).
fn boot_snapshot_guest_on(
    sock: &Path,
    machine: &str,
    disk: Option<&str>,
    cwd: Option<&Path>,
    io_engine: &str,
) -> Running {
    let mut vm = Running::spawn_in(sock, cwd);
    let guest = common::test_guest().to_str().unwrap().to_owned();
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{guest}","boot_args":"guest.mode=snapshot"}}"#),
    );
    vm.ok("PUT", "/machine-config", machine);
    if let Some(disk) = disk {
        vm.ok(
            "PUT",
            "/drives/vda",
            &format!(
                r#"{{"drive_id":"vda","path_on_host":"{disk}","is_root_device":false,"io_engine":"{io_engine}"}}"#
            ),
        );
    }
    vm.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    vm.wait_for("SNAP tick 3");
    vm
}

fn tick(line: &str) -> u64 {
    line.strip_prefix("SNAP tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tick line: {line:?}"))
}

/// Pauses `vm` and writes a snapshot of `kind`; returns the last tick printed before.
fn snapshot(vm: &mut Running, state: &Path, mem: &Path, kind: &str) {
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (_, info) = vm.call("GET", "/", "");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "Paused", "{info}");
    vm.ok(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path":"{}","mem_file_path":"{}","snapshot_type":"{kind}"}}"#,
            state.display(),
            mem.display()
        ),
    );
}

fn load_body(state: &Path, mem: &Path) -> String {
    format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
        state.display(),
        mem.display()
    )
}

/// What a restore is checked against.
struct Expect {
    /// The last tick printed before the snapshot.
    last_tick: u64,
    /// Whether the guest has a disk (and so a second check).
    disk: bool,
}

/// Loads `state`/`mem` in a new process (working directory `cwd`) and checks that the guest
/// carried on from after the snapshot and passed its memory (and disk) checks.
fn restore_and_check(
    dir: &Path,
    name: &str,
    state: &Path,
    mem: &Path,
    expect: &Expect,
    cwd: Option<&Path>,
) {
    let last_tick = expect.last_tick;
    let vm = Running::spawn_in(&dir.join(format!("{name}.sock")), cwd);
    vm.ok("PUT", "/snapshot/load", &load_body(state, mem));
    let (lines, output) = vm.finish();
    let stdout = lines.join("\n");
    let stderr = common::stderr(&output);
    assert!(
        !lines.iter().any(|l| l.starts_with("squib-test-guest")),
        "the restored guest booted again:\n{stdout}"
    );
    let first = lines
        .iter()
        .find(|l| l.starts_with("SNAP tick"))
        .unwrap_or_else(|| panic!("no tick after the restore:\n{stdout}\n{stderr}"));
    assert!(
        tick(first) > last_tick && tick(first) <= last_tick + 2,
        "the restored guest did not go on from tick {last_tick}: first line {first:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "ok - snapshot: memory checksum after 150 rounds"),
        "{stdout}\n{stderr}"
    );
    if expect.disk {
        for check in [
            "ok - snapshot: vda reads into memory match after 150 rounds",
            "ok - snapshot: vda blocks equal their chunks after 150 rounds of writes",
        ] {
            assert!(
                lines.iter().any(|l| l == check),
                "{check}:\n{stdout}\n{stderr}"
            );
        }
    }
    let summary = if expect.disk {
        "3 passed, 0 failed"
    } else {
        "1 passed, 0 failed"
    };
    assert!(lines.iter().any(|l| l == summary), "{stdout}");
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
}

fn last_tick(vm: &Running) -> u64 {
    vm.seen
        .iter()
        .rev()
        .find(|l| l.starts_with("SNAP tick"))
        .map(|l| tick(l))
        .unwrap()
}

/// Drains the lines printed up to the pause, so that `last_tick` sees them.
fn settle(vm: &mut Running) {
    while let Ok(line) = vm.lines.recv_timeout(Duration::from_millis(200)) {
        vm.seen.push(line);
    }
}

#[test]
fn full_snapshot_of_a_running_guest_resumes_in_a_new_process() {
    if !common::kvm_available("full_snapshot_resumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    let disk = common::sparse_disk(dir.path(), "disk.img", 16 << 20);
    // The io_uring engine (Firecracker's `Async`): its requests in flight complete at the pause,
    // and the restored drive comes back on the same engine.
    let mut vm = boot_snapshot_guest_on(
        &dir.path().join("a.sock"),
        &format!(r#"{{"vcpu_count":2,"mem_size_mib":{MEM_MIB},"track_dirty_pages":true}}"#),
        Some(&disk),
        None,
        "Async",
    );
    snapshot(&mut vm, &state, &mem, "Full");
    settle(&mut vm);
    let last = last_tick(&vm);
    vm.kill();

    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), MEM_MIB << 20);
    // Sparse: the guest touched a few MiB, not 128.
    assert!(
        meta.blocks() * 512 < (MEM_MIB << 20) / 4,
        "memory file not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    let described = common::squib()
        .args(["--describe-snapshot", state.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&described.stderr)
    );
    // Firecracker's output: the format version alone, as a semantic version.
    assert_eq!(text.trim_end(), "v2.0.0", "{text}");

    let expect = Expect {
        last_tick: last,
        disk: true,
    };
    restore_and_check(dir.path(), "b", &state, &mem, &expect, None);
}

/// A UDP echo server on `argv[1]:argv[2]`, run inside the test's network namespace.
const UDP_ECHO: &str = r#"
import socket, sys
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    d, a = e.recvfrom(65536)
    e.sendto(d, a)
"#;
const NET_HOST_IP: &str = "10.0.9.1";
const NET_GUEST_IP: &str = "10.0.9.2";
const NET_GUEST_MAC: &str = "06:00:0a:00:09:02";
/// Both TAPs get this MAC: the guest keeps the host MAC it learnt before the snapshot.
const NET_HOST_MAC: &str = "02:00:0a:00:09:01";
const NET_ECHO_PORT: u16 = 7777;
/// The host port the snapshot-mode guest's vsock connections go to (`<uds_path>_5000`).
const VSOCK_ECHO_PORT: u32 = 5000;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A network namespace (prefixed `snapdev`) for the net device's TAPs, deleted with the
/// processes started in it on drop. Traffic stays inside it.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create() -> Self {
        let name = format!("snapdev-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ns = Self {
            name,
            children: Vec::new(),
        };
        ns.ip(&["netns", "add", &ns.name], false);
        ns.ip(&["link", "set", "lo", "up"], true);
        ns
    }

    /// A TAP with the host's address and MAC, and the guest's neighbour entry (the guest does
    /// not answer ARP).
    fn add_tap(&self, tap: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"], true);
        self.ip(&["link", "set", tap, "address", NET_HOST_MAC], true);
        self.ip(
            &["addr", "add", &format!("{NET_HOST_IP}/24"), "dev", tap],
            true,
        );
        self.ip(&["link", "set", tap, "up"], true);
        self.ip(
            &[
                "neigh",
                "add",
                NET_GUEST_IP,
                "lladdr",
                NET_GUEST_MAC,
                "dev",
                tap,
                "nud",
                "permanent",
            ],
            true,
        );
    }

    fn ip(&self, args: &[&str], inside: bool) {
        let mut command = std::process::Command::new("ip");
        if inside {
            command.args(["-n", &self.name]);
        }
        let status = command.args(args).status().unwrap();
        assert!(status.success(), "ip {} failed", args.join(" "));
    }

    fn exec(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Echoes every connection made to the Unix socket `path` (a vsock host port), until the
/// process ends.
fn vsock_echo_listener(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
}

/// A microVM with every device squib has — disk, net (TAP in a namespace of its own), vsock
/// and entropy, with rate limiters — is snapshotted with a vsock connection open, killed, and
/// loaded in a new process with `network_overrides` (another TAP: the first is deleted) and
/// `vsock_override` (another socket: the first's echo listener is gone). Every device then does
/// new I/O: the disk (the guest's checks), the rng reads, the interface echoes UDP through the
/// new TAP, and the vsock device's TRANSPORT_RESET resets the old connection before a new one
/// echoes through the new socket.
#[test]
fn a_microvm_with_every_device_restores_and_each_does_new_io() {
    let test = "every_device_snapshot";
    if !common::kvm_available(test) {
        return;
    }
    let missing = if !is_root() {
        Some("root (network namespaces and TAP devices)")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun")
    } else if std::process::Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command")
    } else if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        Some("python3")
    } else {
        None
    };
    if let Some(what) = missing {
        eprintln!("SKIPPED {test}: needs {what}; this snapshot test did not run");
        return;
    }
    let mut ns = Netns::create();
    ns.add_tap("tap0");
    let mut server = ns
        .exec("python3")
        .args(["-c", UDP_ECHO, NET_HOST_IP, &NET_ECHO_PORT.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    ns.children.push(server);
    assert_eq!(ready.trim(), "ready");

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let (uds_a, uds_b) = (path("v-a.sock"), path("v-b.sock"));
    let echo_a = PathBuf::from(format!("{}_{VSOCK_ECHO_PORT}", uds_a.display()));
    vsock_echo_listener(&echo_a);
    let disk = common::sparse_disk(dir.path(), "disk.img", 16 << 20);
    let guest = common::test_guest().to_str().unwrap().to_owned();

    let mut vm = Running::spawn_with(&path("a.sock"), ns.exec(env!("CARGO_BIN_EXE_squib")));
    let boot_args =
        format!("guest.mode=snapshot guest.net={NET_GUEST_IP},{NET_HOST_IP},{NET_ECHO_PORT}");
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{guest}","boot_args":"{boot_args}"}}"#),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}}"#),
    );
    let limiter = r#"{"bandwidth":{"size":10000000,"refill_time":100}}"#;
    vm.ok(
        "PUT",
        "/drives/vda",
        &format!(
            r#"{{"drive_id":"vda","path_on_host":"{disk}","is_root_device":false,"rate_limiter":{limiter}}}"#
        ),
    );
    vm.ok(
        "PUT",
        "/network-interfaces/eth0",
        &format!(
            r#"{{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"{NET_GUEST_MAC}","tx_rate_limiter":{limiter}}}"#
        ),
    );
    vm.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid":3,"uds_path":"{}"}}"#, uds_a.display()),
    );
    vm.ok(
        "PUT",
        "/entropy",
        &format!(r#"{{"rate_limiter":{limiter}}}"#),
    );
    vm.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    vm.wait_for("SNAP tick 3");
    snapshot(&mut vm, &path("vm.snap"), &path("vm.mem"), "Full");
    settle(&mut vm);
    let last = last_tick(&vm);
    vm.kill();

    // The old host resources are gone: only the overrides can make the devices work.
    std::fs::remove_file(&echo_a).unwrap();
    ns.ip(&["link", "del", "tap0"], true);
    ns.add_tap("tap1");
    let echo_b = PathBuf::from(format!("{}_{VSOCK_ECHO_PORT}", uds_b.display()));
    vsock_echo_listener(&echo_b);

    let vm = Running::spawn_with(&path("b.sock"), ns.exec(env!("CARGO_BIN_EXE_squib")));
    let load = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true,"network_overrides":[{{"iface_id":"eth0","host_dev_name":"tap1"}}],"vsock_override":{{"uds_path":"{}"}}}}"#,
        path("vm.snap").display(),
        path("vm.mem").display(),
        uds_b.display()
    );
    vm.ok("PUT", "/snapshot/load", &load);
    let (lines, output) = vm.finish();
    let stdout = lines.join("\n");
    let stderr = common::stderr(&output);
    let first = lines
        .iter()
        .find(|l| l.starts_with("SNAP tick"))
        .unwrap_or_else(|| panic!("no tick after the restore:\n{stdout}\n{stderr}"));
    assert!(tick(first) > last, "{first:?} after tick {last}");
    for check in [
        "ok - snapshot: memory checksum after 150 rounds",
        "ok - snapshot: vda reads into memory match after 150 rounds",
        "ok - snapshot: vda blocks equal their chunks after 150 rounds of writes",
        "ok - snapshot: virtio-rng reads after the restore",
        "ok - snapshot: virtio-net echoes after the restore",
        "ok - snapshot: virtio-vsock transport reset, then a new connection echoes",
        "6 passed, 0 failed",
    ] {
        assert!(
            lines.iter().any(|l| l == check),
            "missing `{check}`:\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn corrupted_and_truncated_snapshots_are_refused_before_anything_runs() {
    if !common::kvm_available("damaged_snapshots_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    let mut vm = boot_snapshot_guest(
        &dir.path().join("a.sock"),
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}}"#),
        None,
        None,
    );
    snapshot(&mut vm, &state, &mem, "Full");
    vm.kill();
    let good = std::fs::read(&state).unwrap();

    let corrupted = dir.path().join("corrupted.snap");
    let mut bytes = good.clone();
    let middle = 64 + (bytes.len() - 64) / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&corrupted, &bytes).unwrap();
    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let foreign = dir.path().join("foreign.snap");
    let mut bytes = good.clone();
    bytes[8] = 99;
    std::fs::write(&foreign, &bytes).unwrap();
    let short_mem = dir.path().join("short.mem");
    std::fs::File::create(&short_mem)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    for (name, snap, memory, expected) in [
        ("c", &corrupted, &mem, "corrupted"),
        ("t", &truncated, &mem, "truncated"),
        ("f", &foreign, &mem, "format version 99"),
        ("m", &state, &short_mem, "the snapshot needs"),
    ] {
        let vm = Running::spawn(&dir.path().join(format!("{name}.sock")));
        let (code, answer) = vm.call("PUT", "/snapshot/load", &load_body(snap, memory));
        assert_eq!(code, 400, "{name}: {answer}");
        assert!(answer.contains(expected), "{name}: {answer}");
        let (_, info) = vm.call("GET", "/", "");
        let info: Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["state"], "Not started", "{name}: {info}");
        vm.kill();
    }
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A Diff snapshot of a microVM with a disk, taken after rounds in which the device read disk
/// blocks into guest pages the vCPUs never write: only the dirty bitmap of guest memory sees
/// those pages change (KVM's dirty log sees the vCPUs' writes only). Merged onto its base and
/// restored, the guest's hashes of what the device read must match — on both engines (`Sync`:
/// `preadv` into guest memory; `Async`: io_uring, which writes through raw host addresses).
#[test]
fn diff_snapshot_merged_onto_its_base_resumes() {
    if !common::kvm_available("diff_snapshot_resumes") {
        return;
    }
    for engine in ["Sync", "Async"] {
        diff_snapshot_round_trip(engine);
    }
}

fn diff_snapshot_round_trip(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let disk = common::sparse_disk(dir.path(), "disk.img", 16 << 20);
    let mut vm = boot_snapshot_guest_on(
        &path("a.sock"),
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB},"track_dirty_pages":true}}"#),
        Some(&disk),
        None,
        engine,
    );
    snapshot(&mut vm, &path("base.snap"), &path("base.mem"), "Full");
    settle(&mut vm);
    let first = last_tick(&vm);
    vm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    vm.wait_for(&format!("SNAP tick {}", first + 6));
    snapshot(&mut vm, &path("diff.snap"), &path("diff.mem"), "Diff");
    settle(&mut vm);
    let last = last_tick(&vm);
    vm.kill();

    // The diff holds what changed in a few rounds: a few chunks and the stack, not the image.
    let (base, diff) = (allocated(&path("base.mem")), allocated(&path("diff.mem")));
    assert!(
        diff > 0 && diff < base / 2,
        "{engine}: diff {diff} bytes vs base {base}"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let merged = std::process::Command::new(cargo)
        .args(["run", "-q", "-p", "xtask", "--", "snapshot-merge"])
        .args([path("base.mem"), path("diff.mem")])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap();
    assert!(
        merged.status.success(),
        "snapshot-merge: {}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let expect = Expect {
        last_tick: last,
        disk: true,
    };
    restore_and_check(
        dir.path(),
        "b",
        &path("diff.snap"),
        &path("base.mem"),
        &expect,
        None,
    );
}

#[test]
fn two_clones_restored_from_one_snapshot_run_at_once() {
    if !common::kvm_available("two_clones") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    // The drive is configured by a relative path: each process opens `disk.img` in its own
    // working directory, as each Firecracker clone does in its own jail.
    let cwd = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let original = cwd("original");
    common::sparse_disk(&original, "disk.img", 16 << 20);
    let mut vm = boot_snapshot_guest(
        &dir.path().join("a.sock"),
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}}"#),
        Some("disk.img"),
        Some(&original),
    );
    snapshot(&mut vm, &state, &mem, "Full");
    settle(&mut vm);
    let last = last_tick(&vm);
    vm.kill();
    let mem_before = std::fs::read(&mem).unwrap();
    let disk_before = std::fs::read(original.join("disk.img")).unwrap();
    let clones = [cwd("clone1"), cwd("clone2")];
    for clone in &clones {
        std::fs::copy(original.join("disk.img"), clone.join("disk.img")).unwrap();
    }
    let expect = Expect {
        last_tick: last,
        disk: true,
    };
    // MAP_PRIVATE: both clones map the same memory file; each one's writes stay its own.
    std::thread::scope(|scope| {
        for (index, clone) in clones.iter().enumerate() {
            let (dir, state, mem, expect) = (dir.path(), &state, &mem, &expect);
            let name = format!("clone{index}");
            scope.spawn(move || restore_and_check(dir, &name, state, mem, expect, Some(clone)));
        }
    });
    assert!(
        std::fs::read(&mem).unwrap() == mem_before,
        "a clone's writes reached the shared memory file"
    );
    assert!(
        std::fs::read(original.join("disk.img")).unwrap() == disk_before,
        "a clone wrote the original's disk"
    );
    for clone in &clones {
        assert!(
            std::fs::read(clone.join("disk.img")).unwrap() != disk_before,
            "{} was not written",
            clone.display()
        );
    }
}

#[test]
fn uffd_backend_gets_every_page_from_the_example_handler() {
    if !common::kvm_available("uffd_backend") {
        return;
    }
    if !Path::new("/dev/userfaultfd").exists() && !nix_root() {
        eprintln!("SKIPPED uffd_backend: userfaultfd needs root here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    let disk = common::sparse_disk(dir.path(), "disk.img", 16 << 20);
    let mut vm = boot_snapshot_guest(
        &dir.path().join("a.sock"),
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}}"#),
        Some(&disk),
        None,
    );
    snapshot(&mut vm, &state, &mem, "Full");
    let (code, answer) = vm.call(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_path":"{0}.d","mem_file_path":"{0}.dm","snapshot_type":"Diff"}}"#,
            state.display()
        ),
    );
    assert_eq!(code, 400, "a Diff without dirty-page tracking: {answer}");
    assert!(answer.contains("track_dirty_pages"), "{answer}");
    settle(&mut vm);
    let last = last_tick(&vm);
    vm.kill();

    let handler_sock = dir.path().join("uffd.sock");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut handler = std::process::Command::new(cargo)
        .args(["run", "-q", "-p", "xtask", "--", "snapshot-uffd-handler"])
        .args([&handler_sock, &mem])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut handler_out = BufReader::new(handler.stdout.take().unwrap());
    let mut line = String::new();
    handler_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "handler said {line:?}");

    let restored = Running::spawn(&dir.path().join("b.sock"));
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"Uffd","backend_path":"{}"}},"resume_vm":true}}"#,
        state.display(),
        handler_sock.display()
    );
    restored.ok("PUT", "/snapshot/load", &body);
    let (lines, output) = restored.finish();
    let stdout = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l == "ok - snapshot: memory checksum after 150 rounds"),
        "{stdout}\n{}",
        common::stderr(&output)
    );
    assert!(
        lines.iter().any(|l| l
            == "ok - snapshot: vda blocks equal their chunks after 150 rounds of writes"),
        "{stdout}"
    );
    assert!(tick(lines.iter().find(|l| l.starts_with("SNAP tick")).unwrap()) > last);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    // The handler notices the VMM leaving and stops on its own.
    let status = common::wait_with_timeout(handler, TIMEOUT).status;
    assert!(status.success(), "handler: {status}");
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_loaded_microvm_snapshotted_again_keeps_the_pages_it_never_touched() {
    if !common::kvm_available("snapshot_of_a_loaded_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let disk = common::sparse_disk(dir.path(), "disk.img", 16 << 20);
    let mut vm = boot_snapshot_guest(
        &path("a.sock"),
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB}}}"#),
        Some(&disk),
        None,
    );
    snapshot(&mut vm, &path("1.snap"), &path("1.mem"), "Full");
    settle(&mut vm);
    let first = last_tick(&vm);
    vm.kill();

    // Loaded, run a few rounds, snapshotted again: whatever the loaded process did not touch
    // is only in 1.mem and must reach 2.mem. (On this host the kernel faults most of the
    // mapping in anyway — this passed even before untouched file pages were written — so it
    // guards the round trip of a loaded microVM more than that one rule.)
    let mut vm = Running::spawn(&path("b.sock"));
    vm.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&path("1.snap"), &path("1.mem")),
    );
    vm.wait_for(&format!("SNAP tick {}", first + 3));
    // The loaded microVM's configuration is the snapshot's, and its drive can be patched.
    let (_, config) = vm.call("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["drives"][0]["drive_id"], "vda", "{config}");
    assert_eq!(
        config["machine-config"]["mem_size_mib"], MEM_MIB,
        "{config}"
    );
    vm.ok(
        "PATCH",
        "/drives/vda",
        r#"{"drive_id":"vda","rate_limiter":{"ops":{"size":100000,"refill_time":100}}}"#,
    );
    snapshot(&mut vm, &path("2.snap"), &path("2.mem"), "Full");
    settle(&mut vm);
    let second = last_tick(&vm);
    vm.kill();

    let expect = Expect {
        last_tick: second,
        disk: true,
    };
    restore_and_check(
        dir.path(),
        "c",
        &path("2.snap"),
        &path("2.mem"),
        &expect,
        None,
    );
}
