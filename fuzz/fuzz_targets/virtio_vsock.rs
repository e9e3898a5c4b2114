//! The virtio-vsock device as a hostile guest drives it: packets on the tx queue with any op,
//! CIDs, ports, type, flags, credit and length (lying about the payload, past the limit), headers
//! split or short, device-writable or wild buffers, indirect tables; rx and event buffers of any
//! shape; raw ring corruption and bogus `avail.idx`. The host side is real: Unix sockets in a
//! scratch directory, one port with a listener (the guest's REQUESTs to it connect; the harness
//! accepts, writes to and closes those connections) and a host-initiated `CONNECT` now and then.
//! The worker runs inline (`squib_fuzz::guest::driver`).
//!
//! Oracles: nothing panics; the device writes guest memory only through device-writable
//! descriptors and the used rings; every tx chain is used, or the device asks for a reset; no
//! more rx chains are used than were posted; the counters agree with the used rings (every tx
//! chain is a counted packet or a counted failure; every delivered packet used an rx chain).
#![no_main]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_fuzz::guest::{
    Handover, Heap, Shape, activate, add_chain, assert_all_used, corrupt_ring, driver, needs_reset,
    pop_all, reset, rings_exposed, run_checked, wild_buf, writable_chain,
};
use squib_virtio::testing::{Buf, GuestDriver, VSOCK_HDR_LEN, VsockHdr, vsock_op};
use squib_virtio::vsock::{VsockConfig, VsockDevice};

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const GUEST_CID: u64 = 3;
/// The host port with a listener (`<uds>_1024`); other ports have none.
const LISTENING_PORT: u32 = 1024;

/// The scratch directory and the host listener, once per process.
struct Host {
    uds: PathBuf,
    listener: UnixListener,
}

/// SIGPIPE does nothing, so a write to a socket whose peer closed fails with EPIPE: what squib's
/// process gets (Rust's runtime ignores SIGPIPE before `main`), which libFuzzer's C `main` does
/// not arrange — the device's and the harness's writes to closed sockets would kill the fuzzer.
extern "C" fn on_sigpipe(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(libc::SIGPIPE, on_sigpipe)
            .expect("SIGPIPE handler");
        // tmpfs when there is one: the device binds (creates) its socket file for every input,
        // which on a disk file system costs more than the rest of the execution.
        let tmp = Path::new("/dev/shm");
        let tmp = if tmp.is_dir() {
            tmp.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tmp.join(format!("squib-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let uds = dir.join("v.sock");
        let _ = std::fs::remove_file(&uds);
        let port = dir.join(format!("v.sock_{LISTENING_PORT}"));
        let _ = std::fs::remove_file(&port);
        let listener = UnixListener::bind(&port).expect("host listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        Host { uds, listener }
    })
}

fn header(u: &mut Unstructured, payload: u32) -> Result<VsockHdr> {
    let pick = |u: &mut Unstructured, usual: u64| -> Result<u64> {
        Ok(if u.ratio(7, 8)? {
            usual
        } else {
            u.arbitrary()?
        })
    };
    Ok(VsockHdr {
        src_cid: pick(u, GUEST_CID)?,
        dst_cid: pick(u, 2)?,
        src_port: if u.ratio(7, 8)? {
            u.int_in_range(5000..=5003)?
        } else {
            u.arbitrary()?
        },
        dst_port: match u.int_in_range(0..=3)? {
            0 | 1 => LISTENING_PORT,
            2 => LISTENING_PORT + 1,
            _ => u.arbitrary()?,
        },
        len: if u.ratio(7, 8)? {
            payload
        } else {
            u.arbitrary()?
        },
        type_: pick(u, 1)? as u16,
        op: if u.ratio(15, 16)? {
            u.int_in_range(vsock_op::REQUEST..=vsock_op::CREDIT_REQUEST)?
        } else {
            u.arbitrary()?
        },
        flags: if u.ratio(3, 4)? {
            u.int_in_range(0..=3)?
        } else {
            u.arbitrary()?
        },
        buf_alloc: if u.ratio(3, 4)? {
            u.int_in_range(0..=1 << 18)?
        } else {
            u.arbitrary()?
        },
        fwd_cnt: u.arbitrary()?,
    })
}

/// A tx packet: header and payload laid over one to four buffers, sometimes with a wild or
/// device-writable one.
fn tx_chain(u: &mut Unstructured, d: &mut GuestDriver, heap: &mut Heap) -> Result<Vec<Buf>> {
    let payload: u32 = match u.int_in_range(0..=3)? {
        0 => 0,
        1 => u.int_in_range(1..=64)?,
        2 => u.int_in_range(0..=4096)?,
        _ => u.int_in_range(0..=70_000)?,
    };
    let hdr = header(u, payload)?;
    let mut bytes = hdr.to_bytes().to_vec();
    if u.ratio(1, 16)? {
        bytes.truncate(u.int_in_range(0..=VSOCK_HDR_LEN)?);
    }
    bytes.extend((0..payload).map(|i| i as u8));
    let mut bufs = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() && bufs.len() < 4 {
        let take = if bufs.len() == 3 || u.ratio(1, 2)? {
            rest.len()
        } else {
            u.int_in_range(0..=rest.len())?
        };
        let Some(addr) = heap.alloc(d, take as u32) else {
            break;
        };
        d.write_bytes(addr, &rest[..take]);
        rest = &rest[take..];
        bufs.push(Buf {
            addr,
            len: take as u32,
            device_writes: u.ratio(1, 32)?,
        });
    }
    if u.ratio(1, 16)? {
        bufs.push(wild_buf(u)?);
    }
    Ok(bufs)
}

/// Lengths for rx or event buffers: mostly `usual`, sometimes anything up to 64 bytes more.
fn len(usual: u32) -> impl FnMut(&mut Unstructured) -> Result<u32> {
    move |u| {
        Ok(if u.ratio(3, 4)? {
            usual
        } else {
            u.int_in_range(0..=usual + 64)?
        })
    }
}

/// The host's side: accepts the guest's connections and writes to or closes them; sometimes
/// connects to the device's socket itself.
fn host_moves(u: &mut Unstructured, streams: &mut Vec<UnixStream>, uds: &PathBuf) -> Result<()> {
    while let Ok((stream, _)) = host().listener.accept() {
        let _ = stream.set_nonblocking(true);
        streams.push(stream);
    }
    for stream in streams.iter_mut() {
        match u.int_in_range(0..=3)? {
            0 => {
                let len = u.int_in_range(0..=8192)?;
                let _ = stream.write(&vec![0x5a; len]);
            }
            1 => {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
            }
            2 => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            _ => {}
        }
    }
    if u.ratio(1, 8)?
        && let Ok(mut stream) = UnixStream::connect(uds)
    {
        let _ = stream.set_nonblocking(true);
        let line = if u.ratio(3, 4)? {
            format!("CONNECT {}\n", u.int_in_range(5000..=5003)?)
        } else {
            let len = u.int_in_range(0..=40)?;
            String::from_utf8_lossy(u.bytes(len)?).into_owned()
        };
        let _ = stream.write(line.as_bytes());
        streams.push(stream);
    }
    Ok(())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let uds = host().uds.clone();
    let Ok(device) = VsockDevice::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    }) else {
        return Ok(());
    };
    let handle = device.handle();
    let mut d = driver(Box::new(device));
    let mut streams = Vec::new();
    let result = drive(u, &mut d, &handle, &mut streams, &uds);
    reset(&mut d);
    result
}

