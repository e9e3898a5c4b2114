//! Randomized hostile-guest tests: a guest that writes garbage to the virtio-mmio registers,
//! publishes garbage descriptor chains, and points buffers at the edges of guest memory.
//!
//! What must hold whatever the guest does: squib does not panic; identification registers and
//! config space never change; a reset always brings the device back; valid requests interleaved
//! with garbage complete with the right data and status; no garbage chain ever writes the disk;
//! the used ring only names heads the driver published; buffers not wholly in guest memory get
//! IOERR without any byte moving.
//!
//! Deterministic: every test runs from a fixed seed (override with `SQUIB_FUZZ_SEED`, decimal or
//! `0x` hex) for a bounded number of iterations (override with `SQUIB_FUZZ_ITERATIONS`; its unit
//! is named on each test). A failure prints the seed that reproduces it.
#![forbid(unsafe_code)]

mod common;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use squib_virtio::block::backend::BlockBackend;
use squib_virtio::block::engine::{
    AsyncFileBackend, SyncFileBackend, UringFileBackend, UringOptions,
};
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType, QUEUE_SIZE, SEG_MAX};
use squib_virtio::mmio::{MMIO_MAGIC, MMIO_SLOT_SIZE, MMIO_VERSION, reg};
use squib_virtio::testing::{
    AVAIL_RING, BlockSlot, Buf, DESC_TABLE, GuestDriver, MemDisk, STATUS_UNTOUCHED, USED_RING,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const SECTOR: u64 = 512;
const CAPACITY_SECTORS: u64 = DISK_SIZE as u64 / SECTOR;

const S_ACKNOWLEDGE: u32 = 0x01;
const S_DRIVER: u32 = 0x02;
const S_DRIVER_OK: u32 = 0x04;
const S_FEATURES_OK: u32 = 0x08;
const S_NEEDS_RESET: u32 = 0x40;
const S_FAILED: u32 = 0x80;

// ---- seed, iterations, PRNG ----

/// The base seed of a run and how to replay it; shown in every assertion message.
#[derive(Clone, Copy, Debug)]
struct Seed(u64);

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {:#x} (replay: SQUIB_FUZZ_SEED={:#x})",
            self.0, self.0
        )
    }
}

/// Prints the seed if the test thread panics anywhere, including inside test helpers whose own
/// messages cannot name it.
struct SeedOnPanic(Seed);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("hostile_guest failed with {}", self.0);
        }
    }
}

const DEFAULT_SEED: u64 = 0x5eed_f05c_1b00_0001;

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={raw} is not a number")))
}

/// The run's seed, this test's PRNG (salted so the tests draw different streams from one seed),
/// its iteration count and the panic guard.
fn fuzz_setup(salt: u64, default_iterations: u64) -> (Seed, Rng, u64, SeedOnPanic) {
    let seed = Seed(env_u64("SQUIB_FUZZ_SEED").unwrap_or(DEFAULT_SEED));
    let iterations = env_u64("SQUIB_FUZZ_ITERATIONS").unwrap_or(default_iterations);
    (seed, Rng::new(seed.0 ^ salt), iterations, SeedOnPanic(seed))
}

/// xorshift64*, seeded through splitmix64 (so seed 0 works too).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

