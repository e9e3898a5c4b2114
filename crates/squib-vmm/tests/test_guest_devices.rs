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
