//! How long the virtio-blk worker busy-polls the avail ring after serving a batch, before it
//! re-enables guest notifications and sleeps in `epoll_wait`.
//!
//! Sleeping costs every request that arrives afterwards a guest notification and a cross-CPU
//! wake-up of the worker (tens of µs in a nested VM); polling costs host CPU for as long as it
//! spins. Polling only pays when the driver submits again soon after a completion, so the window
//! adapts, doubling or halving between [`POLL_MIN`] and [`POLL_MAX`] — QEMU's
//! `poll-grow`/`poll-shrink` rule:
//!
//! - polling found a request: grow (on a hit the spin ends as soon as the request is there, so
//!   a longer window costs nothing more while the driver keeps up);
//! - the window expired empty and the worker woke for the next request within
//!   [`POLL_MAX`] + [`WAKE_UP_ALLOWANCE`] of the window's start: grow, a longer window would
//!   probably have caught it;
//! - the next request came later than that: shrink, polling was wasted.
//!
//! The time to the next request can only be measured to the worker's wake-up, so it includes
//! the wake-up latency itself (the kick's eventfd and the scheduler waking the worker: tens of
//! µs on a nested VM). Compared with [`POLL_MAX`] alone, a driver that resubmits within the
//! window looked late after any miss: the window shrank, which made the next miss certain, and
//! it stayed at the floor with a kick and a wake-up per batch (the device-model bench's wake-ups
//! after a miss came 32–64 µs after the window's start, and its QD 32 time per request
//! depended on which state the window fell into). [`WAKE_UP_ALLOWANCE`] keeps the wake-up out of the
//! comparison. Unlike QEMU the window never drops to zero: where the wake-up alone takes longer
//! than that (it can on a loaded nested VM) a window at zero could never grow back, while the
//! floor keeps hits possible for a driver that resubmits at once. A driver that never does (an
//! idle guest) costs at most [`POLL_MIN`] of spinning per batch; one that resubmits just too late
//! for a full window costs at most [`POLL_MAX`].

use std::time::Duration;

/// The longest the worker spins after a batch: QEMU's default `poll-max-ns` for an iothread.
pub(crate) const POLL_MAX: Duration = Duration::from_micros(32);
/// The shortest window: what a driver that does not resubmit quickly costs per batch.
pub(crate) const POLL_MIN: Duration = Duration::from_micros(4);
/// How much of the time to a missed request is allowed to be the worker's own wake-up latency.
pub(crate) const WAKE_UP_ALLOWANCE: Duration = POLL_MAX;

/// The adaptive polling window of one worker.
#[derive(Debug)]
pub(crate) struct PollWindow {
    window: Duration,
}

impl PollWindow {
    /// A window starting at its maximum: the first batches tell which way to go.
    pub(crate) fn new() -> Self {
        Self { window: POLL_MAX }
    }

    /// How long to poll after the next batch.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Polling found a request before the window expired.
    pub(crate) fn hit(&mut self) {
        self.grow();
    }

    /// The window expired empty and the worker slept; the driver's next notification woke it
    /// `since_poll_start` after the window began (its wake-up latency included).
    pub(crate) fn woke_after_miss(&mut self, since_poll_start: Duration) {
        if since_poll_start <= POLL_MAX + WAKE_UP_ALLOWANCE {
            self.grow();
        } else {
            self.window = (self.window / 2).max(POLL_MIN);
        }
    }

    fn grow(&mut self) {
        self.window = (self.window * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: Duration = Duration::from_millis(1);

    #[test]
    fn late_requests_shrink_the_window_to_the_floor_and_hits_grow_it_back() {
        let mut poll = PollWindow::new();
        assert_eq!(poll.window(), POLL_MAX);
        for _ in 0..10 {
            poll.woke_after_miss(LATE);
        }
        assert_eq!(poll.window(), POLL_MIN);
        poll.hit();
        assert_eq!(poll.window(), POLL_MIN * 2);
        for _ in 0..10 {
            poll.hit();
        }
        assert_eq!(poll.window(), POLL_MAX);
    }

    #[test]
    fn a_request_just_after_the_window_grows_it() {
        let mut poll = PollWindow::new();
        poll.woke_after_miss(LATE);
        poll.woke_after_miss(LATE);
        assert_eq!(poll.window(), POLL_MAX / 4);
        poll.woke_after_miss(POLL_MAX);
        assert_eq!(poll.window(), POLL_MAX / 2);
    }

    #[test]
    fn a_wake_up_that_only_our_own_latency_made_late_grows_the_window() {
        let mut poll = PollWindow::new();
        poll.woke_after_miss(LATE);
        poll.woke_after_miss(LATE);
        // The driver kicked within POLL_MAX; the worker took a while to wake.
        poll.woke_after_miss(POLL_MAX + WAKE_UP_ALLOWANCE);
        assert_eq!(poll.window(), POLL_MAX / 2);
        poll.woke_after_miss(POLL_MAX + WAKE_UP_ALLOWANCE + Duration::from_micros(1));
        assert_eq!(poll.window(), POLL_MAX / 4);
    }

    #[test]
    fn the_window_stays_within_its_bounds() {
        let mut poll = PollWindow::new();
        for step in 0..100 {
            match step % 3 {
                0 => poll.hit(),
                1 => poll.woke_after_miss(POLL_MIN),
                _ => poll.woke_after_miss(LATE),
            }
            assert!((POLL_MIN..=POLL_MAX).contains(&poll.window()));
        }
    }
}
