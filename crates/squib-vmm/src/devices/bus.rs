//! Address buses (port I/O and MMIO): ranges mapped to devices.
//!
//! A bus is built before the vCPUs start and never changes afterwards, so vCPU threads share it
//! without a lock; each device has its own. Accesses that hit no device (or run past a device's
//! end) are logged at debug level and ignored: reads return all-ones, as on real hardware.

use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus. `offset` is relative to the start of the range the device was inserted at.
pub trait BusDevice: Send {
    /// Fills `data` from the device's registers at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the device's registers at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (stdin forwarding, the API).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be placed on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid {bus} range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Which bus.
        bus: &'static str,
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps one already taken.
    #[error("{bus} range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap {
        /// Which bus.
        bus: &'static str,
        /// Start.
        base: u64,
        /// Length.
        len: u64,
        /// Start of the device in the way.
        other: u64,
    },
}

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Ranges of one address space mapped to devices.
pub struct Bus {
    name: &'static str,
    /// Sorted by `base`, non-overlapping.
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("ranges", &ranges)
            .finish()
    }
}

impl Bus {
    /// An empty bus; `name` ("pio", "mmio") appears in logs and errors.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ranges: Vec::new(),
        }
    }

    /// Maps `base..base + len` to `device`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let bus = self.name;
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { bus, base, len })?;
        let at = self.ranges.partition_point(|r| r.base < base);
        let clashes_before = at > 0 && self.ranges[at - 1].base + self.ranges[at - 1].len > base;
        let clashes_after = at < self.ranges.len() && self.ranges[at].base < end;
        if clashes_before || clashes_after {
            let other = if clashes_before {
                self.ranges[at - 1].base
            } else {
                self.ranges[at].base
            };
            return Err(BusError::Overlap {
                bus,
                base,
                len,
                other,
            });
        }
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// The device and offset for an access of `size` bytes at `addr`, if one device covers all
    /// of it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let at = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[at];
        let offset = addr - range.base;
        let fits = offset
            .checked_add(size as u64)
            .is_some_and(|end| end <= range.len);
        fits.then_some((&range.device, offset))
    }

    /// Reads from the device at `addr`; all-ones when no device covers the access. Returns
    /// whether a device handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                tracing::debug!(
                    bus = self.name,
                    addr,
                    len = data.len(),
                    "read of unmapped address"
                );
                false
            }
        }
    }

    /// Writes to the device at `addr`; ignored when no device covers the access. Returns whether
    /// a device handled it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => {
                tracing::debug!(
                    bus = self.name,
                    addr,
                    len = data.len(),
                    "write to unmapped address"
                );
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records writes; reads return the low byte of the offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new("test");
        bus.insert(0x3f8, 8, probe.clone()).unwrap();
        let mut byte = [0u8];
        assert!(bus.read(0x3fb, &mut byte));
        assert_eq!(byte, [3]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(probe.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn unmapped_and_straddling_accesses_are_ignored() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new("test");
        bus.insert(0x1000, 0x10, probe.clone()).unwrap();
        let mut word = [0u8; 4];
        assert!(!bus.read(0xfff, &mut word));
        assert_eq!(word, [0xff; 4]);
        assert!(!bus.read(0x100e, &mut word));
        assert!(!bus.write(0x1010, &[1]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert!(probe.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new("test");
        let device = || -> SharedDevice { Arc::new(Mutex::new(Probe::default())) };
        bus.insert(0x60, 5, device()).unwrap();
        assert!(matches!(
            bus.insert(0x64, 1, device()),
            Err(BusError::Overlap { other: 0x60, .. })
        ));
        assert!(matches!(
            bus.insert(0x5f, 2, device()),
            Err(BusError::Overlap { other: 0x60, .. })
        ));
        assert!(matches!(
            bus.insert(0x10, 0, device()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, device()),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(0x65, 1, device()).unwrap();
        bus.insert(0x5f, 1, device()).unwrap();
    }
}
