//! The virtio-vsock device model without KVM, against real host Unix sockets: a simulated guest
//! driver (squib-virtio's `testing::VsockGuest`) feeds the three queues through the virtio-mmio
//! transport; a host thread sits on the other end of the connection.
//!
//! - `host_only/copy`: 1 MiB through a Unix socket pair between two host threads (64 KiB writes)
//!   — the limit a relay through one host socket can approach;
//! - `device/guest_to_host`: 1 MiB as 64 KiB RW packets, the guest honouring the device's credit,
//!   until the host thread has read it all;
//! - `device/host_to_guest`: the host thread writes 1 MiB, the guest takes it in 4 KiB rx buffers
//!   (Linux's size) and returns credit every 64 KiB;
//! - `host_only/connect` and `device/connect`: a host `connect(2)` to a listener then `accept`,
//!   and a guest REQUEST answered by RESPONSE then the host's `accept` (then RST).
//!
//! `SQUIB_BENCH_QUICK=1` shortens the run for a CI smoke test.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use squib_virtio::testing::{VsockGuest, VsockHdr, vsock_op as op};
use squib_virtio::vsock::{VsockConfig, VsockDevice};

const TOTAL: usize = 1 << 20;
const TX_CHUNK: usize = 64 << 10;
const CID: u64 = 3;
const PORT: u32 = 7000;
const GUEST_BUF: u32 = 256 << 10;
const T: Duration = Duration::from_secs(10);

fn hdr(op: u16, src_port: u32, len: usize, fwd_cnt: u32) -> VsockHdr {
    VsockHdr {
        src_cid: CID,
        dst_cid: 2,
        src_port,
        dst_port: PORT,
        len: len as u32,
        type_: 1,
        op,
        buf_alloc: GUEST_BUF,
        fwd_cnt,
        ..VsockHdr::default()
    }
}

/// One established guest connection and its host end's helper threads.
struct Stream {
    guest: VsockGuest,
    src_port: u32,
    /// The device's credit as last heard: (buf_alloc, fwd_cnt).
    device_credit: (u32, u32),
    tx_cnt: u32,
    /// Guest data consumed (its fwd_cnt).
    consumed: u32,
    told: u32,
    /// Where the guest copies each received payload (as a reader's buffer).
    rx_data: Vec<u8>,
    /// Host thread: reports every TOTAL bytes read.
    host_read: mpsc::Receiver<()>,
    /// Host thread: writes TOTAL bytes per message.
    host_write: mpsc::Sender<()>,
}

impl Stream {
    fn open(uds: &Path) -> Stream {
        let listener = UnixListener::bind(format!("{}_{PORT}", uds.display())).unwrap();
        let device = VsockDevice::new(VsockConfig {
            guest_cid: CID,
            uds_path: uds.to_owned(),
        })
        .unwrap();
        let mut guest = VsockGuest::activated(Box::new(device));
        guest.send(&hdr(op::REQUEST, 1, 0, 0), &[]);
        let (h, _) = guest.recv(T).unwrap();
        assert_eq!(h.op, op::RESPONSE);
        let (host, _) = listener.accept().unwrap();
        let mut reader = host.try_clone().unwrap();
        let (read_tx, host_read) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            let mut count = 0usize;
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                count += n;
                while count >= TOTAL {
                    count -= TOTAL;
                    if read_tx.send(()).is_err() {
                        return;
                    }
                }
            }
        });
        let mut writer = host;
        let (host_write, write_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let data = vec![0x5au8; TOTAL];
            while write_rx.recv().is_ok() {
                if writer.write_all(&data).is_err() {
                    return;
                }
            }
        });
        Stream {
            guest,
            src_port: 1,
            device_credit: (h.buf_alloc, h.fwd_cnt),
            tx_cnt: 0,
            consumed: 0,
            told: 0,
            rx_data: Vec::with_capacity(64 << 10),
            host_read,
            host_write,
        }
    }

    fn note(&mut self, h: &VsockHdr) {
        self.device_credit = (h.buf_alloc, h.fwd_cnt);
    }

    fn credit(&self) -> u32 {
        let (buf_alloc, fwd_cnt) = self.device_credit;
        buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(fwd_cnt))
    }

    fn guest_to_host(&mut self, chunk: &[u8]) {
        let mut sent = 0;
        while sent < TOTAL {
            if self.credit() as usize >= chunk.len() {
                let h = hdr(op::RW, self.src_port, chunk.len(), self.consumed);
                self.guest.send(&h, chunk);
                self.tx_cnt = self.tx_cnt.wrapping_add(chunk.len() as u32);
                sent += chunk.len();
                // Two descriptors per packet: collect completions long before the 256-entry
                // ring could wrap onto chains still in flight.
                if sent % (32 * TX_CHUNK) == 0 {
                    self.guest.flush_tx(T);
                }
            } else if let Some((h, _)) = self.guest.recv(Duration::from_millis(1)) {
                self.note(&h);
            }
        }
        self.host_read.recv_timeout(T).unwrap();
    }

    fn host_to_guest(&mut self) {
        self.host_write.send(()).unwrap();
        let mut received = 0;
        while received < TOTAL {
            let h = self.guest.recv_into(T, &mut self.rx_data).unwrap();
            self.note(&h);
            received += self.rx_data.len();
            self.consumed = self.consumed.wrapping_add(self.rx_data.len() as u32);
            if self.consumed.wrapping_sub(self.told) >= 64 << 10 {
                self.told = self.consumed;
                let h = hdr(op::CREDIT_UPDATE, self.src_port, 0, self.consumed);
                self.guest.send(&h, &[]);
                self.guest.reap_tx();
            }
        }
    }
}

