//! The snapshot file: a fixed header, then the serialized [`MicrovmState`] payload.
//!
//! ```text
//! 0   8  magic "SQUIBSNP"
//! 8   4  format version (u32 LE): FORMAT_VERSION; any other value is refused
//! 12  4  reserved, 0
//! 16  8  payload length in bytes (u64 LE)
//! 24  8  CRC-64/XZ of the payload (u64 LE)
//! 32 32  squib version that wrote it (UTF-8, NUL-padded; informational)
//! 64  …  payload: the state as JSON
//! ```
//! Everything is checked — magic, version, length, checksum, then the payload's shape — before
//! any of it is used, so a corrupted, truncated or foreign file is refused before a VM exists.
//! See docs/snapshot-format.md for the compatibility rules.

use std::io::Write;
use std::path::Path;

use super::SnapshotError;
use super::state::MicrovmState;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"SQUIBSNP";
/// Bumped whenever the payload's layout changes; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 2;
/// Header size.
pub const HEADER_LEN: usize = 64;
/// Largest payload accepted: a 32-vCPU state is well under 2 MiB.
const MAX_PAYLOAD: u64 = 64 << 20;
const VERSION_FIELD: usize = 32;

/// What the header says about a snapshot (for `--describe-snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub format_version: u32,
    /// squib version that wrote it.
    pub squib_version: String,
    /// Payload bytes.
    pub payload_len: u64,
    /// CRC-64 of the payload.
    pub crc: u64,
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected), table-driven.
pub fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0xC96C_5795_D787_0F42;
    const TABLE: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u64;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u64;
    for &byte in data {
        crc = TABLE[((crc ^ u64::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Serializes `state` with its header.
pub fn encode(state: &MicrovmState) -> Result<Vec<u8>, SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc64(&payload).to_le_bytes());
    let mut version = [0u8; VERSION_FIELD];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let n = v.len().min(VERSION_FIELD);
    version[..n].copy_from_slice(&v[..n]);
    out.extend_from_slice(&version);
    out.extend_from_slice(&payload);
    Ok(out)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// Parses and checks the header of `file` (whose full length is `file_len`).
pub fn parse_header(bytes: &[u8], file_len: u64) -> Result<Header, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            expected: HEADER_LEN as u64,
            found: file_len,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let version_bytes = &bytes[32..32 + VERSION_FIELD];
    let end = version_bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(VERSION_FIELD);
    let header = Header {
        format_version: le_u32(&bytes[8..]),
        squib_version: String::from_utf8_lossy(&version_bytes[..end]).into_owned(),
        payload_len: le_u64(&bytes[16..]),
        crc: le_u64(&bytes[24..]),
    };
    if header.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: header.format_version,
            writer: header.squib_version,
        });
    }
    if header.payload_len > MAX_PAYLOAD {
        return Err(SnapshotError::PayloadTooLarge(header.payload_len));
    }
    let expected = HEADER_LEN as u64 + header.payload_len;
    if file_len != expected {
        return Err(if file_len < expected {
            SnapshotError::Truncated {
                expected,
                found: file_len,
            }
        } else {
            SnapshotError::TrailingData {
                expected,
                found: file_len,
            }
        });
    }
    Ok(header)
}

/// Checks and decodes a whole snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<(Header, MicrovmState), SnapshotError> {
    let header = parse_header(bytes, bytes.len() as u64)?;
    let payload = &bytes[HEADER_LEN..];
    let crc = crc64(payload);
    if crc != header.crc {
        return Err(SnapshotError::Checksum {
            stored: header.crc,
            computed: crc,
        });
    }
    let state = serde_json::from_slice(payload).map_err(SnapshotError::Decode)?;
    Ok((header, state))
}

/// Reads and checks the snapshot at `path`.
pub fn read(path: &Path) -> Result<(Header, MicrovmState), SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        what: "read the snapshot",
        path: path.to_owned(),
        source,
    })?;
    decode(&bytes)
}

/// Reads only the header of the snapshot at `path`, checking its length too.
pub fn read_header(path: &Path) -> Result<Header, SnapshotError> {
    let io = |source| SnapshotError::Io {
        what: "read the snapshot",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, HEADER_LEN as u64),
        &mut bytes,
    )
    .map_err(io)?;
    parse_header(&bytes, len)
}

/// Writes `bytes` to `path` atomically enough: a temporary file beside it, synced, renamed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        what: "write the snapshot",
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_the_xz_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    fn header_bytes(version: u32, payload_len: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&payload_len.to_le_bytes());
        b.extend_from_slice(&crc64(&[]).to_le_bytes());
        b.extend_from_slice(&[0; VERSION_FIELD]);
        b
    }

    #[test]
    fn refuses_foreign_versions_truncation_and_garbage() {
        let err = |b: &[u8]| decode(b).unwrap_err().to_string();
        assert!(err(b"short").contains("truncated"), "{}", err(b"short"));
        let mut not = header_bytes(FORMAT_VERSION, 0);
        not[0] = b'X';
        assert!(err(&not).contains("not a squib snapshot"));
        assert!(err(&header_bytes(FORMAT_VERSION + 1, 0)).contains("format version 3"));
        assert!(err(&header_bytes(FORMAT_VERSION, 10)).contains("truncated"));
        let mut long = header_bytes(FORMAT_VERSION, 0);
        long.push(0);
        assert!(err(&long).contains("trailing"));
        assert!(err(&header_bytes(FORMAT_VERSION, u64::MAX)).contains("too large"));
        let mut bad_crc = header_bytes(FORMAT_VERSION, 2);
        bad_crc.extend_from_slice(b"{}");
        assert!(err(&bad_crc).contains("checksum"));
    }
}
