//! virtio-net end to end: the test guest on squib, attached to a TAP device in a network
//! namespace of its own, talks to the host kernel (ARP) and to a UDP echo server and a sink
//! running in that namespace. Traffic never leaves the namespace.
//!
//! Needs /dev/kvm, root (network namespaces, TAP devices), /dev/net/tun, `ip` and `python3`;
//! skips loudly without them. The namespace is deleted even when the test fails.
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const GUEST_MAC: &str = "06:00:0a:00:00:02";
const ECHO_PORT: u16 = 7777;
const SINK_PORT: u16 = 7778;
/// Datagrams the guest blasts at the sink, and the tx limit they meet (bytes per second).
const SINK_COUNT: usize = 300;
const TX_BUCKET_BYTES: u64 = 20_000;
const TX_REFILL_MS: u64 = 100;
/// What the limiter charges per datagram: the Ethernet frame (14 + 20 + 8 + 1000 bytes).
const SINK_FRAME_BYTES: f64 = 1042.0;

/// A UDP echo server on `argv[1]:argv[2]` and a sink on `argv[3]` that prints one line per
/// datagram with its arrival time.
const SERVER: &str = r#"
import socket, sys, time, threading
addr, port, sink = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def serve_sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, sink))
    while True:
        d = s.recv(65536)
        print("sink %.6f %d" % (time.monotonic(), len(d)), flush=True)
threading.Thread(target=serve_sink, daemon=True).start()
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
e.bind((addr, port))
print("ready", flush=True)
while True:
    d, a = e.recvfrom(65536)
    e.sendto(d, a)
"#;

/// A network namespace with a TAP device, deleted (with the processes started in it) on drop.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create(name: &str) -> Self {
        // A namespace left by a crashed run of this test would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ns = Self {
            name: name.to_owned(),
            children: Vec::new(),
        };
        ns.ip(&["netns", "add", name], false);
        ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"], true);
        ns.ip(
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"],
            true,
        );
        ns.ip(&["link", "set", "tap0", "up"], true);
        ns.ip(&["link", "set", "lo", "up"], true);
        // The echo server's replies need the guest's MAC; the guest does not answer ARP.
        ns.ip(
            &[
                "neigh",
                "add",
                GUEST_IP,
                "lladdr",
                GUEST_MAC,
                "dev",
                "tap0",
                "nud",
                "permanent",
            ],
            true,
        );
        ns
    }

    fn ip(&self, args: &[&str], inside: bool) {
        let mut command = Command::new("ip");
        if inside {
            command.args(["-n", &self.name]);
        }
        let status = command.args(args).status().unwrap();
        assert!(status.success(), "ip {} failed", args.join(" "));
    }

    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn prerequisites(test: &str) -> bool {
    if !common::kvm_available(test) {
        return false;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    let missing = if !root {
        Some("root (network namespaces and TAP devices)")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command")
    } else if Command::new("python3").arg("-V").output().is_err() {
        Some("python3")
    } else {
        None
    };
    if let Some(what) = missing {
        eprintln!("SKIPPED {test}: needs {what}; this network test did not run");
        return false;
    }
    true
}

#[test]
fn test_guest_talks_to_the_host_over_a_tap() {
    if !prerequisites("test_guest_talks_to_the_host_over_a_tap") {
        return;
    }
    let mut ns = Netns::create(&format!("squibnet-{}", std::process::id()));
    let mut server = ns
        .exec("python3")
        .args([
            "-c",
            SERVER,
            HOST_IP,
            &ECHO_PORT.to_string(),
            &SINK_PORT.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    ns.children.push(server);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let guest = common::test_guest().display().to_string();
    let boot_args = format!(
        "console=ttyS0 guest.net={GUEST_IP},{HOST_IP},{ECHO_PORT},{SINK_PORT},{SINK_COUNT}"
    );
    let body = serde_json::json!({
        "boot-source": {"kernel_image_path": guest, "boot_args": boot_args},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "network-interfaces": [{
            "iface_id": "eth0",
            "host_dev_name": "tap0",
            "guest_mac": GUEST_MAC,
            "tx_rate_limiter": {"bandwidth": {"size": TX_BUCKET_BYTES, "refill_time": TX_REFILL_MS}}
        }]
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let stdout = run_squib(&ns, &config);
    for check in [
        "init",
        "rx-before-buffers",
        "udp-echo",
        "inflight",
        "mtu",
        "rate",
    ] {
        let line = format!("ok - virtio-net eth0: {check}");
        assert!(stdout.contains(&line), "missing `{line}`:\n{stdout}");
    }
    assert!(stdout.contains("a 1526-byte frame filled a 1526-byte buffer"));
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");

    // The sink's arrival times: past the bucket's initial burst, the rate is the limit.
    let mut arrivals = Vec::new();
    while arrivals.len() < SINK_COUNT {
        let line = lines.next().expect("the sink stopped early").unwrap();
        if let Some(rest) = line.strip_prefix("sink ") {
            let time: f64 = rest.split_whitespace().next().unwrap().parse().unwrap();
            arrivals.push(time);
        }
    }
    let from = SINK_COUNT / 4;
    let last = SINK_COUNT - 1;
    let rate = (last - from) as f64 * SINK_FRAME_BYTES / (arrivals[last] - arrivals[from]);
    let limit = (TX_BUCKET_BYTES * 1000 / TX_REFILL_MS) as f64;
    eprintln!("tx rate limited to {limit} B/s: measured {rate:.0} B/s");
    assert!(
        (rate - limit).abs() <= limit * 0.10,
        "tx rate {rate:.0} B/s is not within 10 % of the limit {limit} B/s"
    );

    // The TAP is free the moment a VMM exits: a launcher restarting a microVM on it must not
    // get EBUSY. (With the transmit io_uring's TAP registered as a fixed file, the kernel's
    // asynchronous ring teardown kept it attached for a few milliseconds after the exit.)
    let stdout = run_squib(&ns, &config);
    assert!(
        stdout.contains("ok - virtio-net eth0: udp-echo"),
        "{stdout}"
    );
}

/// Runs squib with `config` in the namespace to its exit, which must be clean; its stdout.
fn run_squib(ns: &Netns, config: &Path) -> String {
    let child = ns
        .exec(env!("CARGO_BIN_EXE_squib"))
        .args(["--no-api", "--config-file", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::wait_with_timeout(child, Duration::from_secs(60));
    let stdout = common::stdout(&output);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "squib failed: {}\n{stdout}",
        common::stderr(&output)
    );
    stdout
}
