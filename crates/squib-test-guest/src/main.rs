//! squib-test-guest: a bare-metal guest that boots through squib's Linux (or PVH) entry, checks
//! its virtio-blk devices and powers off with the verdict. See `docs/test-guest.md`.
//!
//! Layout: `boot` (entries), `cpu`/`paging`/`interrupts` (CPL0 tables and handlers), `apic`,
//! `port`/`serial`/`power`, `cmdline`, `dma`, `virtio_mmio`/`virtqueue`/`virtio_blk` (the
//! driver), `checks`/`bench`/`reset_storm`/`durable`/`snapshot` (the workloads), `third_party`
//! (the same devices through the `virtio-drivers` crate, with `heap` for its allocations),
//! `pattern` (the data written) and `report` (verdict and exit).
#![no_std]
#![no_main]

mod apic;
mod bench;
mod boot;
mod checks;
mod cmdline;
mod cpu;
mod dma;
mod durable;
mod heap;
mod interrupts;
mod net_checks;
mod paging;
mod pattern;
mod port;
mod power;
mod report;
mod reset_storm;
mod rng_checks;
mod serial;
mod snapshot;
mod third_party;
mod time;
mod virtio_blk;
mod virtio_init;
mod virtio_rng;
mod virtio_vsock;
mod vsock_checks;
mod virtio_mmio;
mod virtio_net;
mod virtqueue;

use cmdline::Mode;
use serial::println;

/// Entered at CPL3 from the boot code, with the entry kind and its boot structure.
#[unsafe(no_mangle)]
extern "C" fn user_main(entry: u32, info: u64) -> ! {
    let boot = boot::BootInfo::from_entry(entry, info)
        .unwrap_or_else(|error| report::abort(format_args!("boot: {error}")));
    let cmdline = boot
        .command_line()
        .unwrap_or_else(|error| report::abort(format_args!("boot: {error}")));
    let options = cmdline::parse(cmdline)
        .unwrap_or_else(|error| report::abort(format_args!("command line: {error}")));
    if options.mode == Mode::Boot {
        power::reset();
    }
    println!("# entry {}, command line: {cmdline}", boot.protocol());
    if let Some(fault) = options.fault {
        raise(fault);
    }
    match options.mode {
        Mode::Boot | Mode::Test => checks::run(&options),
        Mode::Bench => bench::run(&options),
        Mode::Snapshot => snapshot::run(&options),
        Mode::ResetStorm => reset_storm::run(&options),
        Mode::Durable => durable::run(&options),
        Mode::VirtioDrivers => third_party::run(&options),
    }
}

/// Raises an exception at CPL3; the CPL0 handler reports it and ends the run.
fn raise(fault: cmdline::Fault) -> ! {
    /// Above the 4 GiB the page tables map.
    const UNMAPPED: u64 = 1 << 40;
    match fault {
        // SAFETY: `ud2` only raises #UD, which the exception handler turns into a failed run.
        cmdline::Fault::InvalidOpcode => unsafe { core::arch::asm!("ud2", options(noreturn)) },
        cmdline::Fault::PageFault => {
            // SAFETY: the address is unmapped, so the read faults and never returns a value;
            // the #PF handler ends the run.
            unsafe { core::ptr::read_volatile(UNMAPPED as *const u8) };
            report::abort(format_args!("reading unmapped {UNMAPPED:#x} did not fault"))
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report::abort(format_args!("panic: {info}"))
}
