//! A log or metrics destination that never blocks the thread writing to it.
//!
//! Opened as Firecracker opens it (`O_RDWR | O_NONBLOCK | O_CREAT`): a named pipe without a
//! reader opens at once (a write-only open would fail with `ENXIO`), and its lines wait in the
//! pipe until a reader comes. When the pipe is full a line is dropped and counted
//! (Firecracker's `missed_log_count` / `missed_metrics_count`), never waited for. A line the pipe
//! took only part of keeps its tail, which goes out before the next line, so a reader only ever
//! sees whole lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What happened to one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineOutcome {
    /// Written (perhaps partly, its tail queued for the next write).
    Written,
    /// Dropped: the destination had no room (or failed).
    Dropped,
}

/// A non-blocking line writer over a file or named pipe.
#[derive(Debug)]
pub struct LineSink {
    path: PathBuf,
    file: File,
    /// The unwritten tail of the last line (at most one line long).
    pending: Vec<u8>,
}

impl LineSink {
    /// Opens (creating a regular file if needed) `path` for appending, without blocking.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            pending: Vec::new(),
        })
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `line` (which ends in `\n`) unless there is no room for it.
    pub fn write_line(&mut self, line: &[u8]) -> LineOutcome {
        if !self.drain_pending() {
            return LineOutcome::Dropped;
        }
        let mut written = 0;
        while written < line.len() {
            match self.file.write(&line[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        match written {
            0 => LineOutcome::Dropped,
            n => {
                self.pending.extend_from_slice(&line[n..]);
                LineOutcome::Written
            }
        }
    }

    /// Writes what is left of the previous line; whether it is all out.
    fn drain_pending(&mut self) -> bool {
        while !self.pending.is_empty() {
            match self.file.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::Command;

    use super::*;

    fn mkfifo(path: &Path) -> bool {
        Command::new("mkfifo")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn a_fifo_without_reader_opens_fills_drops_and_keeps_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        if !mkfifo(&path) {
            eprintln!("SKIPPED fifo test: mkfifo is not available");
            return;
        }
        let mut sink = LineSink::open(&path).unwrap();
        let line = format!("{}\n", "x".repeat(4999));
        let mut written = 0;
        let mut dropped = 0;
        // 1 MB into a 64 KiB pipe, in lines longer than PIPE_BUF (so some are split): it fills, then lines are dropped, and nothing blocks.
        for _ in 0..200 {
            match sink.write_line(line.as_bytes()) {
                LineOutcome::Written => written += 1,
                LineOutcome::Dropped => dropped += 1,
            }
        }
        assert!(
            written > 0 && dropped > 0,
            "{written} written, {dropped} dropped"
        );
        let reader = std::fs::File::open(&path).unwrap();
        // The reader drains what the pipe holds; the next write completes the split line.
        let mut reader = BufReader::new(reader);
        let mut got = 0;
        let mut text = String::new();
        while got + 1 < written {
            text.clear();
            reader.read_line(&mut text).unwrap();
            assert_eq!(text, line);
            got += 1;
        }
        assert_eq!(sink.write_line(line.as_bytes()), LineOutcome::Written);
        for _ in 0..2 {
            text.clear();
            reader.read_line(&mut text).unwrap();
            assert_eq!(text, line);
        }
    }

    #[test]
    fn a_regular_file_is_created_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "old\n").unwrap();
        let mut sink = LineSink::open(&path).unwrap();
        assert_eq!(sink.write_line(b"new\n"), LineOutcome::Written);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
        assert_eq!(sink.path(), path);
    }
}
