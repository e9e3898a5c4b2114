//! squib-test-guest: a bare-metal guest that boots through squib's Linux (or PVH) entry, checks
//! its virtio-blk devices and powers off with the verdict. See `docs/test-guest.md`.
//!
//! Layout: `boot` (entries), `cpu`/`paging`/`interrupts` (CPL0 tables and handlers), `apic`,
//! `port`/`serial`/`power`, `cmdline`, `dma`, `virtio_mmio`/`virtqueue`/`virtio_blk` (the
//! driver), `checks`/`bench` (the two workloads) and `report` (verdict and exit).
#![no_std]
#![no_main]

mod apic;
mod bench;
mod boot;
mod checks;
mod cmdline;
mod cpu;
mod dma;
mod interrupts;
mod paging;
mod port;
mod power;
mod report;
mod serial;
mod time;
mod virtio_blk;
mod virtio_mmio;
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
    match options.mode {
        Mode::Boot | Mode::Test => checks::run(&options),
        Mode::Bench => bench::run(&options),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report::abort(format_args!("panic: {info}"))
}
