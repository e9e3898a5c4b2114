//! Loading a guest and describing its entry state, as a fixed sequence of steps:
//!
//! 1. kernel: the ELF into RAM at its physical addresses ([`elf`]);
//! 2. initrd: page-aligned at the top of low RAM ([`initrd`]);
//! 3. command line: built ([`cmdline`]) and written at `0x2_0000`;
//! 4. zero page: e820 map, command line and initrd pointers;
//! 5. CPU tables: boot GDT, empty IDT, identity page tables;
//! 6. the entry point the vCPUs start at ([`EntryPoint`]).
//!
//! Other boot protocols (PVH, bzImage) replace steps 1, 4 and 6 with their own.

pub mod cmdline;
pub mod elf;
pub mod initrd;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::load_cmdline;

use crate::GuestMemory;
use crate::arch::x86_64::boot_params::{self, ZeroPage, ZeroPageError};
use crate::arch::x86_64::layout::{CMDLINE_START, low_ram_end};
use crate::arch::x86_64::{paging, regs};
use crate::vm_config::{BootSource, DriveConfig};

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging at `cr3`, RSI at the zero page.
    Linux64 {
        /// The kernel's entry point.
        rip: u64,
        /// The boot page tables.
        cr3: u64,
    },
}

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open the kernel {}: {source}", path.display())]
    OpenKernel {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF (or does not fit in RAM).
    #[error("cannot load the kernel {}: {source}", path.display())]
    LoadKernel {
        /// The path given.
        path: PathBuf,
        /// What linux-loader found wrong.
        source: linux_loader::loader::Error,
    },
    /// The initrd file could not be opened.
    #[error("cannot open the initrd {}: {source}", path.display())]
    OpenInitrd {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd could not be placed or copied.
    #[error("initrd {}: {source}", path.display())]
    Initrd {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: initrd::InitrdError,
    },
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] cmdline::BootCmdlineError),
    /// The command line could not be written.
    #[error("cannot write the command line into guest memory: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    /// The zero page could not be written.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// The boot GDT, IDT or page tables could not be written (RAM too small).
    #[error("cannot write the boot CPU tables: {0}")]
    CpuTables(#[from] vm_memory::GuestMemoryError),
}

/// Loads `source` into `mem` (`mem_bytes` of RAM) for a machine with `drives` and virtio-mmio
/// devices at `virtio_slots` (address, GSI); returns where the boot vCPU starts.
pub fn load(
    mem: &GuestMemory,
    mem_bytes: u64,
    source: &BootSource,
    drives: &[DriveConfig],
    virtio_slots: &[(u64, u32)],
) -> Result<EntryPoint, BootError> {
    // 1. Kernel.
    let kernel_path = &source.kernel_image_path;
    let mut kernel = open(kernel_path).map_err(|source| BootError::OpenKernel {
        path: kernel_path.clone(),
        source,
    })?;
    let kernel = elf::load(mem, &mut kernel).map_err(|source| BootError::LoadKernel {
        path: kernel_path.clone(),
        source,
    })?;

    // 2. Initrd.
    let initrd = match &source.initrd_path {
        Some(path) => {
            let mut file = open(path).map_err(|source| BootError::OpenInitrd {
                path: path.clone(),
                source,
            })?;
            Some(
                initrd::load(mem, &mut file, kernel.end, low_ram_end(mem_bytes)).map_err(
                    |source| BootError::Initrd {
                        path: path.clone(),
                        source,
                    },
                )?,
            )
        }
        None => None,
    };

    // 3. Command line.
    let cmdline = cmdline::build(source.boot_args.as_deref(), drives, virtio_slots)?;
    load_cmdline(mem, CMDLINE_START, &cmdline).map_err(BootError::WriteCmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);

    // 4. Zero page.
    let e820 = boot_params::e820_map(mem_bytes);
    let page = ZeroPage {
        cmdline: (CMDLINE_START.0, cmdline_len as u32),
        initrd,
        e820: &e820,
    };
    boot_params::write_zero_page(mem, &page)?;

    // 5. CPU tables.
    regs::write_descriptor_tables(mem)?;
    let cr3 = paging::write_identity_map(mem)?;

    // 6. Entry.
    tracing::debug!(
        entry = kernel.entry.0,
        kernel_end = kernel.end,
        "kernel loaded"
    );
    Ok(EntryPoint::Linux64 {
        rip: kernel.entry.0,
        cr3,
    })
}

fn open(path: &Path) -> std::io::Result<File> {
    File::open(path)
}
