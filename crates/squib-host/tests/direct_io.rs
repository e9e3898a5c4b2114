//! Cache bypass on a real filesystem: `O_DIRECT` is really set, and `AsyncFileBackend` on such a
//! descriptor returns the same bytes as the cached path, aligned or not.
//!
//! The files live in the system temp directory (ext4 on squib's machines). Where the filesystem
//! refuses `O_DIRECT` (tmpfs on older kernels: `EINVAL`) the tests say so loudly and skip.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use squib_host::block_io;
use squib_virtio::GuestMemory;
use squib_virtio::block::backend::{BlockBackend, Segment};
use squib_virtio::block::engine::AsyncFileBackend;
use vm_memory::{Bytes, GuestAddress};

const DISK: usize = 1024 * 1024;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 10) as u8)
        .collect()
}

fn disk_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.as_file().sync_all().unwrap();
    file
}

fn open_rw(path: &Path) -> File {
    File::options().read(true).write(true).open(path).unwrap()
}

/// `file` with cache bypass on, or `None` (after saying why) where the filesystem refuses it.
fn direct(file: File) -> Option<File> {
    match block_io::set_f_nocache(&file) {
        Ok(()) => Some(file),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!(
                "SKIPPED: the filesystem of {} refuses O_DIRECT ({e}); cache-bypass tests need \
                 ext4/xfs",
                std::env::temp_dir().display()
            );
            None
        }
        Err(e) => panic!("set_f_nocache failed: {e}"),
    }
}

/// The status flags the kernel reports for `file` in `/proc/self/fdinfo`, read independently of
/// `block_io`.
fn fdinfo_flags(file: &File) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap();
    u32::from_str_radix(flags.trim(), 8).unwrap()
}

fn memory() -> GuestMemory {
    squib_host::guest_memory::anonymous(&[(GuestAddress(0), 4 * 1024 * 1024)], false).unwrap()
}

fn seg(addr: u64, len: u32) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
    }
}

#[test]
fn o_direct_is_really_set() {
    let disk = disk_with(&pattern(8192, 0));
    let file = open_rw(disk.path());
    assert!(!block_io::is_direct(&file).unwrap());
    let Some(file) = direct(file) else { return };
    assert!(block_io::is_direct(&file).unwrap());
    assert_ne!(fdinfo_flags(&file) & libc::O_DIRECT as u32, 0);
    // Setting it twice is harmless.
    block_io::set_f_nocache(&file).unwrap();

    let align = block_io::direct_io_alignment(&file);
    eprintln!(
        "direct-I/O alignment of {}: {align:?}",
        disk.path().display()
    );
    assert!(
        align.memory() <= 4096 && align.offset() <= 4096,
        "{align:?}"
    );
}

/// A read: disk offset and guest segments.
struct Case {
    offset: u64,
    segments: Vec<Segment>,
}

fn cases() -> Vec<Case> {
    let page = 4096;
    vec![
        // Aligned everything: the direct path.
        Case {
            offset: 8 * page,
            segments: vec![seg(page, 4096)],
        },
        Case {
            offset: 0,
            segments: vec![seg(2 * page, 512), seg(5 * page, 8192)],
        },
        // Unaligned disk offset.
        Case {
            offset: 4096 + 100,
            segments: vec![seg(page, 4096)],
        },
        // Unaligned length.
        Case {
            offset: 4096,
            segments: vec![seg(page, 1000)],
        },
        // Unaligned memory, aligned offset and length.
        Case {
            offset: 4096,
            segments: vec![seg(page + 8, 4096)],
        },
        // Everything odd, several segments, sub-sector pieces.
        Case {
            offset: 12345,
            segments: vec![seg(0x3003, 7), seg(0x7100, 5000), seg(0x9001, 3)],
        },
        // Larger than one bounce window, unaligned, ending at the end of the disk.
        Case {
            offset: (DISK - 300_001) as u64,
            segments: vec![seg(0x1_0001, 300_001)],
        },
        // A single byte in the last sector.
        Case {
            offset: (DISK - 1) as u64,
            segments: vec![seg(0x2_0000, 1)],
        },
    ]
}

