//! A virtio-vsock driver (virtio 1.2 §5.10), polled: stream connections with credit-based flow
//! control, per-connection receive buffers in DMA memory (no heap), one rx/tx/event queue each.
//!
//! The application side is non-blocking: [`Vsock::try_send`] sends what the peer's credit and
//! the free tx buffers allow, [`Vsock::read`] takes what arrived, [`Vsock::pump`] moves packets.
//! Incoming connections to [`LISTEN_PORT`] are accepted whenever they arrive and wait in
//! [`Vsock::take_accepted`].

use core::fmt;

use crate::cmdline::MmioDevice;
use crate::dma::{DmaBuf, OutOfDmaMemory};
use crate::time::Deadline;
use crate::virtio_init::{self, FEATURE_VERSION_1, InitError};
use crate::virtio_mmio::Transport;
use crate::virtqueue::{QueueError, Segment, SplitQueue};

pub const DEVICE_ID_VSOCK: u32 = 19;
pub const HOST_CID: u64 = 2;
/// The port host-initiated connections are accepted on.
pub const LISTEN_PORT: u32 = 6000;
/// Connections at once.
pub const MAX_CONNS: usize = 72;

const HDR: usize = 44;
const PAYLOAD: usize = 4096;
const PKT: usize = HDR + PAYLOAD;
const RX_BUFS: usize = 64;
const TX_BUFS: usize = 32;
const EVENT_BUFS: usize = 4;
/// Receive buffer per connection: the credit the guest grants.
const CONN_BUF: usize = 16 * 1024;

mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

#[derive(Debug, Clone, Copy)]
pub enum VsockError {
    Init(InitError),
    NoMemory(OutOfDmaMemory),
    Queue(QueueError),
    TimedOut(&'static str),
    Refused,
    Reset,
    NoSlot,
    Overflow,
    ShortPacket,
}

impl From<QueueError> for VsockError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

impl fmt::Display for VsockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Init(e) => e.fmt(f),
            Self::NoMemory(e) => e.fmt(f),
            Self::Queue(e) => e.fmt(f),
            Self::TimedOut(what) => write!(f, "timed out {what}"),
            Self::Refused => f.write_str("connection refused (RST)"),
            Self::Reset => f.write_str("connection reset by the peer"),
            Self::NoSlot => f.write_str("no free connection slot"),
            Self::Overflow => f.write_str("the device sent past the credit the guest granted"),
            Self::ShortPacket => f.write_str("a packet shorter than its header says"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }

    fn read(b: &[u8]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Connecting,
    Open,
    Reset,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    state: State,
    local: u32,
    peer: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    /// Bytes the application consumed.
    fwd_cnt: u32,
    told_fwd_cnt: u32,
    head: usize,
    len: usize,
    overflow: bool,
}

const FREE_CONN: Conn = Conn {
    state: State::Free,
    local: 0,
    peer: 0,
    peer_buf_alloc: 0,
    peer_fwd_cnt: 0,
    tx_cnt: 0,
    fwd_cnt: 0,
    told_fwd_cnt: 0,
    head: 0,
    len: 0,
    overflow: false,
};

/// Control packets owed to the device, sent after an rx batch.
#[derive(Debug, Clone, Copy)]
struct Owed {
    conn: usize,
    op: u16,
}

pub struct Vsock {
    pub base: u64,
    pub cid: u64,
    transport: Transport,
    rx: SplitQueue,
    tx: SplitQueue,
    ev: SplitQueue,
    rx_bufs: DmaBuf,
    tx_bufs: DmaBuf,
    ev_bufs: DmaBuf,
    conn_bufs: DmaBuf,
    rx_of_head: [u8; 256],
    tx_of_head: [u8; 256],
    tx_free: [u8; TX_BUFS],
    tx_free_count: usize,
    conns: [Conn; MAX_CONNS],
    owed: [Owed; 2 * MAX_CONNS],
    owed_count: usize,
    accepted: [u8; MAX_CONNS],
    accepted_count: usize,
    next_port: u32,
    /// RSTs sent by the driver for packets it could not place.
    pub resets_sent: u32,
    /// TRANSPORT_RESET events seen.
    pub transport_resets: u32,
}

impl fmt::Debug for Vsock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vsock").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Vsock {
    pub fn init(device: &MmioDevice) -> Result<Self, VsockError> {
        let (transport, features) =
            virtio_init::negotiate(device, DEVICE_ID_VSOCK, FEATURE_VERSION_1)
                .map_err(VsockError::Init)?;
        let rx = virtio_init::setup_queue(&transport, 0, features).map_err(VsockError::Init)?;
        let tx = virtio_init::setup_queue(&transport, 1, features).map_err(VsockError::Init)?;
        let ev = virtio_init::setup_queue(&transport, 2, features).map_err(VsockError::Init)?;
        let alloc = |len| DmaBuf::new(len, 4096).map_err(VsockError::NoMemory);
        let mut vsock = Self {
            base: device.base,
            cid: 0,
            rx_bufs: alloc(RX_BUFS * PKT)?,
            tx_bufs: alloc(TX_BUFS * PKT)?,
            ev_bufs: alloc(EVENT_BUFS * 8)?,
            conn_bufs: alloc(MAX_CONNS * CONN_BUF)?,
            transport,
            rx,
            tx,
            ev,
            rx_of_head: [0; 256],
            tx_of_head: [0; 256],
            tx_free: [0; TX_BUFS],
            tx_free_count: TX_BUFS,
            conns: [FREE_CONN; MAX_CONNS],
            owed: [Owed { conn: 0, op: 0 }; 2 * MAX_CONNS],
            owed_count: 0,
            accepted: [0; MAX_CONNS],
            accepted_count: 0,
            next_port: 1024,
            resets_sent: 0,
            transport_resets: 0,
        };
        for (i, slot) in vsock.tx_free.iter_mut().enumerate() {
            *slot = i as u8;
        }
        virtio_init::driver_ok(&vsock.transport, device.gsi).map_err(VsockError::Init)?;
        vsock.cid = vsock.transport.config_u64(0);
        vsock.rx.disable_interrupts();
        vsock.tx.disable_interrupts();
        vsock.ev.disable_interrupts();
        for i in 0..RX_BUFS {
            vsock.post_rx(i)?;
        }
        for i in 0..EVENT_BUFS {
            let addr = vsock.ev_bufs.addr_at(i * 8);
            vsock.ev.add(&[Segment {
                addr,
                len: 8,
                device_writes: true,
            }])?;
        }
        vsock.transport.notify(0);
        vsock.transport.notify(2);
        Ok(vsock)
    }

