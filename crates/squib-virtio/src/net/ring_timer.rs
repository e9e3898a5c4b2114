//! A one-shot timer after which the worker looks at a ring again with the driver's notifications
//! still off: what lets virtio-net take a stream's frames (tx) or recycled buffers (rx) in batches
//! instead of one guest kick — a VM exit — per frame, without spinning a core.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tracing::error;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::runtime::EventRegistry;

/// A `timerfd` in the worker's epoll set, and whether a wait is pending on it.
#[derive(Debug, Default)]
pub(crate) struct RingTimer {
    /// `None` until registered, or after it failed: callers then ask for kicks at once.
    timer: Option<TimerFd>,
    pending: bool,
}

impl RingTimer {
    /// Creates the timer and watches it under `token`; called on the worker thread.
    pub(crate) fn register(
        &mut self,
        events: &mut EventRegistry<'_>,
        token: u32,
    ) -> io::Result<()> {
        let timer = TimerFd::new()?;
        events.add(timer.as_raw_fd(), token, EventSet::IN)?;
        self.timer = Some(timer);
        Ok(())
    }

    /// Starts (or restarts) a wait of `wait`; false if there is no usable timer.
    pub(crate) fn arm(&mut self, wait: Duration) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        match timer.reset(wait, None) {
            Ok(()) => {
                self.pending = true;
                true
            }
            Err(error) => {
                error!(%error, "virtio-net: cannot arm a ring timer; asking for kicks instead");
                self.timer = None;
                self.pending = false;
                false
            }
        }
    }

    /// Whether a wait is pending.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending
    }

    /// On the timer's event: whether a pending wait has expired now (the fd is left unreadable).
    /// False for a stale wake-up: the timer was re-armed or cancelled since it fired.
    pub(crate) fn expired(&mut self) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        if timer.is_armed().unwrap_or(false) {
            return false;
        }
        // `clear` zeroes the expiration count, so the fd stops being readable without a read
        // that could block.
        if let Err(error) = timer.clear() {
            error!(%error, "virtio-net: cannot clear a ring timer");
        }
        std::mem::take(&mut self.pending)
    }
}
