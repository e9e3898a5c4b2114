//! virtio-blk requests driven like a guest driver: well-formed ones reach the disk with the
//! right data, status and used length; each class of malformed request completes with IOERR or
//! UNSUPP (or used length 0) without touching the disk, and the device keeps serving. Every test
//! runs on two engines: the in-memory disk (`mem::`) and the io_uring engine on a file (`uring::`).
#![forbid(unsafe_code)]

mod common;

use std::sync::Arc;

use common::*;
use squib_virtio::block::backend::BlockBackend;
use squib_virtio::block::engine::UringFileBackend;
use squib_virtio::block::{BlockConfig, BlockDevice, BlockHandle, CacheType, QUEUE_SIZE, SEG_MAX};
use squib_virtio::testing::GuestDriver;
use squib_virtio::testing::{BlockSlot, Buf, MemDisk, STATUS_UNTOUCHED, range_bytes};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// The engines every test here runs on.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// `MemDisk`, executed on the device worker.
    Mem,
    /// `UringFileBackend` on a temporary file: the device's io_uring.
    Uring,
}

/// The disk under a [`TestRig`], read back the same way whatever the engine.
enum Disk {
    Mem(Arc<MemDisk>),
    File(tempfile::NamedTempFile),
}

impl Disk {
    fn contents(&self) -> Vec<u8> {
        match self {
            Disk::Mem(disk) => disk.contents(),
            Disk::File(file) => std::fs::read(file.path()).unwrap(),
        }
    }
}

struct TestRig {
    driver: GuestDriver,
    disk: Disk,
    handle: BlockHandle,
}

impl TestRig {
    /// FLUSHes that reached the disk: the backend's count for `MemDisk`, the device's count of
    /// completed FLUSHes (each an fdatasync on the ring) for the file.
    fn flushes(&self) -> u64 {
        match &self.disk {
            Disk::Mem(disk) => disk.flushes(),
            Disk::File(_) => self.handle.metrics().flushes,
        }
    }
}

/// A device on a disk holding `contents`, on `engine`, activated with `features`.
fn rig_on_with(
    engine: Engine,
    contents: Vec<u8>,
    read_only: bool,
    cache: CacheType,
    features: u64,
) -> TestRig {
    let (disk, backend): (Disk, Arc<dyn BlockBackend>) = match engine {
        Engine::Mem => {
            let disk = Arc::new(MemDisk::with_contents(contents, read_only));
            (Disk::Mem(disk.clone()), disk)
        }
        Engine::Uring => {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), contents).unwrap();
            let backend = Arc::new(UringFileBackend::open(file.path(), read_only).unwrap());
            (Disk::File(file), backend)
        }
    };
    let device = BlockDevice::new(backend, BlockConfig::new(DRIVE_ID, cache)).unwrap();
    let handle = device.handle();
    let driver = GuestDriver::activated(Box::new(device), GUEST_MEM, features);
    TestRig {
        driver,
        disk,
        handle,
    }
}

/// A writeback device on a 4 MiB patterned disk, every feature accepted.
fn rig_on(engine: Engine) -> TestRig {
    rig_on_with(
        engine,
        pattern(DISK_SIZE),
        false,
        CacheType::Writeback,
        ALL_RW,
    )
}

/// Submits one request, waits for it, returns (status byte, used length).
fn run(rig: &mut TestRig, request_type: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
    let slot = BlockSlot::alloc(&mut rig.driver);
    let head = slot.submit(&mut rig.driver, request_type, sector, data);
    rig.driver.kick();
    let used = rig
        .driver
        .wait_used()
        .expect("the device did not complete the request");
    assert_eq!(used.head, head);
    (slot.status(&rig.driver), used.len)
}

/// The device still serves: a 512-byte read of sector 1 returns the disk's bytes.
fn assert_still_serving(rig: &mut TestRig) {
    let buf = rig.driver.alloc(512);
    let (status, len) = run(rig, VIRTIO_BLK_T_IN, 1, &[Buf::writable(buf, 512)]);
    assert_eq!((status, len), (OK, 513));
    assert_eq!(
        rig.driver.read_bytes(buf, 512),
        rig.disk.contents()[512..1024]
    );
}

