//! The virtio-net checks, one line each, against the host's TAP in a network namespace: the
//! kernel's ARP reply, a UDP echo server, 64 datagrams in flight, MTU-sized frames both ways,
//! frames that arrive before any receive buffer is posted, and a rate-limited burst to a sink.

use core::fmt;

use crate::cmdline::{NetOptions, Options, Workload};
use crate::report;
use crate::serial::println;
use crate::time::{self, Deadline};
use crate::virtio_net::{MAX_FRAME, NetDevice, NetError, RX_BUFFER};

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Our UDP source port.
const GUEST_PORT: u16 = 40_000;
/// Datagrams in flight at once.
const IN_FLIGHT: usize = 64;
/// A UDP payload that makes a 1514-byte frame (1500-byte IP packet).
const MTU_PAYLOAD: usize = 1500 - 20 - 8;

#[derive(Debug)]
pub(crate) enum CheckError {
    Net(NetError),
    NoReply(&'static str),
    Mismatch { seq: usize },
    Duplicate { seq: usize },
    UsedLength { expected: usize, got: u32 },
}

impl From<NetError> for CheckError {
    fn from(error: NetError) -> Self {
        Self::Net(error)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Net(error) => error.fmt(f),
            Self::NoReply(what) => write!(f, "no {what} within the timeout"),
            Self::Mismatch { seq } => write!(f, "datagram {seq} came back altered"),
            Self::Duplicate { seq } => write!(f, "datagram {seq} came back twice"),
            Self::UsedLength { expected, got } => {
                write!(f, "used length {got}, expected {expected}")
            }
        }
    }
}

type Outcome = Result<(), CheckError>;

/// Runs the network checks on the device at `base`.
pub fn check(name: usize, base: u64, size: u64, net: Option<&NetOptions>) {
    let what = |check: &'static str| NetCheck { name, check };
    let Some(net) = net else {
        report::fail(format_args!("{}", what("init")), &"no guest.net= on the command line");
        return;
    };
    let mut dev = match NetDevice::init(base, size) {
        Ok(dev) => dev,
        Err(error) => {
            report::fail(format_args!("{}", what("init")), &error);
            return;
        }
    };
    report::pass(format_args!("{}", what("init")));
    let mut host_mac = BROADCAST;
    let early = rx_before_buffers(&mut dev, net, &mut host_mac);
    report::record(format_args!("{}", what("rx-before-buffers")), &early);
    if early.is_err() {
        return;
    }
    let mut cx = Cx {
        dev,
        net: *net,
        host_mac,
        buf: [0; MAX_FRAME],
    };
    report::record(format_args!("{}", what("udp-echo")), &cx.echo_one(64, 0));
    report::record(format_args!("{}", what("inflight")), &cx.in_flight());
    report::record(format_args!("{}", what("mtu")), &cx.echo_one(MTU_PAYLOAD, 1000));
    if let Some((port, count)) = net.sink {
        report::record(format_args!("{}", what("rate")), &cx.blast(port, count));
    }
}

struct NetCheck {
    name: usize,
    check: &'static str,
}

impl fmt::Display for NetCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtio-net eth{}: {}", self.name, self.check)
    }
}

