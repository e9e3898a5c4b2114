//! One vsock stream connection between a guest port and a host Unix socket: its state, the
//! credit both sides grant (virtio 1.2 §5.10.6.3), and the bounded buffer of guest data the host
//! socket has not taken yet.
//!
//! Guest → host: data goes straight from guest memory to the socket; only what the socket
//! refuses is copied into [`HostBound`], which never holds more than [`BUF_ALLOC`] bytes because
//! that is the credit the guest gets. Host → guest: data is read from the socket straight into
//! the guest's rx buffers, never buffered here; a peer that stops reading only stalls its own
//! connection.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, shutdown};

/// The receive buffer squib advertises per connection (`buf_alloc`): the most guest data it
/// holds for a host socket that does not read.
pub(crate) const BUF_ALLOC: u32 = 256 << 10;
/// Tell the guest how far we got once this much was forwarded since the last packet it saw:
/// a quarter of its credit, so a sender never runs dry while we keep up.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// An idle connection gives back a grown buffer above this size.
const KEEP_BUF_CAPACITY: usize = 16 << 10;

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    AwaitingResponse,
    /// Data flows.
    Established,
}

/// Control packets the connection owes the guest, sent before any data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owed {
    pub(crate) request: bool,
    pub(crate) response: bool,
    pub(crate) credit_update: bool,
    pub(crate) credit_request: bool,
    /// `shutdown::*` flags not yet sent.
    pub(crate) shutdown: u32,
}

/// Guest data waiting for the host socket, plus the `OK <port>\n` line of a host-initiated
/// connection (not guest data: it does not count towards `fwd_cnt`).
#[derive(Debug, Default)]
struct HostBound {
    bytes: VecDeque<u8>,
    /// Bytes at the front that are squib's own (the OK line).
    own_prefix: usize,
}

/// Why a connection must be reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kill {
    /// The guest sent more than the credit it was given.
    CreditOverrun,
    /// The host socket failed.
    HostError,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) stream: UnixStream,
    /// The host-side vsock port (the guest's `dst_port` when it connected, an allocated one
    /// for host-initiated connections).
    pub(crate) local_port: u32,
    /// The guest-side port.
    pub(crate) peer_port: u32,
    pub(crate) state: State,
    pub(crate) owed: Owed,
    /// In the handler's rx round-robin.
    pub(crate) queued: bool,
    /// epoll said readable and we have not drained the socket since.
    pub(crate) host_readable: bool,
    /// The host socket returned EOF.
    pub(crate) host_eof: bool,
    /// The guest said it will send no more (SHUTDOWN F_SEND).
    pub(crate) guest_done_sending: bool,
    /// The guest said it will receive no more (SHUTDOWN F_RECEIVE).
    pub(crate) guest_done_receiving: bool,
    /// What epoll watches the socket for now.
    pub(crate) interest: EventSet,
    /// The host peer closed both directions: the socket left the epoll set for good.
    pub(crate) hung_up: bool,
    host_bound: HostBound,
    /// Guest data received (ours to forward).
    rx_cnt: Wrapping<u32>,
    /// Guest data forwarded to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` in the last packet the guest got from us.
    fwd_cnt_told: Wrapping<u32>,
    /// Data sent to the guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST was sent for the current stall.
    asked_credit: bool,
    /// When a host-initiated connection started waiting for the guest's RESPONSE.
    pub(crate) since: Instant,
}

