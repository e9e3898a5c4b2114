//! Loading a guest and describing its entry state, as a fixed sequence of steps:
//!
//! 1. kernel: the ELF into RAM at its physical addresses ([`elf`]);
//! 2. initrd: page-aligned at the top of low RAM ([`initrd`]);
//! 3. command line: built ([`cmdline`]) and written at `0x2_0000`;
//! 4. zero page: e820 map, command line and initrd pointers;
//! 5. CPU tables: boot GDT, empty IDT, identity page tables;
//! 6. the entry point the vCPUs start at ([`EntryPoint`]).
//!
//! Other boot protocols replace steps 1, 4 and 6 with their own: a bzImage ([`bzimage`]) is
//! loaded from its setup header and gets a zero page built from it; an ELF with the PVH note
//! ([`pvh`], preferred unless `--boot-protocol linux64`) gets an `hvm_start_info` and a 32-bit
//! entry. Unless switched off, squib also writes ACPI tables ([`acpi`]) and an MP table
//! ([`mptable`]) before step 4; see `docs/boot.md`.

pub mod acpi;
pub mod bzimage;
pub mod cmdline;
pub mod elf;
pub mod initrd;
pub mod mptable;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::boot_e820_entry;
use linux_loader::loader::load_cmdline;
use vm_memory::GuestAddress;

use crate::GuestMemory;
use crate::arch::x86_64::boot_params::{self, ZeroPage, ZeroPageError};
use crate::arch::x86_64::layout::{CMDLINE_START, MMIO_DEVICE_SIZE, ZERO_PAGE_START, low_ram_end};
use crate::arch::x86_64::{paging, regs};
use crate::devices::acpi_pm;
use crate::host_file::{self, Accept, HostFileError};
use crate::vm_config::{BootOptions, BootProtocol, BootSource, DriveConfig};

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
    /// PVH: 32-bit protected mode, paging off, EBX at `hvm_start_info`.
    Pvh {
        /// The PVH entry point.
        eip: u64,
        /// The start info's address.
        ebx: u64,
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
    /// The bzImage is wrong, truncated, does not fit, or its limits are exceeded.
    #[error("kernel {}: {source}", path.display())]
    BzImage {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        source: bzimage::BzImageError,
    },
    /// PVH boot was asked for and is impossible, or its start info could not be written.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
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

/// What the machine looks like to the tables squib writes.
#[derive(Clone, Copy, Debug)]
pub struct Machine<'a> {
    /// RAM in bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpu_count: u8,
    /// virtio-mmio slots (address, GSI), in slot order.
    pub virtio_slots: &'a [(u64, u32)],
    /// Boot protocol and discovery options.
    pub options: BootOptions,
}

/// The kernel in memory, whichever format it came in.
enum Kernel {
    /// An ELF `vmlinux` (with its PVH entry, if it has one).
    Elf(elf::LoadedKernel),
    /// A bzImage's protected-mode code.
    BzImage(bzimage::BzImageLayout),
}

