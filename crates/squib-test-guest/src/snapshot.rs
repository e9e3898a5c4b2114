//! The snapshot mode (`guest.mode=snapshot`): work a host can snapshot mid-run and restore
//! elsewhere, and that notices when the restored machine is not the one that was saved.
//!
//! A 1 MiB region is split into 64 chunks. Round `r` rewrites chunk `r % 64` with data derived
//! from `r` and records the chunk's FNV-1a hash in a table; a running value, kept in registers
//! and on the stack, folds every hash in. Every round prints `SNAP tick <r>`; rounds are paced
//! by the TSC. After the last round the guest re-hashes every chunk: each must match its table
//! entry and the table must fold to the running value. A restore that lost or mixed up memory,
//! registers or the stack fails that check. Then the summary, and the usual exit.

use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::time;

const REGION: usize = 1 << 20;
const CHUNKS: usize = 64;
const CHUNK: usize = REGION / CHUNKS;
const ROUNDS: u64 = 150;
/// TSC cycles between rounds (~20–40 ms): the run lasts seconds, long enough for a host to
/// pause it after the first ticks.
const PACE_CYCLES: u64 = 1 << 26;

fn fnv1a(data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in data {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn fill(chunk: &mut [u8], round: u64) {
    let mut x = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in chunk.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

fn fold(hashes: &[u64]) -> u64 {
    hashes
        .iter()
        .fold(0u64, |acc, &h| acc.rotate_left(5) ^ h)
}

/// Runs the rounds and ends the run.
pub fn run() -> ! {
    let mut region = match DmaBuf::new(REGION, 4096) {
        Ok(region) => region,
        Err(error) => report::abort(format_args!("snapshot: {error}")),
    };
    let mut hashes = [0u64; CHUNKS];
    for (i, chunk) in region.as_mut_slice().chunks_exact_mut(CHUNK).enumerate() {
        fill(chunk, i as u64 + 1_000_000);
        hashes[i] = fnv1a(chunk);
    }
    let mut running = fold(&hashes);
    println!("SNAP ready region={:#x}", region.addr());
    let mut next = time::tsc();
    for round in 1..=ROUNDS {
        let index = (round as usize) % CHUNKS;
        let chunk = &mut region.as_mut_slice()[index * CHUNK..(index + 1) * CHUNK];
        fill(chunk, round);
        hashes[index] = fnv1a(chunk);
        running = fold(&hashes);
        println!("SNAP tick {round}");
        next = next.wrapping_add(PACE_CYCLES);
        while time::tsc() < next {
            core::hint::spin_loop();
        }
    }
    let mismatched = region
        .as_slice()
        .chunks_exact(CHUNK)
        .zip(&hashes)
        .filter(|(chunk, hash)| fnv1a(chunk) != **hash)
        .count();
    let outcome = if mismatched != 0 {
        Err(SnapshotCheck::Chunks(mismatched))
    } else if fold(&hashes) != running {
        Err(SnapshotCheck::Running)
    } else {
        Ok(())
    };
    report::record(
        format_args!("snapshot: memory checksum after {ROUNDS} rounds"),
        &outcome,
    );
    report::finish()
}

enum SnapshotCheck {
    Chunks(usize),
    Running,
}

impl core::fmt::Display for SnapshotCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Chunks(n) => write!(f, "{n} of {CHUNKS} chunks do not match their hash"),
            Self::Running => write!(f, "the hash table does not fold to the running value"),
        }
    }
}