    fn post_rx(&mut self, index: usize) -> Result<(), VsockError> {
        let head = self.rx.add(&[Segment {
            addr: self.rx_bufs.addr_at(index * PKT),
            len: PKT as u32,
            device_writes: true,
        }])?;
        self.rx_of_head[usize::from(head)] = index as u8;
        Ok(())
    }

    /// Moves packets: reaps tx, handles every rx packet, sends the replies they call for.
    pub fn pump(&mut self) -> Result<(), VsockError> {
        self.reap_tx()?;
        let mut reposted = false;
        while let Some(used) = self.rx.pop_used()? {
            let index = usize::from(self.rx_of_head[usize::from(used.head)]);
            let start = index * PKT;
            let len = (used.len as usize).min(PKT);
            let (hdr, payload_at) = {
                let bytes = &self.rx_bufs.as_slice()[start..start + len.max(HDR)];
                (Hdr::read(bytes), start + HDR)
            };
            if len < HDR || (hdr.len as usize) > len - HDR {
                return Err(VsockError::ShortPacket);
            }
            self.handle(&hdr, payload_at)?;
            self.post_rx(index)?;
            reposted = true;
        }
        if reposted && self.rx.should_notify() {
            self.transport.notify(0);
        }
        while self.ev.pop_used()?.is_some() {
            // Only TRANSPORT_RESET (id 0) exists: every connection is gone.
            self.transport_resets += 1;
            for conn in self.conns.iter_mut().filter(|c| c.state != State::Free) {
                conn.state = State::Reset;
            }
            let addr = self.ev_bufs.addr_at(0);
            self.ev.add(&[Segment {
                addr,
                len: 8,
                device_writes: true,
            }])?;
            self.transport.notify(2);
        }
        while self.owed_count > 0 {
            self.owed_count -= 1;
            let Owed { conn, op } = self.owed[self.owed_count];
            self.send_control(conn, op)?;
        }
        Ok(())
    }

    fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state != State::Free && c.local == local && c.peer == peer)
    }

    fn owe(&mut self, conn: usize, op: u16) {
        if self.owed_count < self.owed.len() {
            self.owed[self.owed_count] = Owed { conn, op };
            self.owed_count += 1;
        }
    }

    fn handle(&mut self, hdr: &Hdr, payload_at: usize) -> Result<(), VsockError> {
        let Some(id) = self.find(hdr.dst_port, hdr.src_port) else {
            if hdr.op == op::REQUEST && hdr.dst_port == LISTEN_PORT {
                let Some(id) = self.conns.iter().position(|c| c.state == State::Free) else {
                    return self.send_rst(hdr);
                };
                self.conns[id] = Conn {
                    state: State::Open,
                    local: hdr.dst_port,
                    peer: hdr.src_port,
                    peer_buf_alloc: hdr.buf_alloc,
                    peer_fwd_cnt: hdr.fwd_cnt,
                    ..FREE_CONN
                };
                if self.accepted_count < MAX_CONNS {
                    self.accepted[self.accepted_count] = id as u8;
                    self.accepted_count += 1;
                }
                self.owe(id, op::RESPONSE);
                return Ok(());
            }
            if hdr.op != op::RST {
                return self.send_rst(hdr);
            }
            return Ok(());
        };
        let conn = &mut self.conns[id];
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            op::RESPONSE if conn.state == State::Connecting => conn.state = State::Open,
            op::RST => conn.state = State::Reset,
            // The checks' peers never half-close; a full close arrives as RST.
            op::SHUTDOWN => {}
            op::RW => {
                let n = hdr.len as usize;
                if conn.len + n > CONN_BUF {
                    conn.overflow = true;
                    return Ok(());
                }
                let base = id * CONN_BUF;
                let src_start = payload_at;
                for i in 0..n {
                    let at = base + (conn.head + conn.len + i) % CONN_BUF;
                    let byte = self.rx_bufs.as_slice()[src_start + i];
                    self.conn_bufs.as_mut_slice()[at] = byte;
                }
                self.conns[id].len += n;
            }
            op::CREDIT_REQUEST => self.owe(id, op::CREDIT_UPDATE),
            _ => {}
        }
        Ok(())
    }

    fn reap_tx(&mut self) -> Result<(), VsockError> {
        while let Some(used) = self.tx.pop_used()? {
            self.tx_free[self.tx_free_count] = self.tx_of_head[usize::from(used.head)];
            self.tx_free_count += 1;
        }
        Ok(())
    }

    /// Sends one packet (header + payload in one buffer), waiting for a free tx buffer.
    fn send_packet(&mut self, hdr: &Hdr, payload: &[u8]) -> Result<(), VsockError> {
        let deadline = Deadline::standard();
        while self.tx_free_count == 0 {
            self.reap_tx()?;
            if deadline.passed() {
                return Err(VsockError::TimedOut("for a tx buffer"));
            }
        }
        self.tx_free_count -= 1;
        let index = usize::from(self.tx_free[self.tx_free_count]);
        let start = index * PKT;
        let buf = &mut self.tx_bufs.as_mut_slice()[start..start + HDR + payload.len()];
        hdr.write(&mut buf[..HDR]);
        buf[HDR..].copy_from_slice(payload);
        let head = self.tx.add(&[Segment {
            addr: self.tx_bufs.addr_at(start),
            len: (HDR + payload.len()) as u32,
            device_writes: false,
        }])?;
        self.tx_of_head[usize::from(head)] = index as u8;
        if self.tx.should_notify() {
            self.transport.notify(1);
        }
        Ok(())
    }

    fn header(&mut self, id: usize, op: u16, len: usize) -> Hdr {
        let conn = &mut self.conns[id];
        conn.told_fwd_cnt = conn.fwd_cnt;
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: conn.local,
            dst_port: conn.peer,
            len: len as u32,
            type_: 1,
            op,
            flags: 0,
            buf_alloc: CONN_BUF as u32,
            fwd_cnt: conn.fwd_cnt,
        }
    }

    fn send_control(&mut self, id: usize, op: u16) -> Result<(), VsockError> {
        let hdr = self.header(id, op, 0);
        self.send_packet(&hdr, &[])
    }

    fn send_rst(&mut self, to: &Hdr) -> Result<(), VsockError> {
        self.resets_sent += 1;
        let hdr = Hdr {
            src_cid: self.cid,
            dst_cid: to.src_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: 1,
            op: op::RST,
            ..Hdr::default()
        };
        self.send_packet(&hdr, &[])
    }

    /// Connects to host port `port`; waits for RESPONSE (or RST: `Refused`).
    pub fn connect(&mut self, port: u32) -> Result<usize, VsockError> {
        let id = self
            .conns
            .iter()
            .position(|c| c.state == State::Free)
            .ok_or(VsockError::NoSlot)?;
        let local = self.next_port;
        self.next_port += 1;
        self.conns[id] = Conn {
            state: State::Connecting,
            local,
            peer: port,
            ..FREE_CONN
        };
        self.send_control(id, op::REQUEST)?;
        let deadline = Deadline::standard();
        loop {
            self.pump()?;
            match self.conns[id].state {
                State::Open => return Ok(id),
                State::Reset => {
                    self.conns[id] = FREE_CONN;
                    return Err(VsockError::Refused);
                }
                _ => {}
            }
            if deadline.passed() {
                return Err(VsockError::TimedOut("for RESPONSE"));
            }
        }
    }

    /// Starts a connection without waiting: [`Vsock::is_open`] tells when it is up.
    pub fn connect_start(&mut self, port: u32) -> Result<usize, VsockError> {
        let id = self
            .conns
            .iter()
            .position(|c| c.state == State::Free)
            .ok_or(VsockError::NoSlot)?;
        let local = self.next_port;
        self.next_port += 1;
        self.conns[id] = Conn {
            state: State::Connecting,
            local,
            peer: port,
            ..FREE_CONN
        };
        self.send_control(id, op::REQUEST)?;
        Ok(id)
    }

    /// Whether the connection is established; `Err` if it was reset or refused.
    pub fn is_open(&self, id: usize) -> Result<bool, VsockError> {
        match self.conns[id].state {
            State::Open => Ok(true),
            State::Reset => Err(VsockError::Reset),
            _ => Ok(false),
        }
    }

    /// A connection the host opened to [`LISTEN_PORT`], waiting up to the standard timeout.
    pub fn accept(&mut self) -> Result<usize, VsockError> {
        let deadline = Deadline::standard();
        loop {
            self.pump()?;
            if let Some(id) = self.take_accepted() {
                return Ok(id);
            }
            if deadline.passed() {
                return Err(VsockError::TimedOut("for a host connection"));
            }
        }
    }

    pub fn take_accepted(&mut self) -> Option<usize> {
        if self.accepted_count == 0 {
            return None;
        }
        let id = usize::from(self.accepted[0]);
        self.accepted.copy_within(1..self.accepted_count, 0);
        self.accepted_count -= 1;
        Some(id)
    }

    /// Bytes the peer's credit allows now.
    pub fn credit(&self, id: usize) -> usize {
        let c = &self.conns[id];
        c.peer_buf_alloc
            .saturating_sub(c.tx_cnt.wrapping_sub(c.peer_fwd_cnt)) as usize
    }

    /// Sends as much of `data` as credit allows (at most one packet); returns how much.
    pub fn try_send(&mut self, id: usize, data: &[u8]) -> Result<usize, VsockError> {
        self.check(id)?;
        let n = data.len().min(PAYLOAD).min(self.credit(id));
        if n == 0 {
            return Ok(0);
        }
        let hdr = self.header(id, op::RW, n);
        self.send_packet(&hdr, &data[..n])?;
        self.conns[id].tx_cnt = self.conns[id].tx_cnt.wrapping_add(n as u32);
        Ok(n)
    }

    /// Takes up to `out.len()` received bytes; tells the device once half the buffer is free.
    pub fn read(&mut self, id: usize, out: &mut [u8]) -> Result<usize, VsockError> {
        if self.conns[id].overflow {
            return Err(VsockError::Overflow);
        }
        let conn = self.conns[id];
        let n = out.len().min(conn.len);
        let base = id * CONN_BUF;
        for (i, byte) in out[..n].iter_mut().enumerate() {
            *byte = self.conn_bufs.as_slice()[base + (conn.head + i) % CONN_BUF];
        }
        let conn = &mut self.conns[id];
        conn.head = (conn.head + n) % CONN_BUF;
        conn.len -= n;
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
        if n == 0 && conn.state == State::Reset {
            return Err(VsockError::Reset);
        }
        if conn.fwd_cnt.wrapping_sub(conn.told_fwd_cnt) as usize >= CONN_BUF / 2 {
            self.send_control(id, op::CREDIT_UPDATE)?;
        }
        Ok(n)
    }

    fn check(&self, id: usize) -> Result<(), VsockError> {
        match self.conns[id].state {
            State::Reset => Err(VsockError::Reset),
            _ if self.conns[id].overflow => Err(VsockError::Overflow),
            _ => Ok(()),
        }
    }

    /// Closes the connection the way Linux does: SHUTDOWN both ways, then wait for the RST.
    pub fn close(&mut self, id: usize) -> Result<(), VsockError> {
        if self.conns[id].state == State::Open {
            let mut hdr = self.header(id, op::SHUTDOWN, 0);
            hdr.flags = 3;
            self.send_packet(&hdr, &[])?;
            let deadline = Deadline::standard();
            while self.conns[id].state == State::Open && !deadline.passed() {
                self.pump()?;
            }
        }
        self.conns[id] = FREE_CONN;
        Ok(())
    }
}
