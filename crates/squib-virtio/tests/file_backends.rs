//! The device on the real file engines: data written by the guest lands in the file, reads
//! return the file's bytes, FLUSH and DISCARD succeed.
#![forbid(unsafe_code)]

mod common;

use std::sync::Arc;

use common::*;
use squib_virtio::block::CacheType;
use squib_virtio::block::backend::BlockBackend;
use squib_virtio::block::engine::{
    AsyncFileBackend, SyncFileBackend, UringFileBackend, UringOptions,
};
use squib_virtio::testing::{BlockSlot, Buf, GuestDriver, range_bytes};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

const OK: u8 = VIRTIO_BLK_S_OK as u8;

fn run(d: &mut GuestDriver, request_type: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    let slot = BlockSlot::alloc(d);
    slot.submit(d, request_type, sector, data);
    d.kick();
    let used = d.wait_used().expect("request not completed");
    (slot.status(d), used.len)
}

fn exercise(open: impl Fn(&std::path::Path) -> Arc<dyn BlockBackend>) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pattern(DISK_SIZE)).unwrap();
    let mut d = driver_for(open(file.path()), CacheType::Writeback, ALL_RW);

    // Two-segment read of sectors 4..12.
    let (a, b) = (d.alloc(1024), d.alloc(3072));
    let read = [Buf::writable(a, 1024), Buf::writable(b, 3072)];
    assert_eq!(run(&mut d, VIRTIO_BLK_T_IN, 4, &read), (OK, 4097));
    let expected = pattern(DISK_SIZE);
    assert_eq!(d.read_bytes(a, 1024), expected[2048..3072]);
    assert_eq!(d.read_bytes(b, 3072), expected[3072..6144]);

    // Two-segment write of sectors 100..103, flushed.
    let (c, e) = (d.alloc(512), d.alloc(1024));
    d.write_bytes(c, &[0x11; 512]);
    d.write_bytes(e, &[0x22; 1024]);
    let write = [Buf::readable(c, 512), Buf::readable(e, 1024)];
    assert_eq!(run(&mut d, VIRTIO_BLK_T_OUT, 100, &write), (OK, 1));
    assert_eq!(run(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));

    // Discard sectors 200..208: reads back as zeroes.
    let range = d.alloc(16);
    d.write_bytes(range, &range_bytes(200, 8, 0));
    assert_eq!(
        run(&mut d, VIRTIO_BLK_T_DISCARD, 0, &[Buf::readable(range, 16)]),
        (OK, 1)
    );

    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(on_disk[51200..51712].iter().all(|&x| x == 0x11));
    assert!(on_disk[51712..52736].iter().all(|&x| x == 0x22));
    assert!(on_disk[102400..106496].iter().all(|&x| x == 0));
    assert_eq!(on_disk[52736..102400], expected[52736..102400]);
}

#[test]
fn sync_file_backend_serves_the_guest() {
    exercise(|path| Arc::new(SyncFileBackend::open(path, false).unwrap()));
}

#[test]
fn async_file_backend_serves_the_guest() {
    exercise(|path| Arc::new(AsyncFileBackend::open(path, false).unwrap()));
}

/// Runs [`exercise`] on a `UringFileBackend` with `options`; returns how many requests it served
/// off the ring.
fn exercise_uring(options: UringOptions) -> u64 {
    let kept = std::cell::RefCell::new(None);
    exercise(|path| {
        let backend = Arc::new(
            UringFileBackend::open(path, false)
                .unwrap()
                .with_options(options),
        );
        *kept.borrow_mut() = Some(Arc::clone(&backend));
        backend
    });
    let backend = kept.into_inner().expect("backend opened");
    backend.requests_off_ring()
}

#[test]
fn uring_file_backend_serves_the_guest() {
    assert_eq!(exercise_uring(UringOptions::default()), 0);
}

#[test]
fn uring_file_backend_with_fixed_buffers_serves_the_guest() {
    let options = UringOptions {
        fixed_buffers: Some(true),
        ..UringOptions::default()
    };
    assert_eq!(exercise_uring(options), 0);
}

#[test]
fn uring_file_backend_without_io_uring_serves_the_guest() {
    // A kernel without io_uring, simulated: the ring's setup fails as with ENOSYS and the device
    // falls back to the engine underneath, which serves every request (4 reach the disk).
    let options = UringOptions {
        simulate_unavailable: true,
        ..UringOptions::default()
    };
    assert_eq!(exercise_uring(options), 4);
}