fn wait_for(what: &str, seed: Seed, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{seed}: timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Memory for a well-behaved driver's check that the device serves: allocated once, so a test
/// can run it any number of times.
struct Probe {
    slot: BlockSlot,
    out: GuestAddress,
    back: GuestAddress,
}

impl Probe {
    fn alloc(d: &mut GuestDriver) -> Self {
        Self {
            slot: BlockSlot::alloc(d),
            out: d.alloc(4096),
            back: d.alloc(4096),
        }
    }

    /// Writes 4 KiB of random bytes to a random sector and reads them back, both verified.
    fn write_then_read(&self, d: &mut GuestDriver, rng: &mut Rng, seed: Seed, what: &str) {
        let data = rng.bytes(4096);
        let sector = rng.below(CAPACITY_SECTORS - 8);
        d.write_bytes(self.out, &data);
        d.write_bytes(self.back, &[0x5a; 4096]);
        for (request_type, buf, used_len) in [
            (VIRTIO_BLK_T_OUT, Buf::readable(self.out, 4096), 1),
            (VIRTIO_BLK_T_IN, Buf::writable(self.back, 4096), 4097),
        ] {
            let head = self.slot.submit(d, request_type, sector, &[buf]);
            d.kick();
            let status = d.read_reg(reg::STATUS);
            let used = d.wait_used().unwrap_or_else(|| {
                panic!("{seed}: {what}: type {request_type} not completed (Status {status:#x})")
            });
            assert_eq!(
                (used.head, used.len, self.slot.status(d)),
                (head, used_len, OK),
                "{seed}: {what}: type {request_type} of sector {sector}"
            );
        }
        assert!(
            d.read_bytes(self.back, 4096) == data,
            "{seed}: {what}: read-back of sector {sector} differs from what was written"
        );
    }
}

// ---- 1. register fuzz ----

/// Memory the register fuzz fills with random bytes, so rings it points into hold garbage.
const SCRIBBLE_END: u64 = 1 << 20;
const ACCESSES_PER_ROUND: u64 = 1000;

/// Where the fuzz believes QueueSel points (the transport resets it to 0 on reset).
#[derive(Debug, Default)]
struct RegisterModel {
    queue_select: u32,
    driver_features_select: u32,
}

fn fuzz_offset(rng: &mut Rng) -> u64 {
    const INTERESTING: [u64; 26] = [
        reg::STATUS,
        reg::STATUS,
        reg::STATUS,
        reg::QUEUE_SEL,
        reg::QUEUE_NUM,
        reg::QUEUE_READY,
        reg::QUEUE_READY,
        reg::QUEUE_DESC_LOW,
        reg::QUEUE_DESC_HIGH,
        reg::QUEUE_DRIVER_LOW,
        reg::QUEUE_DRIVER_HIGH,
        reg::QUEUE_DEVICE_LOW,
        reg::QUEUE_DEVICE_HIGH,
        reg::DEVICE_FEATURES_SEL,
        reg::DRIVER_FEATURES_SEL,
        reg::DRIVER_FEATURES,
        reg::DEVICE_FEATURES,
        reg::QUEUE_NOTIFY,
        reg::QUEUE_NOTIFY,
        reg::INTERRUPT_ACK,
        reg::INTERRUPT_STATUS,
        reg::MAGIC_VALUE,
        reg::VERSION,
        reg::DEVICE_ID,
        reg::QUEUE_NUM_MAX,
        reg::CONFIG_GENERATION,
    ];
    match rng.below(100) {
        0..60 => rng.pick(&INTERESTING),
        60..75 => reg::CONFIG + rng.below(0x80),
        75..90 => rng.below(MMIO_SLOT_SIZE),
        90..95 => MMIO_SLOT_SIZE + rng.below(MMIO_SLOT_SIZE),
        _ => rng.pick(&[
            u64::MAX,
            u64::MAX - 3,
            1 << 32,
            i64::MAX as u64,
            reg::CONFIG - 1,
        ]),
    }
}

fn fuzz_width(rng: &mut Rng) -> usize {
    if rng.percent(70) {
        4
    } else {
        rng.pick(&[0, 1, 2, 3, 5, 7, 8, 16])
    }
}

/// A value for a 4-byte write to `offset`, biased toward what moves the device.
fn fuzz_value(rng: &mut Rng, offset: u64, status: u32, model: &RegisterModel) -> u32 {
    let ring_low = |rng: &mut Rng| match rng.below(100) {
        0..50 => (rng.below(SCRIBBLE_END) & !0xf) as u32,
        50..70 => rng.pick(&[DESC_TABLE, AVAIL_RING, USED_RING]) as u32,
        70..85 => (GUEST_MEM as u64 - rng.below(0x1000)) as u32,
        _ => rng.next_u32(),
    };
    match offset {
        reg::STATUS => match rng.below(100) {
            0..40 => {
                // The next step of a correct initialisation, so the fuzz reaches DRIVER_OK often.
                let next = match status & !S_FAILED {
                    0 => S_ACKNOWLEDGE,
                    1 => S_DRIVER,
                    3 => S_FEATURES_OK,
                    11 => S_DRIVER_OK,
                    _ => 0,
                };
                status | next
            }
            40..60 => {
                status
                    | rng.pick(&[
                        S_ACKNOWLEDGE,
                        S_DRIVER,
                        S_FEATURES_OK,
                        S_DRIVER_OK,
                        0x40,
                        0x80,
                    ])
            }
            60..70 => 0,
            _ => rng.next_u32() & rng.pick(&[0xff, u32::MAX]),
        },
        reg::QUEUE_SEL => {
            let random = rng.next_u32();
            rng.pick(&[0, 0, 0, 0, 1, 2, u32::MAX, random])
        }
        reg::QUEUE_NUM => {
            let random = rng.next_u32();
            rng.pick(&[
                0,
                1,
                2,
                3,
                16,
                128,
                255,
                256,
                256,
                257,
                512,
                32768,
                65535,
                65536,
                u32::MAX,
                random,
            ])
        }
        reg::QUEUE_READY => rng.pick(&[0, 1, 1, 1, 2, u32::MAX]),
        reg::QUEUE_DESC_LOW | reg::QUEUE_DRIVER_LOW | reg::QUEUE_DEVICE_LOW => ring_low(rng),
        reg::QUEUE_DESC_HIGH | reg::QUEUE_DRIVER_HIGH | reg::QUEUE_DEVICE_HIGH => {
            if rng.percent(80) {
                0
            } else {
                {
                    let random = rng.next_u32();
                    rng.pick(&[1, 0xffff_ffff, random])
                }
            }
        }
        reg::QUEUE_NOTIFY => {
            let random = rng.next_u32();
            rng.pick(&[0, 0, 0, 0, 1, 0xffff, u32::MAX, random])
        }
        reg::INTERRUPT_ACK => {
            let random = rng.next_u32();
            rng.pick(&[1, 2, 3, u32::MAX, random])
        }
        reg::DEVICE_FEATURES_SEL | reg::DRIVER_FEATURES_SEL => {
            let random = rng.next_u32();
            rng.pick(&[0, 0, 1, 1, 2, u32::MAX, random])
        }
        reg::DRIVER_FEATURES if rng.percent(60) => match model.driver_features_select {
            0 => ALL_RW as u32,
            1 => (ALL_RW >> 32) as u32,
            _ => 0,
        },
        _ => rng.next_u32(),
    }
}

/// The invariants of one read: identification registers and config space are constant, bad
/// accesses read 0, Status is a prefix of the initialisation sequence (plus FAILED/NEEDS_RESET).
fn check_read(
    offset: u64,
    data: &[u8],
    config: &[u8],
    generation: u32,
    model: &RegisterModel,
    at: &str,
) {
    if offset >= reg::CONFIG {
        let expected: Vec<u8> = (0..data.len() as u64)
            .map(|i| {
                (offset - reg::CONFIG)
                    .checked_add(i)
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| config.get(o).copied())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(data, expected, "{at}: config space read changed");
        return;
    }
    let Ok(word) = <[u8; 4]>::try_from(data) else {
        assert!(data.iter().all(|&b| b == 0), "{at}: odd-width read not 0");
        return;
    };
    let value = u32::from_le_bytes(word);
    if !offset.is_multiple_of(4) {
        assert_eq!(value, 0, "{at}: unaligned read not 0");
        return;
    }
    match offset {
        reg::MAGIC_VALUE => assert_eq!(value, MMIO_MAGIC, "{at}: magic"),
        reg::VERSION => assert_eq!(value, MMIO_VERSION, "{at}: version"),
        reg::DEVICE_ID => assert_eq!(value, VIRTIO_ID_BLOCK, "{at}: device id"),
        reg::VENDOR_ID => assert_eq!(value, 0, "{at}: vendor id"),
        reg::QUEUE_NUM_MAX => {
            let expected = if model.queue_select == 0 {
                u32::from(QUEUE_SIZE)
            } else {
                0
            };
            assert_eq!(
                value, expected,
                "{at}: QueueNumMax of queue {}",
                model.queue_select
            );
        }
        reg::CONFIG_GENERATION => assert_eq!(value, generation, "{at}: config generation"),
        reg::INTERRUPT_STATUS => assert_eq!(value & !3, 0, "{at}: InterruptStatus {value:#x}"),
        reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => assert_eq!(value, u32::MAX, "{at}: SHM"),
        reg::STATUS => {
            let steps = value & !(S_FAILED | S_NEEDS_RESET);
            assert!(
                [0, 1, 3, 11, 15].contains(&steps),
                "{at}: Status {value:#x} is not a prefix of the initialisation sequence"
            );
        }
        _ => {}
    }
}

/// Thousands of random register accesses against a block device, in rounds; after each round a
/// reset and a well-behaved initialisation must bring the device up, and a 4 KiB write and read
/// must round-trip. `SQUIB_FUZZ_ITERATIONS` = rounds of 1000 accesses.
#[test]
fn register_fuzz_never_wedges_the_device() {
    let (seed, mut rng, rounds, _guard) = fuzz_setup(0x1, 30);
    let disk = Arc::new(MemDisk::with_contents(pattern(DISK_SIZE), false));
    let device = BlockDevice::new(disk, BlockConfig::new(DRIVE_ID, CacheType::Writeback)).unwrap();
    let mut d = GuestDriver::new(Box::new(device), GUEST_MEM);
    let mut config = vec![0u8; 0x100];
    d.transport().read(reg::CONFIG, &mut config);
    assert_ne!(config[..8], [0; 8], "config space has no capacity");
    let generation = d.read_reg(reg::CONFIG_GENERATION);
    // Tells the driver the queue size `reprobe` programs.
    d.setup_queue(QUEUE_SIZE);
    let mut model = RegisterModel::default();
    let probe = Probe::alloc(&mut d);

    for round in 0..rounds {
        let scribble = rng.bytes(SCRIBBLE_END as usize);
        d.write_bytes(GuestAddress(0), &scribble);
        for i in 0..ACCESSES_PER_ROUND {
            let at = format!("{seed}, round {round}, access {i}");
            let offset = fuzz_offset(&mut rng);
            let width = fuzz_width(&mut rng);
            if rng.percent(40) {
                let mut data = vec![0xa5u8; width];
                d.transport().read(offset, &mut data);
                check_read(offset, &data, &config, generation, &model, &at);
                continue;
            }
            let status = d.read_reg(reg::STATUS);
            let data = if width == 4 {
                fuzz_value(&mut rng, offset, status, &model)
                    .to_le_bytes()
                    .to_vec()
            } else {
                rng.bytes(width)
            };
            d.transport().write(offset, &data);
            if width != 4 || !offset.is_multiple_of(4) {
                continue;
            }
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            match offset {
                reg::QUEUE_SEL => model.queue_select = value,
                reg::DRIVER_FEATURES_SEL => model.driver_features_select = value,
                reg::STATUS if value == 0 => {
                    model = RegisterModel::default();
                    // A reset is complete when the write returns.
                    assert_eq!(d.read_reg(reg::STATUS), 0, "{at}: Status after reset");
                    assert_eq!(
                        d.read_reg(reg::INTERRUPT_STATUS),
                        0,
                        "{at}: interrupt after reset"
                    );
                    assert_eq!(
                        d.read_reg(reg::QUEUE_READY),
                        0,
                        "{at}: QueueReady after reset"
                    );
                }
                _ => {}
            }
        }
        // A well-behaved driver takes over: reset, initialise, serve.
        d.reprobe(ALL_RW);
        model = RegisterModel::default();
        let status = d.read_reg(reg::STATUS);
        assert_eq!(
            status,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            "{seed}, round {round}: the device did not come up after a reset"
        );
        probe.write_then_read(&mut d, &mut rng, seed, &format!("round {round}"));
    }
}

// ---- 2. chain fuzz ----

/// Valid chains live at descriptors `VALID_STRIDE * j` (header, up to three data, status);
/// garbage chains in `GARBAGE_START..QUEUE_SIZE`. Garbage `next` indices stay out of the valid
/// part, so garbage never links into (and corrupts) a valid request.
const VALID_SLOTS: u16 = 8;
const VALID_STRIDE: u16 = 5;
const GARBAGE_START: u16 = VALID_SLOTS * VALID_STRIDE;
const VALID_DATA: u32 = 8 * 512;
/// Readable garbage: every byte has its top bit set, so no 16 bytes of it read as a header of a
/// type that writes the disk (any type >= 0x8080_8080 is unsupported) or as a descriptor inside
/// guest memory.
const READABLE_LEN: u32 = 64 << 10;
const TABLES_LEN: u32 = 64 << 10;
/// Device-writable garbage runs from here to the end of guest memory, so a writable buffer is
/// either in it or not wholly in guest memory.
const WRITABLE_START: u64 = 8 << 20;

#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Self {
            addr,
            len,
            flags,
            next,
        }
    }

    fn raw(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

fn header_bytes(request_type: u32, sector: u64) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    raw
}