fn assert_disk_untouched(rig: &TestRig) {
    assert!(
        rig.disk.contents() == pattern(DISK_SIZE),
        "the disk changed"
    );
}

fn read_fills_every_segment_and_reports_data_plus_status_length(engine: Engine) {
    let mut rig = rig_on(engine);
    let (a, b) = (rig.driver.alloc(1024), rig.driver.alloc(3072));
    let (status, len) = run(
        &mut rig,
        VIRTIO_BLK_T_IN,
        8,
        &[Buf::writable(a, 1024), Buf::writable(b, 3072)],
    );
    assert_eq!((status, len), (OK, 4097));
    let disk = rig.disk.contents();
    assert_eq!(rig.driver.read_bytes(a, 1024), disk[4096..5120]);
    assert_eq!(rig.driver.read_bytes(b, 3072), disk[5120..8192]);
    let m = rig.handle.metrics();
    assert_eq!((m.reads, m.read_bytes), (1, 4096));
}

fn write_lands_on_disk_and_reports_status_length_only(engine: Engine) {
    let mut rig = rig_on(engine);
    let (a, b) = (rig.driver.alloc(512), rig.driver.alloc(1024));
    rig.driver.write_bytes(a, &[0xaa; 512]);
    rig.driver.write_bytes(b, &[0xbb; 1024]);
    let (status, len) = run(
        &mut rig,
        VIRTIO_BLK_T_OUT,
        3,
        &[Buf::readable(a, 512), Buf::readable(b, 1024)],
    );
    assert_eq!((status, len), (OK, 1));
    let disk = rig.disk.contents();
    assert!(disk[1536..2048].iter().all(|&x| x == 0xaa));
    assert!(disk[2048..3072].iter().all(|&x| x == 0xbb));
    assert_eq!(disk[..1536], pattern(DISK_SIZE)[..1536]);
    assert_eq!(disk[3072..], pattern(DISK_SIZE)[3072..]);
    let m = rig.handle.metrics();
    assert_eq!((m.writes, m.written_bytes), (1, 1536));
}

fn get_id_returns_the_drive_id_nul_padded_to_20_bytes(engine: Engine) {
    let mut rig = rig_on(engine);
    let buf = rig.driver.alloc(20);
    rig.driver.write_bytes(buf, &[0x55; 20]);
    let (status, len) = run(&mut rig, VIRTIO_BLK_T_GET_ID, 0, &[Buf::writable(buf, 20)]);
    assert_eq!((status, len), (OK, 21));
    let mut expected = [0u8; 20];
    expected[..DRIVE_ID.len()].copy_from_slice(DRIVE_ID.as_bytes());
    assert_eq!(rig.driver.read_bytes(buf, 20), expected);
}

