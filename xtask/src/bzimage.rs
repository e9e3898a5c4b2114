//! The bzImage format, both ways: wrap a flat 64-bit kernel in a minimal bzImage (so squib's
//! bzImage path boots the project's test guest) and take the compressed payload out of a
//! distribution's bzImage (so `guest-kernel` can extract its ELF `vmlinux`).
//!
//! Field offsets are file offsets, from Documentation/arch/x86/boot.rst.

/// Setup header fields (file offsets).
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// End of the fields a 2.15 header defines.
const HEADER_END: usize = 0x26c;

const SECTOR: usize = 512;
const HDRS: &[u8; 4] = b"HdrS";
/// Boot protocol 2.15, what current kernels declare.
const PROTOCOL: u16 = 0x020f;
const LOADED_HIGH: u8 = 1;
const XLF_KERNEL_64: u16 = 1;
/// Where the wrapped image is linked: protected-mode code is loaded at 1 MiB.
const LOAD_ADDR: u64 = 0x10_0000;
/// The 64-bit entry's offset from the load address, fixed by the boot protocol.
const ENTRY_64_OFFSET: u64 = 0x200;

fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The compressed kernel inside a bzImage (`payload_offset`/`payload_length`, relative to the
/// protected-mode code that follows the setup sectors).
pub fn payload(image: &[u8]) -> Result<&[u8], String> {
    if image.get(HEADER..HEADER + 4) != Some(HDRS) {
        return Err("not a bzImage (no HdrS setup header)".into());
    }
    let version = le16(image, VERSION).ok_or("truncated setup header")?;
    if version < 0x0208 {
        return Err(format!(
            "boot protocol {version:#06x} has no payload fields (2.08+)"
        ));
    }
    let sects = match image[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = le32(image, PAYLOAD_OFFSET).ok_or("truncated setup header")? as usize;
    let length = le32(image, PAYLOAD_LENGTH).ok_or("truncated setup header")? as usize;
    let start = (sects + 1) * SECTOR + offset;
    image
        .get(start..start.saturating_add(length))
        .ok_or_else(|| format!("payload {start:#x}+{length:#x} runs past the image's end"))
}

/// A flat image: bytes to load at `LOAD_ADDR` and how much memory (bss included) it uses.
#[derive(Debug, PartialEq, Eq)]
pub struct FlatImage {
    /// File contents from the load address on, gaps zero-filled.
    pub bytes: Vec<u8>,
    /// Bytes of memory from the load address the image uses.
    pub mem_size: u64,
}

/// Flattens the PT_LOAD segments of an ELF64 kernel linked at 1 MiB with its entry at +0x200.
pub fn flatten_elf(elf: &[u8]) -> Result<FlatImage, String> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let entry = le64(elf, 0x18).ok_or_else(truncated)?;
    let phoff = le64(elf, 0x20).ok_or_else(truncated)? as usize;
    let phentsize = usize::from(le16(elf, 0x36).ok_or_else(truncated)?);
    let phnum = usize::from(le16(elf, 0x38).ok_or_else(truncated)?);
    let (mut bytes, mut mem_end) = (Vec::new(), LOAD_ADDR);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let field = |off: usize| le64(elf, ph + off).ok_or("truncated program header");
        if le32(elf, ph).ok_or("truncated program header")? != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = (field(8)?, field(0x18)?, field(0x20)?, field(0x28)?);
        if paddr < LOAD_ADDR {
            return Err(format!(
                "segment at {paddr:#x} is below the 1 MiB load address"
            ));
        }
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| elf.get(o..o.checked_add(usize::try_from(filesz).ok()?)?))
            .ok_or("segment runs past the file's end")?;
        let at = usize::try_from(paddr - LOAD_ADDR).map_err(|e| e.to_string())?;
        let end = at.checked_add(data.len()).ok_or("segment too large")?;
        if end > 256 << 20 {
            return Err(format!(
                "segment at {paddr:#x} makes the image larger than 256 MiB"
            ));
        }
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[at..end].copy_from_slice(data);
        mem_end = mem_end.max(paddr.saturating_add(memsz));
    }
    if bytes.len() as u64 <= ENTRY_64_OFFSET {
        return Err("no loadable segment at 1 MiB".into());
    }
    if entry != LOAD_ADDR + ENTRY_64_OFFSET {
        return Err(format!(
            "entry point {entry:#x} is not load address + 0x200"
        ));
    }
    Ok(FlatImage {
        bytes,
        mem_size: mem_end - LOAD_ADDR,
    })
}

