//! The data the checks write: every 8-byte word is a hash of a per-run seed (the TSC at start)
//! and the word's position on the disk, so a device that drops writes cannot pass by returning
//! an earlier run's data, and a misplaced sector reads as a mismatch.

use core::fmt;

use crate::virtio_blk::SECTOR_BYTES;

/// Fills `buf` (which starts at `sector`) with the run's pattern.
pub fn fill(buf: &mut [u8], seed: u64, sector: u64) {
    let first_word = sector * (SECTOR_BYTES / 8) as u64;
    for (index, word) in buf.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&splitmix64(seed ^ (first_word + index as u64)).to_le_bytes());
    }
}

/// The first byte where what was read differs from what was expected.
#[derive(Debug, Clone, Copy)]
pub struct Mismatch {
    sector: u64,
    byte: usize,
    expected: u8,
    got: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data differs at sector {} byte {}: expected {:#04x}, read {:#04x}",
            self.sector, self.byte, self.expected, self.got
        )
    }
}

/// Compares two buffers that start at `first_sector`.
pub fn compare(expected: &[u8], actual: &[u8], first_sector: u64) -> Result<(), Mismatch> {
    match expected.iter().zip(actual).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(offset) => Err(Mismatch {
            sector: first_sector + (offset / SECTOR_BYTES) as u64,
            byte: offset % SECTOR_BYTES,
            expected: expected[offset],
            got: actual[offset],
        }),
    }
}

fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