fn flush_reaches_the_backend_only_when_writeback_was_negotiated(engine: Engine) {
    let mut rig = rig_on(engine);
    assert_eq!(run(&mut rig, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(rig.flushes(), 1);

    let mut unsafe_rig = rig_on_with(
        engine,
        vec![0; DISK_SIZE],
        false,
        CacheType::Unsafe,
        ALL_RW & !F_FLUSH,
    );
    assert_eq!(
        run(&mut unsafe_rig, VIRTIO_BLK_T_FLUSH, 0, &[]),
        (UNSUPP, 1)
    );
    assert_eq!(unsafe_rig.flushes(), 0);
}

fn discard_and_write_zeroes_zero_the_range(engine: Engine) {
    let mut rig = rig_on(engine);
    let range = rig.driver.alloc(16);
    rig.driver.write_bytes(range, &range_bytes(2, 3, 0));
    assert_eq!(
        run(
            &mut rig,
            VIRTIO_BLK_T_DISCARD,
            0,
            &[Buf::readable(range, 16)]
        ),
        (OK, 1)
    );
    rig.driver.write_bytes(
        range,
        &range_bytes(10, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
    );
    assert_eq!(
        run(
            &mut rig,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[Buf::readable(range, 16)]
        ),
        (OK, 1)
    );
    let disk = rig.disk.contents();
    assert!(disk[1024..2560].iter().all(|&x| x == 0));
    assert!(disk[5120..5632].iter().all(|&x| x == 0));
    assert_eq!(disk[2560..5120], pattern(DISK_SIZE)[2560..5120]);
    let m = rig.handle.metrics();
    assert_eq!((m.discards, m.write_zeroes), (1, 1));
}

// ---- malformed chains ----

fn device_writable_header_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let (header, data, status) = (
        rig.driver.alloc(16),
        rig.driver.alloc(512),
        rig.driver.alloc(1),
    );
    rig.driver.add_chain([
        Buf::writable(header, 16),
        Buf::writable(data, 512),
        Buf::writable(status, 1),
    ]);
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().unwrap().len, 1);
    assert_eq!(rig.driver.read_bytes(status, 1), [IOERR]);
    assert_still_serving(&mut rig);
}

fn header_shorter_or_longer_than_16_bytes_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    for header_len in [8, 17, 32] {
        let (header, status) = (rig.driver.alloc(32), rig.driver.alloc(1));
        rig.driver
            .add_chain([Buf::readable(header, header_len), Buf::writable(status, 1)]);
        rig.driver.kick();
        assert_eq!(
            rig.driver.wait_used().unwrap().len,
            1,
            "header of {header_len} bytes"
        );
        assert_eq!(rig.driver.read_bytes(status, 1), [IOERR]);
    }
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn unusable_status_descriptor_completes_with_used_len_0_and_does_nothing(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(512);
    rig.driver.write_bytes(data, &[0xcc; 512]);
    type MakeStatus = fn(GuestAddress) -> Buf;
    let cases: [(&str, MakeStatus); 3] = [
        ("device-readable", |s| Buf::readable(s, 1)),
        ("zero-length", |s| Buf::writable(s, 0)),
        ("outside guest memory", |_| {
            Buf::writable(GuestAddress(1 << 40), 1)
        }),
    ];
    for (what, status_buf) in cases {
        let slot = BlockSlot::alloc(&mut rig.driver);
        slot.write_header(&rig.driver, VIRTIO_BLK_T_OUT, 0);
        rig.driver.add_chain([
            Buf::readable(slot.header, 16),
            Buf::readable(data, 512),
            status_buf(slot.status),
        ]);
        rig.driver.kick();
        assert_eq!(rig.driver.wait_used().unwrap().len, 0, "{what} status");
    }
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn chain_of_only_a_header_completes_with_used_len_0(engine: Engine) {
    let mut rig = rig_on(engine);
    let slot = BlockSlot::alloc(&mut rig.driver);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_FLUSH, 0);
    rig.driver.add_chain([Buf::readable(slot.header, 16)]);
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().unwrap().len, 0);
    assert_eq!(rig.flushes(), 0);
    assert_still_serving(&mut rig);
}

