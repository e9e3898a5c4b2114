//! `clock_gettime` for the clocks Firecracker's start-up metrics use: `CLOCK_MONOTONIC` (the
//! jailer's `--start-time-us`) and `CLOCK_PROCESS_CPUTIME_ID` (`--start-time-cpu-us`), in
//! microseconds. `std::time::Instant` is monotonic too but hides its value, which must be
//! compared with a number another process read.

/// Which clock to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`.
    Monotonic,
    /// `CLOCK_PROCESS_CPUTIME_ID`: CPU time of this process (kept across `execve`).
    ProcessCpu,
}

/// The clock's value in microseconds (0 if the kernel refuses, which it does not for these
/// clocks).
pub fn now_us(clock: Clock) -> u64 {
    let id = match clock {
        Clock::Monotonic => libc::CLOCK_MONOTONIC,
        Clock::ProcessCpu => libc::CLOCK_PROCESS_CPUTIME_ID,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec the kernel writes into; `id` is a
    // clock every Linux kernel knows.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance() {
        let a = now_us(Clock::Monotonic);
        let c = now_us(Clock::ProcessCpu);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_us(Clock::Monotonic) >= a + 2_000);
        assert!(now_us(Clock::ProcessCpu) > c);
    }
}
