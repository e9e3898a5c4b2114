//! Firecracker-style I/O throttling: a bandwidth and an operations token bucket.
//!
//! [`TokenBucket`] is pure arithmetic over an injectable [`Clock`], so its behaviour is exact and
//! testable without sleeping. [`RateLimiter`] pairs the two buckets with a `timerfd`: when a
//! request must wait, the limiter arms the timer and the device worker, which epolls the timer's
//! fd beside its queue events, re-tries the request when it fires. Nothing sleeps.
//!
//! Semantics follow Firecracker's API: a bucket holds `size` tokens and an empty bucket refills
//! completely in `refill_time` milliseconds, at a constant rate. `one_time_burst` extra tokens are
//! spent first, once. A bucket with `size == 0` or `refill_time == 0` does not limit. A request
//! larger than the whole bucket (a 1 MiB write against a 64 KiB bandwidth bucket) is let through
//! once the bucket is full and leaves the bucket in debt, so the long-run rate still holds.

use std::fmt::Debug;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// A monotonic time source, injectable so that bucket arithmetic can be tested exactly.
pub trait Clock: Send + Debug {
    /// Time elapsed since an arbitrary fixed origin; never decreases.
    fn now(&self) -> Duration;
}

/// The real clock: `Instant`-based, origin at construction.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Why a bucket configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateLimiterError {
    /// `refill_time` does not fit in 64-bit nanoseconds (about 584 years).
    #[error("refill_time {0} ms is too large (at most {max} ms)", max = u64::MAX / NANOS_PER_MILLI)]
    RefillTimeTooLarge(u64),
}

/// The shape of one bucket, as the API gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    /// Capacity in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens spent first, once.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to fill.
    pub refill_time_ms: u64,
}

/// A device's whole throttle: either bucket may be absent. In an update (`PATCH /drives`), an
/// absent bucket keeps its current state and a zero-sized one (`size` or `refill_time_ms` 0)
/// removes the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterSpec {
    /// Bytes moved by reads and writes.
    pub bandwidth: Option<BucketSpec>,
    /// Requests, one token each.
    pub ops: Option<BucketSpec>,
}

impl RateLimiterSpec {
    /// Checks that every bucket can be represented, without building anything.
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        for spec in [self.bandwidth, self.ops].into_iter().flatten() {
            TokenBucket::new(spec, Duration::ZERO)?;
        }
        Ok(())
    }

    /// `later` applied on top of `self`: its buckets win, its absent ones keep ours (two updates
    /// that arrive before the worker applies either must both take effect).
    pub fn merged_with(self, later: Self) -> Self {
        Self {
            bandwidth: later.bandwidth.or(self.bandwidth),
            ops: later.ops.or(self.ops),
        }
    }
}

/// One token bucket.
///
/// Invariant: the budget is kept in *scaled* units, one token being `refill_ns` units, so that
/// refilling adds exactly `size` units per elapsed nanosecond with no rounding drift. Every product
/// is of two `u64`s and so fits in `u128`.
#[derive(Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u64,
    /// Scaled budget, at most `size * refill_ns`.
    budget: u128,
    /// Scaled debt left by an oversize request; repaid before `budget` grows.
    debt: u128,
    /// Unspent one-time burst, in tokens.
    burst: u64,
    last_refill: Duration,
}

impl TokenBucket {
    /// A full bucket, or `None` when `spec` does not limit (`size` or `refill_time_ms` is zero).
    pub fn new(spec: BucketSpec, now: Duration) -> Result<Option<Self>, RateLimiterError> {
        if spec.size == 0 || spec.refill_time_ms == 0 {
            return Ok(None);
        }
        let refill_ns = spec
            .refill_time_ms
            .checked_mul(NANOS_PER_MILLI)
            .ok_or(RateLimiterError::RefillTimeTooLarge(spec.refill_time_ms))?;
        Ok(Some(Self {
            size: spec.size,
            refill_ns,
            budget: u128::from(spec.size) * u128::from(refill_ns),
            debt: 0,
            burst: spec.one_time_burst,
            last_refill: now,
        }))
    }

    fn capacity(&self) -> u128 {
        u128::from(self.size) * u128::from(self.refill_ns)
    }