fn data_in_the_wrong_direction_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(512);
    rig.driver.write_bytes(data, &[0xcc; 512]);
    // IN into a buffer the device may only read; OUT from a buffer the device may only write.
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_IN, 0, &[Buf::readable(data, 512)]),
        (IOERR, 1)
    );
    assert_eq!(
        rig.driver.read_bytes(data, 512),
        [0xcc; 512],
        "IN wrote a readable buffer"
    );
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_OUT, 0, &[Buf::writable(data, 512)]),
        (IOERR, 1)
    );
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_GET_ID, 0, &[Buf::readable(data, 20)]),
        (IOERR, 1)
    );
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn mixed_direction_data_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let (a, b) = (rig.driver.alloc(512), rig.driver.alloc(512));
    let data = [Buf::writable(a, 512), Buf::readable(b, 512)];
    assert_eq!(run(&mut rig, VIRTIO_BLK_T_IN, 0, &data), (IOERR, 1));
    assert_eq!(run(&mut rig, VIRTIO_BLK_T_OUT, 0, &data), (IOERR, 1));
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn data_outside_guest_memory_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let end = GuestAddress(GUEST_MEM as u64 - 256);
    // Straddles the end of guest memory; and one far beyond it.
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_IN, 0, &[Buf::writable(end, 512)]),
        (IOERR, 1)
    );
    let far = GuestAddress(u64::MAX - 100);
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_OUT, 0, &[Buf::readable(far, 512)]),
        (IOERR, 1)
    );
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn descriptor_loop_is_cut_and_completed_with_used_len_0(engine: Engine) {
    let mut rig = rig_on(engine);
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_IN, 0);
    // 0: header -> 1: data -> 2: status-looking -> 1 -> 2 -> ...
    let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    rig.driver.write_descriptor(0, slot.header, 16, next, 1);
    rig.driver.write_descriptor(1, data, 512, next | write, 2);
    rig.driver
        .write_descriptor(2, slot.status, 1, next | write, 1);
    rig.driver.push_avail(0);
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().unwrap().len, 0);
    rig.driver.skip_descriptors(3);
    assert_still_serving(&mut rig);
}

/// `VIRTIO_F_INDIRECT_DESC` when the device offers it (all of `ALL_RW` otherwise), so the same
/// test shows a device that follows indirect tables without negotiating them.
fn rig_with_indirect_if_offered(engine: Engine) -> TestRig {
    let mut probe = rig_on(Engine::Mem);
    let indirect = probe.driver.device_features() & F_INDIRECT;
    rig_on_with(
        engine,
        pattern(DISK_SIZE),
        false,
        CacheType::Writeback,
        ALL_RW | indirect,
    )
}

/// Submits a direct header descriptor whose `NEXT` is one indirect descriptor pointing at
/// `table` (data buffers then the status); returns (status byte, used length).
fn run_header_then_indirect(rig: &mut TestRig, slot: &BlockSlot, table: &[Buf]) -> (u8, u32) {
    let (addr, len) = rig.driver.write_indirect_table(table);
    let d = &mut rig.driver;
    let head = d.add_chain([Buf::readable(slot.header, 16)]);
    // Turn the single-descriptor chain into header -> indirect.
    let indirect_index = head.wrapping_add(1) % QUEUE_SIZE;
    d.write_descriptor(
        head,
        slot.header,
        16,
        VRING_DESC_F_NEXT as u16,
        indirect_index,
    );
    d.write_descriptor(indirect_index, addr, len, VRING_DESC_F_INDIRECT as u16, 0);
    d.skip_descriptors(1);
    d.kick();
    let used = d.wait_used().expect("request not completed");
    assert_eq!(used.head, head);
    (slot.status(d), used.len)
}

fn more_data_segments_than_seg_max_is_ioerr(engine: Engine) {
    let mut rig = rig_with_indirect_if_offered(engine);
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_IN, 0);
    rig.driver.write_bytes(slot.status, &[STATUS_UNTOUCHED]);
    // Direct header + an indirect table of SEG_MAX + 1 data buffers and the status: 256
    // descriptors in the table, within the queue size.
    let mut table = vec![Buf::writable(data, 512); SEG_MAX + 1];
    table.push(Buf::writable(slot.status, 1));
    assert_eq!(
        run_header_then_indirect(&mut rig, &slot, &table),
        (IOERR, 1)
    );
    assert_still_serving(&mut rig);
}

fn zero_length_descriptors_count_toward_seg_max(engine: Engine) {
    let mut rig = rig_with_indirect_if_offered(engine);
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_IN, 0);
    rig.driver.write_bytes(slot.status, &[STATUS_UNTOUCHED]);
    // SEG_MAX empty buffers and one real one: SEG_MAX + 1 data descriptors.
    let mut table = vec![Buf::writable(data, 0); SEG_MAX];
    table.push(Buf::writable(data, 512));
    table.push(Buf::writable(slot.status, 1));
    assert_eq!(
        run_header_then_indirect(&mut rig, &slot, &table),
        (IOERR, 1)
    );
    assert_still_serving(&mut rig);
}

