//! The vsock device's checks, against the host peer `crates/squib-vmm/tests/test_guest_devices.rs`
//! runs (ports below; data is `pattern(position)`):
//!
//! - host port 5000 echoes, 5002 accepts and never reads, nobody listens on 5999;
//! - the host connects to `uds_path` with `CONNECT 6000`, sends 1 MiB and expects it back.

use crate::cmdline::MmioDevice;
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::time::Deadline;
use crate::virtio_vsock::{LISTEN_PORT, Vsock, VsockError};

const ECHO_PORT: u32 = 5000;
const SILENT_PORT: u32 = 5002;
const NOBODY_PORT: u32 = 5999;
const ECHO_BYTES: usize = 1 << 20;
const MANY: usize = 64;
const MANY_BYTES: usize = 1024;

/// The byte at `position` of every stream in these checks.
pub fn pattern(position: usize) -> u8 {
    (position % 251) as u8
}

#[derive(Debug)]
pub(crate) enum CheckError {
    Vsock(VsockError),
    Mismatch { position: usize, got: u8 },
    Accepted,
    NeverStalled,
    NotReset,
}

impl From<VsockError> for CheckError {
    fn from(error: VsockError) -> Self {
        Self::Vsock(error)
    }
}

impl core::fmt::Display for CheckError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Vsock(e) => e.fmt(f),
            Self::Mismatch { position, got } => write!(
                f,
                "byte {position} is {got:#x}, expected {:#x}",
                pattern(*position)
            ),
            Self::Accepted => f.write_str("a connection to a port nobody listens on succeeded"),
            Self::NeverStalled => f.write_str("the non-reading peer never ran out of credit"),
            Self::NotReset => f.write_str("the connection opened before the snapshot is not reset"),
        }
    }
}

type Outcome = Result<(), CheckError>;

struct Scratch {
    out: DmaBuf,
    inp: DmaBuf,
}

pub fn check(device: &MmioDevice) {
    let mut vsock = match Vsock::init(device) {
        Ok(vsock) => vsock,
        Err(error) => {
            report::fail(format_args!("virtio-vsock: init at {:#x}", device.base), &error);
            return;
        }
    };
    report::pass(format_args!(
        "virtio-vsock: init at {:#x}, guest CID {}",
        vsock.base, vsock.cid
    ));
    let mut scratch = match (DmaBuf::new(4096, 4096), DmaBuf::new(4096, 4096)) {
        (Ok(out), Ok(inp)) => Scratch { out, inp },
        (Err(error), _) | (_, Err(error)) => {
            report::fail(format_args!("virtio-vsock: buffers"), &error);
            return;
        }
    };
    report::record(
        format_args!("virtio-vsock: RST for port {NOBODY_PORT}, where nobody listens"),
        &refused(&mut vsock),
    );
    report::record(
        format_args!("virtio-vsock: guest-initiated connection echoes 1 MiB byte-exact"),
        &guest_echo(&mut vsock, &mut scratch),
    );
    report::record(
        format_args!("virtio-vsock: {MANY} connections at once each echo {MANY_BYTES} bytes"),
        &many(&mut vsock, &mut scratch),
    );
    report::record(
        format_args!("virtio-vsock: a host peer that never reads stalls only its connection"),
        &silent_peer(&mut vsock, &mut scratch),
    );
    report::record(
        format_args!("virtio-vsock: host-initiated CONNECT {LISTEN_PORT} echoes 1 MiB byte-exact"),
        &host_echo(&mut vsock, &mut scratch),
    );
}

fn refused(vsock: &mut Vsock) -> Outcome {
    match vsock.connect(NOBODY_PORT) {
        Err(VsockError::Refused) => Ok(()),
        Err(error) => Err(error.into()),
        Ok(_) => Err(CheckError::Accepted),
    }
}

fn fill(buf: &mut DmaBuf, from: usize, len: usize) {
    for (i, byte) in buf.as_mut_slice()[..len].iter_mut().enumerate() {
        *byte = pattern(from + i);
    }
}

fn verify(bytes: &[u8], from: usize) -> Outcome {
    match bytes.iter().enumerate().find(|&(i, &b)| b != pattern(from + i)) {
        Some((i, &got)) => Err(CheckError::Mismatch {
            position: from + i,
            got,
        }),
        None => Ok(()),
    }
}

/// Sends `total` pattern bytes on `id` and reads them back, interleaved (the echo needs both).
fn echo(vsock: &mut Vsock, scratch: &mut Scratch, id: usize, total: usize) -> Outcome {
    let (mut sent, mut received) = (0, 0);
    let mut deadline = Deadline::standard();
    while received < total {
        if sent < total {
            let len = (total - sent).min(4096);
            fill(&mut scratch.out, sent, len);
            let n = vsock.try_send(id, &scratch.out.as_slice()[..len])?;
            sent += n;
        }
        vsock.pump()?;
        let n = vsock.read(id, scratch.inp.as_mut_slice())?;
        if n > 0 {
            verify(&scratch.inp.as_slice()[..n], received)?;
            received += n;
            deadline = Deadline::standard();
        }
        if deadline.passed() {
            return Err(VsockError::TimedOut("for echoed data").into());
        }
    }
    Ok(())
}

fn guest_echo(vsock: &mut Vsock, scratch: &mut Scratch) -> Outcome {
    let id = vsock.connect(ECHO_PORT)?;
    echo(vsock, scratch, id, ECHO_BYTES)?;
    vsock.close(id)?;
    Ok(())
}