fn drive(
    u: &mut Unstructured,
    d: &mut GuestDriver,
    handle: &squib_virtio::vsock::VsockHandle,
    streams: &mut Vec<UnixStream>,
    uds: &PathBuf,
) -> Result<()> {
    let Some((_, sizes)) = activate::<3>(u, d)? else {
        return Ok(());
    };
    let mut heap = Heap::new();
    let mut free = sizes;
    let mut added = [0u16; 3];
    let mut ring_corrupted = false;
    for _ in 0..u.int_in_range(1..=4)? {
        for _ in 0..u.int_in_range(1..=8)? {
            let index = match u.int_in_range(0..=7)? {
                0..=3 => TX,
                4..=6 => RX,
                _ => EVENT,
            };
            d.select_queue(index);
            let (bufs, wild) = match index {
                TX => (tx_chain(u, d, &mut heap)?, false),
                RX => writable_chain(u, d, &mut heap, 2, 16, len(4096 + VSOCK_HDR_LEN as u32))?,
                _ => writable_chain(u, d, &mut heap, 2, 16, len(8))?,
            };
            if add_chain(u, d, &mut heap, &bufs, &mut free[index], sizes[index])? == Shape::NoRoom {
                break;
            }
            added[index] += 1;
            // A wild writable buffer may land on the rings.
            ring_corrupted |= wild;
        }
        if u.ratio(1, 10)? {
            ring_corrupted = true;
            let index = u.int_in_range(0..=2)?;
            d.select_queue(index);
            if u.arbitrary()? {
                corrupt_ring(u, d, index)?;
            } else {
                let idx: u16 = u.arbitrary()?;
                d.publish_avail_idx(idx);
            }
        }
        let how = [
            Handover::arbitrary(u)?,
            Handover::arbitrary(u)?,
            Handover::arbitrary(u)?,
        ];
        // A writable descriptor over the rings (a wild or corrupted one, a broken indirect
        // table) lets the device rewrite what the checks below read.
        ring_corrupted |= rings_exposed(d, &sizes);
        run_checked(d, &sizes, &how, !ring_corrupted);
        host_moves(u, streams, uds)?;
        run_checked(d, &sizes, &[], !ring_corrupted);
        ring_corrupted |= rings_exposed(d, &sizes);
    }
    run_checked(d, &sizes, &[Handover::Kick; 3], !ring_corrupted);
    ring_corrupted |= rings_exposed(d, &sizes);
    let broken = needs_reset(d);
    let used = [RX, TX, EVENT].map(|index| pop_all(d, index).len() as u16);
    if ring_corrupted || broken {
        return Ok(());
    }
    let m = handle.metrics();
    assert_all_used("tx", used[TX].into(), added[TX].into(), broken);
    let tx = u64::from(used[TX]);
    assert!(
        m.tx_packets_count <= tx && tx <= m.tx_packets_count + m.tx_queue_event_fails,
        "tx chains used {tx} vs packets {} and failures {}",
        m.tx_packets_count,
        m.tx_queue_event_fails
    );
    assert!(used[RX] <= added[RX], "more rx chains used than posted");
    assert!(
        used[EVENT] <= added[EVENT],
        "more event chains used than posted"
    );
    assert!(
        m.rx_packets_count <= u64::from(used[RX]),
        "{} packets delivered in {} rx chains",
        m.rx_packets_count,
        used[RX]
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
