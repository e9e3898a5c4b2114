//! The virtio-net queue handler: moves frames between the rx/tx queues and the backend, one
//! frame per system call, straight between the backend's descriptor and guest memory.
//!
//! Rx is driven by the backend's descriptor (edge-triggered): on each event the handler reads
//! frames until the backend is empty, the driver has posted no buffers, or the rx limiter
//! refuses. Without buffers it stops reading — the frames wait in the TAP's kernel queue, which
//! is bounded and drops (and counts, in the kernel) only when full — and looks again after
//! [`RX_REFILL_WAIT`] with rx notifications still off; only if the driver has posted nothing by
//! then does it enable them and wait for the kick. A driver that recycles its buffers one at a
//! time while the TAP stays full would otherwise kick for every buffer (an exit each) and get one
//! frame per kick; after the wait the device finds the buffers it recycled meanwhile and fills
//! them in one pass. A frame larger than the buffers the driver posted, or shorter than a
//! header, is dropped and counted, never written partially.
//!
//! Rx follows virtio 1.2 §5.1.6.3/§5.1.6.4: without MRG_RXBUF a frame goes into one chain, which
//! needs only header + 1514 bytes when no guest offload was negotiated (so a 1526-byte buffer
//! receives MTU-sized frames); with MRG_RXBUF it may span several chains, and `num_buffers` says
//! how many. `num_buffers` is written on every frame (1 without MRG_RXBUF).
//!
//! Every chain is hostile: an rx chain with a device-readable descriptor, outside guest memory or
//! too short for the header goes back unused (counted); a tx chain with a device-writable
//! descriptor, outside guest memory, shorter than a header or longer than the largest frame is
//! dropped (counted). Descriptor loops are bounded by the queue (virtio-queue ends a chain after
//! `size` descriptors) and by [`IOVECS_PER_CALL`] segments per frame.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use squib_host::guest_io::IOVECS_PER_CALL;
use squib_host::guest_memory::empty_slice;
use squib_host::uring::RingOp;
use std::time::Duration;

use tracing::{debug, error, warn};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;

use super::handle::{Limiters, Shared};
use super::header::{MAX_OFFLOAD_FRAME, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use super::metrics::{Counter, NetMetrics};
use super::ring_timer::RingTimer;
use super::tap_ring::{SLOTS, TapPath, TapRing};
use crate::queue::{Chain, QueueError, VirtQueue};
use crate::rate_limiter::RateLimiter;
use crate::runtime::{DeviceHandler, EventRegistry, Pending, StopSignal, WorkerContext};
use crate::{GuestMemory, GuestSlice};

/// The receive queue's index.
pub(crate) const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub(crate) const TX_QUEUE: usize = 1;

/// Handler-owned epoll tokens.
const TOKEN_BACKEND: u32 = 0;
const TOKEN_RX_LIMITER: u32 = 1;
const TOKEN_TX_LIMITER: u32 = 2;
const TOKEN_LIMITER_UPDATE: u32 = 3;
const TOKEN_RX_REFILL: u32 = 4;
const TOKEN_TX_STREAM: u32 = 5;

/// How long rx waits for the driver to recycle buffers before it asks for a kick instead. Short
/// against what the TAP's queue holds (1000 frames: 4 ms at 250 K frames/s), long against a
/// polling driver's time per frame.
pub(crate) const RX_REFILL_WAIT: Duration = Duration::from_micros(50);
/// How long tx waits, notifications off, for a streaming driver's next frames once the ring is
/// empty. Well under what the driver's ring holds at a frame per µs or two.
pub(crate) const TX_STREAM_WAIT: Duration = Duration::from_micros(50);

/// Most chains one received frame may span (each needs at least one segment).
const MAX_RX_CHAINS: usize = IOVECS_PER_CALL;
/// Frames moved per call before the worker looks at its other events (the other queue, stop,
/// pause): a guest that keeps one direction busy cannot starve the other.
const BATCH: usize = 256;

/// What the driver negotiated that changes how frames move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several rx chains.
    pub(crate) mergeable: bool,
    /// The largest frame the backend may hand us, header included: it decides how many rx
    /// buffers are gathered before a read.
    pub(crate) rx_frame_max: usize,
}