/// What a completion of a given head must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Valid request in slot `j`: exact used length, status OK, data checked afterwards.
    Valid { slot: usize, used_len: u32 },
    /// A request a correct device must refuse: used length 0 (no status byte) or 1 (an error
    /// status and no data).
    Refused,
    /// Anything but a disk write (checked globally).
    Any,
}

#[derive(Clone, Debug)]
struct ValidRequest {
    request_type: u32,
    sector: u64,
    /// Expected contents of the data buffer after a read.
    read_back: Option<Vec<u8>>,
}

/// Guest memory the chain fuzz lays its chains in.
#[derive(Debug)]
struct Arena {
    /// Per valid slot: header, status byte, data.
    valid: Vec<(GuestAddress, GuestAddress, GuestAddress)>,
    /// Per valid slot: room for its chain as an indirect table.
    valid_tables: GuestAddress,
    /// One 16-byte cell per descriptor index: only that descriptor ever points at it.
    cells: GuestAddress,
    readable: GuestAddress,
    tables: GuestAddress,
}

impl Arena {
    fn alloc(d: &mut GuestDriver, rng: &mut Rng) -> Self {
        let valid = (0..VALID_SLOTS)
            .map(|_| (d.alloc(16), d.alloc(1), d.alloc(VALID_DATA)))
            .collect();
        let valid_tables = d.alloc(16 * u32::from(VALID_SLOTS * VALID_STRIDE));
        let cells = d.alloc(16 * u32::from(QUEUE_SIZE));
        let readable = d.alloc(READABLE_LEN);
        let tables = d.alloc(TABLES_LEN);
        assert!(
            d.alloc(1).0 < WRITABLE_START,
            "arena overlaps the writable area"
        );
        let high: Vec<u8> = rng
            .bytes(READABLE_LEN as usize)
            .iter()
            .map(|b| b | 0x80)
            .collect();
        d.write_bytes(readable, &high);
        Self {
            valid,
            valid_tables,
            cells,
            readable,
            tables,
        }
    }

    fn cell(&self, index: u16) -> GuestAddress {
        GuestAddress(self.cells.0 + 16 * u64::from(index))
    }

    /// A readable address whose first 16 bytes are readable garbage.
    fn readable_at(&self, rng: &mut Rng) -> u64 {
        self.readable.0 + rng.below(u64::from(READABLE_LEN) - 16)
    }

    fn writable_at(rng: &mut Rng) -> u64 {
        rng.range(WRITABLE_START, GUEST_MEM as u64)
    }
}

/// An address at which `len` (>= 1) bytes are not wholly in guest memory: straddling its end,
/// beyond it, or near `u64::MAX`.
fn bad_addr(rng: &mut Rng, len: u32) -> u64 {
    let end = GUEST_MEM as u64;
    let len = u64::from(len);
    match rng.below(5) {
        0 if len > 1 => end - rng.range(1, len.min(end)),
        1 => end + rng.below(1 << 20),
        2 => 1 << 40,
        3 => u64::MAX - rng.below(64),
        _ => (u64::MAX - len).wrapping_add(1 + rng.below(len.max(1))),
    }
}

fn garbage_len(rng: &mut Rng) -> u32 {
    let (small, any) = (rng.below(8192) as u32, rng.next_u32());
    rng.pick(&[
        0,
        1,
        15,
        16,
        17,
        512,
        4096,
        u32::MAX,
        0x8000_0000,
        small,
        any,
    ])
}

fn garbage_next(rng: &mut Rng, index: u16) -> u16 {
    match rng.below(100) {
        0..55 => rng.range(u64::from(GARBAGE_START), u64::from(QUEUE_SIZE)) as u16,
        55..70 => index,
        70..85 => rng.range(u64::from(QUEUE_SIZE), 0x1_0000) as u16,
        _ => (index + 1).min(QUEUE_SIZE - 1),
    }
}

