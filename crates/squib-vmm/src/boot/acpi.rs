//! ACPI tables: how a Linux guest finds squib's CPUs, interrupt controllers and devices.
//!
//! squib describes a *hardware-reduced* ACPI platform (no PM timer, no SCI, no legacy fixed
//! hardware): RSDP → XSDT → {FADT → DSDT, MADT}. The DSDT names the COM1 UART (`PNP0501`) and one
//! `LNRO0005` device per virtio-mmio slot, which is the only way kernels without
//! `VIRTIO_MMIO_CMDLINE_DEVICES` (Debian's) find virtio-mmio devices. The FADT points the guest's
//! power-off and reset at squib's `acpi_pm` I/O ports.
//!
//! The tables live in `0xE_0000..0xF_0000`, the BIOS area Linux scans for the RSDP when nobody
//! passes its address; squib passes it anyway (`boot_params.acpi_rsdp_addr`, PVH `rsdp_paddr`).

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// First byte of the ACPI table region.
pub const ACPI_START: GuestAddress = GuestAddress(0x000e_0000);
/// One past the last byte of the ACPI table region (the MP table starts here).
pub const ACPI_END: GuestAddress = GuestAddress(0x000f_0000);

/// Where the in-kernel IOAPIC and LAPICs sit (KVM's defaults).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address, the same for every vCPU.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Input pins of KVM's in-kernel IOAPIC; GSI n is pin n (KVM's default routing).
pub const IOAPIC_PINS: u32 = 24;

const OEM_ID: [u8; 6] = *b"SQUIB ";
const OEM_TABLE_ID: [u8; 8] = *b"SQUIBVM ";
const OEM_REVISION: u32 = 1;
/// Tables start on 16-byte boundaries: the RSDP must, the rest read more easily in a dump.
const TABLE_ALIGN: u64 = 16;
/// The DSDT's `_S5_` sleep type: what the guest writes into SLP_TYP to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// A virtio-mmio slot as the guest sees it: a 32-bit MMIO window and an IOAPIC input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical base of the register window.
    pub base: u64,
    /// Window length in bytes.
    pub len: u32,
    /// Global system interrupt (IOAPIC pin).
    pub gsi: u32,
}

/// A legacy 16550 UART: I/O base and ISA IRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialPort {
    /// First of its eight I/O ports.
    pub port: u16,
    /// ISA IRQ (identity-mapped to the same GSI).
    pub irq: u32,
}

/// COM1 as on every PC.
pub const COM1: SerialPort = SerialPort {
    port: 0x3f8,
    irq: 4,
};

/// The FADT's power registers, all 8-bit I/O ports (served by `devices::acpi_pm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerRegisters {
    /// Hardware-reduced sleep control register (SLP_TYP in bits 2–4, SLP_EN in bit 5).
    pub sleep_control: u16,
    /// Hardware-reduced sleep status register (WAK_STS in bit 7).
    pub sleep_status: u16,
    /// Reset register.
    pub reset: u16,
    /// What the guest writes to the reset register to reset.
    pub reset_value: u8,
}

