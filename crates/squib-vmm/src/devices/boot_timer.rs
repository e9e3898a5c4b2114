//! The boot-timer device (Firecracker's `--boot-timer`): a guest 1-byte write of 123 at its
//! base logs how long the guest took to boot, since the VMM process started and since the vCPUs
//! started.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::bus::BusDevice;

/// The value the guest writes when it has booted.
pub const BOOT_COMPLETE: u8 = 123;

/// The boot-timer device.
#[derive(Debug)]
pub struct BootTimer {
    process_start: Instant,
    vcpus_start: Arc<OnceLock<Instant>>,
}

impl BootTimer {
    /// A timer measuring from `process_start` and from whenever `vcpus_start` gets set.
    pub fn new(process_start: Instant, vcpus_start: Arc<OnceLock<Instant>>) -> Self {
        Self {
            process_start,
            vcpus_start,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_COMPLETE] {
            return;
        }
        let now = Instant::now();
        let since_start = now.duration_since(self.process_start);
        let since_vcpus = self.vcpus_start.get().map(|t| now.duration_since(*t));
        tracing::info!(
            "Guest-boot-time = {} us ({} ms) since squib started, {} us since the vCPUs started",
            since_start.as_micros(),
            since_start.as_millis(),
            since_vcpus.map_or(0, |d| d.as_micros()),
        );
    }
}