impl Connection {
    pub(crate) fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            queued: false,
            host_readable: false,
            host_eof: false,
            guest_done_sending: false,
            guest_done_receiving: false,
            interest: EventSet::empty(),
            hung_up: false,
            host_bound: HostBound::default(),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            asked_credit: false,
            since: Instant::now(),
        }
    }

    /// Takes the guest's view of its receive buffer from any packet it sent.
    pub(crate) fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.asked_credit = false;
        }
    }

    /// Bytes we may still send the guest.
    pub(crate) fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether a CREDIT_REQUEST should go out: data waits and the guest gave no credit.
    pub(crate) fn wants_credit(&mut self) -> bool {
        if self.state == State::Established
            && self.host_readable
            && self.peer_credit() == 0
            && !self.asked_credit
        {
            self.asked_credit = true;
            return true;
        }
        false
    }

    /// Stamps our side of the credit on an outgoing packet.
    pub(crate) fn stamp(&mut self, header: &mut Header) {
        header.buf_alloc = BUF_ALLOC;
        header.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_told = self.fwd_cnt;
    }

    /// Counts `bytes` of data sent to the guest.
    pub(crate) fn sent(&mut self, bytes: u32) {
        self.tx_cnt += bytes;
    }

    /// Whether the guest may send `len` more bytes without overrunning what we hold for it.
    pub(crate) fn accept_guest_bytes(&mut self, len: u32) -> Result<(), Kill> {
        let held = (self.rx_cnt - self.fwd_cnt).0;
        if u64::from(held) + u64::from(len) > u64::from(BUF_ALLOC) {
            return Err(Kill::CreditOverrun);
        }
        self.rx_cnt += len;
        Ok(())
    }

    /// Whether guest data already waits for the socket (new data must queue behind it).
    pub(crate) fn has_host_bound(&self) -> bool {
        !self.host_bound.bytes.is_empty()
    }

    /// Counts guest bytes written straight to the socket.
    pub(crate) fn forwarded(&mut self, bytes: usize) {
        self.fwd_cnt += bytes as u32;
        self.note_progress();
    }

    /// Queues guest bytes the socket did not take.
    pub(crate) fn buffer_guest_bytes(&mut self, bytes: &[u8]) {
        self.host_bound.bytes.extend(bytes);
    }

    /// Queues the `OK <port>\n` line of a host-initiated connection.
    pub(crate) fn queue_ok_line(&mut self) {
        let line = format!("OK {}\n", self.local_port);
        self.host_bound.own_prefix += line.len();
        self.host_bound.bytes.extend(line.as_bytes());
    }

    /// Writes queued bytes to the socket until it would block. `Err` means the socket failed.
    pub(crate) fn flush_host_bound(&mut self) -> io::Result<()> {
        while !self.host_bound.bytes.is_empty() {
            let (front, _) = self.host_bound.bytes.as_slices();
            match (&self.stream).write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.host_bound.bytes.drain(..n);
                    let own = n.min(self.host_bound.own_prefix);
                    self.host_bound.own_prefix -= own;
                    self.fwd_cnt += (n - own) as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.host_bound.bytes.is_empty() && self.host_bound.bytes.capacity() > KEEP_BUF_CAPACITY
        {
            self.host_bound.bytes = VecDeque::new();
        }
        self.note_progress();
        Ok(())
    }

    /// Owes the guest a credit update once it is far enough behind on our progress.
    fn note_progress(&mut self) {
        if (self.fwd_cnt - self.fwd_cnt_told).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
    }

    /// What epoll should watch the socket for: readable while the guest can take data and we
    /// have not seen it readable yet, writable while guest data waits.
    pub(crate) fn wanted_interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.hung_up {
            return events;
        }
        let can_send = self.state == State::Established
            && !self.host_eof
            && !self.guest_done_receiving
            && !self.host_readable
            && self.peer_credit() > 0;
        if can_send {
            events |= EventSet::IN;
        }
        if self.has_host_bound() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Whether the connection has something for the rx queue.
    pub(crate) fn has_rx_work(&self) -> bool {
        let o = &self.owed;
        o.request
            || o.response
            || o.credit_update
            || o.credit_request
            || o.shutdown != 0
            || (self.state == State::Established
                && self.host_readable
                && !self.guest_done_receiving
                && self.peer_credit() > 0)
    }

    /// Both directions are finished: the connection can go (with an RST, as Linux expects).
    pub(crate) fn is_finished(&self) -> bool {
        self.guest_done_sending && self.guest_done_receiving && !self.has_host_bound()
    }

    /// The guest will send nothing more: once its data is out, the host reads EOF.
    pub(crate) fn shut_host_write_if_drained(&self) {
        if self.guest_done_sending && !self.has_host_bound() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Notes that the host closed its sending side: the guest is told (SHUTDOWN F_SEND).
    pub(crate) fn host_closed(&mut self) {
        if !self.host_eof {
            self.host_eof = true;
            self.host_readable = false;
            self.owed.shutdown |= shutdown::SEND;
        }
    }
}