/// Per-activation state of a virtio-net device.
#[derive(Debug)]
pub(crate) struct NetHandler {
    shared: Arc<Shared>,
    negotiated: Negotiated,
    limiters: Limiters,
    /// Stopped reading the backend until the driver posts rx buffers.
    rx_waiting_for_buffers: bool,
    /// Out of rx buffers, the [`RX_REFILL_WAIT`] found none either: the driver's kick resumes
    /// rx. Cleared by a delivered frame.
    rx_kick_asked: bool,
    /// The rx refill wait.
    rx_timer: RingTimer,
    /// The tx stream wait ([`TX_STREAM_WAIT`]).
    tx_timer: RingTimer,
    /// How transmitted frames reach the backend; a queued frame's tag is its chain's head
    /// and its bytes without the header.
    tx_path: TapPath<(u16, u64)>,
    /// How received frames come from the backend; see [`RxBatch`].
    rx_path: TapPath<RxTag>,
    /// Guest ranges of the chains the rx ring reads into, and the rx batch's size.
    rx_batch: RxBatch,
}

/// How one attempt to receive a frame (or a batch of them) ended.
#[derive(Clone, Copy)]
enum Rx {
    /// A frame of this many bytes (header excluded) went to the guest (for a batch: frames
    /// went, and the backend may have more).
    Delivered(u64),
    /// A frame was dropped (counted); try the next.
    Dropped,
    /// The backend has nothing more.
    BackendEmpty,
    /// The driver posted no usable buffer.
    NoBuffers,
    /// The rx limiter refused; its timer resumes us.
    Throttled,
}

/// A chain the rx ring reads into: its head, its bytes, and how many of its guest ranges
/// [`RxBatch::ranges`] holds.
#[derive(Clone, Copy, Debug, Default)]
struct RxTag {
    head: u16,
    capacity: usize,
    ranges: usize,
}

/// The rx ring's working state (see [`receive_batch`]); its buffers are allocated on first use,
/// once per activation.
#[derive(Debug)]
struct RxBatch {
    /// Per ring slot, the guest ranges of the chain it reads into.
    ranges: Vec<[(GuestAddress, usize); IOVECS_PER_CALL]>,
    /// Reads to ask for next: doubled while a whole batch finds frames, else cut to what the
    /// last one found, so that a lone frame (a request-response exchange) costs one read, not
    /// [`SLOTS`] of which all but one find the TAP empty.
    size: usize,
    /// A frame moved to an earlier chain passes through here.
    scratch: Vec<u8>,
}

impl Default for RxBatch {
    fn default() -> Self {
        Self {
            ranges: Vec::new(),
            size: 1,
            scratch: Vec::new(),
        }
    }
}

impl NetHandler {
    pub(crate) fn new(shared: Arc<Shared>, negotiated: Negotiated) -> Self {
        let limiters = shared.take_limiters();
        Self {
            shared,
            negotiated,
            limiters,
            rx_waiting_for_buffers: false,
            rx_kick_asked: false,
            rx_timer: RingTimer::default(),
            tx_timer: RingTimer::default(),
            tx_path: TapPath::Undecided,
            rx_path: TapPath::Undecided,
            rx_batch: RxBatch::default(),
        }
    }

    /// Applies a pending `update_rate_limiters`, creating a limiter (and watching its timer)
    /// if the interface had none. A failure keeps the previous limits.
    fn apply_limiter_update(&mut self, cx: &mut WorkerContext<'_>) {
        let Some(update) = self.shared.take_limiter_update() else {
            return;
        };
        for (spec, slot, token) in [
            (update.rx, &mut self.limiters.rx, TOKEN_RX_LIMITER),
            (update.tx, &mut self.limiters.tx, TOKEN_TX_LIMITER),
        ] {
            let Some(spec) = spec else { continue };
            let applied = match slot.as_mut() {
                Some(limiter) => limiter.update(spec.bandwidth, spec.ops),
                None => RateLimiter::from_spec(spec).and_then(|limiter| {
                    cx.events.add(limiter.as_raw_fd(), token, EventSet::IN)?;
                    *slot = Some(limiter);
                    Ok(())
                }),
            };
            match applied {
                Ok(()) => debug!(?spec, token, "virtio-net rate limiter updated"),
                Err(error) => error!(%error, ?spec, "virtio-net rate limiter update failed"),
            }
        }
    }

    // ---- receive ----

    /// Receives frames until the backend is empty, the driver has no buffers, the limiter
    /// refuses, a batch is done or the worker must stop; interrupts the driver if it asked.
    fn serve_rx(&mut self, cx: &mut WorkerContext<'_>) -> Result<Pending, QueueError> {
        let mut delivered = false;
        let result = self.drain_rx(cx, &mut delivered);
        if delivered {
            cx.notify_used(RX_QUEUE)?;
        }
        // After a full batch more may wait in the backend, which no new edge will announce.
        Ok(if result? {
            Pending::queue(RX_QUEUE)
        } else {
            Pending::NONE
        })
    }

