//! Which guest MMIO accesses a device-path run makes per request, from KVM's `kvm_mmio`
//! tracepoint (`perf record`). Under PVM every access the kernel does not handle itself costs
//! an exit to the VMM of ≈ 25 µs from guest ring 3, so this table is the device path's profile.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use super::Context;
use super::vm::Vm;

/// The virtio-mmio register at `offset` within a device's 4 KiB window (virtio 1.2, 4.2.2).
fn register(offset: u64) -> String {
    let name = match offset {
        0x000 => "MagicValue",
        0x004 => "Version",
        0x008 => "DeviceID",
        0x010 => "DeviceFeatures",
        0x014 => "DeviceFeaturesSel",
        0x020 => "DriverFeatures",
        0x024 => "DriverFeaturesSel",
        0x030 => "QueueSel",
        0x034 => "QueueNumMax",
        0x038 => "QueueNum",
        0x044 => "QueueReady",
        0x050 => "QueueNotify",
        0x060 => "InterruptStatus",
        0x064 => "InterruptACK",
        0x070 => "Status",
        0x0fc => "ConfigGeneration",
        o if o >= 0x100 => return format!("config space +{:#x}", o - 0x100),
        _ => "other",
    };
    name.to_owned()
}

/// The local APIC's end-of-interrupt register (in-kernel LAPIC: no exit to the VMM).
const LAPIC_EOI: u64 = 0xfee0_00b0;

/// One row: an access kind at one address, and how often it happened per request.
#[derive(Debug)]
pub struct Row {
    pub access: String,
    pub gpa: u64,
    pub per_request: f64,
}

/// Runs `command` (a VMM booting the guest for `ops` reads) under `perf record -e kvm:kvm_mmio`
/// and returns the accesses per request, most frequent first.
pub fn profile(ctx: &Context, command: &Command, ops: u64) -> Result<Vec<Row>, String> {
    let data = ctx.scratch()?.join("mmio-profile.data");
    let mut perf = Command::new("perf");
    perf.args(["record", "-q", "-e", "kvm:kvm_mmio", "-o"])
        .arg(&data)
        .arg("--");
    perf.arg(command.get_program()).args(command.get_args());
    let mut vm = Vm::spawn(perf)?;
    vm.wait_for_marker("BENCH done", Duration::from_secs(120))?;
    vm.wait_exit(Duration::from_secs(30))?;
    let data = data.display().to_string();
    let out = Command::new("perf")
        .args(["script", "-F", "trace", "-i", &data])
        .output()
        .map_err(|e| format!("perf script: {e}"))?;
    let mut counts: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(key) = parse_trace(line) {
            *counts.entry(key).or_default() += 1;
        }
    }
    let mut rows: Vec<Row> = counts
        .into_iter()
        .map(|((access, gpa), n)| Row {
            access,
            gpa,
            per_request: n as f64 / ops as f64,
        })
        .filter(|row| row.per_request >= 0.01)
        .collect();
    rows.sort_by(|a, b| b.per_request.total_cmp(&a.per_request));
    Ok(rows)
}

/// `mmio unsatisfied-read len 4 gpa 0xd00010fc val 0x0` → ("unsatisfied-read", 0xd00010fc).
/// Completed reads (`read`) are skipped: each is the second half of an unsatisfied one.
fn parse_trace(line: &str) -> Option<(String, u64)> {
    let mut words = line.split_whitespace().skip_while(|w| *w != "mmio").skip(1);
    let access = words.next()?;
    if access == "read" {
        return None;
    }
    let gpa = words.skip_while(|w| *w != "gpa").nth(1)?;
    let gpa = u64::from_str_radix(gpa.trim_start_matches("0x"), 16).ok()?;
    Some((access.to_owned(), gpa))
}

/// The rows as a markdown table, registers named for addresses in a 4 KiB device window.
pub fn table(rows: &[Row], window_base: impl Fn(u64) -> Option<u64>) -> String {
    let mut text =
        String::from("| access | address | register | per request |\n|---|---|---|---:|\n");
    for row in rows {
        let access = match row.access.as_str() {
            "unsatisfied-read" => "read (exit to the VMM)",
            "write" => "write (ioeventfd, or exit to the VMM)",
            other => other,
        };
        let register = match (window_base(row.gpa), row.gpa) {
            (Some(base), gpa) => register(gpa - base),
            (None, LAPIC_EOI) => "LAPIC EOI".to_owned(),
            (None, _) => "-".to_owned(),
        };
        text.push_str(&format!(
            "| {access} | {:#x} | {register} | {:.2} |\n",
            row.gpa, row.per_request
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kvm_mmio_trace_lines() {
        assert_eq!(
            parse_trace("mmio unsatisfied-read len 4 gpa 0xd00010fc val 0x0"),
            Some(("unsatisfied-read".into(), 0xd000_10fc))
        );
        assert_eq!(parse_trace("mmio read len 4 gpa 0xd00010fc val 0x0"), None);
        assert_eq!(
            parse_trace("  kvm:kvm_mmio: mmio write len 4 gpa 0xd0001050 val 0x0"),
            Some(("write".into(), 0xd000_1050))
        );
        assert_eq!(register(0x10c), "config space +0xc");
        assert_eq!(register(0x050), "QueueNotify");
    }
}
