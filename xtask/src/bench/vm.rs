//! A VMM child process watched from the host: every line of its output is timestamped with the
//! host's clock as it arrives (no guest clock is trusted), and its exit is timed the same way.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Which of the child's output streams a line came from. Guest serial is the VMM's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug)]
enum Event {
    /// The first bytes on the guest serial (stdout).
    FirstOutput(Instant),
    Line(Stream, Instant, String),
    Exited(Instant, std::io::Result<ExitStatus>),
}

/// A running VMM. Dropping it kills the process if it is still running.
#[derive(Debug)]
pub struct Vm {
    pid: u32,
    spawned: Instant,
    events: Receiver<Event>,
    first_output: Option<Duration>,
    exited: Option<(Duration, ExitStatus)>,
    /// Both pipes reached end of file and the exit was seen: no event will come any more.
    closed: bool,
    /// Everything the child printed, with the time since spawn.
    transcript: Vec<(Duration, Stream, String)>,
}

impl Vm {
    /// Spawns `command` with stdout and stderr piped; the clock starts just before the exec.
    pub fn spawn(mut command: Command) -> Result<Vm, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        tap(Pipe::Out(stdout), tx.clone());
        tap(Pipe::Err(stderr), tx.clone());
        let pid = child.id();
        reap(child, tx);
        Ok(Vm {
            pid,
            spawned,
            events,
            first_output: None,
            exited: None,
            closed: false,
            transcript: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `at` as time since exec (the clock every other figure of this VM uses).
    pub fn since_spawn(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.spawned)
    }

    /// Time from exec to the first byte of guest serial output, once seen.
    pub fn first_output(&self) -> Option<Duration> {
        self.first_output
    }

    /// Waits until a line satisfies `wanted`; returns its arrival time since exec and its text.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(Stream, &str) -> bool,
    ) -> Result<(Duration, String), String> {
        if let Some((at, _, text)) = self.transcript.iter().find(|(_, s, t)| wanted(*s, t)) {
            return Ok((*at, text.clone()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline)? {
                Some((stream, at, text)) if wanted(stream, &text) => return Ok((at, text)),
                Some(_) => {}
                None => return Err(self.failure("the awaited line never came")),
            }
        }
    }

    /// Waits for the guest serial line that contains `marker`.
    pub fn wait_for_marker(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<(Duration, String), String> {
        self.wait_for_line(timeout, |stream, line| {
            stream == Stream::Stdout && line.contains(marker)
        })
        .map_err(|e| format!("waiting for `{marker}`: {e}"))
    }

    /// Waits for the process to exit and its output to drain; returns the time from exec to
    /// the exit and its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(Duration, ExitStatus), String> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if self.next_event(deadline)?.is_none() && !self.closed {
                break;
            }
        }
        self.exited
            .ok_or_else(|| self.failure("still running at the deadline"))
    }

    /// The last `lines` lines the child printed, for error reports.
    pub fn transcript_tail(&self, lines: usize) -> String {
        let start = self.transcript.len().saturating_sub(lines);
        self.transcript[start..]
            .iter()
            .map(|(at, stream, text)| {
                let tag = if *stream == Stream::Stdout {
                    "out"
                } else {
                    "err"
                };
                format!("  [{:>9.3} ms {tag}] {text}", at.as_secs_f64() * 1e3)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Ends the child (if it still runs) by its process id.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = self.wait_exit(Duration::from_secs(5));
        }
    }

    /// Handles events until the next output line (returned), the exit, or the deadline (`None`).
    fn next_event(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(Stream, Duration, String)>, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return Ok(None);
                }
            };
            match event {
                Event::FirstOutput(at) => {
                    self.first_output.get_or_insert(at - self.spawned);
                }
                Event::Line(stream, at, text) => {
                    let at = at - self.spawned;
                    self.transcript.push((at, stream, text.clone()));
                    return Ok(Some((stream, at, text)));
                }
                Event::Exited(at, status) => {
                    let status = status.map_err(|e| format!("waiting for the child: {e}"))?;
                    // Lines still in the pipes arrive after this; the channel closes once both
                    // readers reach end of file.
                    self.exited = Some((at - self.spawned, status));
                }
            }
        }
    }

    fn failure(&self, what: &str) -> String {
        let status = match self.exited {
            Some((at, status)) => format!(
                "exited with {status} after {:.1} ms",
                at.as_secs_f64() * 1e3
            ),
            None => "still running".into(),
        };
        format!(
            "{what} (child {status}); its last output:\n{}",
            self.transcript_tail(25)
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

/// Reads one pipe on its own thread, stamping each chunk with the host clock as it arrives.
fn tap(pipe: Pipe, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let (stream, mut reader): (Stream, Box<dyn Read + Send>) = match pipe {
            Pipe::Out(out) => (Stream::Stdout, Box::new(out)),
            Pipe::Err(err) => (Stream::Stderr, Box::new(err)),
        };
        let mut buf = [0u8; 8192];
        let mut pending = Vec::new();
        let mut first = true;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = Instant::now();
            if first && stream == Stream::Stdout {
                first = false;
                let _ = tx.send(Event::FirstOutput(at));
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                let _ = tx.send(Event::Line(stream, at, text));
            }
        }
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending).trim_end().to_owned();
            let _ = tx.send(Event::Line(stream, Instant::now(), text));
        }
    });
}

