//! virtio-vsock driven like a guest, with real host Unix sockets: both connection directions,
//! credit-based flow control, shutdown and reset, a host peer that never reads, a thousand
//! connections at once, the transport-reset event, and hostile chains and packets (fixed and
//! randomized) that must be dropped or reset without stopping the device.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use squib_virtio::testing::{Buf, VSOCK_HDR_LEN, VsockGuest, VsockHdr, vsock_op as op};
use squib_virtio::vsock::{VsockConfig, VsockDevice, VsockHandle};
use vm_memory::GuestAddress;

const CID: u64 = 3;
const HOST: u64 = 2;
const T: Duration = Duration::from_secs(5);
const GUEST_BUF: u32 = 256 << 10;

struct Rig {
    guest: VsockGuest,
    handle: VsockHandle,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let device = VsockDevice::new(VsockConfig {
        guest_cid: CID,
        uds_path: uds.clone(),
    })
    .unwrap();
    let handle = device.handle();
    let guest = VsockGuest::activated(Box::new(device));
    assert_eq!(guest.cid, CID);
    Rig {
        guest,
        handle,
        uds,
        _dir: dir,
    }
}

fn port_listener(uds: &Path, port: u32) -> UnixListener {
    UnixListener::bind(format!("{}_{port}", uds.display())).unwrap()
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> VsockHdr {
    VsockHdr {
        src_cid: CID,
        dst_cid: HOST,
        src_port,
        dst_port,
        type_: 1,
        op,
        buf_alloc: GUEST_BUF,
        ..VsockHdr::default()
    }
}

fn rw(src_port: u32, dst_port: u32, len: usize, fwd_cnt: u32) -> VsockHdr {
    VsockHdr {
        len: len as u32,
        fwd_cnt,
        ..hdr(op::RW, src_port, dst_port)
    }
}

impl Rig {
    fn recv(&mut self) -> (VsockHdr, Vec<u8>) {
        self.guest.recv(T).expect("the device sent nothing")
    }

    /// Receives the next packet, skipping credit updates.
    fn recv_skipping_credit(&mut self) -> (VsockHdr, Vec<u8>) {
        loop {
            let packet = self.recv();
            if packet.0.op != op::CREDIT_UPDATE {
                return packet;
            }
        }
    }

    fn expect_nothing(&mut self) {
        if let Some((hdr, _)) = self.guest.recv(Duration::from_millis(100)) {
            panic!("unexpected packet {hdr:?}");
        }
    }

    /// Guest-initiated connection from `guest_port` to host port `port`; returns the host's end.
    fn connect(&mut self, listener: &UnixListener, guest_port: u32, port: u32) -> UnixStream {
        self.guest.send(&hdr(op::REQUEST, guest_port, port), &[]);
        let (h, _) = self.recv();
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (op::RESPONSE, HOST, CID, port, guest_port)
        );
        assert!(h.buf_alloc > 0);
        listener.accept().unwrap().0
    }

    /// Reads `len` bytes of data the device sends on (`guest_port`, `port`).
    fn recv_data(&mut self, guest_port: u32, len: usize) -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < len {
            let (h, payload) = self.recv_skipping_credit();
            assert_eq!((h.op, h.dst_port), (op::RW, guest_port), "{h:?}");
            assert_eq!(h.len as usize, payload.len());
            data.extend(payload);
        }
        data
    }
}

#[test]
fn guest_initiated_connection_relays_both_ways_then_shuts_down() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 1234);
    let mut host = r.connect(&listener, 5000, 1234);
    r.guest.send(&rw(5000, 1234, 5, 0), b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    host.write_all(b"world!").unwrap();
    assert_eq!(r.recv_data(5000, 6), b"world!");
    // Host half-close: the guest hears SHUTDOWN F_SEND and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, _) = r.recv_skipping_credit();
    assert_eq!((h.op, h.flags), (op::SHUTDOWN, 2));
    r.guest.send(&rw(5000, 1234, 3, 6), b"bye");
    let mut buf = [0u8; 3];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"bye");
    // The guest closes: SHUTDOWN both ways, answered by the RST Linux waits for.
    r.guest.send(
        &VsockHdr {
            flags: 3,
            ..hdr(op::SHUTDOWN, 5000, 1234)
        },
        &[],
    );
    let (h, _) = r.recv_skipping_credit();
    assert_eq!((h.op, h.dst_port), (op::RST, 5000));
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0, "the host reads EOF");
    let m = r.handle.metrics();
    assert_eq!((m.conns_added, m.conns_removed, m.conns_killed), (1, 1, 0));
    assert_eq!(m.tx_bytes_count, 8);
    assert_eq!(m.rx_bytes_count, 6);
}

