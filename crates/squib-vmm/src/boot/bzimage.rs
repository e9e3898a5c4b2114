//! bzImage boot: the compressed kernel distributions ship, entered through its 64-bit entry.
//!
//! The image starts with real-mode setup sectors whose setup header (at `0x1f1`) tells a boot
//! loader where the protected-mode code wants to live, how much room it needs to decompress
//! (`init_size`), how long a command line it accepts and how high an initrd may go. squib needs
//! boot protocol 2.12+ with `XLF_KERNEL_64`, loads the protected-mode code at its preferred
//! address, and enters it at load address + 0x200 in long mode with RSI at a zero page built
//! from the image's own header (Documentation/arch/x86/boot.rst, "64-bit boot protocol").

use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    LOADED_HIGH, XLF_KERNEL_64, boot_e820_entry, boot_params, setup_header,
};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

/// Offset of the setup header in the image (and in the zero page).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
/// 2.12: `XLF_KERNEL_64` and the 64-bit entry are defined.
const MIN_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry point's offset from the load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Setup sectors default to 4 when the field says 0.
const DEFAULT_SETUP_SECTS: u64 = 4;
const SECTOR: u64 = 512;
/// Where protected-mode code may start: squib's own boot structures live below 1 MiB.
const MIN_LOAD_ADDR: u64 = 0x10_0000;
/// `type_of_loader`: "undefined" (squib has no assigned id).
const LOADER_UNDEFINED: u8 = 0xff;

/// Why a bzImage cannot boot. The caller names the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BzImageError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(String),
    /// Shorter than its headers say.
    #[error("truncated bzImage: {0}")]
    Truncated(String),
    /// No `HdrS` magic or boot flag.
    #[error("not a bzImage (no \"HdrS\" setup header at 0x202)")]
    NotBzImage,
    /// Boot protocol older than 2.12.
    #[error("boot protocol {}.{:02} is older than 2.12, which squib needs for the 64-bit entry", .0 >> 8, .0 & 0xff)]
    ProtocolTooOld(u16),
    /// No 64-bit entry point.
    #[error("the kernel has no 64-bit entry point (XLF_KERNEL_64 is not set)")]
    No64BitEntry,
    /// Must be loaded below 1 MiB (zImage).
    #[error("the kernel is not a bzImage loaded high (LOADED_HIGH is not set)")]
    NotLoadedHigh,
    /// `kernel_alignment` is not a power of two.
    #[error("the setup header's kernel_alignment {0:#x} is not a power of two")]
    BadAlignment(u32),
    /// The kernel's footprint does not fit in RAM.
    #[error(
        "the kernel needs {size:#x} bytes at {load:#x} (init_size), but low RAM ends at {ram_end:#x}: give the VM more memory"
    )]
    DoesNotFit {
        /// Load address.
        load: u64,
        /// Bytes needed from there.
        size: u64,
        /// End of RAM below the MMIO gap.
        ram_end: u64,
    },
    /// A non-relocatable kernel that wants to live below 1 MiB.
    #[error("the kernel wants to be loaded at {0:#x}, below 1 MiB where squib's boot data lives")]
    LoadAddressTooLow(u64),
    /// The command line exceeds `cmdline_size`.
    #[error("the command line is {len} bytes; this kernel accepts at most {max} (cmdline_size)")]
    CmdlineTooLong {
        /// Its length without the NUL.
        len: usize,
        /// The header's `cmdline_size`.
        max: u32,
    },
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries do not fit the zero page (at most 128)")]
    TooManyE820Entries(usize),
    /// linux-loader could not copy the image or write the zero page.
    #[error("{0}")]
    Load(String),
}

/// A validated setup header and the address squib loads the protected-mode code at.
#[derive(Clone, Copy, Debug)]
pub struct BzImageLayout {
    header: setup_header,
    /// Protected-mode code size in the file.
    payload_len: u64,
    /// Where the code goes (the kernel's preferred address).
    load_addr: u64,
    /// Bytes from `load_addr` the kernel uses while booting (`init_size`, at least the payload).
    footprint: u64,
}

