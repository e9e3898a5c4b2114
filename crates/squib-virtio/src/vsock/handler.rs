//! The vsock device's worker side: the connection multiplexer between the guest's three queues
//! (rx, tx, event) and the host's Unix sockets, in Firecracker's hybrid design.
//!
//! - Host-initiated: a host process connects to `uds_path` and writes `CONNECT <port>\n`; the
//!   handler sends the guest a REQUEST from a freshly allocated host port, and on its RESPONSE
//!   writes `OK <host_port>\n` to the host socket before any data.
//! - Guest-initiated: a REQUEST to CID 2 port `Q` connects (non-blocking) to `<uds_path>_<Q>`;
//!   RESPONSE on success, RST otherwise.
//!
//! Every socket sits in the worker's epoll set, level-triggered, watched only for what the
//! connection can act on ([`Connection::wanted_interest`]): a host peer that stops reading, or a
//! guest that stops granting credit, stalls that connection and nothing else. Connections with
//! something for the guest wait in a round-robin ring, one control packet or one read of host
//! data (one `readv` into up to 64 KiB of rx buffers) per turn, so none starves.
//! Guest-controlled values are hostile: malformed chains and packets are dropped and counted,
//! protocol violations reset the connection, packets for connections that do not exist get an
//! RST — nothing panics and nothing blocks.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;
use vm_memory::volatile_memory::Error as VolatileMemoryError;
use vm_memory::{Bytes, WriteVolatile};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, Kill, State};
use super::device::QUEUE_SIZE;
use super::metrics::VsockMetrics;
use super::packet::{HDR_LEN, HOST_CID, Header, Segments, TYPE_STREAM, op, shutdown};
use crate::GuestMemory;
use crate::queue::QueueError;
use crate::runtime::{DeviceHandler, EventRegistry, Pending, WorkerContext};
use squib_host::guest_io::IOVECS_PER_CALL;

pub(crate) const RX: usize = 0;
pub(crate) const TX: usize = 1;
pub(crate) const EVENT: usize = 2;

/// Largest payload of one packet either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub(crate) const MAX_PAYLOAD: u32 = 64 << 10;
/// Most host data one connection moves into rx buffers per turn of the round-robin, with one
/// `readv` across as many buffers as that takes (16 of Linux's 4 KiB rx buffers).
const RX_BATCH_BYTES: u64 = MAX_PAYLOAD as u64;
/// Most rx chains one such `readv` fills.
const RX_BATCH_CHAINS: usize = 16;
/// Most tx packets served before the worker looks at its other events again.
const TX_PER_TURN: usize = QUEUE_SIZE as usize;
/// Connections and pending host handshakes at once; more are refused.
pub const MAX_CONNECTIONS: usize = 4096;
/// RSTs for dead connections waiting for rx buffers; more are dropped (`killq_resync`).
const MAX_PENDING_RESETS: usize = 1024;
/// Host connections accepted per listener wake-up, so a flood cannot monopolise the worker.
const ACCEPTS_PER_EVENT: usize = 64;
/// `CONNECT <u32>\n` fits.
const HANDSHAKE_MAX: usize = 32;
/// The first port handed to host-initiated connections (as in Firecracker).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

const TOKEN_LISTENER: u32 = 0;
const TOKEN_RESET: u32 = 1;
const TOKEN_TIMEOUTS: u32 = 2;
const FIRST_SLOT_TOKEN: u32 = 3;
/// A host connection must say `CONNECT <port>` within this, and the guest must answer a
/// host-initiated REQUEST within this (Firecracker's connect timeout), or the connection goes.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often pending connections are checked against [`CONNECT_TIMEOUT`] while there are any.
const TIMEOUT_SCAN: Duration = Duration::from_millis(500);

/// A host connection that has not said `CONNECT <port>` yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    since: Instant,
    line: [u8; HANDSHAKE_MAX],
    len: usize,
}

#[derive(Debug)]
enum Slot {
    Free,
    Handshake(Handshake),
    Conn(Connection),
}

#[derive(Debug)]
struct Entry {
    /// Bumped whenever the slot is freed, so stale ring entries are recognised.
    generation: u32,
    slot: Slot,
}

/// What the device needs from its configuration.
#[derive(Debug)]
pub(crate) struct HandlerConfig {
    pub(crate) guest_cid: u64,
    pub(crate) uds_path: PathBuf,
    pub(crate) listener: UnixListener,
    pub(crate) reset_request: EventFd,
    pub(crate) timeouts: TimerFd,
    pub(crate) metrics: Arc<VsockMetrics>,
}

