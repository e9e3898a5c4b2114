//! Where a sparse file holds data (`lseek` with `SEEK_DATA`/`SEEK_HOLE`), and copying just
//! that data: merging a diff snapshot's memory file onto its base.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

fn seek(file: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `lseek` only reads the descriptor number (valid: borrowed from a live `File`)
    // and the two integers; it touches no memory of ours.
    let result = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let err = io::Error::last_os_error();
    // ENXIO: no data (or no hole) at or after `offset`.
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// The `[start, end)` byte ranges of `file` that hold data, in order. A filesystem without
/// hole reporting answers with one range covering the whole file.
pub fn data_ranges(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len();
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len);
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

/// Copies the data ranges of `src` onto `dst` at the same offsets, leaving the rest of `dst`
/// as it was (merging a diff snapshot's memory file onto its base). Both must be the same
/// length. Returns the bytes copied.
pub fn copy_data(src: &File, dst: &File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    if dst.metadata()?.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the two files differ in length",
        ));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    for (start, end) in data_ranges(src)? {
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).map_or(buf.len(), |n| n.min(buf.len()));
            src.read_exact_at(&mut buf[..n], pos)?;
            dst.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
            copied += n as u64;
        }
    }
    dst.sync_data()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_written_ranges_of_a_sparse_file() {
        let file = tempfile_in_target();
        file.set_len(1 << 20).unwrap();
        file.write_all_at(&[1; 4096], 64 << 10).unwrap();
        file.write_all_at(&[2; 8192], 512 << 10).unwrap();
        let ranges = data_ranges(&file).unwrap();
        let covered: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert!(
            ranges
                .iter()
                .any(|&(s, e)| s <= 64 << 10 && e >= (64 << 10) + 4096)
        );
        assert!(
            ranges
                .iter()
                .any(|&(s, e)| s <= 512 << 10 && e >= (512 << 10) + 8192)
        );
        // Block granularity may round up, never to the whole file on a hole-aware filesystem.
        assert!(covered < 1 << 20, "{ranges:?}");
    }

    #[test]
    fn copy_data_overlays_only_the_written_ranges() {
        let base = tempfile_in_target();
        base.write_all_at(&vec![7u8; 1 << 20], 0).unwrap();
        let diff = tempfile_in_target();
        diff.set_len(1 << 20).unwrap();
        diff.write_all_at(&[9; 4096], 256 << 10).unwrap();
        assert!(copy_data(&diff, &base).unwrap() >= 4096);
        let mut page = [0u8; 4096];
        base.read_exact_at(&mut page, 256 << 10).unwrap();
        assert_eq!(page, [9; 4096]);
        base.read_exact_at(&mut page, 0).unwrap();
        assert_eq!(page, [7; 4096]);
        base.read_exact_at(&mut page, 768 << 10).unwrap();
        assert_eq!(page, [7; 4096]);
        let short = tempfile_in_target();
        assert!(copy_data(&diff, &short).is_err());
    }

    fn tempfile_in_target() -> File {
        tempfile::tempfile().unwrap()
    }
}