/// Whether `image` starts like a bzImage (`HdrS` at 0x202). Leaves the file position anywhere.
pub fn is_bzimage<F: Read + Seek>(image: &mut F) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    image.seek(SeekFrom::Start(0x202))?;
    match image.read_exact(&mut magic) {
        Ok(()) => Ok(u32::from_le_bytes(magic) == HDRS_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

impl BzImageLayout {
    /// Reads and validates the setup header of `image` for a VM whose RAM below the MMIO gap
    /// ends at `low_ram_end`.
    pub fn parse<F: Read + Seek>(image: &mut F, low_ram_end: u64) -> Result<Self, BzImageError> {
        let io = |e: std::io::Error| BzImageError::Io(e.to_string());
        let file_len = image.seek(SeekFrom::End(0)).map_err(io)?;
        let header_len = std::mem::size_of::<setup_header>() as u64;
        if file_len < SETUP_HEADER_OFFSET + header_len {
            return Err(if file_len < 0x206 {
                BzImageError::NotBzImage
            } else {
                BzImageError::Truncated(format!("{file_len} bytes end inside the setup header"))
            });
        }
        let mut header = setup_header::default();
        image
            .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
            .map_err(io)?;
        image.read_exact(header.as_mut_slice()).map_err(io)?;
        Self::validate(header, file_len, low_ram_end)
    }

    fn validate(
        header: setup_header,
        file_len: u64,
        low_ram_end: u64,
    ) -> Result<Self, BzImageError> {
        // Copy fields out of the packed struct before using them.
        let (magic, boot_flag, version) = (header.header, header.boot_flag, header.version);
        if magic != HDRS_MAGIC || boot_flag != BOOT_FLAG {
            return Err(BzImageError::NotBzImage);
        }
        if version < MIN_PROTOCOL {
            return Err(BzImageError::ProtocolTooOld(version));
        }
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BzImageError::No64BitEntry);
        }
        if header.loadflags & LOADED_HIGH == 0 {
            return Err(BzImageError::NotLoadedHigh);
        }
        let alignment = header.kernel_alignment;
        if !alignment.is_power_of_two() {
            return Err(BzImageError::BadAlignment(alignment));
        }

        let setup_sects = match u64::from(header.setup_sects) {
            0 => DEFAULT_SETUP_SECTS,
            n => n,
        };
        let setup_len = (setup_sects + 1) * SECTOR;
        let payload_len = file_len
            .checked_sub(setup_len)
            .filter(|len| *len > ENTRY_64_OFFSET);
        let Some(payload_len) = payload_len else {
            return Err(BzImageError::Truncated(format!(
                "{file_len} bytes, but {setup_sects} setup sectors leave no 64-bit entry"
            )));
        };
        let syssize = u64::from(header.syssize) * 16;
        if syssize > payload_len {
            return Err(BzImageError::Truncated(format!(
                "the header promises {syssize} bytes of protected-mode code, the file has {payload_len}"
            )));
        }

        // Relocatable kernels run where they are put: honour the preferred address, rounded up
        // to the alignment they ask for. Others must sit exactly at their preferred address.
        let preferred = match header.pref_address {
            0 => u64::from(header.code32_start),
            pref => pref,
        };
        let footprint = u64::from(header.init_size).max(payload_len);
        let does_not_fit = |load| BzImageError::DoesNotFit {
            load,
            size: footprint,
            ram_end: low_ram_end,
        };
        let load_addr = if header.relocatable_kernel != 0 {
            preferred
                .max(MIN_LOAD_ADDR)
                .checked_next_multiple_of(u64::from(alignment))
                .ok_or(does_not_fit(preferred))?
        } else if preferred < MIN_LOAD_ADDR {
            return Err(BzImageError::LoadAddressTooLow(preferred));
        } else {
            preferred
        };
        if load_addr
            .checked_add(footprint)
            .is_none_or(|end| end > low_ram_end)
        {
            return Err(does_not_fit(load_addr));
        }
        Ok(Self {
            header,
            payload_len,
            load_addr,
            footprint,
        })
    }

    /// Where the protected-mode code goes.
    pub fn load_addr(&self) -> GuestAddress {
        GuestAddress(self.load_addr)
    }

    /// The 64-bit entry point.
    pub fn entry(&self) -> GuestAddress {
        GuestAddress(self.load_addr + ENTRY_64_OFFSET)
    }

    /// First byte after the memory the kernel uses while it decompresses and boots: an initrd
    /// must start at or after it.
    pub fn kernel_end(&self) -> u64 {
        self.load_addr + self.footprint
    }

    /// One past the highest byte an initrd may occupy (`initrd_addr_max` + 1).
    pub fn initrd_limit(&self) -> u64 {
        u64::from(self.header.initrd_addr_max) + 1
    }

    /// Protected-mode code size.
    pub fn payload_len(&self) -> u64 {
        self.payload_len
    }

    /// Refuses a command line (without its NUL) longer than the kernel's `cmdline_size`.
    pub fn check_cmdline(&self, len: usize) -> Result<(), BzImageError> {
        let max = self.header.cmdline_size;
        if u64::try_from(len).map_or(true, |len| len > u64::from(max)) {
            return Err(BzImageError::CmdlineTooLong { len, max });
        }
        Ok(())
    }

    /// Copies the protected-mode code from `image` to [`Self::load_addr`].
    pub fn load<F, M>(&self, mem: &M, image: &mut F) -> Result<(), BzImageError>
    where
        F: Read + vm_memory::ReadVolatile + Seek,
        M: GuestMemoryBackend,
    {
        BzImage::load(mem, Some(self.load_addr()), image, None)
            .map_err(|e| BzImageError::Load(e.to_string()))?;
        Ok(())
    }

    /// The zero page: the image's own setup header plus what squib tells the kernel.
    pub fn boot_params(&self, info: &ZeroPageInfo<'_>) -> Result<boot_params, BzImageError> {
        let mut params = boot_params {
            hdr: self.header,
            ..Default::default()
        };
        params.hdr.type_of_loader = LOADER_UNDEFINED;
        params.hdr.code32_start = self.load_addr as u32;
        params.hdr.cmd_line_ptr = info.cmdline_addr;
        if let Some((addr, size)) = info.initrd {
            params.hdr.ramdisk_image = addr;
            params.hdr.ramdisk_size = size;
        }
        params.acpi_rsdp_addr = info.rsdp_addr.unwrap_or(0);
        if info.e820.len() > params.e820_table.len() {
            return Err(BzImageError::TooManyE820Entries(info.e820.len()));
        }
        params.e820_table[..info.e820.len()].copy_from_slice(info.e820);
        // Bounded by the table's 128 entries above.
        params.e820_entries = info.e820.len() as u8;
        Ok(params)
    }
}