/// The worker-side state of an active vsock device.
#[derive(Debug)]
pub(crate) struct VsockHandler {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    reset_request: EventFd,
    /// Armed while handshakes or host-initiated requests are pending.
    timeouts: TimerFd,
    metrics: Arc<VsockMetrics>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    live: usize,
    by_ports: HashMap<(u32, u32), u32>,
    /// Connections with something for the guest: `(slot, generation)`.
    ready: VecDeque<(u32, u32)>,
    /// RSTs owed for connections that are gone: `(local_port, peer_port)`.
    resets: VecDeque<(u32, u32)>,
    next_local_port: u32,
    transport_reset_pending: bool,
    /// The rx chains after the first that the last batched read filled, in ring order, with the
    /// length each used (allocated once; at most [`RX_BATCH_CHAINS`] - 1 entries).
    rx_batch: Vec<(u16, Segments, u32)>,
}

/// Turns vm-memory's error for a socket I/O into `io::Error`.
fn io_error(error: VolatileMemoryError) -> io::Error {
    match error {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

fn would_block(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl VsockHandler {
    pub(crate) fn new(config: HandlerConfig) -> Self {
        Self {
            guest_cid: config.guest_cid,
            uds_path: config.uds_path,
            listener: config.listener,
            reset_request: config.reset_request,
            timeouts: config.timeouts,
            metrics: config.metrics,
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_ports: HashMap::new(),
            ready: VecDeque::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            transport_reset_pending: false,
            rx_batch: Vec::with_capacity(RX_BATCH_CHAINS),
        }
    }

    /// Sends the guest VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (after a snapshot restore, the
    /// guest's connections are gone) and drops every connection without an RST, as the spec
    /// says the guest does. Waits for an event buffer if the guest has none queued.
    pub(crate) fn transport_reset(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        self.transport_reset_pending = true;
        for index in 0..self.entries.len() {
            if matches!(self.entries[index].slot, Slot::Conn(_)) {
                self.release(index as u32, &mut cx.events);
            }
        }
        self.ready.clear();
        self.resets.clear();
        self.send_pending_events(cx)
    }

    fn send_pending_events(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        while self.transport_reset_pending {
            let Some(queue) = cx.queues.get_mut(EVENT) else {
                return Ok(());
            };
            let Some(chain) = queue.pop(cx.mem)? else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0;
            if let Some(desc) = chain.clone().next()
                && desc.is_write_only()
                && desc.len() >= 4
                && cx
                    .mem
                    .write_slice(&EVENT_TRANSPORT_RESET.to_le_bytes(), desc.addr())
                    .is_ok()
            {
                written = 4;
                self.transport_reset_pending = false;
            } else {
                self.metrics.ev_queue_event_fails(1);
            }
            queue.complete(cx.mem, head, written)?;
            cx.notify_used(EVENT)?;
        }
        Ok(())
    }

    // ---- slots ----

    fn token(index: u32) -> u32 {
        index + FIRST_SLOT_TOKEN
    }

    fn insert(&mut self, slot: Slot) -> u32 {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            self.entries[index as usize].slot = slot;
            return index;
        }
        self.entries.push(Entry {
            generation: 0,
            slot,
        });
        (self.entries.len() - 1) as u32
    }

    /// Frees a slot: deregisters and closes its socket.
    fn release(&mut self, index: u32, events: &mut EventRegistry<'_>) -> Option<Connection> {
        let entry = self.entries.get_mut(index as usize)?;
        let slot = std::mem::replace(&mut entry.slot, Slot::Free);
        entry.generation = entry.generation.wrapping_add(1);
        let conn = match slot {
            Slot::Free => return None,
            Slot::Handshake(h) => {
                let _ = events.remove(h.stream.as_raw_fd());
                None
            }
            Slot::Conn(conn) => {
                let _ = events.remove(conn.stream.as_raw_fd());
                self.by_ports.remove(&(conn.local_port, conn.peer_port));
                Some(conn)
            }
        };
        self.free.push(index);
        self.live -= 1;
        conn
    }

    fn conn_mut(&mut self, index: u32) -> Option<&mut Connection> {
        match self.entries.get_mut(index as usize).map(|e| &mut e.slot) {
            Some(Slot::Conn(conn)) => Some(conn),
            _ => None,
        }
    }

    /// Resets a connection: its socket closes and the guest gets an RST.
    fn kill(&mut self, index: u32, why: &'static str, events: &mut EventRegistry<'_>) {
        if let Some(conn) = self.release(index, events) {
            debug!(
                local_port = conn.local_port,
                peer_port = conn.peer_port,
                why,
                "vsock connection reset"
            );
            self.metrics.conns_killed(1);
            self.queue_reset(conn.local_port, conn.peer_port);
        }
    }

    /// Closes a finished connection with the RST Linux waits for.
    fn finish(&mut self, index: u32, events: &mut EventRegistry<'_>) {
        if let Some(conn) = self.release(index, events) {
            self.metrics.conns_removed(1);
            self.queue_reset(conn.local_port, conn.peer_port);
        }
    }

    fn queue_reset(&mut self, local_port: u32, peer_port: u32) {
        if self.resets.len() >= MAX_PENDING_RESETS {
            self.metrics.killq_resync(1);
            return;
        }
        self.resets.push_back((local_port, peer_port));
    }

    /// Brings the socket's epoll interest in line with the connection's state and queues it for
    /// the rx ring if it has something for the guest; resets it if epoll refuses.
    fn refresh(&mut self, index: u32, events: &mut EventRegistry<'_>) {
        let generation = self.entries.get(index as usize).map_or(0, |e| e.generation);
        let Some(conn) = self.conn_mut(index) else {
            return;
        };
        if conn.wants_credit() {
            conn.owed.credit_request = true;
        }
        let want = conn.wanted_interest();
        let failed = want != conn.interest
            && !conn.hung_up
            && events
                .modify(conn.stream.as_raw_fd(), Self::token(index), want)
                .is_err();
        conn.interest = want;
        if failed {
            self.metrics.conn_event_fails(1);
            self.kill(index, "epoll refused the socket", events);
            return;
        }
        if conn.has_rx_work() && !conn.queued {
            conn.queued = true;
            self.ready.push_back((index, generation));
        }
    }

    // ---- guest → host (tx queue) ----

    /// Serves the tx ring until it is empty, or for [`TX_PER_TURN`] packets (then returns
    /// pending, so host socket events are seen in between), answering on the rx ring as it goes. Driver notifications are off
    /// meanwhile (a kick could not make the packets go any sooner) and back on before the worker
    /// sleeps, with a last look for packets published in between.
    fn process_tx(&mut self, cx: &mut WorkerContext<'_>) -> Result<Pending, QueueError> {
        let mut completed = 0usize;
        let mut pending = Pending::NONE;
        let stop = cx.stop_signal();
        'serve: while !stop.is_set() {
            let Some(queue) = cx.queues.get_mut(TX) else {
                return Ok(pending);
            };
            queue.disable_notification(cx.mem)?;
            while !stop.is_set() {
                if completed == TX_PER_TURN {
                    pending = Pending::queue(TX);
                    break 'serve;
                }
                let Some(queue) = cx.queues.get_mut(TX) else {
                    return Ok(pending);
                };
                let Some(chain) = queue.pop(cx.mem)? else {
                    if cx.rearm(TX)? {
                        continue 'serve;
                    }
                    break 'serve;
                };
                let head = chain.head_index();
                match Segments::collect(chain, cx.mem, false) {
                    Ok(segments) => self.handle_packet(&segments, cx),
                    Err(_) => self.metrics.tx_queue_event_fails(1),
                }
                if let Some(queue) = cx.queues.get_mut(TX) {
                    queue.complete(cx.mem, head, 0)?;
                }
                completed += 1;
                // A credit update the packet earned goes out now, not after the drain: the
                // guest writes its next packets while we forward the rest of these.
                self.fill_rx(cx)?;
            }
        }
        if completed > 0 {
            cx.notify_used(TX)?;
        }
        Ok(pending)
    }

    fn handle_packet(&mut self, segments: &Segments, cx: &mut WorkerContext<'_>) {
        let Some(header) = segments.read_header(cx.mem) else {
            self.metrics.tx_queue_event_fails(1);
            return;
        };
        self.metrics.tx_packets_count(1);
        let payload_room = segments.total() - HDR_LEN as u64;
        if header.len > MAX_PAYLOAD || u64::from(header.len) > payload_room {
            // The length lies about the buffer: nothing in the packet can be trusted.
            self.metrics.tx_queue_event_fails(1);
            return;
        }
        if header.src_cid != self.guest_cid {
            self.metrics.tx_queue_event_fails(1);
            return;
        }
        if header.dst_cid != HOST_CID || header.type_ != TYPE_STREAM {
            self.metrics.tx_queue_event_fails(1);
            if header.op != op::RST {
                self.queue_reset(header.dst_port, header.src_port);
            }
            return;
        }
        let key = (header.dst_port, header.src_port);
        let Some(&index) = self.by_ports.get(&key) else {
            match header.op {
                op::REQUEST => self.guest_connect(&header, &mut cx.events),
                op::RST => {}
                _ => self.queue_reset(header.dst_port, header.src_port),
            }
            return;
        };
        let events = &mut cx.events;
        let Some(conn) = self.conn_mut(index) else {
            return;
        };
        conn.update_peer_credit(&header);
        match header.op {
            op::RESPONSE if conn.state == State::AwaitingResponse => {
                conn.state = State::Established;
                conn.queue_ok_line();
                self.metrics.conns_added(1);
                if self.flush(index, events).is_err() {
                    return;
                }
            }
            op::RST => {
                if let Some(conn) = self.release(index, events) {
                    debug!(
                        conn.local_port,
                        conn.peer_port, "the guest reset a connection"
                    );
                    self.metrics.conns_removed(1);
                }
                return;
            }
            op::SHUTDOWN => {
                conn.guest_done_receiving |= header.flags & shutdown::RECEIVE != 0;
                conn.guest_done_sending |= header.flags & shutdown::SEND != 0;
                conn.shut_host_write_if_drained();
                if conn.is_finished() {
                    self.finish(index, events);
                    return;
                }
            }
            op::RW if conn.state == State::Established && !conn.guest_done_sending => {
                if let Err(kill) = self.forward(index, segments, header.len, cx.mem) {
                    let why = match kill {
                        Kill::CreditOverrun => "the guest overran its credit",
                        Kill::HostError => "the host socket failed",
                    };
                    self.kill(index, why, events);
                    return;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => conn.owed.credit_update = true,
            _ => {
                self.kill(index, "unexpected packet for the connection state", events);
                return;
            }
        }
        self.refresh(index, events);
    }

    /// A guest REQUEST to host port `dst_port`: connect to `<uds_path>_<dst_port>`.
    fn guest_connect(&mut self, header: &Header, events: &mut EventRegistry<'_>) {
        if self.live >= MAX_CONNECTIONS {
            self.queue_reset(header.dst_port, header.src_port);
            return;
        }
        let path = port_path(&self.uds_path, header.dst_port);
        let stream = match squib_host::unix_socket::connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(error) => {
                debug!(%error, port = header.dst_port, "no host listener for a guest connection");
                self.queue_reset(header.dst_port, header.src_port);
                return;
            }
        };
        let mut conn =
            Connection::new(stream, header.dst_port, header.src_port, State::Established);
        conn.update_peer_credit(header);
        conn.owed.response = true;
        let fd = conn.stream.as_raw_fd();
        let index = self.insert(Slot::Conn(conn));
        if events
            .add(fd, Self::token(index), EventSet::empty())
            .is_err()
        {
            self.metrics.conn_event_fails(1);
            self.release(index, events);
            self.queue_reset(header.dst_port, header.src_port);
            return;
        }
        self.by_ports
            .insert((header.dst_port, header.src_port), index);
        self.metrics.conns_added(1);
        self.refresh(index, events);
    }

    /// Forwards `len` payload bytes to the host socket: straight from guest memory while the
    /// socket takes them, into the connection's bounded buffer once it does not.
    fn forward(
        &mut self,
        index: u32,
        segments: &Segments,
        len: u32,
        mem: &GuestMemory,
    ) -> Result<(), Kill> {
        let metrics = Arc::clone(&self.metrics);
        let Some(conn) = self.conn_mut(index) else {
            return Ok(());
        };
        conn.accept_guest_bytes(len)?;
        metrics.tx_bytes_count(u64::from(len));
        let direct = if conn.has_host_bound() {
            0
        } else {
            let stream = &conn.stream;
            let written = segments.for_each_slice(mem, HDR_LEN as u64, u64::from(len), |slice| {
                match (&*stream).write_volatile(slice).map_err(io_error) {
                    Ok(n) => Ok(n),
                    Err(e) if would_block(&e) => Ok(0),
                    Err(e) => Err(e),
                }
            });
            match written {
                Ok(n) => n,
                Err(_) => {
                    metrics.tx_write_fails(1);
                    return Err(Kill::HostError);
                }
            }
        };
        conn.forwarded(direct as usize);
        let rest = u64::from(len) - direct;
        if rest > 0 {
            let _ = segments.for_each_slice(
                mem,
                HDR_LEN as u64 + direct,
                rest,
                |slice| -> Result<usize, ()> {
                    copy_into(conn, slice);
                    Ok(slice.len())
                },
            );
        }
        Ok(())
    }

    /// Writes buffered guest data to the host socket; resets the connection if it fails.
    fn flush(&mut self, index: u32, events: &mut EventRegistry<'_>) -> Result<(), ()> {
        let Some(conn) = self.conn_mut(index) else {
            return Err(());
        };
        if conn.flush_host_bound().is_err() {
            self.metrics.tx_flush_fails(1);
            self.kill(index, "the host socket failed", events);
            return Err(());
        }
        conn.shut_host_write_if_drained();
        if conn.is_finished() {
            self.finish(index, events);
            return Err(());
        }
        Ok(())
    }

    // ---- host → guest (rx queue) ----

    fn fill_rx(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        let mut completed = false;
        loop {
            let reset = self.resets.front().copied();
            let next_conn = self.ready.front().copied();
            if reset.is_none() && next_conn.is_none() {
                break;
            }
            let Some(queue) = cx.queues.get_mut(RX) else {
                return Ok(());
            };
            let Some(chain) = queue.pop(cx.mem)? else {
                // No buffer: the guest's next rx kick resumes.
                break;
            };
            let head = chain.head_index();
            let segments = match Segments::collect(chain, cx.mem, true) {
                Ok(segments) => segments,
                Err(_) => {
                    self.metrics.rx_queue_event_fails(1);
                    queue.complete(cx.mem, head, 0)?;
                    completed = true;
                    continue;
                }
            };
            let used = if let Some((local_port, peer_port)) = reset {
                self.resets.pop_front();
                let header = Header {
                    src_cid: HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: local_port,
                    dst_port: peer_port,
                    type_: TYPE_STREAM,
                    op: op::RST,
                    ..Header::default()
                };
                segments
                    .write_header(cx.mem, &header)
                    .map(|()| HDR_LEN as u32)
            } else if let Some((index, generation)) = next_conn {
                self.ready.pop_front();
                self.conn_packet(index, generation, &segments, cx)
            } else {
                None
            };
            let queue = &mut cx.queues[RX];
            match used {
                Some(len) => {
                    // In ring order: the first chain holds the batch's first bytes.
                    queue.complete(cx.mem, head, len)?;
                    for &(head, _, len) in &self.rx_batch {
                        queue.complete(cx.mem, head, len)?;
                        self.metrics
                            .rx_bytes_count(u64::from(len.saturating_sub(HDR_LEN as u32)));
                    }
                    self.metrics
                        .rx_packets_count(1 + self.rx_batch.len() as u64);
                    completed = true;
                }
                None => queue.undo_pop(),
            }
            self.rx_batch.clear();
        }
        if completed {
            cx.notify_used(RX)?;
        }
        Ok(())
    }

    /// Writes the connection's next packet into `segments`; returns the used length, `None` if
    /// it had nothing to send after all.
    fn conn_packet(
        &mut self,
        index: u32,
        generation: u32,
        segments: &Segments,
        cx: &mut WorkerContext<'_>,
    ) -> Option<u32> {
        if self.entries.get(index as usize)?.generation != generation {
            return None;
        }
        let guest_cid = self.guest_cid;
        let metrics = Arc::clone(&self.metrics);
        // Borrows only `entries`: the batch below fills `rx_batch` beside it.
        let Some(Slot::Conn(conn)) = self.entries.get_mut(index as usize).map(|e| &mut e.slot)
        else {
            return None;
        };
        conn.queued = false;
        let mut header = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            type_: TYPE_STREAM,
            ..Header::default()
        };
        let mut payload = 0u32;
        let mut host_failed = false;
        if conn.owed.request {
            conn.owed.request = false;
            header.op = op::REQUEST;
        } else if conn.owed.response {
            conn.owed.response = false;
            header.op = op::RESPONSE;
        } else {
            if conn.state == State::Established
                && conn.host_readable
                && !conn.guest_done_receiving
                && conn.peer_credit() > 0
            {
                match read_host_data(conn, &header, segments, &mut self.rx_batch, cx) {
                    Ok(n) if n > 0 => {
                        payload = n;
                        header.op = op::RW;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        metrics.rx_read_fails(1);
                        host_failed = true;
                    }
                }
            }
            if header.op == 0 {
                if conn.owed.shutdown != 0 {
                    header.op = op::SHUTDOWN;
                    header.flags = conn.owed.shutdown;
                    conn.owed.shutdown = 0;
                } else if conn.owed.credit_update {
                    header.op = op::CREDIT_UPDATE;
                } else if conn.owed.credit_request {
                    header.op = op::CREDIT_REQUEST;
                }
            }
        }
        if host_failed {
            self.metrics.conn_event_fails(1);
            self.kill(index, "reading the host socket failed", &mut cx.events);
            return None;
        }
        let sent = if header.op == 0 {
            None
        } else {
            conn.owed.credit_update = false;
            conn.owed.credit_request &= header.op != op::CREDIT_REQUEST;
            conn.stamp(&mut header);
            header.len = payload;
            conn.sent(payload);
            segments.write_header(cx.mem, &header)?;
            metrics.rx_bytes_count(u64::from(payload));
            Some(HDR_LEN as u32 + payload)
        };
        self.refresh(index, &mut cx.events);
        sent
    }

    // ---- host sockets ----

    fn accept(&mut self, events: &mut EventRegistry<'_>) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match squib_host::unix_socket::accept_nonblocking(&self.listener) {
                Ok(stream) => stream,
                Err(e) if would_block(&e) => return,
                Err(error) => {
                    self.metrics.muxer_event_fails(1);
                    debug!(%error, "vsock: accepting a host connection failed");
                    return;
                }
            };
            if self.live >= MAX_CONNECTIONS {
                self.metrics.muxer_event_fails(1);
                continue;
            }
            let fd = stream.as_raw_fd();
            let index = self.insert(Slot::Handshake(Handshake {
                stream,
                since: Instant::now(),
                line: [0; HANDSHAKE_MAX],
                len: 0,
            }));
            if events.add(fd, Self::token(index), EventSet::IN).is_err() {
                self.metrics.muxer_event_fails(1);
                self.release(index, events);
                continue;
            }
            self.arm_timeouts();
        }
    }

    /// Reads the `CONNECT <port>\n` line a byte at a time (nothing after it may be consumed: it
    /// is data for the guest), then asks the guest for the connection.
    fn handshake(&mut self, index: u32, events: &mut EventRegistry<'_>) {
        let Some(Slot::Handshake(h)) = self.entries.get_mut(index as usize).map(|e| &mut e.slot)
        else {
            return;
        };
        let port = loop {
            if h.len == HANDSHAKE_MAX {
                break None;
            }
            let mut byte = [0u8; 1];
            match (&h.stream).read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&h.line[..h.len]),
                Ok(_) => {
                    h.line[h.len] = byte[0];
                    h.len += 1;
                }
                Err(e) if would_block(&e) => return,
                Err(_) => break None,
            }
        };
        let Some(port) = port else {
            // A malformed or abandoned handshake: just close it.
            self.release(index, events);
            return;
        };
        let entry = &mut self.entries[index as usize];
        let Slot::Handshake(h) = std::mem::replace(&mut entry.slot, Slot::Free) else {
            return;
        };
        let local_port = self.allocate_local_port(port);
        let mut conn = Connection::new(h.stream, local_port, port, State::AwaitingResponse);
        conn.since = Instant::now();
        conn.owed.request = true;
        // Registered for IN at accept: nothing is read until the guest answers.
        conn.interest = EventSet::IN;
        self.entries[index as usize].slot = Slot::Conn(conn);
        self.by_ports.insert((local_port, port), index);
        self.refresh(index, events);
    }

    /// Arms the timeout scan unless it is armed already.
    fn arm_timeouts(&mut self) {
        if !self.timeouts.is_armed().unwrap_or(false)
            && let Err(error) = self.timeouts.reset(TIMEOUT_SCAN, None)
        {
            debug!(%error, "vsock: cannot arm the connect timeout");
        }
    }

    /// Drops handshakes and host-initiated requests older than [`CONNECT_TIMEOUT`]; re-arms
    /// while any is left.
    fn expire(&mut self, events: &mut EventRegistry<'_>) {
        let _ = self.timeouts.wait();
        let now = Instant::now();
        let mut pending = false;
        for index in 0..self.entries.len() as u32 {
            let (since, handshake) = match &self.entries[index as usize].slot {
                Slot::Handshake(h) => (h.since, true),
                Slot::Conn(c) if c.state == State::AwaitingResponse => (c.since, false),
                _ => continue,
            };
            if now.duration_since(since) < CONNECT_TIMEOUT {
                pending = true;
            } else if handshake {
                self.release(index, events);
            } else {
                self.kill(index, "the guest did not answer in time", events);
            }
        }
        if pending {
            self.arm_timeouts();
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn conn_event(&mut self, index: u32, ready: EventSet, events: &mut EventRegistry<'_>) {
        let Some(conn) = self.conn_mut(index) else {
            return;
        };
        if ready.contains(EventSet::ERROR) {
            self.metrics.conn_event_fails(1);
            self.kill(index, "the host socket reported an error", events);
            return;
        }
        if ready.contains(EventSet::HANG_UP) {
            // Both directions are closed: whatever is buffered cannot go; what the socket
            // still holds is read without epoll's help, until EOF.
            if conn.has_host_bound() {
                self.kill(index, "the host peer hung up with data pending", events);
                return;
            }
            let _ = events.remove(conn.stream.as_raw_fd());
            conn.hung_up = true;
            conn.interest = EventSet::empty();
            conn.host_readable = !conn.host_eof;
        } else if ready.contains(EventSet::IN) && !conn.host_eof {
            conn.host_readable = true;
        }
        if ready.contains(EventSet::OUT) && self.flush(index, events).is_err() {
            return;
        }
        self.refresh(index, events);
    }
}

/// Reads the connection's host data into the rx chain `first` and, while the socket may hold
/// more, into the next chains on the ring (up to [`RX_BATCH_BYTES`] within the guest's credit,
/// [`RX_BATCH_CHAINS`] chains), with one `readv`: Linux posts 4 KiB rx buffers, and one system
/// call per buffer would cost more than the copy. Every chain after `first` that got data gets
/// its RW header here and is left in `batch` for the caller to complete after `first`; chains
/// that got none go back to the ring. Returns the bytes `first` got; 0 when the socket had none
/// (it is then no longer marked readable) or reached EOF (the guest is told).
fn read_host_data(
    conn: &mut Connection,
    template: &Header,
    first: &Segments,
    batch: &mut Vec<(u16, Segments, u32)>,
    cx: &mut WorkerContext<'_>,
) -> io::Result<u32> {
    let mem = cx.mem;
    let budget = u64::from(conn.peer_credit()).min(RX_BATCH_BYTES);
    let first_room = (first.total() - HDR_LEN as u64).min(budget);
    if first_room == 0 {
        return Ok(0);
    }
    // More chains only while the socket may hold more than the first takes.
    let mut gathered = first_room;
    if let Some(queue) = cx.queues.get_mut(RX) {
        while gathered < budget && batch.len() + 1 < RX_BATCH_CHAINS {
            let Some(chain) = queue.pop(mem).ok().flatten() else {
                break;
            };
            let head = chain.head_index();
            let Ok(segments) = Segments::collect(chain, mem, true) else {
                // Left for the next turn, which completes it as malformed.
                queue.undo_pop();
                break;
            };
            let room = (segments.total() - HDR_LEN as u64).min(budget - gathered);
            gathered += room;
            batch.push((head, segments, room as u32));
        }
    }
    // One iovec per buffer: the first chain's, then each gathered chain's, each chain's room
    // trimmed to the iovecs that fit one call.
    let Some(seed) = first.slices(mem, HDR_LEN as u64, first_room).next() else {
        batch_undo(batch, 0, cx);
        return Ok(0);
    };
    let mut iovecs = [seed; IOVECS_PER_CALL];
    let mut count = 0;
    let mut first_cap = 0u64;
    let rooms = std::iter::once((first, first_room, None)).chain(
        batch
            .iter_mut()
            .map(|(_, s, room)| (&*s, u64::from(*room), Some(room))),
    );
    for (segments, room, batch_room) in rooms {
        let mut cap = 0u64;
        for slice in segments.slices(mem, HDR_LEN as u64, room) {
            if count == IOVECS_PER_CALL {
                break;
            }
            cap += slice.len() as u64;
            iovecs[count] = slice;
            count += 1;
        }
        match batch_room {
            Some(batch_room) => *batch_room = cap as u32,
            None => first_cap = cap,
        }
    }
    let read = match squib_host::guest_io::readv_volatile(&conn.stream, &iovecs[..count]) {
        Ok(0) => {
            conn.host_closed();
            0
        }
        Ok(n) => n as u64,
        Err(e) if would_block(&e) => {
            conn.host_readable = false;
            0
        }
        Err(e) => {
            batch_undo(batch, 0, cx);
            return Err(e);
        }
    };
    let first_got = read.min(first_cap);
    let mut left = read - first_got;
    let mut used = 0;
    for (_, segments, room) in batch.iter_mut() {
        let got = left.min(u64::from(*room)) as u32;
        if got == 0 {
            break;
        }
        left -= u64::from(got);
        let mut header = *template;
        header.op = op::RW;
        header.len = got;
        conn.stamp(&mut header);
        conn.sent(got);
        // Inside guest memory and at least a header long: checked by `collect`.
        let _ = segments.write_header(mem, &header);
        *room = HDR_LEN as u32 + got;
        used += 1;
    }
    batch_undo(batch, used, cx);
    Ok(first_got as u32)
}

/// Returns the gathered chains past the first `keep` to the ring.
fn batch_undo(batch: &mut Vec<(u16, Segments, u32)>, keep: usize, cx: &mut WorkerContext<'_>) {
    let extra = batch.len().saturating_sub(keep);
    if extra > 0
        && let Some(queue) = cx.queues.get_mut(RX)
    {
        // At most RX_BATCH_CHAINS, far below u16::MAX.
        queue.undo_pops(extra as u16);
    }
    batch.truncate(keep);
}

/// Copies guest bytes into the connection's host-bound buffer in stack-sized chunks.
fn copy_into(conn: &mut Connection, slice: &crate::GuestSlice<'_>) {
    let mut chunk = [0u8; 4096];
    let mut offset = 0;
    while offset < slice.len() {
        let n = (slice.len() - offset).min(chunk.len());
        let Ok(part) = slice.subslice(offset, n) else {
            return;
        };
        part.copy_to(&mut chunk[..n]);
        conn.buffer_guest_bytes(&chunk[..n]);
        offset += n;
    }
}

/// `<uds_path>_<port>`.
fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut bytes = uds_path.as_os_str().as_bytes().to_vec();
    bytes.extend_from_slice(format!("_{port}").as_bytes());
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes),
    ))
}