#[test]
fn host_initiated_connect_is_answered_ok_with_the_host_port() {
    let mut r = rig();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    // Data right behind the line must reach the guest, not be eaten by the handshake.
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let (h, _) = r.recv();
    assert_eq!((h.op, h.dst_port, h.dst_cid), (op::REQUEST, 52, CID));
    let host_port = h.src_port;
    assert!(host_port >= 1 << 30);
    r.guest.send(&hdr(op::RESPONSE, 52, host_port), &[]);
    let expected = format!("OK {host_port}\n");
    let mut line = vec![0u8; expected.len()];
    host.read_exact(&mut line).unwrap();
    assert_eq!(line, expected.as_bytes());
    assert_eq!(r.recv_data(52, 5), b"early");
    r.guest.send(&rw(52, host_port, 4, 5), b"pong");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn host_connect_refused_by_the_guest_closes_the_host_socket() {
    let mut r = rig();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 99\n").unwrap();
    let (h, _) = r.recv();
    assert_eq!(h.op, op::REQUEST);
    r.guest.send(&hdr(op::RST, 99, h.src_port), &[]);
    host.set_read_timeout(Some(T)).unwrap();
    assert_eq!(host.read(&mut [0u8; 8]).unwrap(), 0);
    // Malformed handshakes are just closed.
    for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'A'; 40]] {
        let mut bad = UnixStream::connect(&r.uds).unwrap();
        bad.write_all(line).unwrap();
        bad.set_read_timeout(Some(T)).unwrap();
        assert_eq!(bad.read(&mut [0u8; 8]).unwrap_or(0), 0);
    }
    r.expect_nothing();
}

#[test]
fn refused_unknown_and_foreign_packets_get_rst() {
    let mut r = rig();
    // Nobody listens on port 7.
    r.guest.send(&hdr(op::REQUEST, 4000, 7), &[]);
    let (h, _) = r.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, 7, 4000));
    // Data, credit traffic and shutdown for connections that do not exist.
    for o in [
        op::RW,
        op::CREDIT_REQUEST,
        op::CREDIT_UPDATE,
        op::SHUTDOWN,
        op::RESPONSE,
    ] {
        r.guest.send(&hdr(o, 4001, 9), &[]);
        let (h, _) = r.recv();
        assert_eq!((h.op, h.dst_port), (op::RST, 4001), "op {o}");
    }
    // An RST for nothing gets nothing back.
    r.guest.send(&hdr(op::RST, 4002, 9), &[]);
    // Another CID, a datagram type: RST.
    r.guest.send(
        &VsockHdr {
            dst_cid: 9,
            ..hdr(op::REQUEST, 4003, 9)
        },
        &[],
    );
    assert_eq!(r.recv().0.op, op::RST);
    r.guest.send(
        &VsockHdr {
            type_: 2,
            ..hdr(op::REQUEST, 4004, 9)
        },
        &[],
    );
    assert_eq!(r.recv().0.op, op::RST);
    // A forged source CID is dropped silently.
    r.guest.send(
        &VsockHdr {
            src_cid: 77,
            ..hdr(op::REQUEST, 4005, 9)
        },
        &[],
    );
    r.expect_nothing();
    assert!(r.handle.metrics().tx_queue_event_fails >= 3);
}