/// ARP for the host with no receive buffer posted; wait; post; the reply (which waited in the
/// TAP) must arrive, from the host's IP, naming its MAC.
fn rx_before_buffers(dev: &mut NetDevice, net: &NetOptions, host_mac: &mut [u8; 6]) -> Outcome {
    let mut frame = [0u8; 42];
    ethernet(&mut frame, BROADCAST, dev.mac, ETH_ARP);
    let arp = &mut frame[14..];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    arp[8..14].copy_from_slice(&dev.mac);
    arp[14..18].copy_from_slice(&net.guest_ip);
    arp[24..28].copy_from_slice(&net.host_ip);
    dev.send(&frame)?;
    dev.flush_tx()?;
    // Let the reply reach the TAP (about 50 ms or more: the device must hold it, not drop it).
    let until = time::tsc().saturating_add(1 << 27);
    while time::tsc() < until {
        core::hint::spin_loop();
    }
    dev.post_rx_buffers()?;
    let deadline = Deadline::standard();
    while let Some(rx) = dev.receive(deadline)? {
        let f = dev.frame(&rx);
        let is_reply = f.len() >= 42
            && u16::from_be_bytes([f[12], f[13]]) == ETH_ARP
            && u16::from_be_bytes([f[20], f[21]]) == 2
            && f[28..32] == net.host_ip;
        if is_reply {
            host_mac.copy_from_slice(&f[22..28]);
            let m = *host_mac;
            println!(
                "# ARP reply: host {}.{}.{}.{} is {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                net.host_ip[0], net.host_ip[1], net.host_ip[2], net.host_ip[3],
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
        }
        dev.recycle(rx)?;
        if is_reply {
            return Ok(());
        }
    }
    Err(CheckError::NoReply("ARP reply"))
}

/// A set-up interface: the device, the host's MAC learnt by ARP, and a frame buffer.
pub(crate) struct Cx {
    dev: NetDevice,
    net: NetOptions,
    host_mac: [u8; 6],
    buf: [u8; MAX_FRAME],
}

impl Cx {
    /// Sends one datagram of `len` payload bytes (pattern `seed`) to the echo server.
    fn send_datagram(&mut self, port: u16, len: usize, seed: usize) -> Result<(), NetError> {
        let total = 14 + 20 + 8 + len;
        let mut frame = self.buf;
        ethernet(&mut frame, self.host_mac, self.dev.mac, ETH_IPV4);
        let ip = &mut frame[14..34];
        ip.fill(0);
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 8 + len) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(seed as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.net.guest_ip);
        ip[16..20].copy_from_slice(&self.net.host_ip);
        let sum = checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut frame[34..42];
        udp[0..2].copy_from_slice(&GUEST_PORT.to_be_bytes());
        udp[2..4].copy_from_slice(&port.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        udp[6..8].fill(0); // no UDP checksum (allowed over IPv4)
        fill_payload(&mut frame[42..total], seed);
        self.dev.send(&frame[..total])
    }

    /// Receives the next UDP datagram from the echo server; returns (seed, used length) after
    /// checking its payload is byte-exact.
    fn receive_echo(&mut self, deadline: Deadline) -> Result<Option<(usize, u32)>, CheckError> {
        while let Some(rx) = self.dev.receive(deadline)? {
            let f = self.dev.frame(&rx);
            let udp = f.len() >= 42
                && u16::from_be_bytes([f[12], f[13]]) == ETH_IPV4
                && f[23] == 17
                && f[26..30] == self.net.host_ip
                && u16::from_be_bytes([f[34], f[35]]) == self.net.echo_port
                && u16::from_be_bytes([f[36], f[37]]) == GUEST_PORT;
            let result = if udp {
                let len = usize::from(u16::from_be_bytes([f[38], f[39]])).saturating_sub(8);
                let payload = &f[42..f.len().min(42 + len)];
                let seed = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .unwrap_or(usize::MAX);
                let mut expected = [0u8; MAX_FRAME];
                fill_payload(&mut expected[..len], seed);
                if payload.len() != len || payload != &expected[..len] {
                    Err(CheckError::Mismatch { seq: seed })
                } else {
                    Ok(Some((seed, rx.used_len)))
                }
            } else {
                Ok(None)
            };
            self.dev.recycle(rx)?;
            match result {
                Ok(None) => continue,
                other => return other,
            }
        }
        Ok(None)
    }

    fn echo_one(&mut self, len: usize, seed: usize) -> Outcome {
        self.send_datagram(self.net.echo_port, len, seed)?;
        let (got, used_len) = self
            .receive_echo(Deadline::standard())?
            .ok_or(CheckError::NoReply("echo"))?;
        if got != seed {
            return Err(CheckError::Mismatch { seq: got });
        }
        let expected = 12 + 14 + 20 + 8 + len;
        if used_len as usize != expected {
            return Err(CheckError::UsedLength {
                expected,
                got: used_len,
            });
        }
        if len == MTU_PAYLOAD {
            println!("# a {expected}-byte frame filled a {RX_BUFFER}-byte buffer");
        }
        Ok(())
    }

    fn in_flight(&mut self) -> Outcome {
        for seq in 0..IN_FLIGHT {
            self.send_datagram(self.net.echo_port, 256, 100 + seq)?;
        }
        let mut seen = [false; IN_FLIGHT];
        let deadline = Deadline::standard();
        for _ in 0..IN_FLIGHT {
            let (seed, _) = self
                .receive_echo(deadline)?
                .ok_or(CheckError::NoReply("64 echoes"))?;
            let seq = seed.wrapping_sub(100);
            let slot = seen.get_mut(seq).ok_or(CheckError::Mismatch { seq: seed })?;
            if *slot {
                return Err(CheckError::Duplicate { seq });
            }
            *slot = true;
        }
        Ok(())
    }

    /// `count` 1000-byte datagrams to the sink as fast as the device takes them; the host
    /// measures the rate the limiter lets through.
    fn blast(&mut self, port: u16, count: u32) -> Outcome {
        for seq in 0..count as usize {
            self.send_datagram(port, 1000, seq)?;
        }
        self.dev.flush_tx()?;
        println!("# sent {count} datagrams to the sink");
        Ok(())
    }
}

/// The network benchmark (`guest.bench=udp-rr|udp-tx|udp-rx`) on the first network device;
/// the host times the `BENCH start` and `BENCH done ops=<n>` lines. Ends the run.
pub fn bench(options: &Options) -> ! {
    let workload = options.bench.workload;
    let ops = options.bench.ops;
    let Some(net) = options.net else {
        report::abort(format_args!("bench: no guest.net= on the command line"));
    };
    let Some(device) = options.devices().find(|d| crate::checks::is_network_device(d)) else {
        report::abort(format_args!("bench: no network device on the command line"));
    };
    let mut dev = NetDevice::init(device.base, device.size)
        .unwrap_or_else(|e| report::abort(format_args!("bench: init: {e}")));
    dev.strict_num_buffers = false;
    let mut host_mac = BROADCAST;
    // Receiving needs no address; and a flooded TAP queue would drop the ARP reply.
    let resolved = if workload == Workload::UdpReceive {
        dev.post_rx_buffers().map_err(CheckError::from)
    } else {
        rx_before_buffers(&mut dev, &net, &mut host_mac)
    };
    if let Err(e) = resolved {
        report::abort(format_args!("bench: set-up: {e}"));
    }
    let mut cx = Cx {
        dev,
        net,
        host_mac,
        buf: [0; MAX_FRAME],
    };
    let outcome = match workload {
        Workload::UdpRoundTrip => {
            println!("BENCH start");
            (0..ops as usize).try_for_each(|seq| {
                cx.send_datagram(net.echo_port, 64, seq)?;
                cx.receive_echo(Deadline::standard())?
                    .map(|_| ())
                    .ok_or(CheckError::NoReply("echo"))
            })
        }
        Workload::UdpSend => {
            let port = net.sink.map_or(9, |(port, _)| port);
            println!("BENCH start");
            (0..ops as usize)
                .try_for_each(|seq| cx.send_datagram(port, MTU_PAYLOAD, seq))
                .and_then(|()| cx.dev.flush_tx())
                .map_err(CheckError::from)
        }
        Workload::UdpReceive => cx.count_received(ops),
        Workload::RandRead => Ok(()),
    };
    match outcome {
        Ok(()) => {
            println!("BENCH done ops={ops}");
            report::pass(format_args!("virtio-net bench"));
        }
        Err(e) => report::fail(format_args!("virtio-net bench"), &e),
    }
    report::finish()
}

impl Cx {
    /// Counts UDP datagrams addressed to us (any source port) until `ops`; `BENCH start` at
    /// the first one.
    fn count_received(&mut self, ops: u64) -> Outcome {
        let mut seen = 0;
        while seen < ops {
            let rx = self
                .dev
                .receive(Deadline::standard())?
                .ok_or(CheckError::NoReply("datagrams from the host"))?;
            let f = self.dev.frame(&rx);
            let ours = f.len() >= 42
                && u16::from_be_bytes([f[12], f[13]]) == ETH_IPV4
                && f[23] == 17
                && u16::from_be_bytes([f[36], f[37]]) == GUEST_PORT;
            self.dev.recycle(rx)?;
            if ours {
                if seen == 0 {
                    println!("BENCH start");
                }
                seen += 1;
            }
        }
        Ok(())
    }
}

fn ethernet(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// The datagram's payload: its seed first, then bytes derived from seed and position.
fn fill_payload(payload: &mut [u8], seed: usize) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(29).wrapping_add(seed as u8).wrapping_add(7);
    }
    if payload.len() >= 4 {
        payload[..4].copy_from_slice(&(seed as u32).to_le_bytes());
    }
}

/// The Internet checksum (RFC 1071) of an IPv4 header whose checksum field is zero.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// For the snapshot mode: the interface at `base`, its rx buffers posted and the host's MAC
/// learnt (ARP), with one UDP echo done — ready when the host takes its snapshot.
pub(crate) fn snapshot_prepare(base: u64, size: u64, net: &NetOptions) -> Result<Cx, CheckError> {
    let mut dev = NetDevice::init(base, size)?;
    let mut host_mac = BROADCAST;
    rx_before_buffers(&mut dev, net, &mut host_mac)?;
    let mut cx = Cx {
        dev,
        net: *net,
        host_mac,
        buf: [0; MAX_FRAME],
    };
    cx.echo_one(64, 1)?;
    Ok(cx)
}

/// After a restore: a new UDP echo through the (possibly new) TAP.
pub(crate) fn snapshot_after_restore(cx: &mut Cx) -> Result<(), CheckError> {
    cx.echo_one(256, 2)
}