/// A descriptor with random flags, length and next, whose address respects the arena's rules:
/// readable buffers point at readable garbage, writable ones at the writable area, indirect
/// tables at readable garbage, or anything not wholly in guest memory.
fn garbage_desc(rng: &mut Rng, arena: &Arena, index: u16) -> Desc {
    let mut flags = 0;
    if rng.percent(60) {
        flags |= NEXT;
    }
    if rng.percent(50) {
        flags |= WRITE;
    }
    if rng.percent(8) {
        flags |= INDIRECT;
    }
    let len = garbage_len(rng);
    let addr = if rng.percent(30) && len > 0 {
        bad_addr(rng, len)
    } else if flags & INDIRECT != 0 || flags & WRITE == 0 {
        arena.readable_at(rng)
    } else {
        Arena::writable_at(rng)
    };
    Desc::new(addr, len, flags, garbage_next(rng, index))
}

/// Builds garbage chains into the descriptor table from `start`; see the kinds below.
struct GarbageBuilder<'a> {
    arena: &'a Arena,
    table: [Desc; QUEUE_SIZE as usize],
    cells: Vec<(u16, [u8; 16])>,
    tables: Vec<(GuestAddress, Vec<Desc>)>,
    tables_used: u64,
    cursor: u16,
}

impl GarbageBuilder<'_> {
    fn room(&self) -> u16 {
        QUEUE_SIZE - self.cursor
    }

    /// Places `descs` at consecutive indices; a `next` of `u16::MAX` means "the following one".
    fn place(&mut self, descs: &[Desc]) -> u16 {
        let head = self.cursor;
        for (i, desc) in descs.iter().enumerate() {
            let index = head + i as u16;
            let mut desc = *desc;
            if desc.next == u16::MAX {
                desc.next = index + 1;
            }
            self.table[usize::from(index)] = desc;
        }
        self.cursor += descs.len() as u16;
        head
    }

    fn header(&mut self, index: u16, request_type: u32, sector: u64) -> Desc {
        self.cells.push((index, header_bytes(request_type, sector)));
        Desc::new(self.arena.cell(index).0, 16, NEXT, u16::MAX)
    }

    fn table(&mut self, descs: Vec<Desc>) -> Option<u64> {
        let len = 16 * descs.len() as u64;
        if self.tables_used + len > u64::from(TABLES_LEN) {
            return None;
        }
        let addr = GuestAddress(self.arena.tables.0 + self.tables_used);
        self.tables_used += len;
        self.tables.push((addr, descs));
        Some(addr.0)
    }

    fn readable_data(&self, rng: &mut Rng, len: u32) -> Desc {
        let addr = self.arena.readable.0 + rng.below(u64::from(READABLE_LEN - len));
        Desc::new(addr, len, NEXT, u16::MAX)
    }

    fn status(rng: &mut Rng) -> Desc {
        Desc::new(Arena::writable_at(rng), 1, WRITE, 0)
    }

    /// One garbage chain, or `None` when the table is full. Returns the head and what its
    /// completion must look like.
    fn chain(&mut self, rng: &mut Rng) -> Option<(u16, Expect)> {
        if self.room() < 8 {
            return None;
        }
        let head = self.cursor;
        let tail_len = rng.below(5) as usize;
        let mut descs = Vec::new();
        let expect = match rng.below(100) {
            // Types that do not write the disk, any shape: the device may serve them.
            0..35 => {
                if rng.percent(80) {
                    let request_type = {
                        let random = rng.next_u32();
                        rng.pick(&[
                            VIRTIO_BLK_T_IN,
                            VIRTIO_BLK_T_IN,
                            VIRTIO_BLK_T_GET_ID,
                            VIRTIO_BLK_T_FLUSH,
                            2,
                            3,
                            14,
                            0x8000_0000 | random,
                        ])
                    };
                    let sector = {
                        let random = rng.below(CAPACITY_SECTORS);
                        rng.pick(&[
                            0,
                            random,
                            CAPACITY_SECTORS - 1,
                            CAPACITY_SECTORS,
                            CAPACITY_SECTORS + 1,
                            u64::MAX,
                            u64::MAX / SECTOR,
                        ])
                    };
                    descs.push(self.header(head, request_type, sector));
                }
                for i in descs.len()..descs.len() + tail_len + 1 {
                    descs.push(garbage_desc(rng, self.arena, head + i as u16));
                }
                Expect::Any
            }
            // OUT with a sector past the end: refused whatever follows.
            35..45 => {
                let sector = {
                    let random = rng.below(1 << 20);
                    rng.pick(&[
                        CAPACITY_SECTORS + 1,
                        CAPACITY_SECTORS + 1 + random,
                        u64::MAX,
                        u64::MAX / SECTOR,
                        u64::MAX / SECTOR + 1,
                        1 << 62,
                    ])
                };
                descs.push(self.header(head, VIRTIO_BLK_T_OUT, sector));
                for i in 1..=tail_len {
                    descs.push(garbage_desc(rng, self.arena, head + i as u16));
                }
                Expect::Refused
            }
            // A disk-writing type with an in-range sector and one defect that must stop it.
            _ => {
                descs = self.defective_write(rng, head, tail_len)?;
                Expect::Refused
            }
        };
        let head = self.place(&descs);
        Some((head, expect))
    }

    fn defective_write(&mut self, rng: &mut Rng, head: u16, tail_len: usize) -> Option<Vec<Desc>> {
        let request_type = rng.pick(&[
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
        ]);
        let sector = rng.below(CAPACITY_SECTORS - 16);
        let header = self.header(head, request_type, sector);
        let mut descs = vec![header];
        let data = self.readable_data(rng, 512);
        match rng.below(11) {
            // A data buffer not wholly in guest memory, after 0..2 good ones; whatever follows.
            0 => {
                for _ in 0..rng.below(3) {
                    descs.push(self.readable_data(rng, 512));
                }
                let len = {
                    let random = rng.range(1, 1 << 20) as u32;
                    rng.pick(&[1, 512, 4096, u32::MAX, random])
                };
                descs.push(Desc::new(bad_addr(rng, len), len, NEXT, u16::MAX));
                for _ in 0..tail_len {
                    let index = head + descs.len() as u16;
                    descs.push(garbage_desc(rng, self.arena, index));
                }
            }
            // Mixed directions.
            1 => {
                let writable = Desc::new(Arena::writable_at(rng), 512, NEXT | WRITE, u16::MAX);
                descs.extend([data, writable, Self::status(rng)]);
            }
            // Data not a multiple of 512 bytes (and never the 16 bytes of a range).
            2 => {
                let len = rng.pick(&[1, 15, 17, 100, 511, 513, 1000]);
                descs.extend([self.readable_data(rng, len), Self::status(rng)]);
            }
            // No usable status byte: readable, empty, or not in guest memory.
            3 => {
                let status = match rng.below(3) {
                    0 => Desc::new(self.arena.readable_at(rng), 1, 0, 0),
                    1 => Desc::new(Arena::writable_at(rng), 0, WRITE, 0),
                    _ => Desc::new(bad_addr(rng, 1), 1, WRITE, 0),
                };
                descs.extend([data, status]);
            }
            // The chain is cut where a status byte would be: the last descriptor virtio-queue
            // yields still has NEXT (a next beyond the table, a loop, a jump back to the header).
            4 => {
                let status = head + 2;
                let next = {
                    let random = rng.range(256, 0x1_0000) as u16;
                    rng.pick(&[random, random, status, head + 1, head])
                };
                let cut = Desc::new(Arena::writable_at(rng), 1, WRITE | NEXT, next);
                descs.extend([data, cut]);
            }
            // Runs past the end of the disk (OUT: the range is in the header).
            5 => {
                let back = rng.range(1, 9);
                let len = ((back + rng.range(1, 9)) * SECTOR) as u32;
                self.cells.pop();
                descs[0] = self.header(head, VIRTIO_BLK_T_OUT, CAPACITY_SECTORS - back);
                descs.extend([self.readable_data(rng, len), Self::status(rng)]);
            }
            // DISCARD/WRITE_ZEROES with a bad range (its sector never reads as a writing type,
            // should this descriptor ever be taken for a header).
            6 => {
                let (op, allowed) = if rng.percent(50) {
                    (VIRTIO_BLK_T_DISCARD, 0)
                } else {
                    (
                        VIRTIO_BLK_T_WRITE_ZEROES,
                        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                    )
                };
                self.cells.pop();
                descs[0] = self.header(head, op, 0);
                let max = 1 << 22;
                let (range_sector, num, flags) = match rng.below(4) {
                    0 => (
                        rng.range(16, CAPACITY_SECTORS - 8),
                        1,
                        // Always a bit the op does not allow (never 0).
                        (1 << rng.pick(&[1, 2, 3, 7, 31]))
                            | (!allowed & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
                    ),
                    1 => (rng.range(16, CAPACITY_SECTORS - 8), 0, 0),
                    2 => (16, max + 1 + rng.below(1000) as u32, 0),
                    _ => (rng.pick(&[CAPACITY_SECTORS, u64::MAX - 1]), 1, 0),
                };
                let payload = head + 1;
                self.cells.push((
                    payload,
                    squib_virtio::testing::range_bytes(range_sector, num, flags),
                ));
                descs.push(Desc::new(self.arena.cell(payload).0, 16, NEXT, u16::MAX));
                descs.push(Self::status(rng));
            }
            // A header descriptor the device must not read: writable, the wrong size, or not in
            // guest memory.
            7 => {
                match rng.below(3) {
                    0 => descs[0].flags |= WRITE,
                    1 => descs[0].len = rng.pick(&[0, 1, 15, 17, 32, 4096, u32::MAX]),
                    _ => descs[0].addr = bad_addr(rng, 16),
                }
                descs.extend([data, Self::status(rng)]);
            }
            // More data descriptors than seg_max, through an indirect table.
            8 => {
                let count = SEG_MAX + 1 + rng.below(3) as usize;
                let mut table = vec![Desc::new(self.arena.cell(head).0, 16, NEXT, 1)];
                for i in 0..count {
                    let d = self.readable_data(rng, 512);
                    table.push(Desc::new(d.addr, 512, NEXT, i as u16 + 2));
                }
                table.push(Desc::new(Arena::writable_at(rng), 1, WRITE, 0));
                self.cells.pop();
                self.cells
                    .push((head, header_bytes(VIRTIO_BLK_T_OUT, sector)));
                let len = 16 * table.len() as u32;
                let addr = self.table(table)?;
                let flags = INDIRECT | if rng.percent(30) { NEXT } else { 0 };
                descs = vec![Desc::new(addr, len, flags, head)];
            }
            // Indirect: a bad data buffer inside, or a nested indirect table, or a table whose
            // length is not a whole number of descriptors.
            9 => {
                let len = rng.pick(&[512, 4096, u32::MAX]);
                let second = match rng.below(2) {
                    0 => Desc::new(bad_addr(rng, len), len, NEXT, 2),
                    _ => Desc::new(self.arena.tables.0, 48, INDIRECT | NEXT, 2),
                };
                let table = vec![
                    Desc::new(self.arena.cell(head).0, 16, NEXT, 1),
                    second,
                    Desc::new(Arena::writable_at(rng), 1, WRITE, 0),
                ];
                let addr = self.table(table)?;
                let table_len = rng.pick(&[48, 48, 47, 49]);
                descs = vec![Desc::new(addr, table_len, INDIRECT, 0)];
            }
            // An OUT with an in-range sector whose data is device-writable.
            _ => {
                self.cells.pop();
                descs[0] = self.header(head, VIRTIO_BLK_T_OUT, sector);
                let writable = Desc::new(Arena::writable_at(rng), 512, NEXT | WRITE, u16::MAX);
                descs.extend([writable, writable, Self::status(rng)]);
            }
        }
        Some(descs)
    }
}

