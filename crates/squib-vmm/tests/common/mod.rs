//! Helpers for the integration tests: KVM presence, running `squib`, and tiny hand-assembled
//! guests (a few instructions in an ELF64 image), so that VMM behaviour can be tested without
//! building a guest toolchain.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether /dev/kvm is usable; says loudly when a test is skipped.
pub fn kvm_available(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED {test}: /dev/kvm is absent, this KVM test did not run");
    false
}

/// Runs `cargo xtask <args>` in the workspace and returns the path its last stdout line names
/// (the convention of `test-guest` and `guest-kernel`).
pub fn xtask_output_path(args: &[&str]) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["run", "-q", "-p", "xtask", "--"])
        .args(args)
        .current_dir(&workspace)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo xtask {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("cargo xtask {} printed nothing", args.join(" ")))
            .trim(),
    );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// The project's test guest, built once per test binary with `cargo xtask test-guest`, or the
/// one `SQUIB_TEST_GUEST` names.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| match std::env::var_os("SQUIB_TEST_GUEST") {
        Some(path) => PathBuf::from(path),
        None => xtask_output_path(&["test-guest"]),
    })
}

/// Creates a sparse disk image of `bytes` bytes in `dir`; returns its path as a string for
/// command lines.
pub fn sparse_disk(dir: &Path, name: &str, bytes: u64) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    path.to_str().unwrap().to_owned()
}

/// The `squib` binary under test.
pub fn squib() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_squib"));
    command.stdin(Stdio::null());
    command
}

/// Runs `squib` with `args` to completion, failing the test after `timeout`.
pub fn run_squib(args: &[&str], timeout: Duration) -> Output {
    let child = squib()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_timeout(child, timeout)
}

/// Waits for `child`, killing it and failing the test after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "squib did not exit within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Where tiny guests are loaded and entered.
const LOAD_ADDR: u64 = 0x10_0000;

/// Writes an ELF64 x86_64 executable whose single segment is `code`, loaded and entered at
/// 1 MiB, into `dir`.
pub fn tiny_guest(dir: &Path, name: &str, code: &[u8]) -> PathBuf {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, LE, SysV
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&offset.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    let path = dir.join(name);
    std::fs::write(&path, elf).unwrap();
    path
}

/// Machine code: write `text` to COM1, one `out` per byte.
pub fn print(text: &str) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov $0x3f8, %dx
    for byte in text.bytes() {
        code.extend_from_slice(&[0xb0, byte, 0xee]); // mov $byte, %al; out %al, (%dx)
    }
    code
}

/// Machine code: write `value` to the 1-byte port `port`.
pub fn out(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi, 0xb0, value, 0xee]
}

/// Machine code: halt forever (interrupts are off at entry).
pub fn halt_forever() -> Vec<u8> {
    vec![0xf4, 0xeb, 0xfd] // 1: hlt; jmp 1b
}

/// Machine code: read 8 bytes at 2 GiB, outside the boot identity map: #PF with an empty IDT,
/// so a triple fault.
pub fn fault() -> Vec<u8> {
    vec![0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x80] // mov 0xffffffff80000000, %rax
}

/// Concatenates code pieces.
pub fn code(pieces: &[Vec<u8>]) -> Vec<u8> {
    pieces.concat()
}

/// Squib's stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Squib's stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A keep-alive client written against the socket directly.
pub struct Client(pub UnixStream, pub Vec<u8>);

impl Client {
    /// Connects to the API socket, with a read timeout so a stalled server fails the test.
    pub fn connect(sock: &Path) -> Self {
        let stream = UnixStream::connect(sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self(stream, Vec::new())
    }

    /// One request; returns the status and the body.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.0
            .write_all(format!("{head}{body}").as_bytes())
            .unwrap();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&self.1).unwrap() {
                let len: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if self.1.len() >= n + len {
                    let code = resp.code.unwrap();
                    let body = String::from_utf8(self.1[n..n + len].to_vec()).unwrap();
                    self.1.drain(..n + len);
                    return (code, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let read = self.0.read(&mut chunk).unwrap();
            assert!(read > 0, "connection closed");
            self.1.extend_from_slice(&chunk[..read]);
        }
    }
}