fn bench_host_only(c: &mut Criterion, dir: &Path) {
    let (mut writer, mut reader) = UnixStream::pair().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let data = vec![0x5au8; TX_CHUNK];
        while go_rx.recv().is_ok() {
            for _ in 0..TOTAL / TX_CHUNK {
                writer.write_all(&data).unwrap();
            }
        }
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut group = c.benchmark_group("vsock/host_only");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("copy", |b| {
        b.iter(|| {
            go_tx.send(()).unwrap();
            let mut got = 0;
            while got < TOTAL {
                got += reader.read(&mut buf).unwrap();
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    let path = dir.join("host-only.sock");
    let listener = UnixListener::bind(&path).unwrap();
    group.bench_function("connect", |b| {
        b.iter(|| {
            let client = UnixStream::connect(&path).unwrap();
            let (server, _) = listener.accept().unwrap();
            (client, server)
        })
    });
    group.finish();
}

fn bench_device(c: &mut Criterion, uds: &Path) {
    let mut stream = Stream::open(uds);
    let chunk = vec![0x33u8; TX_CHUNK];
    let mut group = c.benchmark_group("vsock/device");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("guest_to_host", |b| b.iter(|| stream.guest_to_host(&chunk)));
    group.bench_function("host_to_guest", |b| b.iter(|| stream.host_to_guest()));
    group.throughput(Throughput::Elements(1));
    // Accepted right after the RESPONSE, as the host-only loop accepts right after connect: a
    // listener left to a thread could fill its backlog, which the device rightly answers with RST.
    let listener = UnixListener::bind(format!("{}_{}", uds.display(), PORT + 1)).unwrap();
    let mut port = 100;
    let connect = |s: &mut Stream, port: &mut u32| {
        *port += 1;
        s.guest.send(
            &VsockHdr {
                dst_port: PORT + 1,
                ..hdr(op::REQUEST, *port, 0, 0)
            },
            &[],
        );
        loop {
            let (h, _) = s.guest.recv(T).unwrap();
            if h.op == op::RESPONSE && h.dst_port == *port {
                break;
            }
            assert!(
                !(h.op == op::RST && h.dst_port == *port),
                "the device refused the connection"
            );
        }
        drop(listener.accept().unwrap());
        s.guest.send(
            &VsockHdr {
                dst_port: PORT + 1,
                ..hdr(op::RST, *port, 0, 0)
            },
            &[],
        );
        s.guest.reap_tx();
    };
    group.bench_function("connect", |b| b.iter(|| connect(&mut stream, &mut port)));
    group.finish();
}

fn main() {
    let quick = std::env::var_os("SQUIB_BENCH_QUICK").is_some_and(|v| v == "1");
    let (warm_up, measure) = if quick {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_secs(1), Duration::from_secs(4))
    };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .configure_from_args();
    let dir = tempfile::tempdir().unwrap();
    bench_host_only(&mut c, dir.path());
    bench_device(&mut c, &dir.path().join("v.sock"));
    c.final_summary();
}