/// Loads `source` into `mem` for `machine` with `drives`; returns where the boot vCPU starts.
pub fn load(
    mem: &GuestMemory,
    machine: &Machine<'_>,
    source: &BootSource,
    drives: &[DriveConfig],
) -> Result<EntryPoint, BootError> {
    let low_end = low_ram_end(machine.mem_bytes);
    // 1. Kernel: a bzImage if it has a setup header, else an ELF.
    let kernel_path = &source.kernel_image_path;
    let open_error = |source| BootError::OpenKernel {
        path: kernel_path.clone(),
        source,
    };
    let bz_error = |source| BootError::BzImage {
        path: kernel_path.clone(),
        source,
    };
    let mut file = open(kernel_path).map_err(open_error)?;
    let kernel = if bzimage::is_bzimage(&mut file).map_err(open_error)? {
        let layout = bzimage::BzImageLayout::parse(&mut file, low_end).map_err(bz_error)?;
        layout.load(mem, &mut file).map_err(bz_error)?;
        Kernel::BzImage(layout)
    } else {
        let loaded = elf::load(mem, &mut file).map_err(|source| BootError::LoadKernel {
            path: kernel_path.clone(),
            source,
        })?;
        Kernel::Elf(loaded)
    };
    let (kernel_end, initrd_end) = match &kernel {
        Kernel::Elf(elf) => (elf.end, low_end),
        Kernel::BzImage(layout) => (layout.kernel_end(), low_end.min(layout.initrd_limit())),
    };

    // 2. Initrd.
    let initrd = match &source.initrd_path {
        Some(path) => {
            let mut file = open(path).map_err(|source| BootError::OpenInitrd {
                path: path.clone(),
                source,
            })?;
            Some(
                initrd::load(mem, &mut file, kernel_end, initrd_end).map_err(|source| {
                    BootError::Initrd {
                        path: path.clone(),
                        source,
                    }
                })?,
            )
        }
        None => None,
    };

    // 3. Command line.
    let options = machine.options;
    let cmdline_devices = if options.cmdline_devices {
        machine.virtio_slots
    } else {
        &[]
    };
    let cmdline = cmdline::build(source.boot_args.as_deref(), drives, cmdline_devices)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    if let Kernel::BzImage(layout) = &kernel {
        layout.check_cmdline(cmdline_len).map_err(bz_error)?;
    }
    load_cmdline(mem, CMDLINE_START, &cmdline).map_err(BootError::WriteCmdline)?;

    // 4. Machine description: ACPI tables and MP table.
    let rsdp = if options.acpi {
        Some(acpi::write_acpi_tables(
            mem,
            &acpi_platform(machine, &acpi_slots(machine)),
        )?)
    } else {
        None
    };
    if options.mptable {
        mptable::write_mptable(mem, machine.vcpu_count)?;
    }

    // 5. Boot information and CPU tables, per protocol.
    let e820 = boot_params::e820_map(machine.mem_bytes);
    let loader_e820: Vec<boot_e820_entry> = e820
        .iter()
        .map(|e| boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        })
        .collect();
    let entry = match kernel {
        Kernel::Elf(elf) => match pvh::choose_entry(options.protocol, elf.pvh_entry)? {
            Some(pvh_entry) => {
                let info = pvh::PvhBootInfo {
                    memory_map: &loader_e820,
                    cmdline_addr: CMDLINE_START,
                    rsdp_addr: rsdp,
                    initrd: initrd.map(|(addr, size)| (GuestAddress(addr.into()), size.into())),
                };
                let start_info = pvh::write_start_info(mem, &info)?;
                EntryPoint::Pvh {
                    eip: pvh_entry.0,
                    ebx: start_info.0,
                }
            }
            None => {
                let page = ZeroPage {
                    cmdline: (CMDLINE_START.0, cmdline_len as u32),
                    initrd,
                    e820: &e820,
                    acpi_rsdp: rsdp.map(|a| a.0),
                };
                boot_params::write_zero_page(mem, &page)?;
                long_mode_entry(mem, elf.entry.0)?
            }
        },
        Kernel::BzImage(layout) => {
            if options.protocol == BootProtocol::Pvh {
                return Err(BootError::Pvh(pvh::PvhError::NoPvhEntry));
            }
            let info = bzimage::ZeroPageInfo {
                // The command line sits at 0x2_0000 (a constant below 4 GiB).
                cmdline_addr: CMDLINE_START.0 as u32,
                initrd,
                rsdp_addr: rsdp.map(|a| a.0),
                e820: &loader_e820,
            };
            let params = layout.boot_params(&info).map_err(bz_error)?;
            bzimage::write_boot_params(mem, &params, ZERO_PAGE_START).map_err(bz_error)?;
            long_mode_entry(mem, layout.entry().0)?
        }
    };
    tracing::debug!(?entry, kernel_end, acpi = rsdp.is_some(), "kernel loaded");
    Ok(entry)
}

/// The virtio-mmio slots as ACPI describes them.
fn acpi_slots(machine: &Machine<'_>) -> Vec<acpi::MmioSlot> {
    machine
        .virtio_slots
        .iter()
        .map(|&(base, gsi)| acpi::MmioSlot {
            base,
            len: MMIO_DEVICE_SIZE as u32,
            gsi,
        })
        .collect()
}

/// squib's machine as ACPI describes it: vCPUs, virtio-mmio slots, COM1, the PM registers.
fn acpi_platform<'a>(machine: &Machine<'_>, slots: &'a [acpi::MmioSlot]) -> acpi::AcpiPlatform<'a> {
    acpi::AcpiPlatform {
        vcpu_count: machine.vcpu_count,
        mmio_slots: slots,
        serial: Some(acpi::COM1),
        power: acpi::PowerRegisters {
            sleep_control: acpi_pm::SLEEP_CONTROL_PORT,
            sleep_status: acpi_pm::SLEEP_STATUS_PORT,
            reset: acpi_pm::RESET_PORT,
            reset_value: acpi_pm::RESET_VALUE,
        },
    }
}

/// The boot GDT, IDT and identity page tables, and the 64-bit entry at `rip`.
fn long_mode_entry(mem: &GuestMemory, rip: u64) -> Result<EntryPoint, BootError> {
    regs::write_descriptor_tables(mem)?;
    let cr3 = paging::write_identity_map(mem)?;
    Ok(EntryPoint::Linux64 { rip, cr3 })
}

/// Kernels and initrds: regular files only, opened so that a FIFO cannot hang the boot.
fn open(path: &Path) -> std::io::Result<File> {
    host_file::open(path, false, Accept::RegularFile).map_err(HostFileError::into_io)
}
