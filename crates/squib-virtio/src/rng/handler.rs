//! Serving entropy requests: every chain is a list of device-writable buffers, which the handler
//! fills from `getrandom(2)` in place (no intermediate buffer) up to [`MAX_REQUEST_BYTES`].
//!
//! A chain with a device-readable buffer or memory outside the guest's is completed with 0
//! bytes and counted (`entropy_event_fails`). Throttling works as for virtio-blk: a request the
//! limiter refuses goes back on the ring (`undo_pop`) and the queue waits for the limiter's timer.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{error, warn};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;

use super::metrics::RngMetrics;
use crate::GuestMemory;
use crate::queue::{Chain, QueueError};
use crate::rate_limiter::RateLimiter;
use crate::runtime::{DeviceHandler, EventRegistry, Pending, WorkerContext};

/// The most bytes one request gets: bounds the worker's time per request (and the limiter's
/// charge) whatever length the guest claims. The used length tells the driver how many it got.
pub(crate) const MAX_REQUEST_BYTES: u32 = 64 << 10;

const TOKEN_LIMITER: u32 = 0;

/// The worker-side state of an active entropy device.
#[derive(Debug)]
pub(crate) struct RngHandler {
    metrics: Arc<RngMetrics>,
    limiter: Option<RateLimiter>,
    /// Where the limiter goes back when the handler stops.
    park: Arc<Mutex<Option<RateLimiter>>>,
}

impl RngHandler {
    pub(crate) fn new(
        metrics: Arc<RngMetrics>,
        limiter: Option<RateLimiter>,
        park: Arc<Mutex<Option<RateLimiter>>>,
    ) -> Self {
        Self {
            metrics,
            limiter,
            park,
        }
    }

    /// Serves every request the limiter allows, then interrupts the driver.
    fn drain(&mut self, cx: &mut WorkerContext<'_>) -> Result<(), QueueError> {
        if self.limiter.as_ref().is_some_and(RateLimiter::is_blocked) {
            return Ok(());
        }
        let mut completed = false;
        let stop = cx.stop_signal();
        while let Some(queue) = cx.queues.first_mut() {
            if stop.is_set() {
                break;
            }
            let Some(chain) = queue.pop(cx.mem)? else {
                break;
            };
            let head = chain.head_index();
            let request = writable_len(chain.clone(), cx.mem);
            if let (Some(limiter), Ok(bytes)) = (self.limiter.as_mut(), request)
                && !admit(limiter, u64::from(bytes))
            {
                queue.undo_pop();
                self.metrics.entropy_rate_limiter_throttled(1);
                break;
            }
            let used = match request {
                Ok(bytes) => self.fill(chain, bytes, cx.mem),
                Err(()) => {
                    self.metrics.entropy_event_fails(1);
                    0
                }
            };
            queue.complete(cx.mem, head, used)?;
            completed = true;
        }
        if completed {
            cx.notify_used(0)?;
        }
        Ok(())
    }

    /// Writes up to `budget` random bytes into the chain's buffers, in order; returns how many.
    fn fill(&self, chain: Chain<'_>, budget: u32, mem: &GuestMemory) -> u32 {
        let mut filled = 0u32;
        for desc in chain {
            let want = desc.len().min(budget - filled);
            if want == 0 {
                continue;
            }
            let done = match mem.get_slice(desc.addr(), want as usize) {
                Ok(slice) => fill_all(&slice),
                Err(_) => Err(io::ErrorKind::InvalidInput.into()),
            };
            match done {
                Ok(()) => filled += want,
                Err(error) => {
                    self.metrics.host_rng_fails(1);
                    warn!(%error, "getrandom failed; completing the entropy request short");
                    break;
                }
            }
            if filled == budget {
                break;
            }
        }
        self.metrics.entropy_event_count(1);
        self.metrics.entropy_bytes(u64::from(filled));
        filled
    }
}

/// Fills `slice` completely, retrying short reads and `EINTR`.
fn fill_all(slice: &crate::GuestSlice<'_>) -> io::Result<()> {
    let mut done = 0;
    while done < slice.len() {
        let rest = slice
            .subslice(done, slice.len() - done)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match squib_host::random::fill_volatile(&rest) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The bytes a well-formed request asks for, capped at [`MAX_REQUEST_BYTES`]; `Err` when a
/// buffer is device-readable or lies outside guest memory.
fn writable_len(mut chain: Chain<'_>, mem: &GuestMemory) -> Result<u32, ()> {
    let mut total = 0u32;
    for desc in chain.by_ref() {
        if !desc.is_write_only() {
            return Err(());
        }
        if desc.len() > 0 && !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(());
        }
        total = total.saturating_add(desc.len());
    }
    if chain.error().is_some() {
        return Err(());
    }
    Ok(total.min(MAX_REQUEST_BYTES))
}

/// Charges one request of `bytes`; false when it must wait for the timer. A timer that cannot
/// be armed lets the request through rather than strand the queue.
fn admit(limiter: &mut RateLimiter, bytes: u64) -> bool {
    match limiter.consume(bytes) {
        Ok(Ok(())) => true,
        Ok(Err(_throttled)) => false,
        Err(error) => {
            error!(%error, "virtio-rng rate limiter cannot arm its timer; not throttling");
            true
        }
    }
}

impl DeviceHandler for RngHandler {
    fn register(&mut self, fds: &mut EventRegistry<'_>) -> io::Result<()> {
        if let Some(limiter) = &self.limiter {
            fds.add(limiter.as_raw_fd(), TOKEN_LIMITER, EventSet::IN)?;
        }
        Ok(())
    }

    fn process_queue(
        &mut self,
        _queue: usize,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        self.drain(cx)?;
        Ok(Pending::NONE)
    }

    fn process_event(
        &mut self,
        token: u32,
        _events: EventSet,
        cx: &mut WorkerContext<'_>,
    ) -> Result<Pending, QueueError> {
        if token != TOKEN_LIMITER {
            return Ok(Pending::NONE);
        }
        if let Some(limiter) = self.limiter.as_mut() {
            self.metrics.rate_limiter_event_count(1);
            if let Err(error) = limiter.on_timer() {
                error!(%error, "virtio-rng rate limiter timer failed");
            }
        }
        self.drain(cx)?;
        Ok(Pending::NONE)
    }
}

impl Drop for RngHandler {
    fn drop(&mut self) {
        *self.park.lock().unwrap_or_else(PoisonError::into_inner) = self.limiter.take();
    }
}
