//! Intel MultiProcessor Specification 1.4 tables, for kernels built without ACPI.
//!
//! Linux looks for the MP floating pointer (`_MP_`) in the BIOS area `0xF_0000..0x10_0000`; it
//! points at the configuration table (`PCMP`) that lists the processors, the ISA bus, the IOAPIC
//! and how each IOAPIC pin is wired. With ACPI present Linux prefers the MADT and ignores this.
//!
//! Every structure is encoded field by field in little-endian order (no `unsafe` casts), and both
//! checksums are computed over the bytes actually written.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Where the MP floating pointer goes; the configuration table follows it.
pub const MPTABLE_START: GuestAddress = GuestAddress(0x000f_0000);
/// One past the end of the BIOS area the tables must stay in.
pub const MPTABLE_END: GuestAddress = GuestAddress(0x0010_0000);

const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// IOAPIC pins wired to the ISA bus, one interrupt entry each (GSI n → pin n).
const IOAPIC_PINS: u8 = 24;
/// APIC versions of an integrated LAPIC (0x14) and an 82093AA-style IOAPIC (0x11).
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Processor flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Family 6 signature and the FPU + APIC feature bits, as a BIOS would report.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Why the MP table could not be built or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    /// No vCPU, or so many that the IOAPIC's id would collide with broadcast.
    #[error("MP table: {0} vCPUs cannot be described (1 to 254 are supported)")]
    VcpuCount(u8),
    /// The tables outgrew the BIOS area.
    #[error("MP table: {needed} bytes do not fit the {available} bytes of the BIOS area")]
    RegionFull {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: u64,
    },
    /// Guest memory does not cover the BIOS area.
    #[error("MP table: cannot write at {addr:#x}: {reason}")]
    Write {
        /// Where.
        addr: u64,
        /// vm-memory's reason.
        reason: String,
    },
}

/// Appends little-endian fields to a byte buffer.
#[derive(Debug, Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// Builds the floating pointer followed by the configuration table, as they sit in memory at
/// `MPTABLE_START`.
pub fn build(vcpu_count: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpu_count == 0 || vcpu_count == u8::MAX {
        return Err(MpTableError::VcpuCount(vcpu_count));
    }
    let ioapic_id = vcpu_count;
    let mut entries = Encoder::default();
    let mut entry_count: u16 = 0;

    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries
            .u8(ENTRY_PROCESSOR)
            .u8(cpu)
            .u8(LAPIC_VERSION)
            .u8(flags);
        entries.u32(CPU_SIGNATURE).u32(CPU_FEATURES).u32(0).u32(0);
        entry_count += 1;
    }
    entries.u8(ENTRY_BUS).u8(0).bytes(b"ISA   ");
    entries
        .u8(ENTRY_IOAPIC)
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1)
        .u32(IOAPIC_ADDR);
    entry_count += 2;
    for pin in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger conform to the bus (ISA: edge, active high).
        entries.u8(ENTRY_IO_INTERRUPT).u8(INT_VECTORED).u16(0);
        entries.u8(0).u8(pin).u8(ioapic_id).u8(pin);
        entry_count += 1;
    }
    // LINT0 of the BSP takes the 8259's ExtINT, LINT1 of every LAPIC (0xff) takes NMI.
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_EXTINT)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0);
    entries
        .u8(ENTRY_LOCAL_INTERRUPT)
        .u8(INT_NMI)
        .u16(0)
        .u8(0)
        .u8(0)
        .u8(0xff)
        .u8(1);
    entry_count += 2;

    let table_len = HEADER_LEN + entries.0.len();
    let needed = FLOATING_POINTER_LEN + table_len;
    let available = MPTABLE_END.0 - MPTABLE_START.0;
    // `needed` is at most a few KiB (254 vCPUs), so both conversions below are lossless.
    if needed as u64 > available {
        return Err(MpTableError::RegionFull { needed, available });
    }
    let table_addr = (MPTABLE_START.0 as usize + FLOATING_POINTER_LEN) as u32;

    let mut header = Encoder::default();
    header
        .bytes(b"PCMP")
        .u16(table_len as u16)
        .u8(SPEC_REVISION)
        .u8(0);
    header.bytes(b"SQUIB   ").bytes(b"MICROVM     ");
    header
        .u32(0)
        .u16(0)
        .u16(entry_count)
        .u32(LAPIC_ADDR)
        .u16(0)
        .u8(0)
        .u8(0);
    let mut table = header.0;
    table.extend_from_slice(&entries.0);
    table[7] = checksum(&table);

    let mut pointer = Encoder::default();
    pointer
        .bytes(b"_MP_")
        .u32(table_addr)
        .u8(1)
        .u8(SPEC_REVISION)
        .u8(0);
    // Feature byte 1 = 0: a configuration table is present (no default configuration).
    pointer.u8(0).u8(0).bytes(&[0; 3]);
    let mut bytes = pointer.0;
    bytes[10] = checksum(&bytes);

    bytes.extend_from_slice(&table);
    Ok(bytes)
}