/// What squib tells a bzImage kernel beyond its own header.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInfo<'a> {
    /// Command line address (below 4 GiB: squib's is at 0x2_0000).
    pub cmdline_addr: u32,
    /// Initrd address and size.
    pub initrd: Option<(u32, u32)>,
    /// RSDP, when ACPI is on.
    pub rsdp_addr: Option<u64>,
    /// Memory map.
    pub e820: &'a [boot_e820_entry],
}

/// Writes `params` at `addr` (the zero page, where RSI points at entry).
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    params: &boot_params,
    addr: GuestAddress,
) -> Result<(), BzImageError> {
    LinuxBootConfigurator::write_bootparams(&BootParams::new(params, addr), mem)
        .map_err(|e| BzImageError::Load(format!("cannot write the zero page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const RAM: u64 = 64 << 20;

    /// A minimal image: 1 setup sector + `payload` bytes of protected-mode code.
    fn image(payload: &[u8], edit: impl FnOnce(&mut setup_header)) -> Vec<u8> {
        let mut header = setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x37ff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            syssize: (payload.len() / 16) as u32,
            pref_address: 0x100_0000,
            init_size: 0x40_0000,
            ..Default::default()
        };
        edit(&mut header);
        let mut bytes = vec![0u8; 1024];
        bytes[0x1f1..0x1f1 + header.as_slice().len()].copy_from_slice(header.as_slice());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<BzImageLayout, BzImageError> {
        BzImageLayout::parse(&mut Cursor::new(bytes), RAM)
    }

    #[test]
    fn relocatable_kernel_loads_at_its_preferred_aligned_address() {
        let layout = parse(&image(&[0x90; 0x1000], |_| {})).unwrap();
        assert_eq!(layout.load_addr(), GuestAddress(0x100_0000));
        assert_eq!(layout.entry(), GuestAddress(0x100_0200));
        assert_eq!(
            layout.kernel_end(),
            0x100_0000 + 0x40_0000,
            "init_size counts"
        );
        assert_eq!(layout.payload_len(), 0x1000);
        assert_eq!(layout.initrd_limit(), 0x3800_0000);

        let odd = parse(&image(&[0; 0x1000], |h| h.pref_address = 0x110_0000)).unwrap();
        assert_eq!(
            odd.load_addr(),
            GuestAddress(0x120_0000),
            "rounded up to kernel_alignment"
        );
    }

    #[test]
    fn fixed_kernel_loads_exactly_where_it_asks() {
        let fixed = |h: &mut setup_header| {
            h.relocatable_kernel = 0;
            h.pref_address = 0x10_0000;
            h.kernel_alignment = 0x1000;
        };
        assert_eq!(
            parse(&image(&[0; 0x400], fixed)).unwrap().load_addr(),
            GuestAddress(0x10_0000)
        );
        let low = image(&[0; 0x400], |h| {
            fixed(h);
            h.pref_address = 0x8000;
        });
        assert_eq!(
            parse(&low).unwrap_err(),
            BzImageError::LoadAddressTooLow(0x8000)
        );
    }

    #[test]
    fn wrong_images_say_what_is_wrong() {
        assert_eq!(parse(b"\x7fELF").unwrap_err(), BzImageError::NotBzImage);
        let e = |edit: fn(&mut setup_header)| parse(&image(&[0; 0x400], edit)).unwrap_err();
        assert_eq!(e(|h| h.header = 0), BzImageError::NotBzImage);
        assert_eq!(
            e(|h| h.version = 0x020b),
            BzImageError::ProtocolTooOld(0x020b)
        );
        assert!(
            BzImageError::ProtocolTooOld(0x020b)
                .to_string()
                .contains("2.11")
        );
        assert_eq!(e(|h| h.xloadflags = 0), BzImageError::No64BitEntry);
        assert_eq!(e(|h| h.loadflags = 0), BzImageError::NotLoadedHigh);
        assert_eq!(
            e(|h| h.kernel_alignment = 0x3000),
            BzImageError::BadAlignment(0x3000)
        );
        assert_eq!(e(|h| h.kernel_alignment = 0), BzImageError::BadAlignment(0));
    }

    #[test]
    fn truncated_images_are_refused() {
        let full = image(&[0; 0x1000], |_| {});
        assert!(matches!(
            parse(&full[..0x220]),
            Err(BzImageError::Truncated(_))
        ));
        assert!(
            matches!(parse(&full[..0x500]), Err(BzImageError::Truncated(_))),
            "payload cut"
        );
        let many_sects = image(&[0; 0x1000], |h| h.setup_sects = 200);
        assert!(matches!(
            parse(&many_sects),
            Err(BzImageError::Truncated(_))
        ));
    }

    #[test]
    fn a_kernel_too_big_for_ram_is_refused() {
        let huge = image(&[0; 0x400], |h| h.init_size = u32::MAX);
        assert!(matches!(
            parse(&huge),
            Err(BzImageError::DoesNotFit {
                load: 0x100_0000,
                ..
            })
        ));
        let high = image(&[0; 0x400], |h| h.pref_address = u64::MAX - 0x1000);
        assert!(
            matches!(parse(&high), Err(BzImageError::DoesNotFit { .. })),
            "no overflow panic"
        );
    }

    #[test]
    fn command_line_limit_is_the_kernels() {
        let layout = parse(&image(&[0; 0x400], |h| h.cmdline_size = 100)).unwrap();
        assert!(layout.check_cmdline(100).is_ok());
        assert_eq!(
            layout.check_cmdline(101),
            Err(BzImageError::CmdlineTooLong { len: 101, max: 100 })
        );
    }

    #[test]
    fn loads_the_payload_and_builds_the_zero_page_from_the_images_header() {
        let payload: Vec<u8> = (0..0x1000u32).map(|i| i as u8).collect();
        let bytes = image(&payload, |_| {});
        let layout = parse(&bytes).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        layout.load(&mem, &mut Cursor::new(&bytes)).unwrap();
        let mut loaded = vec![0u8; payload.len()];
        mem.read_slice(&mut loaded, layout.load_addr()).unwrap();
        assert_eq!(loaded, payload);

        let e820 = [boot_e820_entry {
            addr: 0,
            size: 0x9fc00,
            r#type: 1,
        }];
        let info = ZeroPageInfo {
            cmdline_addr: 0x2_0000,
            initrd: Some((0x300_0000, 0x1000)),
            rsdp_addr: Some(0xe_0000),
            e820: &e820,
        };
        let params = layout.boot_params(&info).unwrap();
        write_boot_params(&mem, &params, GuestAddress(0x7000)).unwrap();
        let at = |offset: u64| GuestAddress(0x7000 + offset);
        assert_eq!(
            mem.read_obj::<u64>(at(0x70)).unwrap(),
            0xe_0000,
            "acpi_rsdp_addr"
        );
        assert_eq!(
            mem.read_obj::<u16>(at(0x206)).unwrap(),
            0x020f,
            "the image's version"
        );
        assert_eq!(
            mem.read_obj::<u8>(at(0x210)).unwrap(),
            0xff,
            "type_of_loader"
        );
        assert_eq!(
            mem.read_obj::<u32>(at(0x214)).unwrap(),
            0x100_0000,
            "code32_start"
        );
        assert_eq!(mem.read_obj::<u32>(at(0x218)).unwrap(), 0x300_0000);
        assert_eq!(mem.read_obj::<u32>(at(0x228)).unwrap(), 0x2_0000);
        assert_eq!(
            mem.read_obj::<u32>(at(0x238)).unwrap(),
            2047,
            "cmdline_size kept"
        );
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap(), 1);

        let long = vec![boot_e820_entry::default(); 129];
        let info = ZeroPageInfo {
            e820: &long,
            ..info
        };
        assert_eq!(
            layout.boot_params(&info).unwrap_err(),
            BzImageError::TooManyE820Entries(129)
        );
    }

    #[test]
    fn detection_reads_the_magic_only() {
        assert!(is_bzimage(&mut Cursor::new(image(&[0; 0x400], |_| {}))).unwrap());
        assert!(!is_bzimage(&mut Cursor::new(b"\x7fELF".to_vec())).unwrap());
        assert!(!is_bzimage(&mut Cursor::new(vec![0u8; 0x1000])).unwrap());
    }
}
