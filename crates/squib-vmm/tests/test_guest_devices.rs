//! The test guest against squib's entropy (and, as it lands, vsock) devices: one `ok - …` line
//! per check, the run passing only when every check does. Output lines are timestamped as they
//! arrive, so the host can time what the guest cannot (the rate limiter's window).
#![forbid(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the test guest with the guest options `args` and the `--config-file` sections
/// `devices`; asserts the run passed and returns its stdout lines with their arrival times.
fn run_guest(dir: &Path, args: &str, devices: &str) -> Vec<(Instant, String)> {
    let config = format!(
        r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0 {args}"}},{devices}}}"#,
        common::test_guest().display()
    );
    let path = dir.join("config.json");
    std::fs::write(&path, config).unwrap();
    let mut child = common::squib()
        .args(["--no-api", "--config-file", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (Instant::now(), line))
            .collect::<Vec<_>>()
    });
    let output = common::wait_with_timeout(child, TIMEOUT);
    let lines = reader.join().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        output.status.success(),
        "the guest failed (status {:?}):\n{}\n{}",
        output.status,
        text.join("\n"),
        common::stderr(&output)
    );
    lines
}

fn find<'a>(lines: &'a [(Instant, String)], prefix: &str) -> &'a (Instant, String) {
    lines
        .iter()
        .find(|(_, line)| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting `{prefix}` in {lines:#?}"))
}

#[test]
fn entropy_bytes_arrive_differ_and_respect_the_rate_limiter() {
    if !common::kvm_available("entropy_bytes_arrive_differ_and_respect_the_rate_limiter") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 8 KiB every 125 ms: 65 536 B/s.
    const RATE: f64 = 65_536.0;
    let entropy = r#""entropy":{"rate_limiter":{"bandwidth":{"size":8192,"refill_time":125}}}"#;
    let lines = run_guest(dir.path(), "guest.rng_rate=65536", entropy);
    for line in [
        "ok - virtio-rng: init",
        "ok - virtio-rng: two reads of 512 bytes arrive in full and differ",
        "ok - virtio-rng: read through the rate limiter",
    ] {
        find(&lines, line);
    }
    let (start, text) = find(&lines, "# virtio-rng: rate window start, ");
    let bytes: f64 = text
        .trim_start_matches("# virtio-rng: rate window start, ")
        .trim_end_matches(" bytes")
        .parse()
        .unwrap();
    let (end, _) = find(&lines, "# virtio-rng: rate window end");
    let rate = bytes / end.duration_since(*start).as_secs_f64();
    eprintln!("entropy rate through the limiter: {rate:.0} B/s (configured {RATE} B/s)");
    assert!(
        (rate - RATE).abs() <= RATE * 0.1,
        "{rate:.0} B/s measured, {RATE} B/s configured"
    );
}

/// The byte at `position` of every stream the vsock checks send (`vsock_checks::pattern`).
fn pattern(position: usize) -> u8 {
    (position % 251) as u8
}

/// The host side of the guest's vsock checks: an echo server on port 5000, a peer that never
/// reads on 5002, and a host-initiated connection to guest port 6000 that must echo 1 MiB.
struct HostPeers {
    host_echo: std::thread::JoinHandle<Result<(), String>>,
    stop_silent: std::sync::mpsc::Sender<()>,
}

fn start_host_peers(uds: &Path) -> HostPeers {
    use std::os::unix::net::{UnixListener, UnixStream};
    let echo = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    std::thread::spawn(move || {
        for mut stream in echo.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let _ = std::io::copy(&mut reader, &mut stream);
            });
        }
    });
    let silent = UnixListener::bind(format!("{}_5002", uds.display())).unwrap();
    silent.set_nonblocking(true).unwrap();
    let (stop_silent, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while stopped.try_recv().is_err() {
            if let Ok((stream, _)) = silent.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let uds = uds.to_owned();
    let host_echo = std::thread::spawn(move || -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut stream = loop {
            match UnixStream::connect(&uds) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("connect {}: {e}", uds.display())),
            }
        };
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        std::io::Write::write_all(&mut stream, b"CONNECT 6000\n").map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            std::io::Read::read_exact(&mut stream, &mut byte).map_err(|e| e.to_string())?;
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line);
        let port: u32 = line
            .strip_prefix("OK ")
            .and_then(|p| p.trim_end().parse().ok())
            .ok_or_else(|| format!("bad answer {line:?}"))?;
        if port < 1 << 30 {
            return Err(format!("host port {port} not from squib's range"));
        }
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let data: Vec<u8> = (0..1 << 20).map(pattern).collect();
            std::io::Write::write_all(&mut writer, &data)
        });
        let mut echoed = vec![0u8; 1 << 20];
        std::io::Read::read_exact(&mut stream, &mut echoed).map_err(|e| e.to_string())?;
        sender.join().unwrap().map_err(|e| e.to_string())?;
        match echoed.iter().enumerate().find(|&(i, &b)| b != pattern(i)) {
            Some((i, b)) => Err(format!("echoed byte {i} is {b:#x}")),
            None => Ok(()),
        }
    });
    HostPeers {
        host_echo,
        stop_silent,
    }
}

#[test]
fn vsock_connections_both_ways_echo_and_misbehaving_peers_stay_contained() {
    if !common::kvm_available("vsock_connections_both_ways_echo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let peers = start_host_peers(&uds);
    let vsock = format!(
        r#""vsock":{{"guest_cid":3,"uds_path":"{}"}}"#,
        uds.display()
    );
    let lines = run_guest(dir.path(), "", &vsock);
    for line in [
        "ok - virtio-vsock: init",
        "ok - virtio-vsock: RST for port 5999, where nobody listens",
        "ok - virtio-vsock: guest-initiated connection echoes 1 MiB byte-exact",
        "ok - virtio-vsock: 64 connections at once each echo 1024 bytes",
        "ok - virtio-vsock: a host peer that never reads stalls only its connection",
        "ok - virtio-vsock: host-initiated CONNECT 6000 echoes 1 MiB byte-exact",
    ] {
        find(&lines, line);
    }
    peers.host_echo.join().unwrap().unwrap();
    let _ = peers.stop_silent.send(());
}
