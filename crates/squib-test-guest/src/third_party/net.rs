//! virtio-net through the crate's `VirtIONet`, prefixed `virtio-drivers net at <base>:`. The
//! addresses are the KVM test's network namespace: the guest is 10.0.0.2 (with the MAC squib
//! gives it), the host's TAP is 10.0.0.1 with a UDP echo server on port 7777. An ARP request
//! must get the host kernel's reply, and a datagram to the echo server must come back
//! byte-exact.
//!
//! The crate owns the receive buffers and `send` waits for its frame to be used, so a check may
//! give up on a silent device and return.

use core::fmt;

use virtio_drivers::Error;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::mmio::MmioTransport;

use super::hal::GuestHal;
use crate::cmdline::MmioDevice;
use crate::pattern::{self, Mismatch};
use crate::report;
use crate::time::Deadline;

const QUEUE_SIZE: usize = 16;
/// Receive buffers: an MTU-sized frame and its virtio-net header fit.
const RX_BUFFER_BYTES: usize = 2048;
type Net = VirtIONet<GuestHal, MmioTransport<'static>, QUEUE_SIZE>;

type Mac = [u8; 6];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
const ECHO_PORT: u16 = 7777;
const LOCAL_PORT: u16 = 40000;
const PAYLOAD: usize = 512;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
const IPV4_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const IPPROTO_UDP: u8 = 17;

#[derive(Debug)]
enum CheckError {
    Driver(Error),
    Timeout { waiting_for: &'static str },
    Mismatch(Mismatch),
}

impl From<Error> for CheckError {
    fn from(error: Error) -> Self {
        Self::Driver(error)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver(error) => write!(f, "the driver returned: {error}"),
            Self::Timeout { waiting_for } => write!(f, "no {waiting_for} in time"),
            Self::Mismatch(mismatch) => mismatch.fmt(f),
        }
    }
}

/// A MAC address as `xx:xx:xx:xx:xx:xx`.
struct ShowMac(Mac);

impl fmt::Display for ShowMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Runs the checks on one network device.
pub fn check(device: &MmioDevice, transport: MmioTransport<'static>, seed: u64) {
    let base = device.base;
    let net = Net::new(transport, RX_BUFFER_BYTES).map_err(CheckError::Driver);
    let mac = net.as_ref().map_or([0; 6], Net::mac_address);
    report::record(
        format_args!(
            "virtio-drivers net at {base:#x}: VirtIONet::new (MAC {})",
            ShowMac(mac)
        ),
        &net,
    );
    let Ok(mut net) = net else { return };
    let host = arp(&mut net, mac);
    let host_mac = *host.as_ref().unwrap_or(&[0; 6]);
    report::record(
        format_args!(
            "virtio-drivers net at {base:#x}: ARP for 10.0.0.1 answered by {}",
            ShowMac(host_mac)
        ),
        &host,
    );
    if host.is_err() {
        return;
    }
    report::record(
        format_args!(
            "virtio-drivers net at {base:#x}: a {PAYLOAD}-byte UDP datagram to 10.0.0.1:{ECHO_PORT} \
             echoed byte-exact"
        ),
        &udp_echo(&mut net, mac, host_mac, seed),
    );
}

/// Asks who has HOST_IP; returns the MAC in the reply.
fn arp(net: &mut Net, mac: Mac) -> Result<Mac, CheckError> {
    let mut frame = [0; ETH_HEADER + 28];
    ethernet(&mut frame, [0xff; 6], mac, ETHERTYPE_ARP);
    let arp = &mut frame[ETH_HEADER..];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    arp[8..14].copy_from_slice(&mac);
    arp[14..18].copy_from_slice(&GUEST_IP);
    arp[24..28].copy_from_slice(&HOST_IP);
    send(net, &frame)?;
    receive(net, "ARP reply", |frame| {
        let arp = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
        let is_reply = ethertype(frame) == ETHERTYPE_ARP && arp[6..8] == [0, 2];
        (is_reply && arp[14..18] == HOST_IP && arp[24..28] == GUEST_IP)
            .then(|| arp[8..14].try_into().ok())
            .flatten()
    })
}