/// Everything the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiPlatform<'a> {
    /// vCPUs, 1 to 255; vCPU i has APIC id i.
    pub vcpu_count: u8,
    /// virtio-mmio slots, in slot order.
    pub mmio_slots: &'a [MmioSlot],
    /// The serial console, if the machine has one.
    pub serial: Option<SerialPort>,
    /// Where power-off and reset go.
    pub power: PowerRegisters,
}

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// No vCPU, or more than the MADT's 8-bit APIC ids allow beside the IOAPIC.
    #[error("ACPI: {0} vCPUs cannot be described (1 to 254 are supported)")]
    VcpuCount(u8),
    /// A slot's window does not fit the 32-bit `_CRS` descriptor.
    #[error("ACPI: virtio-mmio slot {index} at {base:#x} (+{len:#x}) is not below 4 GiB")]
    SlotAbove4G {
        /// Slot number.
        index: usize,
        /// Its base.
        base: u64,
        /// Its length.
        len: u32,
    },
    /// A slot's interrupt is not an IOAPIC pin.
    #[error(
        "ACPI: virtio-mmio slot {index} uses GSI {gsi}, beyond the IOAPIC's {IOAPIC_PINS} pins"
    )]
    SlotGsi {
        /// Slot number.
        index: usize,
        /// Its GSI.
        gsi: u32,
    },
    /// More slots than the DSDT's device names (`VR00`–`VRFF`) cover.
    #[error("ACPI: {0} virtio-mmio slots are more than the 256 the DSDT can name")]
    TooManySlots(usize),
    /// The tables outgrew their region.
    #[error("ACPI: the tables need {needed} bytes, more than the {available} bytes reserved")]
    RegionFull {
        /// Bytes needed.
        needed: u64,
        /// Bytes in `ACPI_START..ACPI_END`.
        available: u64,
    },
    /// Guest memory does not cover the region.
    #[error("ACPI: cannot write table {table} at {addr:#x}: {reason}")]
    Write {
        /// Signature of the table.
        table: String,
        /// Where it was going.
        addr: u64,
        /// vm-memory's reason.
        reason: String,
    },
}

/// One serialized table and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Signature: `RSD PTR `, `XSDT`, `FACP`, `APIC`, `DSDT`.
    pub signature: String,
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Bytes, checksum included.
    pub bytes: Vec<u8>,
}

/// The complete, laid-out set of tables.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    tables: Vec<Table>,
}