    fn scaled(&self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.refill_ns)
    }

    /// Credits the time elapsed since the last refill: first to the debt, then to the budget.
    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last_refill);
        self.last_refill = self.last_refill.max(now);
        let mut credit = elapsed.as_nanos().saturating_mul(u128::from(self.size));
        let repaid = credit.min(self.debt);
        self.debt -= repaid;
        credit -= repaid;
        self.budget = self.budget.saturating_add(credit).min(self.capacity());
    }

    /// Whole tokens available now (burst included).
    pub fn available(&mut self, now: Duration) -> u64 {
        self.refill(now);
        let tokens = u64::try_from(self.budget / u128::from(self.refill_ns)).unwrap_or(u64::MAX);
        tokens.saturating_add(self.burst)
    }

    /// How long until `tokens` could be taken; zero when they can be taken now.
    pub fn wait_for(&mut self, tokens: u64, now: Duration) -> Duration {
        self.refill(now);
        let from_bucket = tokens.saturating_sub(self.burst);
        if from_bucket == 0 {
            return Duration::ZERO;
        }
        // An oversize request waits for a full bucket (and no debt) rather than forever.
        let needed = self
            .scaled(from_bucket.min(self.size))
            .saturating_add(self.debt);
        let have = self.budget;
        if have >= needed {
            return Duration::ZERO;
        }
        let nanos = (needed - have).div_ceil(u128::from(self.size));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` unconditionally: from the burst, then the budget, the rest as debt.
    pub fn charge(&mut self, tokens: u64, now: Duration) {
        self.refill(now);
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let scaled = self.scaled(tokens - from_burst);
        let from_budget = scaled.min(self.budget);
        self.budget -= from_budget;
        self.debt = self.debt.saturating_add(scaled - from_budget);
    }

    /// Takes `tokens` if [`wait_for`](Self::wait_for) says they are available now.
    pub fn try_consume(&mut self, tokens: u64, now: Duration) -> bool {
        if !self.wait_for(tokens, now).is_zero() {
            return false;
        }
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let scaled = self.scaled(tokens - from_burst);
        if scaled <= self.budget {
            self.budget -= scaled;
        } else {
            self.debt = scaled - self.budget;
            self.budget = 0;
        }
        true
    }
}

/// A throttled request: retry after the limiter's timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// How long the limiter waits before the next attempt.
    pub wait: Duration,
}

/// The two buckets of one device plus the timer its worker waits on.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    clock: Box<dyn Clock>,
    timer: TimerFd,
    /// Set while the timer is armed: requests wait for it instead of re-doing the arithmetic.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter on the real clock. `None` buckets (or zero-sized ones) do not limit.
    pub fn new(bandwidth: Option<BucketSpec>, ops: Option<BucketSpec>) -> io::Result<Self> {
        Self::with_clock(bandwidth, ops, Box::new(MonotonicClock::new()))
    }

    /// A limiter on the real clock built from `spec`.
    pub fn from_spec(spec: RateLimiterSpec) -> io::Result<Self> {
        Self::new(spec.bandwidth, spec.ops)
    }

    /// A limiter on `clock` (tests inject a manual one).
    pub fn with_clock(
        bandwidth: Option<BucketSpec>,
        ops: Option<BucketSpec>,
        clock: Box<dyn Clock>,
    ) -> io::Result<Self> {
        let now = clock.now();
        Ok(Self {
            bandwidth: make_bucket(bandwidth, now)?,
            ops: make_bucket(ops, now)?,
            clock,
            timer: TimerFd::new()?,
            blocked: false,
        })
    }

    /// Whether any bucket limits at all.
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Whether requests are waiting for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes one operation and `bytes` from the buckets, or arms the timer and says how long the
    /// caller must wait. Either both buckets are charged or neither is.
    pub fn consume(&mut self, bytes: u64) -> io::Result<Result<(), Throttled>> {
        if self.blocked {
            return Ok(Err(Throttled {
                wait: Duration::ZERO,
            }));
        }
        let now = self.clock.now();
        let wait = [(self.bandwidth.as_mut(), bytes), (self.ops.as_mut(), 1)]
            .into_iter()
            .filter_map(|(bucket, tokens)| bucket.map(|b| b.wait_for(tokens, now)))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            // Never arm a zero timer: `timerfd_settime` with zero disarms it.
            self.timer.reset(wait.max(Duration::from_micros(1)), None)?;
            self.blocked = true;
            return Ok(Err(Throttled { wait }));
        }
        for (bucket, tokens) in [(self.bandwidth.as_mut(), bytes), (self.ops.as_mut(), 1)] {
            if let Some(bucket) = bucket {
                let taken = bucket.try_consume(tokens, now);
                debug_assert!(taken, "wait_for said the tokens were there");
            }
        }
        Ok(Ok(()))
    }

    /// Takes `bytes` from the bandwidth bucket after the fact, going into debt if they are not
    /// there: for a transfer whose size is known only once it happened (a received frame, which
    /// was admitted with [`consume`](Self::consume) for one byte). Later requests repay the debt
    /// first, so the long-run rate holds.
    pub fn charge(&mut self, bytes: u64) {
        let now = self.clock.now();
        if let Some(bucket) = self.bandwidth.as_mut() {
            bucket.charge(bytes, now);
        }
    }

    /// Handles the timer's expiry (its fd became readable): clears it and unblocks.
    pub fn on_timer(&mut self) -> io::Result<()> {
        if self.timer.is_armed()? {
            // A spurious wake-up (e.g. the worker polled every fd): keep waiting.
            return Ok(());
        }
        // `clear` re-sets the (expired) timer, which also zeroes its expiration count, so the
        // fd stops being readable without a read that could block.
        self.timer.clear()?;
        self.blocked = false;
        Ok(())
    }

    /// Replaces the configuration (a `PATCH /drives` update). `None` keeps a bucket as it is; a
    /// zero-sized spec removes it. New buckets start full, as Firecracker's do. A pending wait
    /// is cancelled: it was computed for the old buckets, so the caller should retry at once.
    pub fn update(
        &mut self,
        bandwidth: Option<BucketSpec>,
        ops: Option<BucketSpec>,
    ) -> io::Result<()> {
        let now = self.clock.now();
        // Build both before replacing either, so a refused spec changes nothing.
        let new_bandwidth = bandwidth
            .map(|spec| make_bucket(Some(spec), now))
            .transpose()?;
        let new_ops = ops.map(|spec| make_bucket(Some(spec), now)).transpose()?;
        if let Some(bucket) = new_bandwidth {
            self.bandwidth = bucket;
        }
        if let Some(bucket) = new_ops {
            self.ops = bucket;
        }
        if self.blocked {
            self.timer.clear()?;
            self.blocked = false;
        }
        Ok(())
    }
}

impl AsRawFd for RateLimiter {
    /// The timer's fd: readable when throttled requests may be retried.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

fn make_bucket(spec: Option<BucketSpec>, now: Duration) -> io::Result<Option<TokenBucket>> {
    match spec {
        None => Ok(None),
        Some(spec) => {
            TokenBucket::new(spec, now).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Debug, Clone, Default)]
    struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn spec(size: u64, burst: u64, refill_time_ms: u64) -> BucketSpec {
        BucketSpec {
            size,
            one_time_burst: burst,
            refill_time_ms,
        }
    }

    fn bucket(size: u64, burst: u64, refill_time_ms: u64) -> TokenBucket {
        TokenBucket::new(spec(size, burst, refill_time_ms), Duration::ZERO)
            .unwrap()
            .unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn zero_size_or_zero_refill_does_not_limit() {
        assert!(
            TokenBucket::new(spec(0, 5, 100), Duration::ZERO)
                .unwrap()
                .is_none()
        );
        assert!(
            TokenBucket::new(spec(5, 5, 0), Duration::ZERO)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn starts_full_and_empties() {
        let mut b = bucket(100, 0, 1000);
        assert_eq!(b.available(Duration::ZERO), 100);
        assert!(b.try_consume(60, Duration::ZERO));
        assert!(b.try_consume(40, Duration::ZERO));
        assert!(!b.try_consume(1, Duration::ZERO));
    }

    #[test]
    fn refills_at_size_per_refill_time() {
        let mut b = bucket(100, 0, 1000); // 100 tokens per second: one per 10 ms.
        assert!(b.try_consume(100, Duration::ZERO));
        assert_eq!(b.available(9 * MS), 0);
        assert_eq!(b.available(10 * MS), 1);
        assert_eq!(b.available(500 * MS), 50);
        // Never beyond capacity however long it idles.
        assert_eq!(b.available(Duration::from_secs(3600)), 100);
    }

    #[test]
    fn fractional_refill_is_not_lost() {
        // 3 tokens per 10 ms: each 1 ms step adds 0.3 of a token; none of it may be dropped.
        let mut b = bucket(3, 0, 10);
        assert!(b.try_consume(3, Duration::ZERO));
        let mut now = Duration::ZERO;
        for _ in 0..10 {
            now += MS;
            b.available(now);
        }
        assert_eq!(b.available(now), 3);
    }

    #[test]
    fn wait_is_exact_and_rounds_up() {
        let mut b = bucket(100, 0, 1000);
        assert!(b.try_consume(100, Duration::ZERO));
        assert_eq!(b.wait_for(1, Duration::ZERO), 10 * MS);
        assert_eq!(b.wait_for(25, 5 * MS), Duration::from_micros(245_000));
        // 3 tokens per 1000 ms: one token takes 333.33… ms, rounded up to the next nanosecond.
        let mut b = bucket(3, 0, 1000);
        assert!(b.try_consume(3, Duration::ZERO));
        assert_eq!(
            b.wait_for(1, Duration::ZERO),
            Duration::from_nanos(333_333_334)
        );
    }

    #[test]
    fn one_time_burst_is_spent_first_and_once() {
        let mut b = bucket(10, 50, 1000);
        assert_eq!(b.available(Duration::ZERO), 60);
        assert!(b.try_consume(50, Duration::ZERO));
        assert_eq!(b.available(Duration::ZERO), 10);
        assert!(b.try_consume(10, Duration::ZERO));
        assert!(!b.try_consume(1, Duration::ZERO));
        // Refill never restores the burst.
        assert_eq!(b.available(Duration::from_secs(10)), 10);
    }

    #[test]
    fn burst_and_bucket_combine_for_one_request() {
        let mut b = bucket(10, 5, 1000);
        assert!(b.try_consume(12, Duration::ZERO));
        assert_eq!(b.available(Duration::ZERO), 3);
    }

    #[test]
    fn oversize_request_waits_for_a_full_bucket_then_leaves_debt() {
        let mut b = bucket(100, 0, 1000);
        assert!(b.try_consume(50, Duration::ZERO));
        // 250 tokens can never fit: it waits for a full bucket (500 ms), not forever.
        assert_eq!(b.wait_for(250, Duration::ZERO), 500 * MS);
        assert!(!b.try_consume(250, Duration::ZERO));
        assert!(b.try_consume(250, 500 * MS));
        // The 150-token overdraft is repaid (1.5 s) before anything else goes through.
        assert_eq!(b.wait_for(1, 1500 * MS), 510 * MS);
        assert_eq!(b.available(1999 * MS), 0);
        assert_eq!(b.available(2010 * MS), 1);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let max_ms = u64::MAX / NANOS_PER_MILLI;
        let mut b = bucket(u64::MAX, u64::MAX, max_ms);
        assert_eq!(b.available(Duration::MAX), u64::MAX);
        assert!(b.try_consume(u64::MAX, Duration::MAX));
        assert!(b.try_consume(u64::MAX, Duration::MAX));
        let mut small = bucket(1, 0, max_ms);
        assert!(small.try_consume(u64::MAX, Duration::ZERO));
        assert_eq!(
            small.wait_for(1, Duration::ZERO),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            TokenBucket::new(spec(1, 0, max_ms + 1), Duration::ZERO).unwrap_err(),
            RateLimiterError::RefillTimeTooLarge(max_ms + 1)
        );
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut b = bucket(10, 0, 1000);
        assert!(b.try_consume(10, Duration::from_secs(5)));
        assert_eq!(b.available(Duration::from_secs(1)), 0);
        assert_eq!(b.available(Duration::from_secs(5) + 100 * MS), 1);
    }

    fn limiter(bw: Option<BucketSpec>, ops: Option<BucketSpec>) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::default();
        (
            RateLimiter::with_clock(bw, ops, Box::new(clock.clone())).unwrap(),
            clock,
        )
    }

    #[test]
    fn a_charge_after_the_fact_leaves_a_debt_the_next_request_waits_for() {
        let (mut rl, clock) = limiter(Some(spec(1000, 0, 1000)), None);
        assert_eq!(rl.consume(1).unwrap(), Ok(()));
        // A 1499-byte frame arrived: 999 tokens were left, 500 become debt.
        rl.charge(1499);
        let Err(t) = rl.consume(1).unwrap() else {
            panic!("expected throttling")
        };
        // Repay 500, then one token: 501 ms.
        assert_eq!(t.wait, 501 * MS);
        clock.advance(501 * MS);
        rl.on_timer().unwrap_or(());
        rl.blocked = false;
        assert_eq!(rl.consume(1).unwrap(), Ok(()));
    }

    #[test]
    fn limiter_charges_both_buckets_or_neither() {
        let (mut rl, _clock) = limiter(Some(spec(1000, 0, 1000)), Some(spec(10, 0, 1000)));
        assert_eq!(rl.consume(600).unwrap(), Ok(()));
        // Bandwidth refuses: the ops bucket must not be charged either.
        let Err(t) = rl.consume(600).unwrap() else {
            panic!("expected throttling")
        };
        assert_eq!(t.wait, 200 * MS);
        assert_eq!(rl.ops.as_mut().unwrap().available(Duration::ZERO), 9);
        assert_eq!(
            rl.bandwidth.as_mut().unwrap().available(Duration::ZERO),
            400
        );
    }

    #[test]
    fn limiter_blocks_until_the_timer_fires() {
        let (mut rl, clock) = limiter(None, Some(spec(2, 0, 20)));
        assert!(rl.is_limiting());
        assert_eq!(rl.consume(0).unwrap(), Ok(()));
        assert_eq!(rl.consume(0).unwrap(), Ok(()));
        let Err(t) = rl.consume(0).unwrap() else {
            panic!("expected throttling")
        };
        assert_eq!(t.wait, 10 * MS);
        assert!(rl.is_blocked());
        assert!(rl.timer.is_armed().unwrap());
        // Still armed: a spurious wake-up keeps it blocked, even if the (manual) clock has moved.
        clock.advance(10 * MS);
        rl.on_timer().unwrap();
        assert!(rl.is_blocked());
        assert!(rl.consume(0).unwrap().is_err());
        // The real timer (10 ms of wall time) fires.
        let expirations = rl.timer.wait().unwrap();
        assert_eq!(expirations, 1);
        rl.on_timer().unwrap();
        assert!(!rl.is_blocked());
        assert_eq!(rl.consume(0).unwrap(), Ok(()));
    }

    #[test]
    fn limiter_without_buckets_never_throttles() {
        let (mut rl, _clock) = limiter(None, Some(spec(0, 0, 0)));
        assert!(!rl.is_limiting());
        for _ in 0..10_000 {
            assert_eq!(rl.consume(1 << 20).unwrap(), Ok(()));
        }
    }

    #[test]
    fn update_replaces_only_given_buckets() {
        let (mut rl, _clock) = limiter(Some(spec(100, 0, 1000)), Some(spec(1, 0, 1000)));
        assert_eq!(rl.consume(10).unwrap(), Ok(()));
        rl.update(None, Some(spec(0, 0, 0))).unwrap();
        assert!(rl.ops.is_none());
        assert_eq!(rl.bandwidth.as_mut().unwrap().available(Duration::ZERO), 90);
        rl.update(Some(spec(5, 0, 1000)), None).unwrap();
        assert_eq!(rl.bandwidth.as_mut().unwrap().available(Duration::ZERO), 5);
    }

    #[test]
    fn update_cancels_a_pending_wait() {
        let (mut rl, _clock) = limiter(None, Some(spec(1, 0, 10_000)));
        assert_eq!(rl.consume(0).unwrap(), Ok(()));
        assert!(rl.consume(0).unwrap().is_err());
        assert!(rl.timer.is_armed().unwrap());
        rl.update(None, Some(spec(10, 0, 1000))).unwrap();
        assert!(!rl.is_blocked());
        assert!(!rl.timer.is_armed().unwrap());
        assert_eq!(rl.consume(0).unwrap(), Ok(()));
    }

    #[test]
    fn refused_update_changes_nothing() {
        let (mut rl, _clock) = limiter(Some(spec(100, 0, 1000)), Some(spec(5, 0, 1000)));
        let too_long = spec(1, 0, u64::MAX);
        assert!(rl.update(Some(spec(7, 0, 1000)), Some(too_long)).is_err());
        assert_eq!(
            rl.bandwidth.as_mut().unwrap().available(Duration::ZERO),
            100
        );
    }

    #[test]
    fn spec_validates_and_merges() {
        let too_long = spec(1, 0, u64::MAX);
        let bad = RateLimiterSpec {
            bandwidth: None,
            ops: Some(too_long),
        };
        assert!(bad.validate().is_err());
        assert!(RateLimiterSpec::default().validate().is_ok());
        let first = RateLimiterSpec {
            bandwidth: Some(spec(1, 0, 1)),
            ops: Some(spec(2, 0, 2)),
        };
        let second = RateLimiterSpec {
            bandwidth: None,
            ops: Some(spec(3, 0, 3)),
        };
        assert_eq!(
            first.merged_with(second),
            RateLimiterSpec {
                bandwidth: Some(spec(1, 0, 1)),
                ops: Some(spec(3, 0, 3)),
            }
        );
    }

    #[test]
    fn limiter_holds_the_configured_rate_over_time() {
        // 200 ops/s, driven by a simulated worker that retries at the exact moment it is told.
        let (mut rl, clock) = limiter(None, Some(spec(200, 0, 1000)));
        let mut done = 0u64;
        while clock.now() <= Duration::from_secs(10) {
            match rl.consume(4096).unwrap() {
                Ok(()) => done += 1,
                Err(t) => {
                    clock.advance(t.wait);
                    rl.blocked = false;
                    let _ = rl.timer.clear();
                }
            }
        }
        // The initial full bucket plus 200 per second.
        assert_eq!(done, 200 + 10 * 200);
    }
}