/// The chain fuzz over one disk engine. `SQUIB_FUZZ_ITERATIONS` = batches.
/// With `indirect_tables`, VIRTIO_F_INDIRECT_DESC is negotiated and valid requests travel in
/// indirect tables 40% of the time; without it every indirect chain must be refused.
fn chain_fuzz(
    salt: u64,
    indirect_tables: bool,
    open: impl Fn(&std::path::Path) -> Arc<dyn BlockBackend>,
) {
    let (seed, mut rng, batches, _guard) = fuzz_setup(salt, 300);
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut shadow = pattern(DISK_SIZE);
    std::fs::write(file.path(), &shadow).unwrap();
    let features = if indirect_tables {
        ALL_RW | F_INDIRECT
    } else {
        ALL_RW
    };
    let mut d = driver_for(open(file.path()), CacheType::Writeback, features);
    let arena = Arena::alloc(&mut d, &mut rng);
    // What the available ring holds, slot by slot (a jump of avail.idx re-publishes these).
    let mut avail = [0u16; QUEUE_SIZE as usize];
    let mut avail_pos: u16 = 0;
    let (mut served_valid, mut resets) = (0u64, 0u64);

    for batch in 0..batches {
        let at = format!("{seed}, batch {batch}");
        // Fresh table and cells: nothing from an earlier batch can be reached.
        for index in 0..QUEUE_SIZE {
            d.write_descriptor(index, GuestAddress(0), 0, 0, 0);
        }
        d.write_bytes(arena.cells, &[0; 16 * QUEUE_SIZE as usize]);
        let mut expect = [Expect::Any; QUEUE_SIZE as usize];

        // Valid requests on disjoint sector ranges (their order then does not matter).
        let mut requests = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for slot in 0..usize::from(VALID_SLOTS) {
            let (header, status, data) = arena.valid[slot];
            let sectors = rng.range(1, 9);
            let mut sector = if rng.percent(20) {
                CAPACITY_SECTORS - sectors - rng.below(4)
            } else {
                rng.below(CAPACITY_SECTORS - sectors + 1)
            };
            let mut request_type = rng.pick(&[VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT]);
            if taken
                .iter()
                .any(|&(s, n)| sector < s + n && s < sector + sectors)
                || rng.percent(8)
            {
                (request_type, sector) = (VIRTIO_BLK_T_FLUSH, 0);
            } else {
                taken.push((sector, sectors));
            }
            let len = (sectors * SECTOR) as u32;
            let range = (sector * SECTOR) as usize..(sector * SECTOR) as usize + len as usize;
            let read_back = match request_type {
                VIRTIO_BLK_T_IN => {
                    d.write_bytes(data, &vec![0x5a; len as usize]);
                    Some(shadow[range].to_vec())
                }
                VIRTIO_BLK_T_OUT => {
                    let bytes = rng.bytes(len as usize);
                    d.write_bytes(data, &bytes);
                    shadow[range].copy_from_slice(&bytes);
                    None
                }
                _ => None,
            };
            d.write_bytes(header, &header_bytes(request_type, sector));
            d.write_bytes(status, &[STATUS_UNTOUCHED]);
            // Header, the data in 1..=3 pieces of whole sectors, status: in the descriptor table
            // at `base`, or (indirect tables negotiated) in the slot's indirect table.
            let base = slot as u16 * VALID_STRIDE;
            let mut chain = vec![(header, 16, 0)];
            if request_type != VIRTIO_BLK_T_FLUSH {
                let pieces = rng.range(1, sectors.min(3) + 1);
                let mut done = 0;
                for piece in 0..pieces {
                    let left = sectors - done;
                    let take = if piece + 1 == pieces {
                        left
                    } else {
                        rng.range(1, left - (pieces - piece - 1) + 1)
                    };
                    let flags = if request_type == VIRTIO_BLK_T_IN {
                        WRITE
                    } else {
                        0
                    };
                    let addr = GuestAddress(data.0 + done * SECTOR);
                    chain.push((addr, (take * SECTOR) as u32, flags));
                    done += take;
                }
            }
            chain.push((status, 1, WRITE));
            let indirect = indirect_tables && rng.percent(40);
            let (table, first) = if indirect {
                let table = GuestAddress(arena.valid_tables.0 + 16 * u64::from(base));
                d.write_descriptor(base, table, 16 * chain.len() as u32, INDIRECT, 0);
                (Some(table), 0)
            } else {
                (None, base)
            };
            for (i, &(addr, len, flags)) in chain.iter().enumerate() {
                let index = first + i as u16;
                let last = i + 1 == chain.len();
                let flags = if last { flags } else { flags | NEXT };
                let next = if last { 0 } else { index + 1 };
                match table {
                    None => d.write_descriptor(index, addr, len, flags, next),
                    Some(table) => {
                        let raw = Desc::new(addr.0, len, flags, next).raw();
                        d.write_bytes(GuestAddress(table.0 + 16 * u64::from(index)), &raw);
                    }
                }
            }
            let used_len = if request_type == VIRTIO_BLK_T_IN {
                len + 1
            } else {
                1
            };
            expect[usize::from(base)] = Expect::Valid { slot, used_len };
            requests.push(ValidRequest {
                request_type,
                sector,
                read_back,
            });
        }

        // Garbage.
        let mut builder = GarbageBuilder {
            arena: &arena,
            table: [Desc::default(); QUEUE_SIZE as usize],
            cells: Vec::new(),
            tables: Vec::new(),
            tables_used: 0,
            cursor: GARBAGE_START,
        };
        let mut heads: Vec<u16> = (0..VALID_SLOTS).map(|j| j * VALID_STRIDE).collect();
        for _ in 0..rng.range(4, 30) {
            let Some((head, kind)) = builder.chain(&mut rng) else {
                break;
            };
            expect[usize::from(head)] = kind;
            heads.push(head);
        }
        for index in GARBAGE_START..builder.cursor {
            let desc = builder.table[usize::from(index)];
            d.write_descriptor(
                index,
                GuestAddress(desc.addr),
                desc.len,
                desc.flags,
                desc.next,
            );
        }
        for (index, bytes) in &builder.cells {
            d.write_bytes(arena.cell(*index), bytes);
        }
        for (addr, descs) in &builder.tables {
            let raw: Vec<u8> = descs.iter().flat_map(|desc| desc.raw()).collect();
            d.write_bytes(*addr, &raw);
        }

        // Publish in random order and random kicks; sometimes avail.idx jumps over entries
        // published before, which the device then serves again.
        rng.shuffle(&mut heads);
        let mut outstanding: Vec<u16> = Vec::new();
        for head in heads {
            if rng.percent(10) {
                for _ in 0..rng.range(1, 4) {
                    let stale = avail[usize::from(avail_pos % QUEUE_SIZE)];
                    d.push_avail(stale);
                    avail_pos = avail_pos.wrapping_add(1);
                    outstanding.push(stale);
                }
            }
            avail[usize::from(avail_pos % QUEUE_SIZE)] = head;
            d.push_avail(head);
            avail_pos = avail_pos.wrapping_add(1);
            outstanding.push(head);
            if rng.percent(20) {
                d.kick();
            }
        }
        d.kick();

        // Every published entry completes once; nothing else appears in the used ring.
        for n in 0..outstanding.len() {
            let status = d.read_reg(reg::STATUS);
            let used = d.wait_used().unwrap_or_else(|| {
                panic!(
                    "{at}: completion {n} of {} never came (Status {status:#x}, heads {outstanding:?})",
                    outstanding.len()
                )
            });
            let Some(position) = outstanding.iter().position(|&h| h == used.head) else {
                panic!(
                    "{at}: the used ring names head {} that was not published",
                    used.head
                );
            };
            outstanding.swap_remove(position);
            match expect
                .get(usize::from(used.head))
                .copied()
                .unwrap_or(Expect::Any)
            {
                Expect::Valid { slot, used_len } => assert_eq!(
                    used.len, used_len,
                    "{at}: used length of valid request {slot} ({:?})",
                    requests[slot]
                ),
                Expect::Refused => assert!(
                    used.len <= 1,
                    "{at}: garbage head {} reported {} bytes written",
                    used.head,
                    used.len
                ),
                Expect::Any => {}
            }
        }
        assert_eq!(
            d.pop_used(),
            None,
            "{at}: more completions than published entries"
        );
        assert_eq!(
            d.read_reg(reg::STATUS) & S_NEEDS_RESET,
            0,
            "{at}: NEEDS_RESET"
        );
        for (slot, request) in requests.iter().enumerate() {
            let (_, status, data) = arena.valid[slot];
            assert_eq!(
                d.read_bytes(status, 1),
                [OK],
                "{at}: status of valid request {slot} ({request:?})"
            );
            if let Some(expected) = &request.read_back {
                assert!(
                    d.read_bytes(data, expected.len()) == *expected,
                    "{at}: valid read {slot} of sector {} returned the wrong bytes",
                    request.sector
                );
            }
            served_valid += u64::from(request.request_type != VIRTIO_BLK_T_FLUSH);
        }

        // Now and then, break the ring for good: the device must stop and a reset recover it.
        if rng.percent(5) {
            let used_before = d.used_idx();
            let what = match rng.below(3) {
                0 => {
                    let jump = rng.range(u64::from(QUEUE_SIZE) + 1, 0x1_0000) as u16;
                    d.publish_avail_idx(avail_pos.wrapping_add(jump));
                    d.notify();
                    "avail.idx more than a queue ahead"
                }
                1 => {
                    d.publish_avail_idx(avail_pos.wrapping_sub(rng.range(1, 100) as u16));
                    d.notify();
                    "avail.idx moved backwards"
                }
                _ => {
                    d.push_avail(rng.range(u64::from(QUEUE_SIZE), 0x1_0000) as u16);
                    d.kick();
                    "an avail entry beyond the descriptor table"
                }
            };
            wait_for(&format!("NEEDS_RESET after {what} ({at})"), seed, || {
                d.read_reg(reg::STATUS) & S_NEEDS_RESET != 0
            });
            assert_eq!(d.used_idx(), used_before, "{at}: served after {what}");
            d.reprobe(features);
            avail = [0; QUEUE_SIZE as usize];
            avail_pos = 0;
            resets += 1;
        }
    }

    let on_disk = std::fs::read(file.path()).unwrap();
    let first_difference = on_disk.iter().zip(&shadow).position(|(a, b)| a != b);
    assert!(
        on_disk.len() == shadow.len() && first_difference.is_none(),
        "{seed}: the disk differs from the valid writes at byte {first_difference:?} \
         (length {} vs {}): a garbage chain wrote the disk",
        on_disk.len(),
        shadow.len()
    );
    assert!(
        served_valid > batches,
        "{seed}: too few valid requests ({served_valid})"
    );
    eprintln!(
        "chain fuzz: {batches} batches, {served_valid} valid requests, {resets} resets, {seed}"
    );
}

