//! `cargo xtask net-peer …`: the host side of level 6's throughput runs, started by the bench
//! inside its network namespace (not a task for people). Both are built to cost the host as
//! little per frame as possible, so that the figures measure the VMM's device path rather than
//! the peer; they are the same for both VMMs.
//!
//! - `send IP PORT DEV`: keeps the TAP `DEV` full of 1472-byte datagrams to `IP:PORT` for the
//!   host → guest run. Each send is 44 datagrams cut by the kernel below the socket layer
//!   (`UDP_SEGMENT`): the TAP still queues, and the VMM still reads, one 1514-byte frame at a
//!   time, but the sender pays one socket send per 64 KiB. With one `send` per datagram the
//!   sender cost 2.8 µs of CPU per frame, more than squib's device thread (2.0 µs) on the core
//!   they share, so it set the rate for both VMMs (a Python `sendto` loop before it was worse:
//!   it spent a core on datagrams the full TAP dropped). When the TAP's `tx_dropped` counter
//!   moved (its queue was full), the sender sleeps a little (longer while it stays full): the
//!   queue holds milliseconds of frames at these rates, so the device never finds it empty, and
//!   the sender leaves the core to the VMM. A kernel without `UDP_SEGMENT` (before 4.18) gets
//!   one datagram per send.
//! - `sink IP PORT PEER_IP PEER_PORT`: a UDP socket bound to `IP:PORT`, connected to the
//!   guest's `PEER_IP:PEER_PORT` and never read, for the guest → host run. Being connected, the
//!   kernel's early demultiplexing finds it from the datagram's addresses and reuses its cached
//!   route, so no datagram pays for a route lookup and source validation (20–25 % of squib's
//!   guest → host rate on this machine). A full socket buffer drops a datagram right after that
//!   lookup. A closed port made the host try an ICMP port-unreachable for every datagram, whose
//!   route lookup was ≈ 15 % of the writing thread's profile. (`tc` ingress drops would be
//!   cheaper still; this machine's kernel has no classifiers.)

use std::fs::File;
use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use squib_host::udp_segment;

/// Datagrams sent between looks at the TAP's drop counter (at least one send).
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
        ["sink", ip, port, peer_ip, peer_port] => sink(ip, port, peer_ip, peer_port),
        _ => Err(
            "usage: cargo xtask net-peer send IP PORT DEV | sink IP PORT PEER_IP PEER_PORT".into(),
        ),
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
    // As many whole datagrams as fit in one UDP send (65 507 bytes of payload).
    let segments = (65_507 / PAYLOAD).min(udp_segment::MAX_SEGMENTS);
    let per_send = match udp_segment::set_segment_size(&socket, PAYLOAD as u16) {
        Ok(()) => segments,
        Err(e) => {
            eprintln!("net-peer: no UDP segmentation offload ({e}); one datagram per send");
            1
        }
    };
    let payload = vec![0u8; PAYLOAD * per_send];
    let mut back_off = BACK_OFF_MIN;
    ready()?;
    loop {
        for _ in 0..(BURST / per_send).max(1) {
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

fn sink(ip: &str, port: &str, peer_ip: &str, peer_port: &str) -> Result<(), String> {
    let at = address(ip, port)?;
    let peer = address(peer_ip, peer_port)?;
    let socket = UdpSocket::bind(&at).map_err(|e| format!("bind {at}: {e}"))?;
    socket
        .connect(&peer)
        .map_err(|e| format!("connect {peer}: {e}"))?;
    ready()?;
    loop {
        std::thread::park();
    }
}
