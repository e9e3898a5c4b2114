//! Where a sparse file holds data (`lseek` with `SEEK_DATA`/`SEEK_HOLE`), for merging a diff
//! snapshot's memory file onto its base.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

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

    fn tempfile_in_target() -> File {
        tempfile::tempfile().unwrap()
    }
}