impl AcpiTables {
    /// Builds every table for `platform`, laid out from `ACPI_START`.
    pub fn build(platform: &AcpiPlatform<'_>) -> Result<Self, AcpiError> {
        validate(platform)?;
        let dsdt = dsdt(platform);
        let madt = madt(platform);

        // Pointers run RSDP → XSDT → FADT → DSDT and XSDT → MADT, so lay the tables out by size
        // first and build the pointing tables once every address is known.
        const XSDT_ENTRIES: u64 = 2;
        let sizes = [
            Rsdp::len() as u64,
            36 + 8 * XSDT_ENTRIES,
            acpi_tables::fadt::FADT::len() as u64,
            madt.len() as u64,
            dsdt.len() as u64,
        ];
        let mut addrs = [0u64; 5];
        let mut next = ACPI_START.0;
        for (addr, size) in addrs.iter_mut().zip(sizes) {
            *addr = next;
            next = align_up(next + size, TABLE_ALIGN);
        }
        let available = ACPI_END.0 - ACPI_START.0;
        if next - ACPI_START.0 > available {
            return Err(AcpiError::RegionFull {
                needed: next - ACPI_START.0,
                available,
            });
        }
        let [rsdp_at, xsdt_at, fadt_at, madt_at, dsdt_at] = addrs;

        let fadt = to_bytes(&fadt(platform.power, dsdt_at));
        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        xsdt.add_entry(fadt_at);
        xsdt.add_entry(madt_at);
        let xsdt = to_bytes(&xsdt);
        let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_at));

        let table = |signature: &str, addr: u64, bytes: Vec<u8>| Table {
            signature: signature.to_owned(),
            addr: GuestAddress(addr),
            bytes,
        };
        Ok(Self {
            tables: vec![
                table("RSD PTR ", rsdp_at, rsdp),
                table("XSDT", xsdt_at, xsdt),
                table("FACP", fadt_at, fadt),
                table("APIC", madt_at, madt),
                table("DSDT", dsdt_at, dsdt),
            ],
        })
    }

    /// Where the RSDP is: what the guest is told in `acpi_rsdp_addr` / `rsdp_paddr`.
    pub fn rsdp_addr(&self) -> GuestAddress {
        ACPI_START
    }

    /// The tables, RSDP first.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Copies every table into guest memory.
    pub fn write_to<M: GuestMemoryBackend>(&self, mem: &M) -> Result<(), AcpiError> {
        for table in &self.tables {
            mem.write_slice(&table.bytes, table.addr)
                .map_err(|e| AcpiError::Write {
                    table: table.signature.clone(),
                    addr: table.addr.0,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// Builds the tables for `platform`, writes them into `mem` and returns the RSDP's address.
pub fn write_acpi_tables<M: GuestMemoryBackend>(
    mem: &M,
    platform: &AcpiPlatform<'_>,
) -> Result<GuestAddress, AcpiError> {
    let tables = AcpiTables::build(platform)?;
    tables.write_to(mem)?;
    tracing::debug!(rsdp = %format_args!("{:#x}", tables.rsdp_addr().0), "ACPI tables written");
    Ok(tables.rsdp_addr())
}

fn validate(platform: &AcpiPlatform<'_>) -> Result<(), AcpiError> {
    // APIC ids 0..vcpu_count belong to the vCPUs, `vcpu_count` to the IOAPIC; 0xff is broadcast.
    if platform.vcpu_count == 0 || platform.vcpu_count == u8::MAX {
        return Err(AcpiError::VcpuCount(platform.vcpu_count));
    }
    if platform.mmio_slots.len() > 256 {
        return Err(AcpiError::TooManySlots(platform.mmio_slots.len()));
    }
    for (index, slot) in platform.mmio_slots.iter().enumerate() {
        if slot
            .base
            .checked_add(u64::from(slot.len))
            .is_none_or(|end| end > 1 << 32)
        {
            return Err(AcpiError::SlotAbove4G {
                index,
                base: slot.base,
                len: slot.len,
            });
        }
        if slot.gsi >= IOAPIC_PINS {
            return Err(AcpiError::SlotGsi {
                index,
                gsi: slot.gsi,
            });
        }
    }
    Ok(())
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// Hardware-reduced FADT (ACPI 6.5): no fixed hardware, power-off through the sleep registers.
fn fadt(power: PowerRegisters, dsdt_at: u64) -> acpi_tables::fadt::FADT {
    /// IA-PC boot architecture flag: no VGA. No 8042 flag either, so Linux skips probing it.
    const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Power and sleep buttons are not fixed hardware (there are none).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_register(power.reset);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = io_register(power.sleep_control);
    fadt.sleep_status_reg = io_register(power.sleep_status);
    fadt.finalize()
}

/// MADT: one enabled LAPIC per vCPU (APIC id = vCPU index), then the IOAPIC.
///
/// No interrupt source overrides: KVM routes GSI n to IOAPIC pin n, which is exactly ACPI's
/// default identity mapping of ISA IRQs, and every squib interrupt is edge/active-high.
fn madt(platform: &AcpiPlatform<'_>) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..platform.vcpu_count {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(platform.vcpu_count, IOAPIC_ADDR, 0));
    to_bytes(&madt)
}

/// DSDT: `\_SB_.COM1`, `\_SB_.VRnn` per virtio-mmio slot, and `\_S5_`.
fn dsdt(platform: &AcpiPlatform<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut devices = Vec::new();
    if let Some(serial) = platform.serial {
        devices.push(RawAml(serial_device(serial)));
    }
    for (index, slot) in platform.mmio_slots.iter().enumerate() {
        devices.push(RawAml(virtio_mmio_device(index, slot)));
    }
    let device_refs: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    aml::Scope::new(Path::new("_SB_"), device_refs).to_aml_bytes(&mut body);

    // \_S5_: SLP_TYPa, SLP_TYPb. Linux powers off only if this object exists.
    let s5_type = S5_SLEEP_TYPE;
    let zero = 0u8;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5_type, &zero])).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// Raw AML bytes are themselves `Aml`, which lets devices of different shapes share a `Vec`.
#[derive(Debug)]
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn serial_device(serial: SerialPort) -> Vec<u8> {
    let io = aml::IO::new(serial.port, serial.port, 1, 8);
    let irq = Interrupt::new(true, true, false, false, serial.irq);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let uid = 0u8;
    to_bytes(&Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

fn virtio_mmio_device(index: usize, slot: &MmioSlot) -> Vec<u8> {
    // Validated: base + len ≤ 4 GiB, so the base fits 32 bits; index < 256.
    let base = u32::try_from(slot.base).unwrap_or(u32::MAX);
    let window = Memory32Fixed::new(true, base, slot.len);
    let irq = Interrupt::new(true, true, false, false, slot.gsi);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u64;
    let hid: aml::AmlStr = "LNRO0005";
    let name = format!("VR{:02X}", index & 0xff);
    to_bytes(&Device::new(
        Path::new(&name),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const POWER: PowerRegisters = PowerRegisters {
        sleep_control: 0x600,
        sleep_status: 0x601,
        reset: 0x602,
        reset_value: 1,
    };

    fn slots(n: u32) -> Vec<MmioSlot> {
        (0..n)
            .map(|i| MmioSlot {
                base: 0xc000_1000 + u64::from(i) * 0x1000,
                len: 0x1000,
                gsi: 5 + i,
            })
            .collect()
    }

    fn platform(vcpus: u8, slots: &[MmioSlot]) -> AcpiPlatform<'_> {
        AcpiPlatform {
            vcpu_count: vcpus,
            mmio_slots: slots,
            serial: Some(COM1),
            power: POWER,
        }
    }

    fn table<'a>(tables: &'a AcpiTables, sig: &str) -> &'a Table {
        tables.tables().iter().find(|t| t.signature == sig).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let slots = slots(3);
        let tables = AcpiTables::build(&platform(2, &slots)).unwrap();
        for t in tables.tables() {
            assert_eq!(sum(&t.bytes), 0, "{} checksum", t.signature);
            if t.signature != "RSD PTR " {
                assert_eq!(
                    u32_at(&t.bytes, 4) as usize,
                    t.bytes.len(),
                    "{} length",
                    t.signature
                );
                assert_eq!(&t.bytes[..4], t.signature.as_bytes());
            }
            assert_eq!(t.addr.0 % 16, 0);
            assert!(t.addr >= ACPI_START && t.addr.0 + t.bytes.len() as u64 <= ACPI_END.0);
        }
        let rsdp = table(&tables, "RSD PTR ");
        assert_eq!(sum(&rsdp.bytes[..20]), 0, "ACPI 1.0 checksum");
    }

    #[test]
    fn pointers_chain_rsdp_xsdt_fadt_dsdt_and_madt() {
        let slots = slots(1);
        let tables = AcpiTables::build(&platform(1, &slots)).unwrap();
        let rsdp = table(&tables, "RSD PTR ");
        assert_eq!(rsdp.addr, tables.rsdp_addr());
        let xsdt = table(&tables, "XSDT");
        assert_eq!(u64_at(&rsdp.bytes, 24), xsdt.addr.0);
        let fadt = table(&tables, "FACP");
        let madt = table(&tables, "APIC");
        assert_eq!(u64_at(&xsdt.bytes, 36), fadt.addr.0);
        assert_eq!(u64_at(&xsdt.bytes, 44), madt.addr.0);
        // X_DSDT at offset 140.
        assert_eq!(u64_at(&fadt.bytes, 140), table(&tables, "DSDT").addr.0);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_squibs_power_registers() {
        let tables = AcpiTables::build(&platform(1, &[])).unwrap();
        let fadt = &table(&tables, "FACP").bytes;
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG (GAS at 116): system I/O, 8 bits, port 0x602; RESET_VALUE at 128.
        assert_eq!(fadt[116], 1);
        assert_eq!(fadt[117], 8);
        assert_eq!(u64_at(fadt, 120), 0x602);
        assert_eq!(fadt[128], 1);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!((fadt[244], u64_at(fadt, 248)), (1, 0x600));
        assert_eq!((fadt[256], u64_at(fadt, 260)), (1, 0x601));
    }

    #[test]
    fn madt_lists_one_lapic_per_vcpu_then_the_ioapic() {
        let tables = AcpiTables::build(&platform(3, &[])).unwrap();
        let madt = &table(&tables, "APIC").bytes;
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            entries.push((kind, madt[off + 2..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(entries.len(), 4);
        for (cpu, (kind, body)) in entries[..3].iter().enumerate() {
            assert_eq!(*kind, 0);
            assert_eq!((body[0], body[1]), (cpu as u8, cpu as u8), "uid, apic id");
            assert_eq!(u32_at(body, 2), 1, "enabled");
        }
        let (kind, ioapic) = &entries[3];
        assert_eq!(*kind, 1);
        assert_eq!(ioapic[0], 3, "IOAPIC id after the vCPUs");
        assert_eq!(u32_at(ioapic, 2), IOAPIC_ADDR);
        assert_eq!(u32_at(ioapic, 6), 0, "GSI base");
    }

    #[test]
    fn dsdt_names_each_slot_with_its_window_and_interrupt() {
        let slots = slots(2);
        let tables = AcpiTables::build(&platform(1, &slots)).unwrap();
        let dsdt = &table(&tables, "DSDT").bytes;
        let find = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"LNRO0005\0"), 2);
        assert_eq!(find(b"VR00"), 1);
        assert_eq!(find(b"VR01"), 1);
        assert_eq!(find(b"_S5_"), 1);
        for slot in &slots {
            // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&(slot.base as u32).to_le_bytes());
            mem.extend_from_slice(&slot.len.to_le_bytes());
            assert_eq!(find(&mem), 1, "window of {slot:?}");
            // Extended interrupt: tag 0x89, length 6, consumer|edge, one interrupt, the GSI.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend_from_slice(&slot.gsi.to_le_bytes());
            assert_eq!(find(&irq), 1, "interrupt of {slot:?}");
        }
        // COM1: EISA id PNP0501 and I/O 0x3f8, 8 ports.
        assert_eq!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]), 1);
        assert_eq!(find(&[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]), 1);
    }

    #[test]
    fn hostile_layouts_are_refused_not_panicked_on() {
        let high = [MmioSlot {
            base: 0xffff_f000,
            len: 0x2000,
            gsi: 5,
        }];
        assert!(matches!(
            AcpiTables::build(&platform(1, &high)),
            Err(AcpiError::SlotAbove4G { index: 0, .. })
        ));
        let wrap = [MmioSlot {
            base: u64::MAX,
            len: 0x1000,
            gsi: 5,
        }];
        assert!(matches!(
            AcpiTables::build(&platform(1, &wrap)),
            Err(AcpiError::SlotAbove4G { .. })
        ));
        let gsi = [MmioSlot {
            base: 0xc000_1000,
            len: 0x1000,
            gsi: 24,
        }];
        assert_eq!(
            AcpiTables::build(&platform(1, &gsi)).unwrap_err(),
            AcpiError::SlotGsi { index: 0, gsi: 24 }
        );
        assert_eq!(
            AcpiTables::build(&platform(0, &[])).unwrap_err(),
            AcpiError::VcpuCount(0)
        );
        assert_eq!(
            AcpiTables::build(&platform(255, &[])).unwrap_err(),
            AcpiError::VcpuCount(255)
        );
        let many = vec![
            MmioSlot {
                base: 0xc000_1000,
                len: 0x1000,
                gsi: 5
            };
            257
        ];
        assert_eq!(
            AcpiTables::build(&platform(1, &many)).unwrap_err(),
            AcpiError::TooManySlots(257)
        );
    }

    #[test]
    fn the_largest_machine_still_fits_its_region() {
        let slots = vec![
            MmioSlot {
                base: 0xc000_1000,
                len: 0x1000,
                gsi: 5
            };
            256
        ];
        let tables = AcpiTables::build(&platform(254, &slots)).unwrap();
        let last = tables.tables().last().unwrap();
        assert!(last.addr.0 + last.bytes.len() as u64 <= ACPI_END.0);
    }

    #[test]
    fn tables_land_in_guest_memory_and_a_short_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let slots = slots(1);
        let rsdp = write_acpi_tables(&mem, &platform(1, &slots)).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, rsdp).unwrap();
        assert_eq!(&sig, b"RSD PTR ");

        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xe_0000)]).unwrap();
        let err = write_acpi_tables(&small, &platform(1, &slots)).unwrap_err();
        assert!(
            matches!(err, AcpiError::Write { ref table, .. } if table == "RSD PTR "),
            "{err}"
        );
    }
}
