//! The device runtime every virtio device shares: one worker thread per active device, its
//! epoll loop, stop and pause, the EVENT_IDX helpers and adaptive ring polling.
//!
//! A device supplies a [`DeviceHandler`] (its queue processing and its own event sources) and
//! embeds a [`DeviceRuntime`], which runs the handler on a [`worker`] thread between activation
//! and reset, pauses it for a snapshot, and hands the queues' state back. What is device-specific
//! stays in the device's module; what every device needs is here once:
//!
//! - notifications arrive as ioeventfds in the worker's epoll set — never on a vCPU thread;
//! - stop and pause are seen between requests ([`WorkerContext::should_stop`]), so reset, VM
//!   pause and shutdown take bounded time whatever the guest does;
//! - a broken ring sets DEVICE_NEEDS_RESET and stops the device, never the VMM;
//! - [`WorkerContext::notify_used`] and [`WorkerContext::rearm`] are the EVENT_IDX protocol
//!   (interrupt only when `used_event` asks; re-check the ring after re-enabling notifications);
//! - [`poll::PollWindow`] is the adaptive busy-poll window after a batch.

mod handler;
mod lifecycle;
pub(crate) mod poll;
mod worker;

pub use handler::{DeviceHandler, EventRegistry, MAX_QUEUES, Pending, StopSignal, WorkerContext};
pub use lifecycle::DeviceRuntime;
pub use worker::{DeviceWorker, QueueParts, WorkerExit};