fn indirect_tables_are_refused_unless_negotiated(engine: Engine) {
    // ALL_RW does not include VIRTIO_F_INDIRECT_DESC.
    let mut rig = rig_on(engine);
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_IN, 0);
    rig.driver.write_bytes(slot.status, &[STATUS_UNTOUCHED]);
    rig.driver.add_indirect_chain(&[
        Buf::readable(slot.header, 16),
        Buf::writable(data, 512),
        Buf::writable(slot.status, 1),
    ]);
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().unwrap().len, 0);
    assert_eq!(slot.status(&rig.driver), STATUS_UNTOUCHED);
    assert_still_serving(&mut rig);
}

fn indirect_requests_are_served_when_negotiated(engine: Engine) {
    let mut rig = rig_on_with(
        engine,
        pattern(DISK_SIZE),
        false,
        CacheType::Writeback,
        ALL_RW | F_INDIRECT,
    );
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(1024);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_IN, 2);
    rig.driver.write_bytes(slot.status, &[STATUS_UNTOUCHED]);
    rig.driver.add_indirect_chain(&[
        Buf::readable(slot.header, 16),
        Buf::writable(data, 512),
        Buf::writable(GuestAddress(data.0 + 512), 512),
        Buf::writable(slot.status, 1),
    ]);
    rig.driver.kick();
    assert_eq!(rig.driver.wait_used().unwrap().len, 1025);
    assert_eq!(slot.status(&rig.driver), OK);
    assert_eq!(
        rig.driver.read_bytes(data, 1024),
        rig.disk.contents()[1024..2048]
    );
}

fn bad_indirect_tables_complete_with_used_len_0(engine: Engine) {
    let mut rig = rig_on_with(
        engine,
        pattern(DISK_SIZE),
        false,
        CacheType::Writeback,
        ALL_RW | F_INDIRECT,
    );
    let slot = BlockSlot::alloc(&mut rig.driver);
    let data = rig.driver.alloc(512);
    slot.write_header(&rig.driver, VIRTIO_BLK_T_OUT, 0);
    let bufs = [
        Buf::readable(slot.header, 16),
        Buf::readable(data, 512),
        Buf::writable(slot.status, 1),
    ];
    let (table, len) = rig.driver.write_indirect_table(&bufs);
    // A 1 MiB table (65 535 descriptors) whose first three entries are a valid write.
    let big = rig.driver.alloc(1 << 20);
    rig.driver
        .write_bytes(big, &rig.driver.read_bytes(table, len as usize));
    // A nested table: the first entry of the outer table is itself indirect.
    let outer = rig.driver.alloc(16);
    let mut nested = [0u8; 16];
    nested[0..8].copy_from_slice(&table.0.to_le_bytes());
    nested[8..12].copy_from_slice(&len.to_le_bytes());
    nested[12..14].copy_from_slice(&(VRING_DESC_F_INDIRECT as u16).to_le_bytes());
    rig.driver.write_bytes(outer, &nested);
    let indirect = VRING_DESC_F_INDIRECT as u16;
    let next = VRING_DESC_F_NEXT as u16;
    let cases = [
        ("longer than the queue", big, (1 << 20) - 16, indirect),
        ("not whole descriptors", table, len - 1, indirect),
        ("empty", table, 0, indirect),
        ("misaligned", GuestAddress(table.0 + 8), len, indirect),
        ("outside guest memory", GuestAddress(1 << 40), len, indirect),
        ("nested", outer, 16, indirect),
        ("indirect with NEXT", table, len, indirect | next),
    ];
    for (what, addr, table_len, flags) in cases {
        rig.driver.write_bytes(slot.status, &[STATUS_UNTOUCHED]);
        let head = rig.driver.add_chain([Buf::readable(addr, table_len)]);
        rig.driver
            .write_descriptor(head, addr, table_len, flags, head);
        rig.driver.kick();
        let used = rig.driver.wait_used().unwrap();
        assert_eq!((used.head, used.len), (head, 0), "{what}");
        assert_eq!(slot.status(&rig.driver), STATUS_UNTOUCHED, "{what}");
    }
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn unknown_request_type_is_unsupp(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(512);
    for request_type in [2, 3, 14, 0xdead_beef] {
        let (status, len) = run(&mut rig, request_type, 0, &[Buf::writable(data, 512)]);
        assert_eq!((status, len), (UNSUPP, 1), "type {request_type}");
    }
    assert_still_serving(&mut rig);
}

fn sector_arithmetic_overflow_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(512);
    for sector in [u64::MAX / 512 + 1, u64::MAX, u64::MAX / 512] {
        assert_eq!(
            run(
                &mut rig,
                VIRTIO_BLK_T_IN,
                sector,
                &[Buf::writable(data, 512)]
            ),
            (IOERR, 1)
        );
    }
    assert_still_serving(&mut rig);
}

