//! `cargo xtask test-guest`: builds the project's bare-metal test guest
//! (`crates/squib-test-guest`, target `x86_64-unknown-none`), checks that the ELF boots the way
//! squib and QEMU expect, and prints its absolute path as the last line of stdout.
//!
//! Checked: an x86_64 ELF64 executable whose entry is the 64-bit Linux entry at 0x100200, loaded
//! by a PT_LOAD at physical 1 MiB, with a PT_NOTE holding the PVH note (`Xen`, type 18) whose
//! 32-bit entry lies in that segment.

use std::path::PathBuf;
use std::process::Command;

use crate::setup;

/// Where the guest is linked and where the Linux 64-bit entry must sit.
const LOAD_ADDRESS: u64 = 0x10_0000;
const LINUX_ENTRY_64: u64 = LOAD_ADDRESS + 0x200;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

pub fn run(args: &[String]) -> Result<(), String> {
    // `--bzimage`: also wrap the ELF in a minimal bzImage and print that path instead.
    let bzimage = match args {
        [] => false,
        [flag] if flag == "--bzimage" => true,
        [arg, ..] => {
            return Err(format!(
                "unexpected argument `{arg}` (test-guest takes only --bzimage)"
            ));
        }
    };
    setup::guest_target()?;
    let workspace = setup::workspace();
    let guest_dir = workspace.join("crates/squib-test-guest");
    let target_dir = workspace.join("target/test-guest");
    // Run in the guest's directory so that its `.cargo/config.toml` (target, rustflags)
    // applies; its own target dir keeps it off the host workspace's build lock.
    let status = Command::new(setup::cargo())
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-none",
        ])
        .current_dir(&guest_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        // Host RUSTFLAGS would replace the guest's (static relocation model) and break the link.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the test guest failed: {status}"));
    }
    let elf = target_dir.join("x86_64-unknown-none/release/squib-test-guest");
    let bytes = std::fs::read(&elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    check_boot_layout(&bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    let elf: PathBuf = elf
        .canonicalize()
        .map_err(|e| format!("{}: {e}", elf.display()))?;
    let out = if bzimage {
        crate::bzimage::wrap_file(&elf)?
    } else {
        elf
    };
    println!("{}", out.display());
    Ok(())
}

/// A program header's fields that matter here.
#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    file_size: u64,
    mem_size: u64,
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

/// Checks the ELF's entry point, load segment and PVH note.
fn check_boot_layout(elf: &[u8]) -> Result<(), String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let (kind, machine) = (read_u16(elf, 16)?, read_u16(elf, 18)?);
    if kind != 2 || machine != 62 {
        return Err(format!(
            "e_type {kind}, e_machine {machine}: not an x86_64 executable"
        ));
    }
    let entry = read_u64(elf, 24)?;
    if entry != LINUX_ENTRY_64 {
        return Err(format!(
            "entry point {entry:#x}, expected {LINUX_ENTRY_64:#x}"
        ));
    }
    let segments = segments(elf)?;
    let loaded = |address: u64| {
        segments
            .iter()
            .any(|s| s.kind == PT_LOAD && s.paddr <= address && address < s.paddr + s.file_size)
    };
    if !segments
        .iter()
        .any(|s| s.kind == PT_LOAD && s.paddr == LOAD_ADDRESS)
    {
        return Err(format!("no PT_LOAD segment at physical {LOAD_ADDRESS:#x}"));
    }
    if !loaded(entry) {
        return Err(format!(
            "entry point {entry:#x} is not inside a loaded segment"
        ));
    }
    let pvh_entry = segments
        .iter()
        .filter(|s| s.kind == PT_NOTE)
        .find_map(|s| pvh_entry(note_bytes(elf, s).ok()?))
        .ok_or("no PVH note (Xen, XEN_ELFNOTE_PHYS32_ENTRY) in a PT_NOTE segment")?;
    if !loaded(u64::from(pvh_entry)) {
        return Err(format!(
            "PVH entry {pvh_entry:#x} is not inside a loaded segment"
        ));
    }
    Ok(())
}