#[test]
fn chain_fuzz_on_the_async_file_engine_never_writes_garbage() {
    chain_fuzz(0x2, false, |path| {
        Arc::new(AsyncFileBackend::open(path, false).unwrap())
    });
}

#[test]
fn chain_fuzz_on_the_sync_file_engine_never_writes_garbage() {
    chain_fuzz(0x3, false, |path| {
        Arc::new(SyncFileBackend::open(path, false).unwrap())
    });
}

/// The same with VIRTIO_F_INDIRECT_DESC negotiated: valid requests in indirect tables are
/// served with the right data, and the garbage indirect chains (nested, with NEXT, too long,
/// not whole descriptors, bad buffers inside) are still refused.
#[test]
fn chain_fuzz_with_indirect_tables_never_writes_garbage() {
    chain_fuzz(0x5, true, |path| {
        Arc::new(AsyncFileBackend::open(path, false).unwrap())
    });
}

#[test]
fn chain_fuzz_on_the_uring_engine_never_writes_garbage() {
    chain_fuzz(0x7, false, |path| {
        Arc::new(UringFileBackend::open(path, false).unwrap())
    });
}

#[test]
fn chain_fuzz_on_the_uring_engine_with_fixed_buffers_never_writes_garbage() {
    let options = UringOptions {
        fixed_buffers: Some(true),
        ..UringOptions::default()
    };
    chain_fuzz(0x8, false, |path| {
        Arc::new(
            UringFileBackend::open(path, false)
                .unwrap()
                .with_options(options),
        )
    });
}

