//! The boot-timer device (Firecracker's `--boot-timer`): a guest 1-byte write of 123 at its
//! base logs how long the guest took to boot.
//!
//! The line starts as Firecracker's does — `Guest-boot-time = <us> us <ms> ms, <cpu us> CPU us
//! <cpu ms> CPU ms`, wall and process-CPU time since the microVM's build started (Firecracker's
//! reference: the `InstanceStart` request) — then adds squib's split: since the process started
//! (the jailer's `--start-time-us` when given) and since the vCPUs started.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use squib_host::clock::{Clock, now_us};

use super::bus::BusDevice;

/// The value the guest writes when it has booted.
pub const BOOT_COMPLETE: u8 = 123;

/// When the microVM's build started: the boot timer's reference, as in Firecracker.
#[derive(Clone, Copy, Debug)]
pub struct BuildStart {
    wall: Instant,
    cpu_us: u64,
}

impl BuildStart {
    /// Now (wall clock and this process's CPU time).
    pub fn now() -> Self {
        Self {
            wall: Instant::now(),
            cpu_us: now_us(Clock::ProcessCpu),
        }
    }
}

/// The boot-timer device.
#[derive(Debug)]
pub struct BootTimer {
    build_start: BuildStart,
    process_start: Instant,
    vcpus_start: Arc<OnceLock<Instant>>,
}

impl BootTimer {
    /// A timer measuring from `build_start`, `process_start` and whenever `vcpus_start` gets
    /// set.
    pub fn new(
        build_start: BuildStart,
        process_start: Instant,
        vcpus_start: Arc<OnceLock<Instant>>,
    ) -> Self {
        Self {
            build_start,
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
        let since_build = now.duration_since(self.build_start.wall).as_micros();
        let cpu_us = now_us(Clock::ProcessCpu).saturating_sub(self.build_start.cpu_us);
        let since_start = now.duration_since(self.process_start).as_micros();
        let since_vcpus = self
            .vcpus_start
            .get()
            .map_or(0, |t| now.duration_since(*t).as_micros());
        tracing::info!(
            "Guest-boot-time = {since_build:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms; \
             {since_start} us since squib started, {since_vcpus} us since the vCPUs started",
            since_build / 1000,
            cpu_us / 1000,
        );
    }
}