#[test]
fn hostile_tx_chains_are_dropped_and_counted_and_the_device_serves_on() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 80);
    let h = r.guest.alloc(4096);
    r.guest.write(h, &rw(1, 80, 100, 0).to_bytes());
    let cases: Vec<Vec<Buf>> = vec![
        // Device-writable buffer on tx.
        vec![Buf::writable(h, 44)],
        // Shorter than a header.
        vec![Buf::readable(h, 20)],
        // len 100 with no payload behind it.
        vec![Buf::readable(h, 44)],
        // Outside guest memory.
        vec![Buf::readable(GuestAddress(u64::MAX - 100), 44)],
        vec![
            Buf::readable(h, 44),
            Buf::readable(GuestAddress(1 << 40), 100),
        ],
        // Zero-length buffers only.
        vec![Buf::readable(h, 0)],
    ];
    let count = cases.len();
    for bufs in cases {
        r.guest.add_chain(1, &bufs);
    }
    r.guest.kick(1);
    assert!(r.guest.flush_tx(T));
    // A header whose len exceeds the 64 KiB packet limit, with the buffer to back it.
    let big = r.guest.alloc(70_000);
    r.guest.write(h, &rw(1, 80, 70_000, 0).to_bytes());
    r.guest
        .add_chain(1, &[Buf::readable(h, 44), Buf::readable(big, 70_000)]);
    r.guest.kick(1);
    assert!(r.guest.flush_tx(T));
    r.expect_nothing();
    assert_eq!(r.handle.metrics().tx_queue_event_fails as usize, count + 1);
    // Still working.
    let mut host = r.connect(&listener, 1, 80);
    r.guest.send(&rw(1, 80, 2, 0), b"ok");
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    assert_eq!(r.guest.status() & 0x40, 0, "no DEVICE_NEEDS_RESET");
}

#[test]
fn a_guest_that_overruns_its_credit_is_reset_alone() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 81);
    let _stalled = r.connect(&listener, 10, 81);
    let mut other = r.connect(&listener, 11, 81);
    // The host end of port 10 never reads. The guest ignores its credit: once the socket's
    // buffer and the device's 256 KiB are full, the next packet resets the connection.
    let chunk = vec![7u8; 60 << 10];
    let mut sent = 0;
    let reset = loop {
        assert!(sent < 64 << 20, "never reset after {sent} bytes");
        r.guest.send(&rw(10, 81, chunk.len(), 0), &chunk);
        sent += chunk.len();
        assert!(r.guest.flush_tx(T));
        match r.guest.recv(Duration::from_millis(20)) {
            Some((h, _)) if h.op == op::RST => break h,
            _ => {}
        }
    };
    assert_eq!(reset.dst_port, 10);
    assert!(sent > 256 << 10);
    assert_eq!(r.handle.metrics().conns_killed, 1);
    r.guest.send(&rw(11, 81, 3, 0), b"yes");
    let mut buf = [0u8; 3];
    other.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"yes");
}

#[test]
fn a_host_peer_that_never_reads_stalls_only_its_own_connection() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 82);
    let _stalled = r.connect(&listener, 20, 82);
    let mut echo = r.connect(&listener, 21, 82);
    // Fill the stalled connection right up to the credit the device granted (256 KiB).
    let chunk = vec![1u8; 64 << 10];
    for _ in 0..4 {
        r.guest.send(&rw(20, 82, chunk.len(), 0), &chunk);
    }
    assert!(r.guest.flush_tx(T));
    // The other connection still carries data both ways, promptly.
    let start = Instant::now();
    for round in 0..50u8 {
        r.guest.send(&rw(21, 82, 1, 0), &[round]);
        let mut b = [0u8; 1];
        echo.read_exact(&mut b).unwrap();
        echo.write_all(&b).unwrap();
        assert_eq!(r.recv_data(21, 1), [round]);
    }
    assert!(start.elapsed() < T);
    assert_eq!(r.handle.metrics().conns_killed, 0);
}

