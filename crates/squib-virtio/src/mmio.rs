//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! One [`MmioTransport`] per 4 KiB slot. The VMM forwards the guest's MMIO exits to
//! [`MmioTransport::read`]/[`MmioTransport::write`], registers each [`MmioTransport::queue_events`]
//! entry as an ioeventfd at `base + 0x50` (datamatch = queue index), and registers
//! [`MmioTransport::interrupt_event`] as an irqfd on the slot's GSI. Without ioeventfds (tests),
//! a QueueNotify write reaches [`MmioTransport::write`], which writes the same `EventFd`, so both
//! paths wake the same worker.
//!
//! Everything here is guest-controlled: a bad access is logged and ignored, never a panic.

use std::io;
use std::sync::Arc;

use tracing::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::GuestMemory;
use crate::device::{
    ActivateError, Activation, FEATURE_EVENT_IDX, FEATURE_INDIRECT_DESC, VirtioDevice,
};
use crate::guest_warn;
use crate::interrupt::MmioInterrupt;
use crate::persist::{StateError, TransportState};
use crate::queue::{QueueConfig, QueueError, QueueSnapshot, VirtQueue};

/// Register offsets inside the slot (virtio 1.2 §4.2.2, table "MMIO Device Register Layout"):
/// public so that drivers written against this transport (tests, benches) use the same table.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The non-legacy virtio-mmio register layout.
pub const MMIO_VERSION: u32 = 2;
/// The size of one virtio-mmio slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// The largest split virtqueue virtio allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// The QueueNotify register offset, where the VMM registers each queue's ioeventfd.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
/// The device status values a driver may reach, in order (FAILED aside).
const INIT_SEQUENCE: [u32; 4] = [
    STATUS_ACKNOWLEDGE,
    STATUS_ACKNOWLEDGE | STATUS_DRIVER,
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
];

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device has no queues, or a queue size virtio cannot express.
    #[error("queue {index}: maximum size {max_size} is not a power of two in 1..=32768")]
    InvalidQueueSize {
        /// Queue index.
        index: usize,
        /// The device's maximum size.
        max_size: u16,
    },
    /// The device declares no queues.
    #[error("the device declares no queues")]
    NoQueues,
    /// The host could not create the event descriptors.
    #[error("creating the transport's eventfds: {0}")]
    Host(#[from] io::Error),
}

/// A virtio device behind a virtio-mmio version 2 register window.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    queue_events: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    status: u32,
    bad_accesses: BadAccessLog,
}

