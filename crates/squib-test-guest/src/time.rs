//! Timeouts from the TSC (read natively at CPL3). Only used to give up on a device that never
//! answers; no measurement is taken from the guest's clock.

/// Generous: about 4 s at 4 GHz and more on slower TSCs. Exits here cost 25 µs with outliers of
/// several ms, and the host is small and shared.
const TIMEOUT_CYCLES: u64 = 1 << 34;

/// A point in TSC time after which waiting is pointless.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// The standard timeout from now.
    pub fn standard() -> Self {
        Self(tsc().saturating_add(TIMEOUT_CYCLES))
    }

    pub fn passed(self) -> bool {
        tsc() > self.0
    }
}

/// The time-stamp counter (CR4.TSD is clear, so `rdtsc` is allowed at CPL3).
pub fn tsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}