#[test]
fn host_data_respects_the_guests_credit() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 83);
    // The guest grants 8 KiB only.
    r.guest.send(
        &VsockHdr {
            buf_alloc: 8192,
            ..hdr(op::REQUEST, 30, 83)
        },
        &[],
    );
    assert_eq!(r.recv().0.op, op::RESPONSE);
    let mut host = listener.accept().unwrap().0;
    host.write_all(&vec![9u8; 32 << 10]).unwrap();
    let mut got = 0usize;
    while got < 8192 {
        let (h, payload) = r.recv_skipping_credit();
        if h.op == op::CREDIT_REQUEST {
            continue;
        }
        assert_eq!(h.op, op::RW);
        got += payload.len();
    }
    assert_eq!(got, 8192, "the device sent past the guest's credit");
    // Nothing more until the guest says it consumed the data.
    while let Some((h, _)) = r.guest.recv(Duration::from_millis(100)) {
        assert_ne!(h.op, op::RW, "data beyond the credit");
    }
    r.guest.send(
        &VsockHdr {
            buf_alloc: 8192,
            fwd_cnt: 8192,
            ..hdr(op::CREDIT_UPDATE, 30, 83)
        },
        &[],
    );
    let (h, payload) = r.recv_skipping_credit();
    assert_eq!(h.op, op::RW);
    assert!(!payload.is_empty() && payload.len() <= 8192);
}

#[test]
fn credit_request_is_answered_with_an_update() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 84);
    let _host = r.connect(&listener, 40, 84);
    r.guest.send(&hdr(op::CREDIT_REQUEST, 40, 84), &[]);
    let (h, _) = r.recv();
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (op::CREDIT_UPDATE, 256 << 10, 0)
    );
}

#[test]
fn a_thousand_and_twenty_four_connections_are_all_served() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 85);
    listener.set_nonblocking(true).unwrap();
    const N: u32 = 1024;
    let mut hosts = Vec::new();
    let mut responses = 0;
    for batch in 0..(N / 64) {
        for i in 0..64 {
            r.guest
                .send(&hdr(op::REQUEST, 10_000 + batch * 64 + i, 85), &[]);
        }
        assert!(r.guest.flush_tx(T));
        while responses < (batch + 1) * 64 {
            let (h, _) = r.recv();
            assert_eq!(h.op, op::RESPONSE);
            responses += 1;
        }
        while let Ok((s, _)) = listener.accept() {
            hosts.push(s);
        }
    }
    let deadline = Instant::now() + T;
    while hosts.len() < N as usize && Instant::now() < deadline {
        if let Ok((s, _)) = listener.accept() {
            hosts.push(s);
        }
    }
    assert_eq!(hosts.len(), N as usize);
    // Every host end writes; every connection's bytes reach the guest.
    for (i, host) in hosts.iter_mut().enumerate() {
        host.write_all(&(i as u32).to_le_bytes()).unwrap();
    }
    let mut seen = vec![false; N as usize];
    let mut count = 0;
    while count < N {
        let (h, payload) = r.recv_skipping_credit();
        assert_eq!(h.op, op::RW);
        assert_eq!(payload.len(), 4);
        let port = (h.dst_port - 10_000) as usize;
        assert!(!seen[port]);
        seen[port] = true;
        count += 1;
    }
    assert_eq!(r.handle.metrics().conns_added, u64::from(N));
}

#[test]
fn transport_reset_reaches_the_event_queue_and_drops_connections() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 86);
    let mut host = r.connect(&listener, 50, 86);
    let event = r.guest.post_event_buffer();
    r.handle.request_transport_reset().unwrap();
    let deadline = Instant::now() + T;
    let (_, len) = loop {
        if let Some(used) = r.guest.pop_used(2) {
            break used;
        }
        assert!(Instant::now() < deadline, "no transport reset event");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(len, 4);
    assert_eq!(r.guest.read(event, 4), 0u32.to_le_bytes());
    host.set_read_timeout(Some(T)).unwrap();
    assert_eq!(
        host.read(&mut [0u8; 4]).unwrap(),
        0,
        "the host connection closed"
    );
}