    /// Returns whether to come back at once (a full batch).
    fn drain_rx(
        &mut self,
        cx: &mut WorkerContext<'_>,
        delivered: &mut bool,
    ) -> Result<bool, QueueError> {
        let mem = cx.mem;
        let stop = cx.stop_signal();
        let Some(queue) = cx.queues.get_mut(RX_QUEUE) else {
            return Ok(false);
        };
        queue.disable_notification(mem)?;
        let mut budget = BATCH;
        while budget > 0 {
            if stop.is_set()
                || self
                    .limiters
                    .rx
                    .as_ref()
                    .is_some_and(RateLimiter::is_blocked)
            {
                return Ok(false);
            }
            // The ring reads ahead of what the limiter has admitted, so a limited interface
            // takes one frame at a time.
            let ring = match self.limiters.rx {
                None => self.rx_path.ring(self.shared.backend.ring_fd(), mem),
                Some(_) => None,
            };
            let batched = match ring {
                Some(ring) => receive_batch(
                    mem,
                    queue,
                    &self.shared.metrics,
                    self.negotiated,
                    ring,
                    &mut self.rx_batch,
                )?,
                None => None,
            };
            let (rx, frames) = match batched {
                Some(outcome) => outcome,
                None => {
                    let rx = receive_frame(
                        mem,
                        queue,
                        &self.shared,
                        self.negotiated,
                        self.limiters.rx.as_mut(),
                    )?;
                    (rx, usize::from(matches!(rx, Rx::Delivered(_))))
                }
            };
            budget = budget.saturating_sub(frames.max(1));
            if frames > 0 {
                *delivered = true;
                self.rx_waiting_for_buffers = false;
                self.rx_kick_asked = false;
            }
            match rx {
                Rx::Delivered(_) | Rx::Dropped => {}
                Rx::BackendEmpty | Rx::Throttled => return Ok(false),
                Rx::NoBuffers => {
                    if !self.rx_waiting_for_buffers {
                        self.shared.metrics.count(Counter::NoRxAvailBuffer);
                        self.rx_waiting_for_buffers = true;
                    }
                    // Already waiting for the timer: a TAP edge changes nothing.
                    if self.rx_timer.is_pending()
                        || (!self.rx_kick_asked && self.rx_timer.arm(RX_REFILL_WAIT))
                    {
                        return Ok(false);
                    }
                    self.rx_kick_asked = true;
                    // Re-check after re-enabling: buffers posted in between would otherwise
                    // never be kicked.
                    if queue.enable_notification(mem)? {
                        queue.disable_notification(mem)?;
                        continue;
                    }
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    // ---- transmit ----

    /// Sends frames until the ring is empty, the limiter refuses, a batch is done or the worker
    /// must stop; interrupts the driver if it asked. Then, if the driver is streaming (this
    /// call sent more than one frame, or the stream wait found one), notifications stay off and
    /// the ring is looked at again after [`TX_STREAM_WAIT`]; else they are re-enabled.
    ///
    /// Unlike virtio-blk's worker, this one does not spin on the ring after a batch. A frame
    /// that does not follow at once usually waits on something else (the host's reply, in a
    /// request-response exchange), and spinning for it takes a core from whoever produces that
    /// reply. Measured on two cores (docs/perf/report-2026-12-04-3.md's notes): the UDP round trip
    /// went from 79.8 µs (1.69× QEMU's) with the adaptive spin to 45–48 µs (0.71–0.93×) without
    /// it. The stream wait costs no CPU, and a request-response exchange (one frame per kick)
    /// never enters it. Without it a driver that sends as fast as it can, but slower than the
    /// worker drains, can kick for nearly every frame (1.2 frames per wake-up measured once in
    /// the guest → host bench on the loaded machine): a VM exit and an epoll wake-up per frame.
    /// docs/perf/net-2026-12-04.md has the before/after runs.
    fn serve_tx(
        &mut self,
        cx: &mut WorkerContext<'_>,
        from_stream_wait: bool,
    ) -> Result<Pending, QueueError> {
        let mut completed = 0;
        let result = self.drain_tx(cx, &mut completed);
        if completed > 0 {
            cx.notify_used(TX_QUEUE)?;
        }
        if result? {
            return Ok(Pending::queue(TX_QUEUE));
        }
        if self
            .limiters
            .tx
            .as_ref()
            .is_some_and(RateLimiter::is_blocked)
        {
            // Notifications stay off: only the timer can make the frame go sooner.
            return Ok(Pending::NONE);
        }
        let streaming = completed > 1 || (from_stream_wait && completed > 0);
        if streaming && self.tx_timer.arm(TX_STREAM_WAIT) {
            return Ok(Pending::NONE);
        }
        // Re-check after re-enabling: a frame queued in between would otherwise wait forever.
        Ok(if cx.rearm(TX_QUEUE)? {
            Pending::queue(TX_QUEUE)
        } else {
            Pending::NONE
        })
    }

    /// Sends up to a batch of frames with notifications off, counting the chains completed;
    /// returns whether to come back at once (a full batch).
    fn drain_tx(
        &mut self,
        cx: &mut WorkerContext<'_>,
        completed: &mut usize,
    ) -> Result<bool, QueueError> {
        let mem = cx.mem;
        let stop = cx.stop_signal();
        let Some(queue) = cx.queues.get_mut(TX_QUEUE) else {
            return Ok(false);
        };
        queue.disable_notification(mem)?;
        let more = self.send_frames(queue, mem, &stop, completed);
        // However the loop ended, what it queued goes now.
        if let TapPath::Batched(ring) = &mut self.tx_path {
            *completed += flush_tx(ring, queue, mem, &self.shared.metrics)?;
        }
        more
    }

    /// The loop of [`drain_tx`](Self::drain_tx): frames go to the batch (flushed whenever it
    /// fills) or straight to the backend.
    fn send_frames(
        &mut self,
        queue: &mut VirtQueue,
        mem: &GuestMemory,
        stop: &StopSignal<'_>,
        completed: &mut usize,
    ) -> Result<bool, QueueError> {
        let metrics = &self.shared.metrics;
        let mut slices = [empty_slice(); IOVECS_PER_CALL];
        let mut segments = [(GuestAddress(0), 0usize); IOVECS_PER_CALL];
        for _ in 0..BATCH {
            if stop.is_set()
                || self
                    .limiters
                    .tx
                    .as_ref()
                    .is_some_and(RateLimiter::is_blocked)
            {
                return Ok(false);
            }
            let mut batch = self.tx_path.ring(self.shared.backend.ring_fd(), mem);
            if let Some(ring) = batch.as_mut().filter(|ring| ring.is_full()) {
                *completed += flush_tx(ring, queue, mem, metrics)?;
            }
            let Some(chain) = queue.pop(mem)? else {
                return Ok(false);
            };
            let head = chain.head_index();
            let frame = match batch {
                Some(_) => gather_addresses(mem, chain, Access::DeviceReads, &mut segments),
                None => gather(mem, chain, Access::DeviceReads, &mut slices),
            }
            .filter(|&(_, len)| (VNET_HDR_LEN..=VNET_HDR_LEN + MAX_OFFLOAD_FRAME).contains(&len));
            let Some((count, len)) = frame else {
                metrics.count(Counter::TxMalformed);
                queue.complete(mem, head, 0)?;
                *completed += 1;
                continue;
            };
            let bytes = (len - VNET_HDR_LEN) as u64;
            if let Some(limiter) = self.limiters.tx.as_mut()
                && !admit(limiter, bytes)
            {
                queue.undo_pop();
                metrics.count(Counter::TxThrottled);
                return Ok(false);
            }
            let sent = match batch {
                // Completed (and counted) when the batch is flushed.
                Some(ring) => match ring.push(
                    (head, bytes),
                    RingOp::Write { offset: 0 },
                    &segments[..count],
                ) {
                    Ok(()) => continue,
                    Err(error) => Err(io::Error::other(error)),
                },
                None => self.shared.backend.write_frame(&slices[..count]),
            };
            count_tx(metrics, bytes, sent.map(drop).map_err(|e| e.kind()));
            queue.complete(mem, head, 0)?;
            *completed += 1;
        }
        Ok(true)
    }
}

impl DeviceHandler for NetHandler {
    fn register(&mut self, events: &mut EventRegistry<'_>) -> io::Result<()> {
        // Edge-triggered: the handler reads until the TAP is empty, or stops on purpose (no
        // buffers, throttled) and is resumed by the rx kick or the limiter's timer.
        events.add(
            self.shared.backend.raw_fd(),
            TOKEN_BACKEND,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )?;
        events.add(
            self.shared.limiter_event().as_raw_fd(),
            TOKEN_LIMITER_UPDATE,
            EventSet::IN,
        )?;
        for (limiter, token) in [
            (&self.limiters.rx, TOKEN_RX_LIMITER),
            (&self.limiters.tx, TOKEN_TX_LIMITER),
        ] {
            if let Some(limiter) = limiter {
                events.add(limiter.as_raw_fd(), token, EventSet::IN)?;
            }
        }
        self.rx_timer.register(events, TOKEN_RX_REFILL)?;
        self.tx_timer.register(events, TOKEN_TX_STREAM)?;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        let metrics = &self.shared.metrics;
        match index {
            RX_QUEUE => {
                metrics.count(Counter::RxQueueEvent);
                self.serve_rx(cx)
            }
            TX_QUEUE => {
                metrics.count(Counter::TxQueueEvent);
                self.serve_tx(cx, false)
            }
            other => {
                warn!(
                    queue = other,
                    "notification for a queue virtio-net does not have"
                );
                Ok(Pending::NONE)
            }
        }
    }

    fn process_event(
        &mut self,
        token: u32,
        _events: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        match token {
            TOKEN_BACKEND => {
                self.shared.metrics.count(Counter::RxTapEvent);
                self.serve_rx(cx)
            }
            TOKEN_RX_LIMITER => {
                if let Some(limiter) = self.limiters.rx.as_mut() {
                    on_timer(limiter);
                }
                self.shared.metrics.count(Counter::RxLimiterEvent);
                self.serve_rx(cx)
            }
            TOKEN_TX_LIMITER => {
                if let Some(limiter) = self.limiters.tx.as_mut() {
                    on_timer(limiter);
                }
                self.shared.metrics.count(Counter::TxLimiterEvent);
                self.serve_tx(cx, false)
            }
            TOKEN_RX_REFILL => {
                if !self.rx_timer.expired() {
                    return Ok(Pending::NONE);
                }
                // Notifications were off meanwhile: look at the ring whatever it says, and ask
                // for a kick if it is still empty.
                self.rx_kick_asked = true;
                self.serve_rx(cx)
            }
            TOKEN_TX_STREAM => {
                if !self.tx_timer.expired() {
                    return Ok(Pending::NONE);
                }
                self.serve_tx(cx, true)
            }
            TOKEN_LIMITER_UPDATE => {
                let _ = self.shared.limiter_event().read();
                self.apply_limiter_update(cx);
                // A lifted limit lets waiting frames go at once.
                Ok(Pending::queue(RX_QUEUE) | Pending::queue(TX_QUEUE))
            }
            other => {
                warn!(
                    token = other,
                    "unexpected epoll token in the virtio-net worker"
                );
                Ok(Pending::NONE)
            }
        }
    }
}

impl Drop for NetHandler {
    fn drop(&mut self) {
        // The buckets belong to the interface, not to one activation.
        self.shared
            .park_limiters(std::mem::take(&mut self.limiters));
    }
}

/// Receives up to [`RxBatch::size`] frames with one system call, each read into a chain of its
/// own that can hold the largest frame the backend may hand us (so a frame never spans chains:
/// `num_buffers` is 1). Returns how it ended and how many frames went to the guest, or `None`
/// when the next chain cannot take part (too small for a whole frame, a header split across
/// buffers, malformed, or no chain at all): [`receive_frame`] deals with it.
///
/// Reads run in order, but one may find the TAP empty and a later one find a frame that
/// arrived meanwhile. Frames are then moved down to the earliest chains, so the chains left
/// unused are always the last ones popped and go back to the ring (`undo_pops`).
fn receive_batch(
    mem: &GuestMemory,
    queue: &mut VirtQueue,
    metrics: &NetMetrics,
    negotiated: Negotiated,
    ring: &mut TapRing<RxTag>,
    batch: &mut RxBatch,
) -> Result<Option<(Rx, usize)>, QueueError> {
    if batch.ranges.len() < SLOTS {
        batch.ranges = vec![[(GuestAddress(0), 0); IOVECS_PER_CALL]; SLOTS];
        batch.scratch = vec![0; negotiated.rx_frame_max];
    }
    let want = batch.size.clamp(1, SLOTS);
    while ring.queued() < want {
        let chain = match queue.pop(mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => break,
            Err(error) => {
                // The ring is broken and the device will need a reset: run what was queued, so
                // that no read outlives this call, and count the frames it read as dropped.
                for &(_, result) in ring.run() {
                    if result.is_ok() {
                        metrics.count(Counter::RxFails);
                    }
                }
                return Err(error);
            }
        };
        let head = chain.head_index();
        let ranges = &mut batch.ranges[ring.queued()];
        let fits = gather_addresses(mem, chain, Access::DeviceWrites, ranges).filter(
            |&(count, capacity)| {
                capacity >= negotiated.rx_frame_max && count > 0 && ranges[0].1 >= VNET_HDR_LEN
            },
        );
        let pushed = fits.is_some_and(|(count, capacity)| {
            let tag = RxTag {
                head,
                capacity,
                ranges: count,
            };
            ring.push(tag, RingOp::Read { offset: 0 }, &ranges[..count])
                .is_ok()
        });
        if !pushed {
            queue.undo_pop();
            break;
        }
    }
    if ring.queued() == 0 {
        return Ok(None);
    }
    let done = ring.run();
    let (mut filled, mut empty, mut bytes) = (0usize, false, 0u64);
    for (k, &(tag, result)) in done.iter().enumerate() {
        match result {
            Ok(len) if (VNET_HDR_LEN..=tag.capacity).contains(&len) => {
                let into = done[filled].0;
                let (from, to) = (
                    &batch.ranges[k][..tag.ranges],
                    &batch.ranges[filled][..into.ranges],
                );
                if filled != k && !move_frame(mem, from, to, len, &mut batch.scratch) {
                    metrics.count(Counter::RxFails);
                    continue;
                }
                // The header lies in the first range (checked when it was queued).
                let num_buffers = to[0].0.unchecked_add(NUM_BUFFERS_OFFSET as u64);
                let _ = mem.write_obj(1u16.to_le(), num_buffers);
                // `len` <= capacity, at most one frame's bytes.
                let len_u32 = u32::try_from(len).unwrap_or(u32::MAX);
                if let Err(error) = queue.complete(mem, into.head, len_u32) {
                    // The used ring broke: this frame and the later ones are dropped.
                    for _ in done[k..].iter().filter(|(_, result)| result.is_ok()) {
                        metrics.count(Counter::RxFails);
                    }
                    return Err(error);
                }
                let frame = (len - VNET_HDR_LEN) as u64;
                metrics.rx_delivered(frame);
                bytes += frame;
                filled += 1;
            }
            Ok(len) => {
                metrics.count(Counter::RxFails);
                debug!(
                    len,
                    capacity = tag.capacity,
                    "virtio-net: dropped a frame that does not fit the rx buffers"
                );
            }
            Err(io::ErrorKind::WouldBlock) => empty = true,
            Err(kind) => {
                metrics.count(Counter::TapReadFails);
                warn!(%kind, "virtio-net: reading the TAP failed");
            }
        }
    }
    // `done` holds at most SLOTS = 32 requests.
    queue.undo_pops((done.len() - filled) as u16);
    batch.size = if filled == done.len() {
        (done.len() * 2).min(SLOTS)
    } else {
        filled.max(1)
    };
    let rx = if empty {
        Rx::BackendEmpty
    } else if filled > 0 {
        Rx::Delivered(bytes)
    } else {
        Rx::Dropped
    };
    Ok(Some((rx, filled)))
}

/// Copies a `len`-byte frame from the guest ranges `from` to `to` through `scratch`; false if
/// either side is too short or outside guest memory.
fn move_frame(
    mem: &GuestMemory,
    from: &[(GuestAddress, usize)],
    to: &[(GuestAddress, usize)],
    len: usize,
    scratch: &mut [u8],
) -> bool {
    let Some(frame) = scratch.get_mut(..len) else {
        return false;
    };
    let mut done = 0;
    for &(at, n) in from {
        let n = n.min(len - done);
        if mem.read_slice(&mut frame[done..done + n], at).is_err() {
            return false;
        }
        done += n;
    }
    if done < len {
        return false;
    }
    done = 0;
    for &(at, n) in to {
        let n = n.min(len - done);
        if mem.write_slice(&frame[done..done + n], at).is_err() {
            return false;
        }
        done += n;
    }
    done == len
}

/// Receives one frame into the next rx chain(s).
fn receive_frame(
    mem: &GuestMemory,
    queue: &mut VirtQueue,
    shared: &Shared,
    negotiated: Negotiated,
    limiter: Option<&mut RateLimiter>,
) -> Result<Rx, QueueError> {
    let metrics = &shared.metrics;
    let mut slices = [empty_slice(); IOVECS_PER_CALL];
    // (head, capacity) of each gathered chain.
    let mut chains = [(0u16, 0usize); MAX_RX_CHAINS];
    let (mut nchains, mut nslices, mut total) = (0usize, 0usize, 0usize);
    while total < negotiated.rx_frame_max && nchains < MAX_RX_CHAINS && nslices < IOVECS_PER_CALL {
        let Some(chain) = queue.pop(mem)? else { break };
        let head = chain.head_index();
        let min_len = if nchains == 0 { VNET_HDR_LEN } else { 1 };
        match gather(mem, chain, Access::DeviceWrites, &mut slices[nslices..])
            .filter(|&(_, len)| len >= min_len)
        {
            Some((count, len)) => {
                chains[nchains] = (head, len);
                nchains += 1;
                nslices += count;
                total += len;
            }
            None if nchains == 0 => {
                // Give it back unused: it is first in line, so nothing popped is skipped.
                metrics.count(Counter::RxMalformed);
                queue.complete(mem, head, 0)?;
            }
            None => {
                // Leave it at the head of the ring; the next frame returns it.
                queue.undo_pop();
                break;
            }
        }
        if !negotiated.mergeable {
            break;
        }
    }
    if nchains == 0 {
        return Ok(Rx::NoBuffers);
    }
    let popped = nchains as u16;
    if let Some(limiter) = limiter {
        // One op and one byte now; the frame's other bytes are charged once its size is known.
        if !admit(limiter, 1) {
            queue.undo_pops(popped);
            metrics.count(Counter::RxThrottled);
            return Ok(Rx::Throttled);
        }
        return read_into(
            mem,
            queue,
            shared,
            &slices[..nslices],
            &chains[..nchains],
            total,
        )
        .inspect(|&rx| {
            if let Rx::Delivered(bytes) = rx {
                limiter.charge(bytes.saturating_sub(1));
            }
        });
    }
    read_into(
        mem,
        queue,
        shared,
        &slices[..nslices],
        &chains[..nchains],
        total,
    )
}

/// Reads one frame from the backend into the gathered chains and completes the ones it used;
/// the others go back to the ring.
fn read_into(
    mem: &GuestMemory,
    queue: &mut VirtQueue,
    shared: &Shared,
    slices: &[GuestSlice<'_>],
    chains: &[(u16, usize)],
    capacity: usize,
) -> Result<Rx, QueueError> {
    let metrics = &shared.metrics;
    let popped = chains.len() as u16;
    let len = match shared.backend.read_frame(slices) {
        Ok(len) => len,
        Err(error) => {
            queue.undo_pops(popped);
            return Ok(match error.kind() {
                io::ErrorKind::WouldBlock => Rx::BackendEmpty,
                io::ErrorKind::Interrupted => Rx::Dropped,
                _ => {
                    metrics.count(Counter::TapReadFails);
                    warn!(%error, "virtio-net: reading the TAP failed");
                    Rx::BackendEmpty
                }
            });
        }
    };
    if len > capacity || len < VNET_HDR_LEN {
        queue.undo_pops(popped);
        metrics.count(Counter::RxFails);
        debug!(
            len,
            capacity, "virtio-net: dropped a frame that does not fit the rx buffers"
        );
        return Ok(Rx::Dropped);
    }
    // How many chains the frame fills.
    let mut left = len;
    let mut used = 0;
    for &(_, cap) in chains {
        used += 1;
        if left <= cap {
            break;
        }
        left -= cap;
    }
    // `used` <= MAX_RX_CHAINS = 64.
    write_at(slices, NUM_BUFFERS_OFFSET, &(used as u16).to_le_bytes());
    queue.undo_pops(popped - used as u16);
    let mut left = len;
    for &(head, cap) in &chains[..used] {
        let this = left.min(cap);
        left -= this;
        // `this` <= len, which the kernel returned as an `isize`-sized count of one frame.
        queue.complete(mem, head, u32::try_from(this).unwrap_or(u32::MAX))?;
    }
    let bytes = (len - VNET_HDR_LEN) as u64;
    metrics.rx_delivered(bytes);
    Ok(Rx::Delivered(bytes))
}

/// Writes `bytes` at byte `offset` of the frame laid over `slices`; what does not fit is lost
/// (as a TAP truncates). Also the test TAP's (`testing::FakeTap`).
pub(crate) fn write_at(slices: &[GuestSlice<'_>], mut offset: usize, mut bytes: &[u8]) {
    for slice in slices {
        if bytes.is_empty() {
            return;
        }
        if offset >= slice.len() {
            offset -= slice.len();
            continue;
        }
        let n = bytes.len().min(slice.len() - offset);
        // In bounds by construction: `offset + n <= slice.len()`.
        let _ = slice.write_slice(&bytes[..n], offset);
        bytes = &bytes[n..];
        offset = 0;
    }
}

/// Which descriptors a chain must consist of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    DeviceReads,
    DeviceWrites,
}

/// Writes the frames queued on `ring` (one system call), counts each as sent or failed, and
/// completes their chains in the order they were queued; returns how many it completed.
fn flush_tx(
    ring: &mut TapRing<(u16, u64)>,
    queue: &mut VirtQueue,
    mem: &GuestMemory,
    metrics: &NetMetrics,
) -> Result<usize, QueueError> {
    let done = ring.run();
    for &((head, bytes), result) in done {
        count_tx(metrics, bytes, result.map(drop));
        queue.complete(mem, head, 0)?;
    }
    Ok(done.len())
}

/// Counts one transmitted frame of `bytes` (header excluded): sent, or refused by the TAP.
fn count_tx(metrics: &NetMetrics, bytes: u64, sent: Result<(), io::ErrorKind>) {
    match sent {
        Ok(()) => metrics.tx_sent(bytes),
        Err(kind) => {
            debug!(%kind, "virtio-net: the TAP refused a frame");
            metrics.count(Counter::TapWriteFails);
            metrics.count(Counter::TxFails);
        }
    }
}

/// Walks the chain's buffers, each split where guest memory regions end, handing `each` every
/// piece's guest address and host slice; returns the bytes walked, or `None` when a descriptor
/// has the wrong direction or lies outside guest memory, the chain breaks a ring rule, or `each`
/// refuses (its output is full).
fn walk_buffers<'m>(
    mem: &'m GuestMemory,
    mut chain: Chain<'m>,
    access: Access,
    mut each: impl FnMut(GuestAddress, GuestSlice<'m>) -> Option<()>,
) -> Option<usize> {
    let mut total = 0usize;
    for desc in chain.by_ref() {
        if desc.is_write_only() != (access == Access::DeviceWrites) {
            return None;
        }
        let mut at = desc.addr();
        for slice in mem.get_slices(desc.addr(), desc.len() as usize) {
            let slice = slice.ok()?;
            each(at, slice)?;
            at = at.checked_add(slice.len() as u64)?;
            total = total.checked_add(slice.len())?;
        }
    }
    // A chain the walker cut short (a loop, a bad index or indirect table) is malformed.
    if chain.error().is_some() {
        return None;
    }
    Some(total)
}

/// The chain's buffers as host slices in `out`: `(slices, bytes)`, or `None` as for
/// [`walk_buffers`].
fn gather<'m>(
    mem: &'m GuestMemory,
    chain: Chain<'m>,
    access: Access,
    out: &mut [GuestSlice<'m>],
) -> Option<(usize, usize)> {
    let mut count = 0;
    let total = walk_buffers(mem, chain, access, |_, slice| {
        *out.get_mut(count)? = slice;
        count += 1;
        Some(())
    })?;
    Some((count, total))
}

/// The chain's buffers as guest ranges in `out`, each inside one memory region (what an
/// io_uring resolves itself): `(ranges, bytes)`, or `None` as for [`walk_buffers`].
fn gather_addresses(
    mem: &GuestMemory,
    chain: Chain<'_>,
    access: Access,
    out: &mut [(GuestAddress, usize)],
) -> Option<(usize, usize)> {
    let mut count = 0;
    let total = walk_buffers(mem, chain, access, |at, slice| {
        *out.get_mut(count)? = (at, slice.len());
        count += 1;
        Some(())
    })?;
    Some((count, total))
}

/// Charges `limiter` for one operation moving `bytes`; false when it must wait. If the timer
/// cannot be armed the frame goes through rather than being stranded.
fn admit(limiter: &mut RateLimiter, bytes: u64) -> bool {
    match limiter.consume(bytes) {
        Ok(Ok(())) => true,
        Ok(Err(_throttled)) => false,
        Err(error) => {
            error!(%error, "virtio-net rate limiter cannot arm its timer; not throttling");
            true
        }
    }
}

fn on_timer(limiter: &mut RateLimiter) {
    if let Err(error) = limiter.on_timer() {
        error!(%error, "virtio-net rate limiter timer failed");
    }
}
