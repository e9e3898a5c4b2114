//! squib's ACPI tables, disassembled by ACPICA's `iasl` (Debian `acpica-tools`): an independent
//! parser checks what squib's own unit tests check byte by byte. Skips loudly without `iasl`.
#![forbid(unsafe_code)]

use std::process::Command;

use squib_vmm::arch::x86_64::layout::virtio_mmio_slot;
use squib_vmm::boot::acpi::{AcpiPlatform, AcpiTables, COM1, MmioSlot, PowerRegisters};

fn disassemble(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, bytes).unwrap();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(&dat)
        .current_dir(dir)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "iasl -d {name}: {log}");
    assert!(
        !log.contains("Error") && !log.contains("Invalid"),
        "iasl -d {name}: {log}"
    );
    std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap()
}

#[test]
fn iasl_reads_the_dsdt_devices_and_madt_entries_squib_writes() {
    if Command::new("iasl").arg("-v").output().is_err() {
        eprintln!("SKIPPED linux_acpi_iasl: iasl is not installed (apt-get install acpica-tools)");
        return;
    }
    let slots: Vec<MmioSlot> = (0..3)
        .map(|n| {
            let (base, gsi) = virtio_mmio_slot(n).unwrap();
            MmioSlot {
                base,
                len: 0x1000,
                gsi,
            }
        })
        .collect();
    let platform = AcpiPlatform {
        vcpu_count: 3,
        mmio_slots: &slots,
        serial: Some(COM1),
        power: PowerRegisters {
            sleep_control: 0x600,
            sleep_status: 0x601,
            reset: 0x602,
            reset_value: 1,
        },
    };
    let tables = AcpiTables::build(&platform).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = |sig: &str| {
        &tables
            .tables()
            .iter()
            .find(|t| t.signature == sig)
            .unwrap()
            .bytes
    };

    let dsdt = disassemble(dir.path(), "dsdt", table("DSDT"));
    assert!(dsdt.contains("EisaId (\"PNP0501\")"), "{dsdt}");
    assert!(
        dsdt.contains("0x03F8,             // Range Minimum"),
        "{dsdt}"
    );
    assert_eq!(
        dsdt.matches("Name (_HID, \"LNRO0005\")").count(),
        3,
        "{dsdt}"
    );
    for (n, slot) in slots.iter().enumerate() {
        assert!(dsdt.contains(&format!("Device (VR{n:02X})")), "{dsdt}");
        assert!(
            dsdt.contains(&format!("0x{:08X},         // Address Base", slot.base)),
            "{dsdt}"
        );
        let irq = format!(
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {{\n                    0x{:08X},",
            slot.gsi
        );
        assert!(dsdt.contains(&irq), "slot {n} interrupt: {dsdt}");
    }
    assert!(dsdt.contains("Name (_S5, Package"), "{dsdt}");

    let madt = disassemble(dir.path(), "apic", table("APIC"));
    assert!(madt.contains("Local Apic Address : FEE00000"), "{madt}");
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 3, "{madt}");
    for id in 0..3 {
        assert!(
            madt.contains(&format!("Local Apic ID : {id:02X}")),
            "{madt}"
        );
    }
    assert!(madt.contains("I/O Apic ID : 03"), "{madt}");
    assert!(madt.contains("Address : FEC00000"), "{madt}");

    let fadt = disassemble(dir.path(), "facp", table("FACP"));
    assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
    assert!(fadt.contains("Reset Register Supported (V2) : 1"), "{fadt}");
}