#[test]
fn randomized_hostile_packets_never_stop_the_device() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 87);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let buf = r.guest.alloc(1 << 17);
    for round in 0..2000 {
        let x = next();
        let mut h = VsockHdr {
            src_cid: if x % 8 == 0 { next() } else { CID },
            dst_cid: if x % 9 == 0 { next() } else { HOST },
            src_port: (next() % 4) as u32,
            dst_port: if x % 3 == 0 { 87 } else { next() as u32 },
            len: if x % 5 == 0 {
                next() as u32
            } else {
                (next() % 300) as u32
            },
            type_: if x % 11 == 0 { next() as u16 } else { 1 },
            op: (next() % 10) as u16,
            flags: next() as u32,
            buf_alloc: next() as u32,
            fwd_cnt: next() as u32,
        };
        if round % 97 == 0 {
            h.op = op::REQUEST;
        }
        r.guest.write(buf, &h.to_bytes());
        let shape = next() % 6;
        let len = (next() % 400) as u32;
        let bufs = match shape {
            0 => vec![Buf::readable(buf, VSOCK_HDR_LEN as u32 + len)],
            1 => vec![
                Buf::readable(buf, 30),
                Buf::readable(GuestAddress(buf.0 + 30), 14 + len),
            ],
            2 => vec![
                Buf::readable(buf, 44),
                Buf::writable(GuestAddress(buf.0 + 44), len),
            ],
            3 => vec![Buf::readable(GuestAddress(next()), len)],
            4 => vec![Buf::readable(buf, len % 44)],
            _ => vec![
                Buf::readable(buf, 44),
                Buf::readable(GuestAddress(buf.0 + 1000), len),
            ],
        };
        r.guest.add_chain(1, &bufs);
        r.guest.kick(1);
        if round % 50 == 0 {
            assert!(r.guest.flush_tx(T));
            while r.guest.recv(Duration::ZERO).is_some() {}
        }
        while let Ok((mut s, _)) = {
            listener.set_nonblocking(true).unwrap();
            listener.accept()
        } {
            let _ = s.write_all(b"noise");
        }
    }
    assert!(r.guest.flush_tx(T));
    while r.guest.recv(Duration::from_millis(50)).is_some() {}
    assert_eq!(r.guest.status() & 0x40, 0, "no DEVICE_NEEDS_RESET");
    // Every packet was consumed, so every connection a random REQUEST made is in the backlog
    // now: take them all, or `connect` below would accept a stale one and wait on it forever.
    while listener.accept().is_ok() {}
    // A clean connection still works.
    listener.set_nonblocking(false).unwrap();
    r.guest.send(&hdr(op::RST, 9999, 87), &[]);
    let mut host = r.connect(&listener, 9999, 87);
    host.set_read_timeout(Some(T)).unwrap();
    r.guest.send(&rw(9999, 87, 4, 0), b"fine");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"fine");
}

#[test]
fn silent_host_handshakes_and_unanswered_requests_time_out() {
    let mut r = rig();
    // A host connection that never says CONNECT is closed.
    let mut silent = UnixStream::connect(&r.uds).unwrap();
    // A host-initiated request the guest never answers: closed, and the guest gets an RST.
    let mut unanswered = UnixStream::connect(&r.uds).unwrap();
    unanswered.write_all(b"CONNECT 77\n").unwrap();
    let (h, _) = r.recv();
    assert_eq!((h.op, h.dst_port), (op::REQUEST, 77));
    let start = Instant::now();
    for stream in [&mut silent, &mut unanswered] {
        stream.set_read_timeout(Some(T)).unwrap();
        assert_eq!(stream.read(&mut [0u8; 8]).unwrap(), 0, "not closed");
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after only {waited:?}"
    );
    let (h, _) = r.recv();
    assert_eq!((h.op, h.dst_port, h.src_port), (op::RST, 77, h.src_port));
    assert_eq!(r.handle.metrics().conns_killed, 1);
}

