//! virtio-rng (entropy) through the crate's `VirtIORng`, prefixed `virtio-drivers rng at <base>:`.
//! `request_entropy` blocks until the device answers; the KVM test's timeout covers a device
//! that never does.

use core::fmt;

use virtio_drivers::Error;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::MmioTransport;

use super::hal::GuestHal;
use crate::cmdline::MmioDevice;
use crate::report;

type Rng = VirtIORng<GuestHal, MmioTransport<'static>>;

/// Bytes asked for per request.
const DRAW: usize = 64;

#[derive(Debug)]
enum CheckError {
    Driver(Error),
    Length { got: usize },
    Zeros,
    Repeated,
}

impl From<Error> for CheckError {
    fn from(error: Error) -> Self {
        Self::Driver(error)
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver(error) => write!(f, "the driver returned: {error}"),
            Self::Length { got } => write!(f, "{got} bytes returned for a {DRAW}-byte buffer"),
            Self::Zeros => f.write_str("the bytes returned are all zero"),
            Self::Repeated => f.write_str("two requests returned the same bytes"),
        }
    }
}

/// Runs the checks on one entropy device.
pub fn check(device: &MmioDevice, transport: MmioTransport<'static>) {
    let base = device.base;
    let rng = Rng::new(transport).map_err(CheckError::Driver);
    report::record(
        format_args!("virtio-drivers rng at {base:#x}: VirtIORng::new"),
        &rng,
    );
    let Ok(mut rng) = rng else { return };
    report::record(
        format_args!(
            "virtio-drivers rng at {base:#x}: two request_entropy calls of {DRAW} bytes answer, \
             not zeros, and differ"
        ),
        &two_draws(&mut rng),
    );
}

fn two_draws(rng: &mut Rng) -> Result<(), CheckError> {
    let mut first = [0; DRAW];
    let mut second = [0; DRAW];
    let first = draw(rng, &mut first)?;
    let second = draw(rng, &mut second)?;
    if first == second {
        return Err(CheckError::Repeated);
    }
    Ok(())
}

/// One request; the bytes the device wrote (it may write fewer than asked, never none).
fn draw<'a>(rng: &mut Rng, buf: &'a mut [u8; DRAW]) -> Result<&'a [u8], CheckError> {
    let got = rng.request_entropy(buf)?;
    if got == 0 || got > DRAW {
        return Err(CheckError::Length { got });
    }
    let bytes = &buf[..got];
    // 8 zero bytes or more from a working source: 2^-64.
    if got >= 8 && bytes.iter().all(|&byte| byte == 0) {
        return Err(CheckError::Zeros);
    }
    Ok(bytes)
}
