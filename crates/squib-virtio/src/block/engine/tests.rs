//! Behaviour both engines must share, run against each of them.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::{AsyncFileBackend, SyncFileBackend};
use crate::GuestMemory;
use crate::block::backend::{BackendError, BlockBackend, Segment};

/// Two adjacent 1 MiB regions, so a segment can straddle a region boundary.
const REGION: u64 = 0x10_0000;

fn memory() -> GuestMemory {
    squib_host::guest_memory::anonymous(
        &[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ],
        false,
    )
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn disk_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file
}

type Open = fn(&Path, bool) -> std::io::Result<Arc<dyn BlockBackend>>;

/// Each engine's `open`, by name.
const ENGINES: [(&str, Open); 2] = [
    ("sync", |path, ro| {
        Ok(Arc::new(SyncFileBackend::open(path, ro)?))
    }),
    ("async", |path, ro| {
        Ok(Arc::new(AsyncFileBackend::open(path, ro)?))
    }),
];

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn seg(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
    }
}

#[test]
fn size_is_whole_sectors_of_the_file() {
    for (name, open) in ENGINES {
        let disk = disk_with(&pattern(3 * 512 + 100, 1));
        let engine = open(disk.path(), true).unwrap();
        assert_eq!(engine.size(), 3 * 512, "{name}");
        assert!(engine.is_read_only(), "{name}");
        // The trailing partial sector is not part of the disk.
        let mem = memory();
        let err = engine
            .read_vectored_at(&mem, &[seg(0, 1)], 3 * 512)
            .unwrap_err();
        assert!(
            matches!(err, BackendError::OutOfRange { size: 1536, .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn reads_scatter_the_disk_bytes_in_order() {
    let data = pattern(64 * 1024, 7);
    for (name, open) in ENGINES {
        let disk = disk_with(&data);
        let engine = open(disk.path(), false).unwrap();
        let mem = memory();
        // Odd lengths, an odd address, and a segment that crosses the region boundary.
        let segments = [seg(0x1001, 100), seg(REGION - 300, 700), seg(0x3000, 4096)];
        engine.read_vectored_at(&mem, &segments, 513).unwrap();
        let mut at = 513;
        for segment in segments {
            let mut got = vec![0; segment.len as usize];
            mem.read_slice(&mut got, segment.addr).unwrap();
            assert_eq!(got, data[at..at + got.len()], "{name}: segment {segment:?}");
            at += got.len();
        }
    }
}

#[test]
fn writes_gather_guest_bytes_in_order() {
    for (name, open) in ENGINES {
        let before = pattern(64 * 1024, 3);
        let disk = disk_with(&before);
        let engine = open(disk.path(), false).unwrap();
        let mem = memory();
        let segments = [seg(REGION - 10, 30), seg(0x5003, 1000)];
        let payload = pattern(1030, 99);
        mem.write_slice(&payload[..30], GuestAddress(REGION - 10))
            .unwrap();
        mem.write_slice(&payload[30..], GuestAddress(0x5003))
            .unwrap();
        engine.write_vectored_at(&mem, &segments, 4000).unwrap();
        engine.flush().unwrap();
        let mut expected = before;
        expected[4000..5030].copy_from_slice(&payload);
        assert_eq!(file_bytes(disk.path()), expected, "{name}");
    }
}

#[test]
fn read_only_refuses_every_modification() {
    for (name, open) in ENGINES {
        let data = pattern(8192, 5);
        let disk = disk_with(&data);
        let engine = open(disk.path(), true).unwrap();
        let mem = memory();
        let write = engine.write_vectored_at(&mem, &[seg(0, 512)], 0);
        assert!(matches!(write, Err(BackendError::ReadOnly)), "{name}");
        assert!(
            matches!(engine.discard(0, 512), Err(BackendError::ReadOnly)),
            "{name}"
        );
        assert!(
            matches!(engine.write_zeroes(0, 512), Err(BackendError::ReadOnly)),
            "{name}"
        );
        engine.flush().unwrap();
        assert_eq!(file_bytes(disk.path()), data, "{name}");
    }
}

#[test]
fn writable_engine_needs_a_writable_file() {
    let disk = disk_with(&pattern(1024, 0));
    let ro = || File::open(disk.path()).unwrap();
    let err = SyncFileBackend::from_file(ro(), false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = AsyncFileBackend::from_file(ro(), false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(AsyncFileBackend::from_file(ro(), true).is_ok());
}

#[test]
fn ranges_outside_the_disk_are_refused() {
    for (name, open) in ENGINES {
        let data = pattern(4096, 5);
        let disk = disk_with(&data);
        let engine = open(disk.path(), false).unwrap();
        let mem = memory();
        let cases: [(u64, u64); 3] = [(4096, 1), (4095, 2), (u64::MAX, 2)];
        for (offset, len) in cases {
            let read = engine.read_vectored_at(&mem, &[seg(0, len as u32)], offset);
            assert!(
                matches!(read, Err(BackendError::OutOfRange { .. })),
                "{name} read {offset}"
            );
            let write = engine.write_vectored_at(&mem, &[seg(0, len as u32)], offset);
            assert!(
                matches!(write, Err(BackendError::OutOfRange { .. })),
                "{name} write {offset}"
            );
            let discard = engine.discard(offset, len);
            assert!(
                matches!(discard, Err(BackendError::OutOfRange { .. })),
                "{name} discard"
            );
            let zeroes = engine.write_zeroes(offset, len);
            assert!(
                matches!(zeroes, Err(BackendError::OutOfRange { .. })),
                "{name} zeroes"
            );
        }
        // The whole disk, exactly, is fine.
        engine.read_vectored_at(&mem, &[seg(0, 4096)], 0).unwrap();
        assert_eq!(file_bytes(disk.path()), data, "{name}");
    }
}

#[test]
fn unmapped_guest_memory_fails_before_the_disk_is_touched() {
    for (name, open) in ENGINES {
        let data = pattern(8192, 2);
        let disk = disk_with(&data);
        let engine = open(disk.path(), false).unwrap();
        let mem = memory();
        // The first segment is fine; the second runs off the end of guest memory.
        let segments = [seg(0, 512), seg(2 * REGION - 100, 512)];
        let err = engine.write_vectored_at(&mem, &segments, 0).unwrap_err();
        assert!(
            matches!(err, BackendError::GuestMemory { len: 512, .. }),
            "{name}: {err}"
        );
        let err = engine.read_vectored_at(&mem, &segments, 0).unwrap_err();
        assert!(
            matches!(err, BackendError::GuestMemory { .. }),
            "{name}: {err}"
        );
        assert_eq!(file_bytes(disk.path()), data, "{name}");
    }
}

#[test]
fn end_of_file_inside_the_disk_is_an_error() {
    for (name, open) in ENGINES {
        let disk = disk_with(&pattern(8192, 2));
        let engine = open(disk.path(), true).unwrap();
        // Someone shrinks the image under the engine's feet.
        disk.as_file().set_len(4096).unwrap();
        let mem = memory();
        let err = engine
            .read_vectored_at(&mem, &[seg(0, 1024)], 3584)
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{name}: {err}"
        );
    }
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    for (name, open) in ENGINES {
        let data = pattern(256 * 1024, 4);
        let disk = disk_with(&data);
        let engine = open(disk.path(), false).unwrap();
        engine.discard(8192, 64 * 1024).unwrap();
        engine.write_zeroes(100 * 1024 + 512, 3 * 512).unwrap();
        engine.write_zeroes(0, 0).unwrap();
        let mut expected = data;
        expected[8192..8192 + 64 * 1024].fill(0);
        expected[100 * 1024 + 512..100 * 1024 + 2048].fill(0);
        let got = file_bytes(disk.path());
        assert_eq!(got.len(), expected.len(), "{name}: the file size changed");
        assert!(got == expected, "{name}: contents differ");
    }
}

#[test]
fn concurrent_readers_and_writers_share_one_engine() {
    const THREADS: usize = 6;
    const ROUNDS: usize = 200;
    const SLOT: usize = 4096 + 512;
    for (name, open) in ENGINES {
        let data = pattern(THREADS * SLOT * 2 + ROUNDS * 512, 8);
        let disk = disk_with(&data);
        let engine = open(disk.path(), false).unwrap();
        let mem = Arc::new(memory());
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (engine, mem) = (Arc::clone(&engine), Arc::clone(&mem));
                let data = &data;
                scope.spawn(move || {
                    // Each thread owns guest memory at `base` and disk slot `thread`; it also
                    // reads the untouched upper half of the disk, which nobody writes.
                    let base = thread as u64 * 0x8000 + 3;
                    let at = (thread * SLOT) as u64;
                    for round in 0..ROUNDS {
                        let payload = pattern(SLOT - 7, (thread * 31 + round) as u8);
                        mem.write_slice(&payload, GuestAddress(base)).unwrap();
                        let segments = [seg(base, 1000), seg(base + 1000, SLOT as u32 - 1007)];
                        engine.write_vectored_at(&mem, &segments, at + 7).unwrap();
                        let back = base + 0x4000;
                        engine
                            .read_vectored_at(&mem, &[seg(back, SLOT as u32 - 7)], at + 7)
                            .unwrap();
                        let mut got = vec![0; SLOT - 7];
                        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
                        assert!(got == payload, "{name}: thread {thread} round {round}");

                        let far = (THREADS * SLOT * 2 + round * 512) as u64;
                        engine
                            .read_vectored_at(&mem, &[seg(back, 512)], far)
                            .unwrap();
                        let mut got = vec![0; 512];
                        mem.read_slice(&mut got, GuestAddress(back)).unwrap();
                        assert!(
                            got == data[far as usize..far as usize + 512],
                            "{name}: far read"
                        );
                    }
                });
            }
        });
        let got = file_bytes(disk.path());
        for thread in 0..THREADS {
            let at = thread * SLOT;
            let last = pattern(SLOT - 7, (thread * 31 + ROUNDS - 1) as u8);
            assert!(
                got[at + 7..at + SLOT] == last[..],
                "{name}: thread {thread}'s last write"
            );
            assert_eq!(
                got[at..at + 7],
                data[at..at + 7],
                "{name}: bytes before thread {thread}"
            );
        }
    }
}
