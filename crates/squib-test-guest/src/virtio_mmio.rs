//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): register access and the
//! device-status handshake.

use core::fmt;

use crate::paging::MMIO_WINDOW_START;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The register block up to and including a small device config space.
const MIN_SIZE: u64 = 0x200;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit: the device used a buffer.
pub const INTERRUPT_USED_BUFFER: u32 = 1;

/// A device that is not a usable virtio-mmio version 2 device.
#[derive(Debug, Clone, Copy)]
pub enum TransportError {
    OutsideMmioWindow { base: u64, size: u64 },
    BadMagic(u32),
    UnsupportedVersion(u32),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideMmioWindow { base, size } => write!(
                f,
                "registers at {base:#x} (+{size:#x}) are not inside the MMIO window \
                 {MMIO_WINDOW_START:#x}-4GiB or are smaller than {MIN_SIZE:#x}"
            ),
            Self::BadMagic(magic) => write!(f, "magic is {magic:#010x}, not \"virt\""),
            Self::UnsupportedVersion(version) => {
                write!(f, "virtio-mmio version {version}, expected 2")
            }
        }
    }
}

/// A virtio-mmio register block.
///
/// Invariant: `base..base + MIN_SIZE` lies inside the MMIO window, which the page tables map
/// uncached and user-accessible, so every register access below is to device memory.
#[derive(Debug)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// Checks the window, the magic value and the version.
    pub fn probe(base: u64, size: u64) -> Result<Self, TransportError> {
        let inside = base >= MMIO_WINDOW_START
            && size >= MIN_SIZE
            && base.checked_add(size).is_some_and(|end| end <= 1 << 32);
        if !inside {
            return Err(TransportError::OutsideMmioWindow { base, size });
        }
        let transport = Self { base };
        match transport.read(MAGIC_VALUE) {
            MAGIC => {}
            other => return Err(TransportError::BadMagic(other)),
        }
        match transport.read(VERSION) {
            2 => Ok(transport),
            other => Err(TransportError::UnsupportedVersion(other)),
        }
    }

    pub fn device_id(&self) -> u32 {
        self.read(DEVICE_ID)
    }

    /// All 64 offered feature bits.
    pub fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    pub fn set_driver_features(&self, features: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
    }

    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    /// Sets status bits on top of the current ones.
    pub fn add_status(&self, bits: u32) {
        self.write(STATUS, self.status() | bits);
    }

    /// Resets the device and waits until it reads back 0 (as virtio 1.2 §4.2.3.1 asks).
    pub fn reset(&self) -> bool {
        self.write(STATUS, 0);
        (0..1000).any(|_| self.status() == 0)
    }

    /// Selects queue `index` for the `queue_*` calls.
    pub fn select_queue(&self, index: u32) {
        self.write(QUEUE_SEL, index);
    }

    pub fn queue_max_size(&self) -> u32 {
        self.read(QUEUE_NUM_MAX)
    }

    pub fn queue_ready(&self) -> bool {
        self.read(QUEUE_READY) != 0
    }

    /// Sets the selected queue's size and ring addresses, then marks it ready.
    pub fn enable_queue(&self, size: u16, desc: u64, driver: u64, device: u64) {
        self.write(QUEUE_NUM, u32::from(size));
        self.write_pair(QUEUE_DESC, desc);
        self.write_pair(QUEUE_DRIVER, driver);
        self.write_pair(QUEUE_DEVICE, device);
        self.write(QUEUE_READY, 1);
    }

    pub fn notify(&self, queue: u32) {
        self.write(QUEUE_NOTIFY, queue);
    }

    pub fn interrupt_status(&self) -> u32 {
        self.read(INTERRUPT_STATUS)
    }

    pub fn acknowledge_interrupt(&self, bits: u32) {
        self.write(INTERRUPT_ACK, bits);
    }

    /// Reads a consistent 32-bit config field (retrying across a config-generation change).
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.config_consistent(|t| t.read(CONFIG + offset))
    }

    /// Reads a consistent 64-bit config field as two 32-bit halves.
    pub fn config_u64(&self, offset: u64) -> u64 {
        self.config_consistent(|t| {
            let low = t.read(CONFIG + offset);
            let high = t.read(CONFIG + offset + 4);
            u64::from(high) << 32 | u64::from(low)
        })
    }

    fn config_consistent<T>(&self, read: impl Fn(&Self) -> T) -> T {
        loop {
            let before = self.read(CONFIG_GENERATION);
            let value = read(self);
            if self.read(CONFIG_GENERATION) == before {
                return value;
            }
        }
    }

    fn write_pair(&self, offset: u64, value: u64) {
        self.write(offset, value as u32);
        self.write(offset + 4, (value >> 32) as u32);
    }

    fn read(&self, offset: u64) -> u32 {
        debug_assert!(offset + 4 <= MIN_SIZE);
        // SAFETY: by the type's invariant the register block is mapped device memory; the
        // offsets used are registers of it, read with one aligned 32-bit access.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        debug_assert!(offset + 4 <= MIN_SIZE);
        // SAFETY: as in `read`; a register write changes device state, not guest memory (the
        // rings the device will access are set up before their addresses are written).
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }
}