/// Wraps `flat` in a bzImage: one setup sector with a 2.15 setup header (64-bit entry, not
/// relocatable, preferred address 1 MiB), then the flat image as protected-mode code.
pub fn wrap(flat: &FlatImage) -> Vec<u8> {
    let setup_sects = 1;
    let mut image = vec![0u8; (setup_sects + 1) * SECTOR];
    let mut put = |at: usize, field: &[u8]| image[at..at + field.len()].copy_from_slice(field);
    put(SETUP_SECTS, &[setup_sects as u8]);
    let paragraphs = flat.bytes.len().div_ceil(16) as u32;
    put(SYSSIZE, &paragraphs.to_le_bytes());
    put(BOOT_FLAG, &0xaa55u16.to_le_bytes());
    // A real-mode `jmp` over the header, as real images have (never executed by squib).
    put(JUMP, &[0xeb, (HEADER_END - (JUMP + 2)) as u8]);
    put(HEADER, HDRS);
    put(VERSION, &PROTOCOL.to_le_bytes());
    put(LOADFLAGS, &[LOADED_HIGH]);
    put(CODE32_START, &(LOAD_ADDR as u32).to_le_bytes());
    put(INITRD_ADDR_MAX, &0x7fff_ffffu32.to_le_bytes());
    put(KERNEL_ALIGNMENT, &0x1000u32.to_le_bytes());
    put(RELOCATABLE_KERNEL, &[0]);
    put(XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
    put(CMDLINE_SIZE, &2047u32.to_le_bytes());
    put(PREF_ADDRESS, &LOAD_ADDR.to_le_bytes());
    let init_size = flat
        .mem_size
        .max(flat.bytes.len() as u64)
        .next_multiple_of(4096);
    put(INIT_SIZE, &(init_size as u32).to_le_bytes());
    image.extend_from_slice(&flat.bytes);
    // `syssize` counts whole 16-byte paragraphs: pad so the file holds all it promises.
    image.resize(image.len().next_multiple_of(16), 0);
    image
}

/// `cargo xtask test-guest --bzimage`: wraps the test guest ELF at `elf` into `<elf>.bzImage`
/// and returns that path.
pub fn wrap_file(elf: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let bytes = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let flat = flatten_elf(&bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    let out = elf.with_extension("bzImage");
    std::fs::write(&out, wrap(&flat)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 with one PT_LOAD of `code` at 1 MiB (memsz `memsz`) and the given entry.
    fn elf(code: &[u8], memsz: u64, entry: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x40;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        f[ph + 0x18..ph + 0x20].copy_from_slice(&LOAD_ADDR.to_le_bytes());
        f[ph + 0x20..ph + 0x28].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[ph + 0x28..ph + 0x30].copy_from_slice(&memsz.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn wraps_a_flat_kernel_with_a_valid_64_bit_setup_header() {
        let code: Vec<u8> = (0..0x300u32).map(|i| i as u8).collect();
        let flat = flatten_elf(&elf(&code, 0x5000, LOAD_ADDR + 0x200)).unwrap();
        assert_eq!(flat.bytes, code);
        let image = wrap(&flat);
        assert_eq!(&image[HEADER..HEADER + 4], HDRS);
        assert_eq!(le16(&image, BOOT_FLAG), Some(0xaa55));
        assert_eq!(le16(&image, VERSION), Some(0x020f));
        assert_eq!(le16(&image, XLOADFLAGS).unwrap() & XLF_KERNEL_64, 1);
        assert_eq!(le32(&image, INIT_SIZE), Some(0x5000));
        assert_eq!(le64(&image, PREF_ADDRESS), Some(LOAD_ADDR));
        let pm_start = (usize::from(image[SETUP_SECTS]) + 1) * SECTOR;
        assert_eq!(&image[pm_start..], &code[..]);
        assert_eq!(le32(&image, SYSSIZE), Some(0x30));

        let odd = wrap(&FlatImage {
            bytes: vec![1; 0x301],
            mem_size: 0x301,
        });
        let payload_len = odd.len() - 2 * SECTOR;
        assert_eq!(le32(&odd, SYSSIZE), Some(0x31));
        assert_eq!(payload_len, 0x31 * 16, "padded to whole paragraphs");
    }

    #[test]
    fn refuses_kernels_that_cannot_be_a_bzimage_payload() {
        assert!(flatten_elf(b"MZ").is_err());
        let wrong_entry = elf(&[0; 0x300], 0x300, LOAD_ADDR);
        assert!(flatten_elf(&wrong_entry).unwrap_err().contains("0x200"));
        let mut cut = elf(&[0; 0x300], 0x300, LOAD_ADDR + 0x200);
        cut.truncate(0x100);
        assert!(flatten_elf(&cut).unwrap_err().contains("past the file"));
    }

    #[test]
    fn payload_is_found_after_the_setup_sectors() {
        let mut image = wrap(&FlatImage {
            bytes: vec![0xaa; 0x400],
            mem_size: 0x400,
        });
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x10u32.to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&0x20u32.to_le_bytes());
        image[2 * SECTOR + 0x10] = 0x42;
        let p = payload(&image).unwrap();
        assert_eq!((p.len(), p[0]), (0x20, 0x42));
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&image).unwrap_err().contains("past the image"));
        assert!(payload(b"short").is_err());
    }
}
