//! Firecracker's compiled filter format (what `seccompiler-bin` writes and `--seccomp-filter`
//! reads): a bincode map from thread category to BPF program, with bincode's fixed-width
//! little-endian integers — `u64` entry count, then per entry a `u64`-length-prefixed UTF-8 name
//! and a `u64`-length-prefixed array of 8-byte `sock_filter`s (`code: u16`, `jt: u8`, `jf: u8`,
//! `k: u32`).
//!
//! squib's build script writes its own filters in this format (this file is shared with
//! `build.rs`), so the embedded filters and a user's file go through the same decoder.

use std::collections::BTreeMap;

use seccompiler::sock_filter;

/// Largest file accepted: Firecracker's limit (a program is at most 4096 instructions and there
/// are a handful of thread categories).
pub const MAX_FILE_BYTES: usize = 100_000;
/// Longest BPF program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_PROGRAM_LEN: usize = 4096;

/// Why a compiled filter file was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BpfFileError {
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("the file is {0} bytes: at most {MAX_FILE_BYTES} are accepted")]
    TooLarge(usize),
    /// Ends inside a length or a value.
    #[error("the file ends early: not a compiled seccomp filter map")]
    Truncated,
    /// A category name is not UTF-8.
    #[error("a thread category name is not UTF-8")]
    BadName,
    /// A category's program is longer than the kernel takes.
    #[error("the filter for `{0}` has {1} instructions: at most {MAX_PROGRAM_LEN} are accepted")]
    BadLength(String, u64),
    /// A category appears twice.
    #[error("the thread category `{0}` appears twice")]
    Duplicate(String),
}

/// Thread category → BPF program.
pub type BpfMap = BTreeMap<String, Vec<sock_filter>>;

/// Encodes `map` in Firecracker's compiled format.
pub fn encode(map: &BpfMap) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (name, program) in map {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(program.len() as u64).to_le_bytes());
        for insn in program {
            out.extend_from_slice(&insn.code.to_le_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_le_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BpfFileError> {
        if self.0.len() < n {
            return Err(BpfFileError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, BpfFileError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A length that must fit in what is left, `unit` bytes per element.
    fn len(&mut self, unit: usize) -> Result<usize, BpfFileError> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.checked_mul(unit).is_some_and(|b| b <= self.0.len()) => Ok(n),
            _ => Err(BpfFileError::Truncated),
        }
    }
}

/// Decodes a file in Firecracker's compiled format. Names are lower-cased, as Firecracker does;
/// trailing bytes are ignored, as Firecracker's reader allows. An empty program is kept: it
/// means "no filter for that category", as in Firecracker.
pub fn decode(bytes: &[u8]) -> Result<BpfMap, BpfFileError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(BpfFileError::TooLarge(bytes.len()));
    }
    let mut r = Reader(bytes);
    // Every entry takes at least 16 bytes: this bounds the count by the file size.
    let entries = r.len(16)?;
    let mut map = BpfMap::new();
    for _ in 0..entries {
        let name_len = r.len(1)?;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| BpfFileError::BadName)?
            .to_lowercase();
        let raw_len = r.u64()?;
        let len = usize::try_from(raw_len)
            .ok()
            .filter(|&n| n <= MAX_PROGRAM_LEN)
            .ok_or_else(|| BpfFileError::BadLength(name.clone(), raw_len))?;
        let mut program = Vec::with_capacity(len);
        for chunk in r
            .take(len.checked_mul(8).ok_or(BpfFileError::Truncated)?)?
            .chunks_exact(8)
        {
            program.push(sock_filter {
                code: u16::from_le_bytes([chunk[0], chunk[1]]),
                jt: chunk[2],
                jf: chunk[3],
                k: u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            });
        }
        if map.insert(name.clone(), program).is_some() {
            return Err(BpfFileError::Duplicate(name));
        }
    }
    Ok(map)
}
