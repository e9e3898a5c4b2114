//! Striped locks that serialise read-modify-write of the same aligned block.
//!
//! An unaligned write under `O_DIRECT` reads the covering aligned blocks, patches them and writes
//! them back. Two such writes to different bytes of one block would otherwise each write back the
//! other's old bytes. Only the partially written first and last blocks of a request need it;
//! aligned I/O never takes these locks.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Independent locks; blocks share one when their indices agree modulo this. 64 keeps unrelated
/// blocks from contending much while costing a few hundred bytes.
const STRIPES: usize = 64;

#[derive(Debug)]
pub(super) struct StripedLocks {
    stripes: [Mutex<()>; STRIPES],
}

/// The stripes a read-modify-write holds, released on drop.
#[derive(Debug)]
pub(super) struct RmwGuard<'a> {
    _first: Option<MutexGuard<'a, ()>>,
    _second: Option<MutexGuard<'a, ()>>,
}

impl StripedLocks {
    pub(super) fn new() -> Self {
        Self {
            stripes: [const { Mutex::new(()) }; STRIPES],
        }
    }

    /// Locks the stripes of the (up to two) blocks a request patches, in stripe order so that two
    /// requests never wait on each other crosswise.
    pub(super) fn lock(&self, head: Option<u64>, tail: Option<u64>) -> RmwGuard<'_> {
        let stripe = |block: u64| (block % STRIPES as u64) as usize;
        let (low, high) = match (head.map(stripe), tail.map(stripe)) {
            (Some(a), Some(b)) if a == b => (Some(a), None),
            (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
            (a, b) => (a.or(b), None),
        };
        let lock = |index: usize| {
            self.stripes[index]
                .lock()
                // The lock guards no data, so a panicked holder leaves nothing inconsistent.
                .unwrap_or_else(PoisonError::into_inner)
        };
        let first = low.map(lock);
        let second = high.map(lock);
        RmwGuard {
            _first: first,
            _second: second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stripe_is_locked_once() {
        let locks = StripedLocks::new();
        // Blocks 1 and 1 + STRIPES share a stripe: locking both must not deadlock.
        let guard = locks.lock(Some(1), Some(1 + STRIPES as u64));
        assert!(locks.stripes[1].try_lock().is_err());
        drop(guard);
        assert!(locks.stripes[1].try_lock().is_ok());
    }

    #[test]
    fn two_stripes_are_held_together() {
        let locks = StripedLocks::new();
        let _guard = locks.lock(Some(9), Some(3));
        assert!(locks.stripes[3].try_lock().is_err());
        assert!(locks.stripes[9].try_lock().is_err());
        assert!(locks.stripes[4].try_lock().is_ok());
    }
}
