//! The durability mode (`guest.mode=durable`): write a known pattern to vda, FLUSH, say so, and
//! wait to be killed. The host kills the VMM the moment it sees the line and checks the file.
//!
//! The pattern is [`DURABLE_BYTES`] bytes at sector [`DURABLE_SECTOR`]; the byte at disk offset
//! `o` is `(o / 512 * 7 + o) as u8 ^ 0xa5`, so the host can recompute it.

use crate::cmdline::{Completion, Options};
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::virtio_blk::{BlockDevice, Op, SECTOR_BYTES, Status, feature, segment};

/// First sector written.
const DURABLE_SECTOR: u64 = 1024;
/// Bytes written.
const DURABLE_BYTES: usize = 64 * 1024;

fn pattern_byte(offset: u64) -> u8 {
    (offset / 512 * 7 + offset) as u8 ^ 0xa5
}

/// Writes, flushes, prints `DURABLE flushed sector=<s> bytes=<n>`, then spins until killed.
pub fn run(options: &Options) -> ! {
    let Some(device) = options.devices().next() else {
        report::abort(format_args!("durable: no disk on the command line"));
    };
    let mut disk = match BlockDevice::init(device) {
        Ok(disk) => disk,
        Err(error) => report::abort(format_args!("durable: vda init: {error}")),
    };
    if !disk.has(feature::FLUSH) {
        report::abort(format_args!("durable: vda does not offer FLUSH"));
    }
    let sectors = (DURABLE_BYTES / SECTOR_BYTES) as u64;
    if disk.capacity() < DURABLE_SECTOR + sectors {
        report::abort(format_args!("durable: vda is too small"));
    }
    let mut buf = match DmaBuf::new(DURABLE_BYTES, 4096) {
        Ok(buf) => buf,
        Err(error) => report::abort(format_args!("durable: {error}")),
    };
    let base = DURABLE_SECTOR * SECTOR_BYTES as u64;
    for (i, byte) in buf.as_mut_slice().iter_mut().enumerate() {
        *byte = pattern_byte(base + i as u64);
    }
    let data = [segment(&buf, 0, DURABLE_BYTES)];
    for (op, what, data) in [
        (Op::Write, "write", &data[..]),
        (Op::Flush, "flush", &[][..]),
    ] {
        match disk.run(op, DURABLE_SECTOR, data, Completion::Poll) {
            Ok(Status::Ok) => {}
            Ok(status) => report::abort(format_args!("durable: {what}: {status}")),
            Err(error) => report::abort(format_args!("durable: {what}: {error}")),
        }
    }
    println!("DURABLE flushed sector={DURABLE_SECTOR} bytes={DURABLE_BYTES}");
    loop {
        core::hint::spin_loop();
    }
}