fn range_past_capacity_is_ioerr_and_the_last_sector_is_fine(engine: Engine) {
    let mut rig = rig_on(engine);
    let last = DISK_SIZE as u64 / 512 - 1;
    let data = rig.driver.alloc(1024);
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_IN, last, &[Buf::writable(data, 512)]),
        (OK, 513)
    );
    assert_eq!(
        run(
            &mut rig,
            VIRTIO_BLK_T_IN,
            last,
            &[Buf::writable(data, 1024)]
        ),
        (IOERR, 1)
    );
    assert_eq!(
        run(
            &mut rig,
            VIRTIO_BLK_T_OUT,
            last + 1,
            &[Buf::readable(data, 512)]
        ),
        (IOERR, 1)
    );
    assert_disk_untouched(&rig);
}

fn data_length_not_a_multiple_of_512_is_ioerr(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(1024);
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_IN, 0, &[Buf::writable(data, 511)]),
        (IOERR, 1)
    );
    let two = [
        Buf::readable(data, 300),
        Buf::readable(GuestAddress(data.0 + 512), 300),
    ];
    assert_eq!(run(&mut rig, VIRTIO_BLK_T_OUT, 0, &two), (IOERR, 1));
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn read_only_disk_offers_ro_and_refuses_writes(engine: Engine) {
    let features = F_VERSION_1 | F_EVENT_IDX | F_RO;
    let mut rig = rig_on_with(
        engine,
        pattern(DISK_SIZE),
        true,
        CacheType::Unsafe,
        features,
    );
    let offered = rig.driver.device_features();
    assert_ne!(offered & F_RO, 0);
    assert_eq!(offered & (F_DISCARD | F_WRITE_ZEROES | F_FLUSH), 0);
    let data = rig.driver.alloc(512);
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_OUT, 0, &[Buf::readable(data, 512)]),
        (IOERR, 1)
    );
    let range = rig.driver.alloc(16);
    rig.driver.write_bytes(range, &range_bytes(0, 1, 0));
    // DISCARD is not even offered on a read-only disk.
    assert_eq!(
        run(
            &mut rig,
            VIRTIO_BLK_T_DISCARD,
            0,
            &[Buf::readable(range, 16)]
        ),
        (UNSUPP, 1)
    );
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