fn many(vsock: &mut Vsock, scratch: &mut Scratch) -> Outcome {
    let mut ids = [0usize; MANY];
    for id in ids.iter_mut() {
        *id = vsock.connect_start(ECHO_PORT)?;
    }
    let deadline = Deadline::standard();
    loop {
        vsock.pump()?;
        let mut open = 0;
        for &id in &ids {
            open += usize::from(vsock.is_open(id)?);
        }
        if open == MANY {
            break;
        }
        if deadline.passed() {
            return Err(VsockError::TimedOut("for 64 connections").into());
        }
    }
    // Every connection's stream starts at a different position of the pattern.
    for (k, &id) in ids.iter().enumerate() {
        fill(&mut scratch.out, k, MANY_BYTES);
        let mut sent = 0;
        while sent < MANY_BYTES {
            sent += vsock.try_send(id, &scratch.out.as_slice()[sent..MANY_BYTES])?;
            vsock.pump()?;
        }
    }
    let mut received = [0usize; MANY];
    let deadline = Deadline::standard();
    while received.iter().any(|&r| r < MANY_BYTES) {
        vsock.pump()?;
        for (k, &id) in ids.iter().enumerate() {
            let n = vsock.read(id, scratch.inp.as_mut_slice())?;
            verify(&scratch.inp.as_slice()[..n], k + received[k])?;
            received[k] += n;
        }
        if deadline.passed() {
            return Err(VsockError::TimedOut("for 64 echoes").into());
        }
    }
    for &id in &ids {
        vsock.close(id)?;
    }
    Ok(())
}

fn silent_peer(vsock: &mut Vsock, scratch: &mut Scratch) -> Outcome {
    let silent = vsock.connect(SILENT_PORT)?;
    fill(&mut scratch.out, 0, 4096);
    let mut pushed = 0usize;
    let mut idle_rounds = 0;
    let deadline = Deadline::standard();
    // Push until the credit is gone and stays gone for 20 000 rounds of pumping.
    while idle_rounds < 20_000 {
        let n = vsock.try_send(silent, scratch.out.as_slice())?;
        pushed += n;
        idle_rounds = if n == 0 { idle_rounds + 1 } else { 0 };
        vsock.pump()?;
        if deadline.passed() {
            return Err(CheckError::NeverStalled);
        }
    }
    println!("# virtio-vsock: the silent peer's connection stalled after {pushed} bytes");
    let other = vsock.connect(ECHO_PORT)?;
    echo(vsock, scratch, other, 64 * 1024)?;
    vsock.close(other)?;
    vsock.close(silent)?;
    Ok(())
}

fn host_echo(vsock: &mut Vsock, scratch: &mut Scratch) -> Outcome {
    let id = vsock.accept()?;
    let (mut received, mut echoed) = (0usize, 0usize);
    let mut pending = 0usize;
    let mut deadline = Deadline::standard();
    while echoed < ECHO_BYTES {
        vsock.pump()?;
        if pending == 0 {
            pending = vsock.read(id, scratch.inp.as_mut_slice())?;
            verify(&scratch.inp.as_slice()[..pending], received)?;
            received += pending;
            if pending > 0 {
                scratch.out.as_mut_slice()[..pending]
                    .copy_from_slice(&scratch.inp.as_slice()[..pending]);
            }
        }
        if pending > 0 {
            let n = vsock.try_send(id, &scratch.out.as_slice()[..pending])?;
            if n > 0 {
                scratch.out.as_mut_slice().copy_within(n..pending, 0);
                pending -= n;
                echoed += n;
                deadline = Deadline::standard();
            }
        }
        if deadline.passed() {
            return Err(VsockError::TimedOut("echoing the host's data").into());
        }
    }
    // Let the host read the last bytes before the connection goes.
    for _ in 0..10_000 {
        vsock.pump()?;
    }
    vsock.close(id)?;
    Ok(())
}

/// For the snapshot mode: the device, buffers, and a connection to the echo port that has
/// echoed once — open when the host takes its snapshot.
pub struct SnapshotVsock {
    vsock: Vsock,
    scratch: Scratch,
    before: usize,
}

/// Sets up [`SnapshotVsock`] on `device`.
pub fn snapshot_prepare(device: &MmioDevice) -> Result<SnapshotVsock, VsockError> {
    let mut vsock = Vsock::init(device)?;
    let (Ok(out), Ok(inp)) = (DmaBuf::new(4096, 4096), DmaBuf::new(4096, 4096)) else {
        return Err(VsockError::TimedOut("for DMA memory"));
    };
    let mut scratch = Scratch { out, inp };
    let before = vsock.connect(ECHO_PORT)?;
    echo(&mut vsock, &mut scratch, before, 4096).map_err(|e| match e {
        CheckError::Vsock(e) => e,
        _ => VsockError::TimedOut("for a byte-exact echo before the snapshot"),
    })?;
    Ok(SnapshotVsock {
        vsock,
        scratch,
        before,
    })
}

/// After a restore: the device must send TRANSPORT_RESET, which resets the connection opened
/// before the snapshot; a new connection to the echo port must then echo byte-exact.
pub fn snapshot_after_restore(s: &mut SnapshotVsock) -> Result<(), CheckError> {
    let deadline = Deadline::standard();
    while s.vsock.transport_resets == 0 {
        s.vsock.pump()?;
        if deadline.passed() {
            return Err(VsockError::TimedOut("for a TRANSPORT_RESET event").into());
        }
    }
    if !matches!(s.vsock.is_open(s.before), Err(VsockError::Reset)) {
        return Err(CheckError::NotReset);
    }
    let id = s.vsock.connect(ECHO_PORT)?;
    echo(&mut s.vsock, &mut s.scratch, id, 64 << 10)?;
    s.vsock.close(id)?;
    println!(
        "# vsock: {} transport reset(s) seen",
        s.vsock.transport_resets
    );
    Ok(())
}
