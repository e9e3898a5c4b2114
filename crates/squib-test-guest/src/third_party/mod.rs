//! `guest.mode=virtio-drivers`: the devices on the command line driven by a third-party driver,
//! the `virtio-drivers` crate (rcore-os), used the way its documentation shows a new user. It
//! was not written against squib, so it finds what squib's own driver (written alongside the
//! device) would not: multi-bit status writes, QueueReady = 0 to stop a queue, indirect
//! descriptors. Output and verdict as in the checks mode (`report`).
//!
//! One module per device type the crate drives (`blk`, `net`, `rng`, `vsock`); another (the
//! crate's console, GPU, input, sound) would be a module with a `check` function and an arm in
//! `run`'s match.

mod blk;
mod hal;
mod net;
mod rng;
mod vsock;

use core::fmt;
use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::cmdline::{DiskName, MmioDevice, Options};
use crate::serial::println;
use crate::virtio_mmio::{self, TransportError};
use crate::{heap, report, time};

/// VIRTIO_F_INDIRECT_DESC (virtio 1.2 §6).
const F_INDIRECT_DESC: u64 = 1 << 28;

/// Drives every device on the command line with the third-party driver, then ends the run.
pub fn run(options: &Options) -> ! {
    let seed = time::tsc();
    println!("# virtio-drivers 0.13, pattern seed {seed:#x}");
    if options.device_count() == 0 {
        report::fail(
            format_args!("virtio-drivers"),
            &"no virtio_mmio.device= on the command line",
        );
    }
    if let Err(error) = heap::init() {
        report::abort(format_args!("heap: {error}"));
    }
    let mut blk_scratch = match blk::Scratch::new() {
        Ok(scratch) => scratch,
        Err(error) => report::abort(format_args!("scratch buffers: {error}")),
    };
    for (index, device) in options.devices().enumerate() {
        let name = DiskName(index);
        let opened = open(device);
        let (transport, offered) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                report::fail(
                    format_args!("virtio-drivers {name}: MmioTransport at {:#x}", device.base),
                    &error,
                );
                continue;
            }
        };
        match transport.device_type() {
            DeviceType::Block => blk::check(
                options,
                blk::Disk {
                    name,
                    device,
                    offers_indirect: offered & F_INDIRECT_DESC != 0,
                },
                transport,
                &mut blk_scratch,
                seed,
            ),
            DeviceType::Network => net::check(device, transport, seed),
            DeviceType::EntropySource => rng::check(device, transport),
            DeviceType::Socket => vsock::check(device, transport, seed),
            other => println!(
                "# virtio-drivers {name}: a {other:?} device at {:#x}, not covered yet",
                device.base
            ),
        }
    }
    report::finish()
}

/// Why a device's transport could not be opened.
#[derive(Debug)]
enum OpenError {
    /// This guest's own probe: the region is outside the mapped window, or not virtio-mmio v2.
    Probe(TransportError),
    /// The third-party transport refused it.
    Mmio(MmioError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Probe(error) => error.fmt(f),
            Self::Mmio(error) => write!(f, "MmioTransport::new: {error}"),
        }
    }
}

/// Opens the third-party transport on `device`, after this guest's own probe has checked that
/// the region is mapped (the crate cannot know), and returns it with the feature bits the
/// device offers (read by the probe, for the checks' expectations only).
fn open(device: &MmioDevice) -> Result<(MmioTransport<'static>, u64), OpenError> {
    let probe =
        virtio_mmio::Transport::probe(device.base, device.size).map_err(OpenError::Probe)?;
    let offered = probe.device_features();
    let header = NonNull::new(device.base as *mut VirtIOHeader).ok_or(OpenError::Probe(
        TransportError::OutsideMmioWindow {
            base: device.base,
            size: device.size,
        },
    ))?;
    // SAFETY: the probe checked that `base..base + size` lies in the MMIO window, which the page
    // tables map uncached for the whole run, and that it holds a virtio-mmio register block;
    // nothing else in this mode touches it while the transport lives.
    let transport =
        unsafe { MmioTransport::new(header, device.size as usize) }.map_err(OpenError::Mmio)?;
    Ok((transport, offered))
}