/// Writes the MP tables for `vcpu_count` vCPUs at `MPTABLE_START`.
pub fn write_mptable<M: GuestMemoryBackend>(mem: &M, vcpu_count: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpu_count)?;
    mem.write_slice(&bytes, MPTABLE_START)
        .map_err(|e| MpTableError::Write {
            addr: MPTABLE_START.0,
            reason: e.to_string(),
        })?;
    tracing::debug!(bytes = bytes.len(), "MP table written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const PROCESSOR_ENTRY_LEN: usize = 20;
    const SMALL_ENTRY_LEN: usize = 8;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// Walks the configuration table's entries the way Linux's `smp_read_mpc` does.
    fn entries(table: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut off = HEADER_LEN;
        while off < table.len() {
            let len = if table[off] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                SMALL_ENTRY_LEN
            };
            out.push(&table[off..off + len]);
            off += len;
        }
        assert_eq!(off, table.len(), "entries end exactly at the table's end");
        out
    }

    #[test]
    fn floating_pointer_points_at_a_checksummed_table() {
        let bytes = build(2).unwrap();
        let fp = &bytes[..FLOATING_POINTER_LEN];
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(fp), 0);
        assert_eq!(fp[8], 1, "length in 16-byte units");
        let table_addr = u32_at(fp, 4) as u64;
        assert_eq!(table_addr, MPTABLE_START.0 + 16);
        let table = &bytes[FLOATING_POINTER_LEN..];
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(u16_at(table, 4) as usize, table.len());
        assert_eq!(sum(table), 0);
        assert_eq!(u32_at(table, 36), LAPIC_ADDR);
        assert_eq!(u16_at(table, 34) as usize, entries(table).len());
    }

    #[test]
    fn lists_every_vcpu_with_only_the_first_as_bootstrap() {
        let bytes = build(4).unwrap();
        let table = &bytes[FLOATING_POINTER_LEN..];
        let cpus: Vec<_> = entries(table)
            .into_iter()
            .filter(|e| e[0] == ENTRY_PROCESSOR)
            .collect();
        assert_eq!(cpus.len(), 4);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[1], i as u8, "APIC id");
            assert_eq!(cpu[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(cpu[3] & CPU_BOOTSTRAP != 0, i == 0);
        }
    }

    #[test]
    fn wires_every_ioapic_pin_and_the_local_interrupts() {
        let bytes = build(1).unwrap();
        let table = &bytes[FLOATING_POINTER_LEN..];
        let all = entries(table);
        let ioapic = all.iter().find(|e| e[0] == ENTRY_IOAPIC).unwrap();
        assert_eq!(ioapic[1], 1, "IOAPIC id follows the vCPUs");
        assert_eq!(u32_at(ioapic, 4), IOAPIC_ADDR);
        let pins: Vec<_> = all.iter().filter(|e| e[0] == ENTRY_IO_INTERRUPT).collect();
        assert_eq!(pins.len(), usize::from(IOAPIC_PINS));
        for (i, e) in pins.iter().enumerate() {
            assert_eq!(
                (e[5], e[6], e[7]),
                (i as u8, 1, i as u8),
                "ISA IRQ n → IOAPIC pin n"
            );
        }
        let local: Vec<_> = all
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .collect();
        assert_eq!((local[0][1], local[0][7]), (INT_EXTINT, 0));
        assert_eq!((local[1][1], local[1][6], local[1][7]), (INT_NMI, 0xff, 1));
    }

    #[test]
    fn refuses_impossible_vcpu_counts() {
        assert_eq!(build(0).unwrap_err(), MpTableError::VcpuCount(0));
        assert_eq!(build(255).unwrap_err(), MpTableError::VcpuCount(255));
        let biggest = build(254).unwrap();
        assert!(biggest.len() as u64 <= MPTABLE_END.0 - MPTABLE_START.0);
    }

    #[test]
    fn writes_into_guest_memory_or_reports_why_not() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, MPTABLE_START).unwrap();
        assert_eq!(&sig, b"_MP_");
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xf_0000)]).unwrap();
        assert!(matches!(
            write_mptable(&small, 1),
            Err(MpTableError::Write { .. })
        ));
    }
}
