//! vsock through the crate's `VsockConnectionManager` over `VirtIOSocket`, prefixed
//! `virtio-drivers vsock at <base>:`. A guest-initiated stream to the host's port 5000, which
//! under Firecracker's hybrid vsock is the Unix socket `<uds_path>_5000` (an echo server in the
//! KVM test): connect, a ping-pong of 512-byte chunks echoed byte-exact, shutdown.
//!
//! The crate owns every buffer the device writes (its rx queue), so a check may give up on a
//! silent device and return.

use core::fmt;

use virtio_drivers::Error;
use virtio_drivers::device::socket::{
    SocketError, VMADDR_CID_HOST, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEvent,
    VsockEventType,
};
use virtio_drivers::transport::mmio::MmioTransport;

use super::hal::GuestHal;
use crate::cmdline::MmioDevice;
use crate::pattern::{self, Mismatch};
use crate::report;
use crate::time::Deadline;

type Manager = VsockConnectionManager<GuestHal, MmioTransport<'static>>;

const ECHO: VsockAddr = VsockAddr {
    cid: VMADDR_CID_HOST,
    port: 5000,
};
const LOCAL_PORT: u32 = 49152;
/// One chunk: the crate's default receive buffer per connection holds 1024 bytes.
const CHUNK: usize = 512;
const ROUNDS: usize = 32;

#[derive(Debug)]
enum CheckError {
    Driver(Error),
    Timeout { waiting_for: &'static str },
    Unexpected { event: VsockEventType },
    Mismatch(Mismatch),
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
            Self::Timeout { waiting_for } => write!(f, "no {waiting_for} in time"),
            Self::Unexpected { event } => write!(f, "unexpected event {event:?}"),
            Self::Mismatch(mismatch) => mismatch.fmt(f),
        }
    }
}

type Outcome = Result<(), CheckError>;

/// Runs the checks on one vsock device.
pub fn check(device: &MmioDevice, transport: MmioTransport<'static>, seed: u64) {
    let base = device.base;
    let socket = VirtIOSocket::<GuestHal, _>::new(transport).map_err(CheckError::Driver);
    let cid = socket.as_ref().map_or(0, VirtIOSocket::guest_cid);
    report::record(
        format_args!("virtio-drivers vsock at {base:#x}: VirtIOSocket::new (guest CID {cid})"),
        &socket,
    );
    let Ok(socket) = socket else { return };
    let mut manager = Manager::new(socket);
    let connected = connect(&mut manager);
    report::record(
        format_args!(
            "virtio-drivers vsock at {base:#x}: connect to host port {}",
            ECHO.port
        ),
        &connected,
    );
    if connected.is_err() {
        return;
    }
    report::record(
        format_args!(
            "virtio-drivers vsock at {base:#x}: {ROUNDS} × {CHUNK} bytes sent and echoed byte-exact"
        ),
        &echo(&mut manager, seed),
    );
    report::record(
        format_args!("virtio-drivers vsock at {base:#x}: shutdown, the peer disconnects"),
        &shutdown(&mut manager),
    );
}

/// The next event the manager passes on, or a timeout.
fn next_event(manager: &mut Manager, waiting_for: &'static str) -> Result<VsockEvent, CheckError> {
    let deadline = Deadline::standard();
    loop {
        if let Some(event) = manager.poll()? {
            return Ok(event);
        }
        if deadline.passed() {
            return Err(CheckError::Timeout { waiting_for });
        }
        core::hint::spin_loop();
    }
}

fn connect(manager: &mut Manager) -> Outcome {
    manager.connect(ECHO, LOCAL_PORT)?;
    loop {
        match next_event(manager, "Connected event")?.event_type {
            VsockEventType::Connected => return Ok(()),
            VsockEventType::CreditUpdate => {}
            event => return Err(CheckError::Unexpected { event }),
        }
    }
}

fn echo(manager: &mut Manager, seed: u64) -> Outcome {
    let mut sent = [0; CHUNK];
    let mut echoed = [0; CHUNK];
    for round in 0..ROUNDS as u64 {
        pattern::fill(&mut sent, seed, round);
        loop {
            match manager.send(ECHO, LOCAL_PORT, &sent) {
                Ok(()) => break,
                // The crate asked the peer for credit; its answer comes as an event.
                Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => {
                    wait_quietly(manager, "credit from the peer")?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        let mut received = 0;
        while received < CHUNK {
            if manager.recv_buffer_available_bytes(ECHO, LOCAL_PORT)? == 0 {
                wait_quietly(manager, "echoed data")?;
                continue;
            }
            received += manager.recv(ECHO, LOCAL_PORT, &mut echoed[received..])?;
            manager.update_credit(ECHO, LOCAL_PORT)?;
        }
        pattern::compare(&sent, &echoed, round).map_err(CheckError::Mismatch)?;
    }
    Ok(())
}

/// Waits for an event that keeps the connection open (data, credit).
fn wait_quietly(manager: &mut Manager, waiting_for: &'static str) -> Outcome {
    match next_event(manager, waiting_for)?.event_type {
        VsockEventType::Received { .. } | VsockEventType::CreditUpdate => Ok(()),
        event => Err(CheckError::Unexpected { event }),
    }
}

fn shutdown(manager: &mut Manager) -> Outcome {
    manager.shutdown(ECHO, LOCAL_PORT)?;
    loop {
        match next_event(manager, "Disconnected event")?.event_type {
            VsockEventType::Disconnected { .. } => return Ok(()),
            VsockEventType::CreditUpdate | VsockEventType::Received { .. } => {}
            event => return Err(CheckError::Unexpected { event }),
        }
    }
}
