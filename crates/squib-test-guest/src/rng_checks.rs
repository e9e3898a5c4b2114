//! The entropy device's checks: random bytes arrive in full and differ between reads; with
//! `guest.rng_rate=<bytes/s>`, the guest empties the limiter's bucket and then reads 3 s worth
//! of bytes between two `# virtio-rng: rate window …` lines, which the host timestamps: the
//! guest has no trustworthy clock (its PIT is too coarse under PVM to calibrate the TSC), the
//! host's is exact, and serial output reaches it within a few milliseconds.

use core::fmt;

use crate::cmdline::{MmioDevice, Options};
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::time;
use crate::virtio_rng::{ReadError, RngDevice};

const READ_BYTES: u32 = 512;
/// Bytes per request in the rate check.
const RATE_CHUNK: u32 = 1024;

#[derive(Debug)]
pub(crate) enum RngCheckError {
    Read(ReadError),
    Short { asked: u32, got: u32 },
    Same,
    AllZero,
    NeverThrottled,
}

impl From<ReadError> for RngCheckError {
    fn from(error: ReadError) -> Self {
        Self::Read(error)
    }
}

impl fmt::Display for RngCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(error) => error.fmt(f),
            Self::Short { asked, got } => write!(f, "asked for {asked} bytes, got {got}"),
            Self::Same => f.write_str("two reads returned the same bytes"),
            Self::AllZero => f.write_str("the bytes are all zero"),
            Self::NeverThrottled => f.write_str("no request was ever held back by the limiter"),
        }
    }
}

pub fn check(options: &Options, device: &MmioDevice) {
    let mut rng = match RngDevice::init(device) {
        Ok(rng) => rng,
        Err(error) => {
            report::fail(format_args!("virtio-rng: init at {:#x}", device.base), &error);
            return;
        }
    };
    report::pass(format_args!(
        "virtio-rng: init at {:#x} gsi {}",
        rng.base, rng.gsi
    ));
    let (first, second) = match (DmaBuf::new(4096, 4096), DmaBuf::new(4096, 4096)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(error), _) | (_, Err(error)) => {
            report::fail(format_args!("virtio-rng: buffers"), &error);
            return;
        }
    };
    report::record(
        format_args!("virtio-rng: two reads of {READ_BYTES} bytes arrive in full and differ"),
        &two_reads(&mut rng, &first, &second),
    );
    if let Some(expected) = options.rng_rate {
        report::record(
            format_args!("virtio-rng: read through the rate limiter (the host times it)"),
            &rate(&mut rng, &first, expected),
        );
    }
}

pub(crate) fn two_reads(rng: &mut RngDevice, first: &DmaBuf, second: &DmaBuf) -> Result<(), RngCheckError> {
    for buf in [first, second] {
        let got = rng.read(buf, READ_BYTES)?;
        if got != READ_BYTES {
            return Err(RngCheckError::Short {
                asked: READ_BYTES,
                got,
            });
        }
    }
    let n = READ_BYTES as usize;
    let (a, b) = (&first.as_slice()[..n], &second.as_slice()[..n]);
    if a == b {
        return Err(RngCheckError::Same);
    }
    if a.iter().all(|&byte| byte == 0) {
        return Err(RngCheckError::AllZero);
    }
    Ok(())
}

/// Empties the bucket (until one request is held back by the limiter: it takes 100 times as
/// long as the fastest one, or more), then reads 3 s worth of bytes inside the timed window.
fn rate(rng: &mut RngDevice, buf: &DmaBuf, expected: u64) -> Result<(), RngCheckError> {
    let mut fastest = u64::MAX;
    let mut drained = false;
    // The bucket holds at most a few seconds of bytes at any sane configuration.
    for _ in 0..(expected * 4 / u64::from(RATE_CHUNK) + 16) {
        let start = time::tsc();
        read_full(rng, buf, RATE_CHUNK)?;
        let cycles = time::tsc() - start;
        fastest = fastest.min(cycles);
        if cycles > fastest.saturating_mul(100) {
            drained = true;
            break;
        }
    }
    if !drained {
        return Err(RngCheckError::NeverThrottled);
    }
    let total = (expected * 3).next_multiple_of(u64::from(RATE_CHUNK));
    println!("# virtio-rng: rate window start, {total} bytes");
    let mut moved = 0u64;
    while moved < total {
        read_full(rng, buf, RATE_CHUNK)?;
        moved += u64::from(RATE_CHUNK);
    }
    println!("# virtio-rng: rate window end");
    Ok(())
}

fn read_full(rng: &mut RngDevice, buf: &DmaBuf, len: u32) -> Result<(), RngCheckError> {
    match rng.read(buf, len)? {
        got if got == len => Ok(()),
        got => Err(RngCheckError::Short { asked: len, got }),
    }
}