/// Waits for the child on its own thread so that its exit is timed when it happens.
fn reap(mut child: Child, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(Event::Exited(Instant::now(), status));
    });
}

/// RSS of a process outside its guest-RAM mapping, from `/proc/PID/smaps`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub total_kib: u64,
    pub guest_ram_kib: u64,
}

impl Memory {
    pub fn outside_guest_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.guest_ram_kib)
    }
}

/// Reads `/proc/PID/smaps`; the guest RAM is the anonymous mapping closest to (and at least)
/// `guest_mib` in size — QEMU adds alignment pages, so the match allows up to 4 MiB more.
pub fn memory(pid: u32, guest_mib: u64) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    memory_from_smaps(&smaps, guest_mib).ok_or_else(|| {
        format!("{path}: no anonymous mapping of {guest_mib} MiB (the guest RAM) found")
    })
}

fn memory_from_smaps(smaps: &str, guest_mib: u64) -> Option<Memory> {
    let want_kib = guest_mib * 1024;
    let mut total_kib = 0;
    let mut best: Option<(u64, u64)> = None; // (size above wanted, rss)
    let mut mapping_anonymous = false;
    let mut mapping_size = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if !first.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            mapping_anonymous = fields.nth(4).is_none_or(|path| path.is_empty());
            mapping_size = 0;
            continue;
        }
        let value: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Size:" => mapping_size = value,
            "Rss:" => {
                total_kib += value;
                if mapping_anonymous && (want_kib..=want_kib + 4096).contains(&mapping_size) {
                    let excess = mapping_size - want_kib;
                    if best.is_none_or(|(e, _)| excess < e) {
                        best = Some((excess, value));
                    }
                }
            }
            _ => {}
        }
    }
    best.map(|(_, guest_ram_kib)| Memory {
        total_kib,
        guest_ram_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r-xp 00000000 fe:01 1234   /usr/bin/squib
Size:               1024 kB
Rss:                 900 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:               20480 kB
7f1000000000-7f1000200000 rw-p 00000000 00:00 0 
Size:               2048 kB
Rss:                 300 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
Size:                132 kB
Rss:                  16 kB
";

    #[test]
    fn guest_ram_is_the_anonymous_mapping_of_the_configured_size() {
        let memory = memory_from_smaps(SMAPS, 128).unwrap();
        assert_eq!(memory.total_kib, 900 + 20480 + 300 + 16);
        assert_eq!(memory.guest_ram_kib, 20480);
        assert_eq!(memory.outside_guest_kib(), 900 + 300 + 16);
        assert!(memory_from_smaps(SMAPS, 512).is_none());
    }
}