fn bad_discard_and_write_zeroes_ranges_are_refused(engine: Engine) {
    let mut rig = rig_on(engine);
    let range = rig.driver.alloc(32);
    let max = squib_virtio::block::BlockLimits::default().max_discard_sectors;
    let last = DISK_SIZE as u64 / 512;
    let cases: [(u32, [u8; 16], u32, u8); 7] = [
        (
            VIRTIO_BLK_T_DISCARD,
            range_bytes(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
            16,
            UNSUPP,
        ),
        (VIRTIO_BLK_T_DISCARD, range_bytes(0, 1, 0x8), 16, UNSUPP),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            range_bytes(0, 1, 0x2),
            16,
            UNSUPP,
        ),
        (VIRTIO_BLK_T_DISCARD, range_bytes(0, max + 1, 0), 16, IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, range_bytes(0, 0, 0), 16, IOERR),
        (VIRTIO_BLK_T_DISCARD, range_bytes(last, 1, 0), 16, IOERR),
        (VIRTIO_BLK_T_DISCARD, range_bytes(0, 1, 0), 32, IOERR), // two ranges; max_discard_seg 1
    ];
    for (request_type, bytes, len, expected) in cases {
        rig.driver.write_bytes(range, &bytes);
        let (status, used) = run(&mut rig, request_type, 0, &[Buf::readable(range, len)]);
        assert_eq!(
            (status, used),
            (expected, 1),
            "type {request_type} range {bytes:?}"
        );
    }
    assert_disk_untouched(&rig);
    assert_still_serving(&mut rig);
}

/// `MemDisk` only: it is the engine that can be told to fail.
#[test]
fn backend_failure_is_ioerr_and_counted() {
    let mut rig = rig_on(Engine::Mem);
    let data = rig.driver.alloc(512);
    let Disk::Mem(disk) = &rig.disk else {
        unreachable!()
    };
    disk.set_failing(true);
    assert_eq!(
        run(&mut rig, VIRTIO_BLK_T_IN, 0, &[Buf::writable(data, 512)]),
        (IOERR, 1)
    );
    if let Disk::Mem(disk) = &rig.disk {
        disk.set_failing(false);
    }
    assert_eq!(rig.handle.metrics().io_errors, 1);
    assert_still_serving(&mut rig);
}

fn invalid_requests_are_counted(engine: Engine) {
    let mut rig = rig_on(engine);
    let data = rig.driver.alloc(512);
    run(&mut rig, 77, 0, &[Buf::writable(data, 512)]);
    run(
        &mut rig,
        VIRTIO_BLK_T_IN,
        u64::MAX,
        &[Buf::writable(data, 512)],
    );
    let m = rig.handle.metrics();
    assert_eq!((m.invalid_requests, m.reads), (2, 0));
}

/// Each test above, once per engine.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod mem {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Mem);
            })*
        }
        mod uring {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Uring);
            })*
        }
    };
}

on_every_engine!(
    read_fills_every_segment_and_reports_data_plus_status_length,
    write_lands_on_disk_and_reports_status_length_only,
    get_id_returns_the_drive_id_nul_padded_to_20_bytes,
    flush_reaches_the_backend_only_when_writeback_was_negotiated,
    discard_and_write_zeroes_zero_the_range,
    device_writable_header_is_ioerr,
    header_shorter_or_longer_than_16_bytes_is_ioerr,
    unusable_status_descriptor_completes_with_used_len_0_and_does_nothing,
    chain_of_only_a_header_completes_with_used_len_0,
    data_in_the_wrong_direction_is_ioerr,
    mixed_direction_data_is_ioerr,
    data_outside_guest_memory_is_ioerr,
    descriptor_loop_is_cut_and_completed_with_used_len_0,
    more_data_segments_than_seg_max_is_ioerr,
    zero_length_descriptors_count_toward_seg_max,
    indirect_tables_are_refused_unless_negotiated,
    indirect_requests_are_served_when_negotiated,
    bad_indirect_tables_complete_with_used_len_0,
    unknown_request_type_is_unsupp,
    sector_arithmetic_overflow_is_ioerr,
    range_past_capacity_is_ioerr_and_the_last_sector_is_fine,
    data_length_not_a_multiple_of_512_is_ioerr,
    read_only_disk_offers_ro_and_refuses_writes,
    bad_discard_and_write_zeroes_ranges_are_refused,
    invalid_requests_are_counted,
);