// ---- 3. guest memory bounds ----

const MIB_U64: u64 = MIB as u64;
/// Region A `[0, 1M)`, region B `[1M, 2M)` right after it, a hole `[2M, 3M)`, region C
/// `[3M, 4M)`: guest memory ends at 4 MiB.
const REGIONS: [(u64, u64); 3] = [(0, MIB_U64), (MIB_U64, MIB_U64), (3 * MIB_U64, MIB_U64)];
const MEM_END: u64 = 4 * MIB_U64;

fn in_guest_memory(addr: u64, len: u64) -> bool {
    // A and B are contiguous: one run `[0, 2M)`, and C.
    let runs = [(0, 2 * MIB_U64), (3 * MIB_U64, MEM_END)];
    addr.checked_add(len)
        .is_some_and(|end| runs.iter().any(|&(s, e)| addr >= s && end <= e))
}

struct BoundsRig {
    d: GuestDriver,
    file: tempfile::NamedTempFile,
    shadow: Vec<u8>,
}

fn bounds_rig(open: fn(&std::path::Path) -> Arc<dyn BlockBackend>) -> BoundsRig {
    let file = tempfile::NamedTempFile::new().unwrap();
    let shadow = pattern(DISK_SIZE);
    std::fs::write(file.path(), &shadow).unwrap();
    let backend = open(file.path());
    let device =
        BlockDevice::new(backend, BlockConfig::new(DRIVE_ID, CacheType::Writeback)).unwrap();
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = squib_host::guest_memory::anonymous(&ranges, false).unwrap();
    let mut d = GuestDriver::with_memory(Box::new(device), mem);
    // Without EVENT_IDX, so that a buffer over the used ring cannot hide avail_event from kick.
    assert!(d.negotiate(ALL_RW & !F_EVENT_IDX));
    d.setup_queue(QUEUE_SIZE);
    d.set_status_bit(S_DRIVER_OK);
    BoundsRig { d, file, shadow }
}

/// Submits `header, data..., status` with the header and status at the given addresses (written
/// only where they are in guest memory); returns (status byte or None, used length).
fn submit_raw(
    d: &mut GuestDriver,
    header: GuestAddress,
    request_type: u32,
    sector: u64,
    data: &[Buf],
    status: GuestAddress,
    at: &str,
) -> (Option<u8>, u32) {
    let mem = d.mem().clone();
    let _ = mem.write_slice(&header_bytes(request_type, sector), header);
    let _ = mem.write_obj(STATUS_UNTOUCHED, status);
    let head = d.add_chain(
        std::iter::once(Buf::readable(header, 16))
            .chain(data.iter().copied())
            .chain(std::iter::once(Buf::writable(status, 1))),
    );
    d.kick();
    let used = d
        .wait_used()
        .unwrap_or_else(|| panic!("{at}: request not completed"));
    assert_eq!(used.head, head, "{at}: used head");
    (mem.read_obj::<u8>(status).ok(), used.len)
}

/// Requests whose buffers sit at the end of guest memory, across the boundary of two adjacent
/// regions, across the hole between regions, in the hole, and over the rings.
/// `SQUIB_FUZZ_ITERATIONS` = random placements (after the fixed cases).
#[test]
fn buffers_at_the_edges_of_guest_memory() {
    buffers_at_the_edges_of(0x4, |path| {
        Arc::new(AsyncFileBackend::open(path, false).unwrap())
    });
}

#[test]
fn buffers_at_the_edges_of_guest_memory_on_the_uring_engine() {
    // Fixed buffers: a segment inside one region uses them, one across regions A and B cannot.
    buffers_at_the_edges_of(0x7, |path| {
        let options = UringOptions {
            fixed_buffers: Some(true),
            ..UringOptions::default()
        };
        Arc::new(
            UringFileBackend::open(path, false)
                .unwrap()
                .with_options(options),
        )
    });
}