impl MmioTransport {
    /// Puts `device` behind a fresh register window; the device stays inactive until the driver
    /// sets DRIVER_OK.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.is_empty() {
            return Err(TransportError::NoQueues);
        }
        for (index, &max_size) in max_sizes.iter().enumerate() {
            if !max_size.is_power_of_two() || max_size > MAX_QUEUE_SIZE {
                return Err(TransportError::InvalidQueueSize { index, max_size });
            }
        }
        let queues: Vec<QueueConfig> = max_sizes.iter().map(|&max| QueueConfig::new(max)).collect();
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new()?),
            queue_events,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            status: 0,
            bad_accesses: BadAccessLog::default(),
        })
    }

    /// One notification `EventFd` per queue, in index order: register each as an ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch = its index.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt `EventFd`: register it as an irqfd on the slot's GSI.
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// A guest read of `data.len()` bytes at `offset` inside the slot.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(word) = <&mut [u8; 4]>::try_from(&mut *data) else {
            self.bad_accesses
                .record("read of other than 4 bytes", offset, data.len());
            data.fill(0);
            return;
        };
        if !offset.is_multiple_of(4) {
            self.bad_accesses.record("misaligned read", offset, 4);
            *word = [0; 4];
            return;
        }
        let value = match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => 0,
            reg::DEVICE_FEATURES => {
                feature_word(self.device.offered_features(), self.device_features_select)
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            // No shared memory regions: a length of -1 says "this region does not exist".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.device.config_generation(),
            _ => {
                self.bad_accesses
                    .record("read of a write-only or unknown register", offset, 4);
                0
            }
        };
        *word = value.to_le_bytes();
    }

    /// A guest write of `data` at `offset` inside the slot.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            self.bad_accesses
                .record("write of other than 4 bytes", offset, data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            self.bad_accesses.record("misaligned write", offset, 4);
            return;
        }
        let value = u32::from_le_bytes(word);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_config(offset, value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(value),
            _ => self
                .bad_accesses
                .record("write to a read-only or unknown register", offset, 4),
        }
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::try_from(self.queue_select).ok()?)
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
            guest_warn!(
                status = self.status,
                "driver features written outside feature negotiation; ignored"
            );
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            select => {
                debug!(
                    select,
                    "driver features written to a selector beyond bit 63; ignored"
                );
                return;
            }
        };
        self.acked_features =
            (self.acked_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }

    fn write_queue_config(&mut self, offset: u64, value: u32) {
        if self.status & STATUS_DRIVER_OK != 0 {
            self.write_live_queue_config(offset, value);
            return;
        }
        let Some(queue) = usize::try_from(self.queue_select)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            self.bad_accesses.record(
                "queue configured through QueueSel of a missing queue",
                offset,
                4,
            );
            return;
        };
        if queue.ready && offset != reg::QUEUE_READY {
            self.bad_accesses
                .record("queue reconfigured while ready", offset, 4);
            return;
        }
        let value64 = u64::from(value);
        match offset {
            // Range and power-of-two checks happen at DRIVER_OK, where a bad size fails
            // activation with a clear error; a size above u16::MAX becomes 0, which fails there.
            reg::QUEUE_NUM => queue.size = u16::try_from(value).unwrap_or(0),
            reg::QUEUE_READY => queue.ready = value == 1,
            reg::QUEUE_DESC_LOW => queue.desc_table = set_low(queue.desc_table, value64),
            reg::QUEUE_DESC_HIGH => queue.desc_table = set_high(queue.desc_table, value64),
            reg::QUEUE_DRIVER_LOW => queue.avail_ring = set_low(queue.avail_ring, value64),
            reg::QUEUE_DRIVER_HIGH => queue.avail_ring = set_high(queue.avail_ring, value64),
            reg::QUEUE_DEVICE_LOW => queue.used_ring = set_low(queue.used_ring, value64),
            reg::QUEUE_DEVICE_HIGH => queue.used_ring = set_high(queue.used_ring, value64),
            _ => {}
        }
    }

    /// Queue registers written while the device runs. QueueReady = 0 stops the queue. A stopped
    /// queue's other registers may be written (virtio 1.2 §4.2.2.3 forbids it only while
    /// QueueReady is not 0, and a driver tearing a queue down clears them, as the
    /// `virtio-drivers` crate does) but change nothing: without VIRTIO_F_RING_RESET a queue is
    /// not enabled again before a reset. Anything else is a driver error, ignored.
    fn write_live_queue_config(&mut self, offset: u64, value: u32) {
        let ready = self.selected_queue().map(|queue| queue.ready);
        match (offset, ready) {
            (reg::QUEUE_READY, _) if value == 0 => self.stop_queue(),
            (_, None) => self.bad_accesses.record(
                "queue configured through QueueSel of a missing queue",
                offset,
                4,
            ),
            (reg::QUEUE_READY, Some(_)) | (_, Some(true)) => {
                self.bad_accesses
                    .record("queue configured after DRIVER_OK", offset, 4);
            }
            (_, Some(false)) => debug!(offset, "register of a stopped queue written; no effect"),
        }
    }

    /// The driver stops the selected queue of a running device (virtio 1.2 §4.2.2.2: it writes 0
    /// to QueueReady and reads it back): the device no longer touches it once this returns.
    fn stop_queue(&mut self) {
        let select = self.queue_select;
        let Some((index, queue)) = usize::try_from(select)
            .ok()
            .and_then(|i| self.queues.get_mut(i).map(|q| (i, q)))
        else {
            return;
        };
        if queue.ready {
            queue.ready = false;
            self.device.disable_queue(index);
        }
    }

    fn notify(&mut self, value: u32) {
        let Some(event) = usize::try_from(value)
            .ok()
            .and_then(|i| self.queue_events.get(i))
        else {
            self.bad_accesses.record(
                "notify of a queue that does not exist",
                reg::QUEUE_NOTIFY,
                4,
            );
            return;
        };
        if let Err(error) = event.write(1) {
            guest_warn!(%error, queue = value, "could not signal the queue eventfd");
        }
    }

    /// The device status state machine (virtio 1.2 §3.1.1). A write may add several steps at
    /// once (a driver may write ACKNOWLEDGE|DRIVER in one go) as long as the result is still a
    /// prefix of ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (FAILED may join at any time); 0
    /// resets. Clearing bits without a reset is refused.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            guest_warn!(
                old = self.status,
                new = value,
                "driver cleared status bits without a reset; ignored"
            );
            return;
        }
        let added = value & !self.status;
        if added == 0 {
            return;
        }
        let steps = value & !STATUS_FAILED;
        if !INIT_SEQUENCE.contains(&steps) {
            guest_warn!(
                old = self.status,
                new = value,
                "invalid device status transition; ignored"
            );
            return;
        }
        if added & STATUS_FAILED != 0 {
            guest_warn!(
                status = self.status,
                "the driver gave up on the device (FAILED)"
            );
            self.status |= STATUS_FAILED;
        }
        // Each step in order; a refused FEATURES_OK stops there, so DRIVER_OK cannot follow.
        for step in [
            STATUS_ACKNOWLEDGE,
            STATUS_DRIVER,
            STATUS_FEATURES_OK,
            STATUS_DRIVER_OK,
        ] {
            if added & step == 0 {
                continue;
            }
            match step {
                STATUS_FEATURES_OK => {
                    if let Err(error) = self.device.validate_features(self.acked_features) {
                        // The driver reads Status back and sees FEATURES_OK is not set.
                        guest_warn!(%error, "refusing FEATURES_OK");
                        return;
                    }
                    self.status |= step;
                }
                STATUS_DRIVER_OK => {
                    self.status |= step;
                    if let Err(error) = self.activate() {
                        guest_warn!(%error, "device activation failed; it needs a reset");
                        self.interrupt.signal_needs_reset_now();
                    }
                }
                _ => self.status |= step,
            }
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & FEATURE_EVENT_IDX != 0;
        let indirect = self.acked_features & FEATURE_INDIRECT_DESC != 0;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, config)| {
                let mut queue = VirtQueue::new(config, &self.mem, event_idx)
                    .map_err(|source| ActivateError::Queue { index, source })?;
                queue.set_indirect(indirect);
                Ok(queue)
            })
            .collect::<Result<Vec<_>, ActivateError>>()?;
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        self.device.activate(Activation {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: Arc::clone(&self.interrupt) as _,
            acked_features: self.acked_features,
        })
    }

    /// Test support: the device's runtime, to run its worker inline.
    #[cfg(feature = "test-util")]
    pub fn runtime_mut(&mut self) -> &mut dyn crate::device::RuntimeControl {
        self.device.runtime_mut()
    }

    /// Stops the device's worker after the requests in flight are published (VM pause).
    pub fn pause(&mut self) {
        self.device.pause();
    }

    /// Starts the device's worker again after [`pause`](Self::pause) or a restore.
    pub fn resume(&mut self) -> Result<(), ActivateError> {
        self.device.resume()
    }

    /// The transport's registers, its queues and its device, for a snapshot (the VM and so the
    /// device must be paused).
    pub fn save_state(&self) -> Result<TransportState, StateError> {
        let device = self.device.save_state()?;
        let event_idx = self.acked_features & FEATURE_EVENT_IDX != 0;
        let queues = self.device.queue_snapshots().unwrap_or_else(|| {
            self.queues
                .iter()
                .map(|config| QueueSnapshot {
                    max_size: config.max_size,
                    size: config.size,
                    ready: config.ready,
                    desc_table: config.desc_table,
                    avail_ring: config.avail_ring,
                    used_ring: config.used_ring,
                    next_avail: 0,
                    next_used: 0,
                    event_idx,
                })
                .collect()
        });
        Ok(TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            needs_reset: self.interrupt.needs_reset(),
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            interrupt_status: self.interrupt.status(),
            queues,
            device,
        })
    }

    /// Puts the transport and its device back as `state` recorded them. A device that was active
    /// comes back active and paused: [`resume`](Self::resume) starts it. Nothing is changed when
    /// the state does not fit this device.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), StateError> {
        let expected = self.device.device_type();
        if state.device_type != expected {
            return Err(StateError::DeviceType {
                expected,
                found: state.device_type,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(StateError::QueueCount {
                expected: self.queues.len(),
                found: state.queues.len(),
            });
        }
        let unoffered = state.acked_features & !self.device.offered_features();
        if unoffered != 0 {
            return Err(StateError::Features(unoffered));
        }
        for (index, (snapshot, config)) in state.queues.iter().zip(&self.queues).enumerate() {
            if snapshot.max_size != config.max_size {
                return Err(StateError::Queue {
                    index,
                    source: QueueError::InvalidSetup(virtio_queue::Error::InvalidMaxSize),
                });
            }
        }
        let active = state.status & STATUS_DRIVER_OK != 0 && !state.needs_reset;
        let activation = if active {
            let queues = state
                .queues
                .iter()
                .enumerate()
                .map(|(index, snapshot)| {
                    let mut queue = VirtQueue::from_snapshot(snapshot, &self.mem)
                        .map_err(|source| StateError::Queue { index, source })?;
                    queue.set_indirect(state.acked_features & FEATURE_INDIRECT_DESC != 0);
                    Ok::<_, StateError>(queue)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let queue_events = self
                .queue_events
                .iter()
                .map(EventFd::try_clone)
                .collect::<io::Result<Vec<_>>>()
                .map_err(|error| StateError::Activate(ActivateError::Host(error)))?;
            Some(Activation {
                mem: self.mem.clone(),
                queues,
                queue_events,
                interrupt: Arc::clone(&self.interrupt) as _,
                acked_features: state.acked_features,
            })
        } else {
            None
        };
        self.device.restore_state(&state.device, activation)?;
        for (config, snapshot) in self.queues.iter_mut().zip(&state.queues) {
            *config = snapshot.config();
        }
        self.status = state.status;
        self.acked_features = state.acked_features;
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        Ok(())
    }

    fn reset(&mut self) {
        self.device.reset();
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt.reset();
    }
}

fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        // Truncation picks the selected half.
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

fn set_low(current: u64, low: u64) -> u64 {
    (current & !0xffff_ffff) | low
}

fn set_high(current: u64, high: u64) -> u64 {
    (current & 0xffff_ffff) | (high << 32)
}

/// Register accesses the transport ignores (malformed, or not allowed in the device's state),
/// logged through the guest log limiter with their running count.
#[derive(Debug, Default)]
struct BadAccessLog {
    count: u64,
}

impl BadAccessLog {
    fn record(&mut self, what: &str, offset: u64, len: usize) {
        self.count = self.count.saturating_add(1);
        guest_warn!(
            what,
            offset,
            len,
            total = self.count,
            "ignored virtio-mmio access"
        );
    }
}