/// `CONNECT <port>` (a trailing `\r` tolerated) → the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.parse().ok()
}

impl DeviceHandler for VsockHandler {
    fn register(&mut self, events: &mut EventRegistry<'_>) -> io::Result<()> {
        // Non-blocking since the device bound it (an ioctl the worker's seccomp filter refuses).
        events.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)?;
        events.add(self.reset_request.as_raw_fd(), TOKEN_RESET, EventSet::IN)?;
        events.add(self.timeouts.as_raw_fd(), TOKEN_TIMEOUTS, EventSet::IN)?;
        // After a pause, a new worker (and epoll set) serves the same connections: watch their
        // sockets again, as they were, and check pending ones against the timeout.
        for (index, entry) in self.entries.iter().enumerate() {
            let token = Self::token(index as u32);
            match &entry.slot {
                Slot::Handshake(h) => events.add(h.stream.as_raw_fd(), token, EventSet::IN)?,
                Slot::Conn(c) if !c.hung_up => {
                    events.add(c.stream.as_raw_fd(), token, c.interest)?;
                }
                _ => {}
            }
        }
        self.arm_timeouts();
        Ok(())
    }

    fn process_queue(
        &mut self,
        queue: usize,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        let mut pending = Pending::NONE;
        match queue {
            RX => self.metrics.rx_queue_event_count(1),
            TX => {
                self.metrics.tx_queue_event_count(1);
                pending = self.process_tx(cx)?;
            }
            EVENT => self.send_pending_events(cx)?,
            _ => {}
        }
        self.fill_rx(cx)?;
        Ok(pending)
    }

    fn process_event(
        &mut self,
        token: u32,
        ready: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        match token {
            TOKEN_LISTENER => self.accept(&mut cx.events),
            TOKEN_TIMEOUTS => self.expire(&mut cx.events),
            TOKEN_RESET => {
                let _ = self.reset_request.read();
                self.transport_reset(cx)?;
            }
            token => {
                let index = token - FIRST_SLOT_TOKEN;
                match self.entries.get(index as usize).map(|e| &e.slot) {
                    Some(Slot::Handshake(_)) => self.handshake(index, &mut cx.events),
                    Some(Slot::Conn(_)) => self.conn_event(index, ready, &mut cx.events),
                    _ => {}
                }
            }
        }
        self.fill_rx(cx)?;
        Ok(Pending::NONE)
    }
}
