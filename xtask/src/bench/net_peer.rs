//! `cargo xtask net-peer …`: the host side of level 6's throughput runs, started by the bench
//! inside its network namespace (not a task for people).
//!
//! - `send IP PORT DEV`: keeps the TAP `DEV` full of 1472-byte datagrams to `IP:PORT` for the
//!   host → guest run. It replaces a Python `sendto` loop, which on two cores took as much CPU as
//!   it could and spent most of it on datagrams the full TAP dropped (1.0–1.9 M dropped for
//!   200–400 K delivered), CPU the VMM's device thread then lacked. This one sends in bursts on a
//!   connected socket and, when the TAP's `tx_dropped` counter moved (its queue was full), sleeps
//!   a little (longer while it stays full): the queue holds milliseconds of frames at these rates, so the device never finds
//!   it empty, and the sender leaves the core to the VMM. The same for both VMMs.
//! - `sink IP PORT`: a UDP socket bound to `IP:PORT` and never read, for the guest → host run.
//!   A closed port made the host try an ICMP port-unreachable for every datagram: the replies are
//!   rate-limited (about one a second reaches the TAP), but the route lookup before the limit
//!   was ≈ 15 % of the writing thread's profile. A full socket buffer drops a datagram right
//!   after the socket lookup. (`tc` ingress drops would be cheaper still; this machine's kernel
//!   has no classifiers.)

use std::fs::File;
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Datagrams sent between looks at the TAP's drop counter.
const BURST: usize = 32;
/// How long the sender steps back once the TAP's queue is full: doubled while bursts still
/// overflow it, halved when one fits, within these bounds. The TAP's queue (1000 frames) lasts
/// 4 ms at 250 K frames/s, more than [`BACK_OFF_MAX`] plus a sleep's slack.
const BACK_OFF_MIN: Duration = Duration::from_micros(50);
const BACK_OFF_MAX: Duration = Duration::from_millis(1);
/// The UDP payload of an MTU-sized frame.
const PAYLOAD: usize = 1472;

pub fn run(args: &[String]) -> Result<(), String> {
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["send", ip, port, dev] => send(ip, port, dev),
        ["sink", ip, port] => sink(ip, port),
        _ => Err("usage: cargo xtask net-peer send IP PORT DEV | sink IP PORT".into()),
    }
}

fn address(ip: &str, port: &str) -> Result<String, String> {
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    Ok(format!("{ip}:{port}"))
}

fn ready() -> Result<(), String> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))
}

fn send(ip: &str, port: &str, dev: &str) -> Result<(), String> {
    let to = address(ip, port)?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(&to)
        .map_err(|e| format!("connect {to}: {e}"))?;
    let path = format!("/sys/class/net/{dev}/statistics/tx_dropped");
    let counter = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut dropped = read_counter(&counter)?;
    let payload = [0u8; PAYLOAD];
    let mut back_off = BACK_OFF_MIN;
    ready()?;
    loop {
        for _ in 0..BURST {
            // A full TAP drops silently; an error (no carrier before the VMM attaches) is the
            // same: keep going.
            let _ = socket.send(&payload);
        }
        let now = read_counter(&counter)?;
        if now == dropped {
            back_off = (back_off / 2).max(BACK_OFF_MIN);
        } else {
            dropped = now;
            std::thread::sleep(back_off);
            back_off = (back_off * 2).min(BACK_OFF_MAX);
        }
    }
}

/// A sysfs counter, re-read from its start.
fn read_counter(file: &File) -> Result<u64, String> {
    let mut buf = [0u8; 32];
    let n = file
        .read_at(&mut buf, 0)
        .map_err(|e| format!("tx_dropped: {e}"))?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("tx_dropped: unreadable {:?}", &buf[..n]))
}

fn sink(ip: &str, port: &str) -> Result<(), String> {
    let at = address(ip, port)?;
    let _socket = UdpSocket::bind(&at).map_err(|e| format!("bind {at}: {e}"))?;
    ready()?;
    loop {
        std::thread::park();
    }
}
