//! The verdict: one line per check, a summary line, and the exit that carries it.
//!
//! Lines are `ok - <what>` and `FAIL - <what>: <why>`; informational lines start with `# `.
//! The summary `N passed, M failed` stands alone on its line. All passed → i8042 reset (squib
//! exits 0); anything failed → debug-exit 1 (squib and QEMU exit 3).

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::power;
use crate::serial::println;

// Counters are atomics so that the CPL0 exception handler can read them too.
static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Records a passed check.
pub fn pass(what: fmt::Arguments<'_>) {
    PASSED.fetch_add(1, Ordering::Relaxed);
    println!("ok - {what}");
}

/// Records a failed check and why.
pub fn fail(what: fmt::Arguments<'_>, why: &dyn fmt::Display) {
    FAILED.fetch_add(1, Ordering::Relaxed);
    println!("FAIL - {what}: {why}");
}

/// Records the outcome of a check.
pub fn record<T, E: fmt::Display>(what: fmt::Arguments<'_>, outcome: &Result<T, E>) {
    match outcome {
        Ok(_) => pass(what),
        Err(error) => fail(what, error),
    }
}

/// Prints the summary and ends the run with its verdict.
pub fn finish() -> ! {
    let passed = PASSED.load(Ordering::Relaxed);
    let failed = FAILED.load(Ordering::Relaxed);
    println!("{passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        power::reset()
    } else {
        power::debug_exit(1)
    }
}

/// Fails the run at once (an exception, a panic, a broken boot): one FAIL line, the summary.
pub fn abort(why: fmt::Arguments<'_>) -> ! {
    fail(format_args!("squib-test-guest"), &why);
    finish()
}