fn read_case(engine: &dyn BlockBackend, case: &Case) -> Vec<u8> {
    let mem = memory();
    engine
        .read_vectored_at(&mem, &case.segments, case.offset)
        .unwrap();
    let mut out = Vec::new();
    for segment in &case.segments {
        let mut bytes = vec![0; segment.len as usize];
        mem.read_slice(&mut bytes, segment.addr).unwrap();
        out.extend(bytes);
    }
    out
}

#[test]
fn direct_reads_match_cached_reads() {
    let data = pattern(DISK, 1);
    let disk = disk_with(&data);
    let cached = AsyncFileBackend::open(disk.path(), true).unwrap();
    let Some(file) = direct(File::open(disk.path()).unwrap()) else {
        return;
    };
    let bypass = AsyncFileBackend::from_file(file, true).unwrap();
    assert!(bypass.is_direct() && !cached.is_direct());
    for (i, case) in cases().iter().enumerate() {
        let expected = &data[case.offset as usize..][..read_case(&cached, case).len()];
        assert!(read_case(&cached, case) == expected, "cached case {i}");
        assert!(read_case(&bypass, case) == expected, "direct case {i}");
    }
}

#[test]
fn direct_writes_match_cached_writes() {
    let data = pattern(DISK, 2);
    let (cached_disk, direct_disk) = (disk_with(&data), disk_with(&data));
    let cached = AsyncFileBackend::open(cached_disk.path(), false).unwrap();
    let Some(file) = direct(open_rw(direct_disk.path())) else {
        return;
    };
    let bypass = AsyncFileBackend::from_file(file, false).unwrap();
    let mem = memory();
    mem.write_slice(&pattern(4 * 1024 * 1024, 77), GuestAddress(0))
        .unwrap();
    for (i, case) in cases().iter().enumerate() {
        cached
            .write_vectored_at(&mem, &case.segments, case.offset)
            .unwrap();
        bypass
            .write_vectored_at(&mem, &case.segments, case.offset)
            .unwrap();
        // Zero the odd bits too, through the RMW path when ZERO_RANGE is refused.
        let zero_at = case.offset / 2 + 3;
        cached.write_zeroes(zero_at, 777).unwrap();
        bypass.write_zeroes(zero_at, 777).unwrap();
        bypass.flush().unwrap();
        let (want, got) = (
            std::fs::read(cached_disk.path()).unwrap(),
            std::fs::read(direct_disk.path()).unwrap(),
        );
        assert_eq!(got.len(), DISK, "case {i}: the direct disk changed size");
        assert!(want == got, "case {i}: direct and cached disks differ");
    }
}

#[test]
fn concurrent_unaligned_direct_writes_to_one_block_keep_every_byte() {
    const THREADS: usize = 4;
    const BLOCKS: usize = 1024;
    const SLICE: usize = 24;
    // What `thread` writes into `block`: never zero, so an untouched byte cannot pass.
    let stamp = |thread: usize, block: usize| ((thread * BLOCKS + block) % 255) as u8 + 1;
    let disk = disk_with(&vec![0; DISK]);
    let Some(file) = direct(open_rw(disk.path())) else {
        return;
    };
    let engine: Arc<dyn BlockBackend> = Arc::new(AsyncFileBackend::from_file(file, false).unwrap());
    let mem = Arc::new(memory());
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (engine, mem) = (Arc::clone(&engine), Arc::clone(&mem));
            scope.spawn(move || {
                // Each thread owns bytes `thread * SLICE..` of every 512-byte block and walks the
                // blocks in the same order as the others: writes that never overlap but share
                // blocks at the same time, so each is a contended read-modify-write.
                let addr = (thread * 0x1000) as u64;
                for block in 0..BLOCKS {
                    let bytes = [stamp(thread, block); SLICE];
                    mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
                    let offset = (block * 512 + thread * SLICE) as u64;
                    engine
                        .write_vectored_at(&mem, &[seg(addr, SLICE as u32)], offset)
                        .unwrap();
                }
            });
        }
    });
    let got = std::fs::read(disk.path()).unwrap();
    let lost: Vec<(usize, usize)> = (0..BLOCKS)
        .flat_map(|block| (0..THREADS).map(move |thread| (block, thread)))
        .filter(|&(block, thread)| {
            let at = block * 512 + thread * SLICE;
            got[at..at + SLICE]
                .iter()
                .any(|&b| b != stamp(thread, block))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} writes lost, first (block, thread): {:?}",
        lost.len(),
        lost.first()
    );
}