#[test]
fn a_paused_device_holds_its_connections_and_a_restored_one_sends_transport_reset() {
    let mut r = rig();
    let listener = port_listener(&r.uds, 88);
    let mut host = r.connect(&listener, 60, 88);
    r.guest.transport().pause();
    host.write_all(b"while paused").unwrap();
    r.expect_nothing();
    r.guest.transport().resume().unwrap();
    assert_eq!(r.recv_data(60, 12), b"while paused");

    // Snapshot: pause, save, restore into a new device (new socket path, same CID).
    let event = r.guest.post_event_buffer();
    r.guest.transport().pause();
    let state = r.guest.transport().save_state().unwrap();
    let uds2 = r.uds.with_file_name("v2.sock");
    let device = VsockDevice::new(VsockConfig {
        guest_cid: CID,
        uds_path: uds2,
    })
    .unwrap();
    let old = r.guest.swap_device(Box::new(device));
    drop(old);
    r.guest.transport().restore_state(&state).unwrap();
    r.guest.transport().resume().unwrap();
    let deadline = Instant::now() + T;
    let (_, len) = loop {
        if let Some(used) = r.guest.pop_used(2) {
            break used;
        }
        assert!(
            Instant::now() < deadline,
            "no TRANSPORT_RESET after the restore"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(len, 4);
    assert_eq!(r.guest.read(event, 4), 0u32.to_le_bytes());
    // A snapshot of another CID does not restore.
    let other = VsockDevice::new(VsockConfig {
        guest_cid: CID + 1,
        uds_path: r.uds.with_file_name("v3.sock"),
    })
    .unwrap();
    r.guest.transport().pause();
    let state = r.guest.transport().save_state().unwrap();
    drop(r.guest.swap_device(Box::new(other)));
    assert!(r.guest.transport().restore_state(&state).is_err());
}

#[test]
fn host_data_spanning_many_rx_buffers_arrives_whole_and_in_order() {
    // More than the guest's credit and far more than one rx buffer: the device fills several
    // buffers per read of the host socket, and each must carry its own bytes in ring order.
    let mut r = rig();
    let listener = port_listener(&r.uds, 85);
    let mut host = r.connect(&listener, 50, 85);
    let sent: Vec<u8> = (0..(600usize << 10)).map(|i| (i % 251) as u8).collect();
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || host.write_all(&sent).map(|()| host))
    };
    let mut got = Vec::with_capacity(sent.len());
    let mut told = 0usize;
    while got.len() < sent.len() {
        let (h, payload) = r.recv_skipping_credit();
        if h.op == op::CREDIT_REQUEST {
            // Out of credit until the update below: allowed, and answered by it.
            continue;
        }
        assert_eq!(
            (h.op, h.dst_port, h.len as usize),
            (op::RW, 50, payload.len())
        );
        assert!(payload.len() <= 4096, "a packet larger than its rx buffer");
        assert!(
            h.fwd_cnt == 0 && h.buf_alloc == 256 << 10,
            "credit fields on every packet: {h:?}"
        );
        got.extend(payload);
        if got.len() - told >= 64 << 10 {
            told = got.len();
            r.guest.send(
                &VsockHdr {
                    fwd_cnt: told as u32,
                    ..hdr(op::CREDIT_UPDATE, 50, 85)
                },
                &[],
            );
        }
        assert!(
            got.len() <= told + GUEST_BUF as usize,
            "the device sent past the guest's credit"
        );
    }
    assert!(got == sent, "host data arrived altered or out of order");
    let _host = writer.join().unwrap().unwrap();
    assert_eq!(r.handle.metrics().conns_killed, 0);
}

#[test]
fn a_guest_that_keeps_within_its_credit_streams_without_a_reset() {
    // The bench's guest → host pattern: 64 KiB packets, sent whenever the credit last heard
    // allows; the device must never see an overrun, whatever the timing of its updates.
    let mut r = rig();
    let listener = port_listener(&r.uds, 86);
    let mut host = r.connect(&listener, 60, 86);
    let total = 48usize << 20;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0usize;
        while got < total {
            match host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let chunk = vec![7u8; 64 << 10];
    let (mut buf_alloc, mut fwd_cnt) = (256u32 << 10, 0u32);
    let mut tx_cnt = 0u32;
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < total && Instant::now() < deadline {
        let credit = buf_alloc.saturating_sub(tx_cnt.wrapping_sub(fwd_cnt));
        if credit as usize >= chunk.len() {
            r.guest.send(&rw(60, 86, chunk.len(), 0), &chunk);
            tx_cnt = tx_cnt.wrapping_add(chunk.len() as u32);
            sent += chunk.len();
            r.guest.reap_tx();
        } else if let Some((h, _)) = r.guest.recv(Duration::from_millis(1)) {
            assert_ne!(h.op, op::RST, "the device reset the connection");
            (buf_alloc, fwd_cnt) = (h.buf_alloc, h.fwd_cnt);
        }
    }
    assert_eq!(reader.join().unwrap(), total);
    assert_eq!(r.handle.metrics().conns_killed, 0);
}