fn segments(elf: &[u8]) -> Result<Vec<Segment>, String> {
    let table = read_u64(elf, 32)?;
    let entry_size = u64::from(read_u16(elf, 54)?);
    let count = read_u16(elf, 56)?;
    (0..u64::from(count))
        .map(|index| {
            let at = usize::try_from(table + index * entry_size)
                .map_err(|_| "program header offset overflows".to_owned())?;
            Ok(Segment {
                kind: read_u32(elf, at)?,
                offset: read_u64(elf, at + 8)?,
                paddr: read_u64(elf, at + 24)?,
                file_size: read_u64(elf, at + 32)?,
                mem_size: read_u64(elf, at + 40)?,
            })
        })
        .collect()
}

fn note_bytes<'a>(elf: &'a [u8], segment: &Segment) -> Result<&'a [u8], String> {
    let start = usize::try_from(segment.offset).map_err(|e| e.to_string())?;
    let len =
        usize::try_from(segment.file_size.min(segment.mem_size)).map_err(|e| e.to_string())?;
    elf.get(start..start + len)
        .ok_or_else(|| "PT_NOTE segment extends past the end of the file".into())
}

/// Walks the notes of one PT_NOTE segment for the PVH entry note; returns its 32-bit entry.
fn pvh_entry(mut notes: &[u8]) -> Option<u32> {
    let aligned = |n: usize| n.next_multiple_of(4);
    while notes.len() >= 12 {
        let name_size = read_u32(notes, 0).ok()? as usize;
        let desc_size = read_u32(notes, 4).ok()? as usize;
        let kind = read_u32(notes, 8).ok()?;
        let name = notes.get(12..12 + name_size)?;
        let desc_start = 12 + aligned(name_size);
        let desc = notes.get(desc_start..desc_start + desc_size)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4 {
            return read_u32(desc, 0).ok();
        }
        notes = notes.get(desc_start + aligned(desc_size)..)?;
    }
    None
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], String> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("truncated ELF: no {N} bytes at offset {at:#x}"))
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16, String> {
    field(bytes, at).map(u16::from_le_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, String> {
    field(bytes, at).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64, String> {
    field(bytes, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64: header, two program headers (LOAD at 1 MiB, NOTE), a note, some code.
    fn elf(entry: u64, note_name: &[u8; 4], note_kind: u32, pvh_entry: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x200];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[16..18].copy_from_slice(&2u16.to_le_bytes());
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[24..32].copy_from_slice(&entry.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        let mut header = |at: usize, kind: u32, offset: u64, paddr: u64, size: u64| {
            elf[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            elf[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
            elf[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        };
        header(64, PT_LOAD, 0, LOAD_ADDRESS, 0x1000);
        header(120, PT_NOTE, 0x100, LOAD_ADDRESS + 0x100, 20);
        let note = [
            4u32.to_le_bytes(),
            4u32.to_le_bytes(),
            note_kind.to_le_bytes(),
            *note_name,
            pvh_entry.to_le_bytes(),
        ]
        .concat();
        elf[0x100..0x114].copy_from_slice(&note);
        elf.resize(0x1000, 0);
        elf
    }

    #[test]
    fn accepts_the_expected_layout() {
        check_boot_layout(&elf(LINUX_ENTRY_64, b"Xen\0", 18, 0x10_0000)).unwrap();
    }

    #[test]
    fn rejects_a_wrong_entry_point() {
        let error = check_boot_layout(&elf(0x10_0000, b"Xen\0", 18, 0x10_0000)).unwrap_err();
        assert!(error.contains("entry point 0x100000"), "{error}");
    }

    #[test]
    fn rejects_a_missing_pvh_note() {
        let error = check_boot_layout(&elf(LINUX_ENTRY_64, b"Xen\0", 17, 0x10_0000)).unwrap_err();
        assert!(error.contains("no PVH note"), "{error}");
        let error = check_boot_layout(&elf(LINUX_ENTRY_64, b"Lnx\0", 18, 0x10_0000)).unwrap_err();
        assert!(error.contains("no PVH note"), "{error}");
    }

    #[test]
    fn rejects_a_pvh_entry_outside_the_image() {
        let error = check_boot_layout(&elf(LINUX_ENTRY_64, b"Xen\0", 18, 0x20_0000)).unwrap_err();
        assert!(error.contains("PVH entry 0x200000"), "{error}");
    }

    #[test]
    fn rejects_truncated_files() {
        let mut bytes = elf(LINUX_ENTRY_64, b"Xen\0", 18, 0x10_0000);
        bytes.truncate(100);
        assert!(check_boot_layout(&bytes).is_err());
        assert!(check_boot_layout(b"not an elf").is_err());
    }
}
