//! squib-test-guest: a bare-metal guest that boots through squib's Linux (or PVH) entry, checks
//! its virtio-blk devices and powers off with the verdict. See `docs/test-guest.md`.
#![no_std]
#![no_main]

mod apic;
mod boot;
mod cpu;
mod interrupts;
mod paging;
mod port;
mod power;
mod report;
mod serial;
mod time;

use serial::println;

/// Entered at CPL3 from the boot code, with the entry kind and its boot structure.
#[unsafe(no_mangle)]
extern "C" fn user_main(entry: u32, info: u64) -> ! {
    let boot = match boot::BootInfo::from_entry(entry, info) {
        Ok(boot) => boot,
        Err(error) => report::abort(format_args!("boot: {error}")),
    };
    let cmdline = match boot.command_line() {
        Ok(cmdline) => cmdline,
        Err(error) => report::abort(format_args!("boot: {error}")),
    };
    println!("# booted via {}, command line: {cmdline}", boot.protocol());
    report::pass(format_args!("boot"));
    report::finish()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    report::abort(format_args!("panic: {info}"))
}