fn udp_echo(net: &mut Net, mac: Mac, host_mac: Mac, seed: u64) -> Result<(), CheckError> {
    const LEN: usize = ETH_HEADER + IPV4_HEADER + UDP_HEADER + PAYLOAD;
    let mut frame = [0; LEN];
    ethernet(&mut frame, host_mac, mac, ETHERTYPE_IPV4);
    let ip = &mut frame[ETH_HEADER..ETH_HEADER + IPV4_HEADER];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&((LEN - ETH_HEADER) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&GUEST_IP);
    ip[16..20].copy_from_slice(&HOST_IP);
    let checksum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp = &mut frame[ETH_HEADER + IPV4_HEADER..];
    udp[0..2].copy_from_slice(&LOCAL_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&ECHO_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HEADER + PAYLOAD) as u16).to_be_bytes());
    // Checksum 0: none (allowed over IPv4).
    let sent = &mut udp[UDP_HEADER..];
    pattern::fill(sent, seed, 0);
    let mut expected = [0; PAYLOAD];
    expected.copy_from_slice(sent);
    send(net, &frame)?;
    let mut echoed = [0; PAYLOAD];
    receive(net, "UDP echo", |frame| {
        let ip = frame.get(ETH_HEADER..ETH_HEADER + IPV4_HEADER)?;
        let udp = frame.get(ETH_HEADER + IPV4_HEADER..)?;
        let ours = ethertype(frame) == ETHERTYPE_IPV4
            && ip[0] == 0x45
            && ip[9] == IPPROTO_UDP
            && ip[12..16] == HOST_IP
            && udp.get(0..2)? == ECHO_PORT.to_be_bytes()
            && udp.get(2..4)? == LOCAL_PORT.to_be_bytes();
        let payload = udp.get(UDP_HEADER..UDP_HEADER + PAYLOAD)?;
        ours.then(|| echoed.copy_from_slice(payload))
    })?;
    pattern::compare(&expected, &echoed, 0).map_err(CheckError::Mismatch)
}

fn ethernet(frame: &mut [u8], destination: Mac, source: Mac, ethertype: u16) {
    frame[0..6].copy_from_slice(&destination);
    frame[6..12].copy_from_slice(&source);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn ethertype(frame: &[u8]) -> u16 {
    frame
        .get(12..14)
        .map_or(0, |bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// The header checksum (RFC 791) over a header whose checksum field is 0.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let sum = header.chunks_exact(2).fold(0u32, |sum, word| {
        sum + u32::from(u16::from_be_bytes([word[0], word[1]]))
    });
    let folded = (sum & 0xffff) + (sum >> 16);
    !((folded & 0xffff) + (folded >> 16)) as u16
}

fn send(net: &mut Net, frame: &[u8]) -> Result<(), CheckError> {
    let mut tx = net.new_tx_buffer(frame.len());
    tx.packet_mut().copy_from_slice(frame);
    Ok(net.send(tx)?)
}

/// Receives frames until `wanted` picks one (others, e.g. IPv6 chatter, are dropped).
fn receive<T>(
    net: &mut Net,
    waiting_for: &'static str,
    mut wanted: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, CheckError> {
    let deadline = Deadline::standard();
    loop {
        match net.receive() {
            Ok(rx) => {
                let picked = wanted(rx.packet());
                net.recycle_rx_buffer(rx)?;
                if let Some(value) = picked {
                    return Ok(value);
                }
            }
            Err(Error::NotReady) if deadline.passed() => {
                return Err(CheckError::Timeout { waiting_for });
            }
            Err(Error::NotReady) => core::hint::spin_loop(),
            Err(error) => return Err(error.into()),
        }
    }
}