fn buffers_at_the_edges_of(salt: u64, open: fn(&std::path::Path) -> Arc<dyn BlockBackend>) {
    let (seed, mut rng, placements, _guard) = fuzz_setup(salt, 300);
    let BoundsRig {
        mut d,
        file,
        mut shadow,
    } = bounds_rig(open);
    let (header, status) = (d.alloc(16), d.alloc(1));
    let canary = d.alloc(512);
    let boundaries = [MIB_U64, 2 * MIB_U64, 3 * MIB_U64, MEM_END];

    for i in 0..placements {
        let at = format!("{seed}, placement {i}");
        let len = rng.pick(&[512u64, 1024, 4096]);
        let boundary = rng.pick(&boundaries);
        let addr = (boundary + rng.below(len + 32)).wrapping_sub(len + 16);
        let sector = rng.below(CAPACITY_SECTORS - 8);
        let inside = in_guest_memory(addr, len);
        let write = rng.percent(50);
        // Sometimes a good first segment, which must stay untouched if the request is refused.
        let with_canary = rng.percent(40);
        d.write_bytes(canary, &[0xc5; 512]);
        let payload = rng.bytes(len as usize);
        if inside {
            d.write_bytes(GuestAddress(addr), &payload);
        }
        let (mut bufs, total) = if with_canary {
            (
                vec![Buf {
                    addr: canary,
                    len: 512,
                    device_writes: !write,
                }],
                512 + len,
            )
        } else {
            (Vec::new(), len)
        };
        bufs.push(Buf {
            addr: GuestAddress(addr),
            len: len as u32,
            device_writes: !write,
        });
        let request_type = if write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let (got, used_len) = submit_raw(&mut d, header, request_type, sector, &bufs, status, &at);
        let range = (sector * SECTOR) as usize..(sector * SECTOR + total) as usize;
        let what = format!("{at}: {len} bytes at {addr:#x} (write {write}, canary {with_canary})");
        if !inside {
            assert_eq!(
                (got, used_len),
                (Some(IOERR), 1),
                "{what}: not wholly in memory"
            );
            assert_eq!(
                d.read_bytes(canary, 512),
                [0xc5; 512],
                "{what}: canary written"
            );
            continue;
        }
        let data_len = if write { 0 } else { total as u32 };
        assert_eq!((got, used_len), (Some(OK), data_len + 1), "{what}");
        let mut expected = Vec::new();
        if with_canary {
            expected.extend_from_slice(&[0xc5; 512]);
        }
        expected.extend_from_slice(&payload);
        if write {
            shadow[range].copy_from_slice(&expected);
        } else {
            let mut got = d.read_bytes(canary, 512);
            got.truncate(if with_canary { 512 } else { 0 });
            got.extend(d.read_bytes(GuestAddress(addr), len as usize));
            assert!(
                got == shadow[range],
                "{what}: read returned the wrong bytes"
            );
        }
    }

    // Headers and status bytes at the edges.
    let data = d.alloc(512);
    let cases: [(&str, u64, u64, Option<u8>, u32); 6] = [
        (
            "header across adjacent regions",
            MIB_U64 - 8,
            status.0,
            Some(OK),
            513,
        ),
        (
            "header across the hole",
            2 * MIB_U64 - 8,
            status.0,
            Some(IOERR),
            1,
        ),
        (
            "header in the hole",
            2 * MIB_U64 + 64,
            status.0,
            Some(IOERR),
            1,
        ),
        (
            "status in the last byte of memory",
            header.0,
            MEM_END - 1,
            Some(OK),
            513,
        ),
        (
            "status in the last byte before the hole",
            header.0,
            2 * MIB_U64 - 1,
            Some(OK),
            513,
        ),
        ("status in the hole", header.0, 2 * MIB_U64 + 1, None, 0),
    ];
    for (what, header_at, status_at, expected_status, expected_len) in cases {
        let (got, used_len) = submit_raw(
            &mut d,
            GuestAddress(header_at),
            VIRTIO_BLK_T_IN,
            3,
            &[Buf::writable(data, 512)],
            GuestAddress(status_at),
            &format!("{seed}: {what}"),
        );
        assert_eq!(
            (got, used_len),
            (expected_status, expected_len),
            "{seed}: {what}"
        );
    }

    // Buffers over the rings: the guest corrupts its own queue, the device completes the request.
    let (got, used_len) = submit_raw(
        &mut d,
        header,
        VIRTIO_BLK_T_IN,
        16,
        &[Buf::writable(GuestAddress(DESC_TABLE), 4096)],
        status,
        &format!("{seed}: read over the descriptor table"),
    );
    assert_eq!(
        (got, used_len),
        (Some(OK), 4097),
        "{seed}: read over the descriptor table"
    );
    assert!(
        d.read_bytes(GuestAddress(DESC_TABLE), 4096) == shadow[16 * 512..16 * 512 + 4096],
        "{seed}: read over the descriptor table: wrong bytes"
    );
    let (got, used_len) = submit_raw(
        &mut d,
        header,
        VIRTIO_BLK_T_IN,
        24,
        &[Buf::writable(GuestAddress(USED_RING), 4096)],
        status,
        &format!("{seed}: read over the used ring"),
    );
    assert_eq!(
        (got, used_len),
        (Some(OK), 4097),
        "{seed}: read over the used ring"
    );
    // A write from the descriptor table: the disk gets the table as it was when submitted.
    let slot = BlockSlot::alloc(&mut d);
    let head = slot.submit(
        &mut d,
        VIRTIO_BLK_T_OUT,
        40,
        &[Buf::readable(GuestAddress(DESC_TABLE), 4096)],
    );
    let table_bytes = d.read_bytes(GuestAddress(DESC_TABLE), 4096);
    d.kick();
    let used = d.wait_used().expect("write from the descriptor table");
    assert_eq!(
        (used.head, used.len, slot.status(&d)),
        (head, 1, OK),
        "{seed}: write from the table"
    );
    shadow[40 * 512..40 * 512 + 4096].copy_from_slice(&table_bytes);

    let on_disk = std::fs::read(file.path()).unwrap();
    assert!(
        on_disk == shadow,
        "{seed}: the disk differs from the requests that succeeded"
    );

    // Disk bytes over the available ring: avail.idx is now garbage. The device either stops
    // (NEEDS_RESET) or serves what the garbage names; a reset recovers it either way.
    let slot = BlockSlot::alloc(&mut d);
    slot.submit(
        &mut d,
        VIRTIO_BLK_T_IN,
        0,
        &[Buf::writable(GuestAddress(AVAIL_RING), 4096)],
    );
    d.kick();
    std::thread::sleep(Duration::from_millis(20));
    d.reprobe(ALL_RW & !F_EVENT_IDX);
    assert_eq!(
        d.read_reg(reg::STATUS) & S_NEEDS_RESET,
        0,
        "{seed}: NEEDS_RESET after reprobe"
    );
    let probe = Probe::alloc(&mut d);
    probe.write_then_read(&mut d, &mut rng, seed, "after a read over the avail ring");
}
