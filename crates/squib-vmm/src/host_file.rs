//! Opening host files named by a user (kernel, initrd, drives) without letting the file hang us.
//!
//! A blocking `open` of a FIFO waits for a writer, and the API thread would wait with it. Every
//! user-named path is therefore opened with `O_NONBLOCK | O_CLOEXEC`, checked with `fstat`, and
//! only then switched back to blocking I/O. This is the one place that decides which file types
//! squib accepts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Which file types a use accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Kernel images and initrds: only regular files.
    RegularFile,
    /// Drives: regular files and block devices.
    RegularFileOrBlockDevice,
}

/// Why a host file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    /// `open` or `fstat` failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The path names something squib does not read from.
    #[error("it is {0}, not {1}")]
    WrongType(&'static str, &'static str),
}

impl HostFileError {
    /// The error as an `io::Error`, for callers whose error type wraps one.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) => e,
            wrong @ Self::WrongType(..) => io::Error::new(io::ErrorKind::InvalidInput, wrong),
        }
    }
}

/// Opens `path` for reading (and writing when `writable`) without blocking, and returns the
/// file in blocking mode if its type is one `accept` allows.
///
/// # Errors
/// The OS error, or [`HostFileError::WrongType`] naming what the path is.
pub fn open(path: &Path, writable: bool, accept: Accept) -> Result<File, HostFileError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    let block_ok = accept == Accept::RegularFileOrBlockDevice;
    if !(file_type.is_file() || (block_ok && file_type.is_block_device())) {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        let wanted = if block_ok {
            "a regular file or a block device"
        } else {
            "a regular file"
        };
        return Err(HostFileError::WrongType(what, wanted));
    }
    squib_host::block_io::clear_nonblocking(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_open_blocking() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let file = open(f.path(), true, Accept::RegularFile).unwrap();
        assert!(squib_host::block_io::is_writable(&file).unwrap());
    }

    #[test]
    fn directories_and_char_devices_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), false, Accept::RegularFile).unwrap_err();
        assert_eq!(e.to_string(), "it is a directory, not a regular file");
        let e = open(
            Path::new("/dev/null"),
            false,
            Accept::RegularFileOrBlockDevice,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file or a block device"
        );
    }
}
