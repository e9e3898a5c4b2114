//! Debian's cloud kernel under squib, through PVH and the 64-bit Linux boot protocol.
//!
//! On PVM (this project's testbed) no unmodified Linux gets past early boot, but it does print
//! what squib told it: the command line, the e820 map, the ACPI tables and the CPU count. On a
//! hardware-backed KVM the same test also waits for the initramfs to load the virtio-mmio
//! block driver, read a file back from `/dev/vda` and power off cleanly (ACPI S5, exit 0).
//!
//! Needs `/dev/kvm`, and Debian's archive for `cargo xtask guest-kernel`: skips loudly without.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const VCPUS: &str = "2";
const MEM_MIB: &str = "256";
const READBACK: &str = "squib-linux-readback-ok";
/// A Debian vmlinux needs ~12 s for its first line here and dies ~20 s in; hardware KVM boots
/// to poweroff in a few seconds. Generous either way.
const TIMEOUT: Duration = Duration::from_secs(180);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cargo xtask guest-kernel`'s last two lines: the vmlinux and the initramfs.
fn guest_kernel() -> Option<(PathBuf, PathBuf)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--", "guest-kernel"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        // An earlier run's results serve when xtask itself cannot run right now.
        let cache = workspace_root().join("target/guest-kernel");
        let (vmlinux, initramfs) = (cache.join("vmlinux"), cache.join("initramfs.cpio"));
        eprintln!(
            "linux_boot: xtask guest-kernel failed; looking for {}",
            cache.display()
        );
        return (vmlinux.exists() && initramfs.exists()).then_some((vmlinux, initramfs));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines().rev();
    let initramfs = PathBuf::from(lines.next()?);
    let vmlinux = PathBuf::from(lines.next()?);
    (vmlinux.exists() && initramfs.exists()).then_some((vmlinux, initramfs))
}

/// An ext4 image holding `squib-check.txt` (the initramfs reads it back).
fn disk(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("squib-check.txt"), READBACK).unwrap();
    let image = dir.join("disk.img");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("linux_boot: mkfs.ext4 unavailable: the disk is blank (read-back cannot pass)");
        std::fs::write(&image, vec![0u8; 16 << 20]).unwrap();
    }
    image
}

fn hardware_kvm() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
}

/// Runs squib until every `wanted` line fragment was seen (then kills it) or it exits; returns
/// the output and the exit status (`None` if squib was killed).
fn boot(args: &[&str], wanted: &[String], wait_for_exit: bool) -> (String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_squib"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("squib starts");
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + TIMEOUT;
    let mut output = String::new();
    loop {
        let seen_all = wanted.iter().all(|w| output.contains(w.as_str()));
        if seen_all && !wait_for_exit {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
            }
            // Both streams closed: squib exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    let status = match child.try_wait().unwrap() {
        Some(status) => status.code(),
        None => {
            child.kill().unwrap();
            child.wait().unwrap();
            None
        }
    };
    (output, status)
}

#[test]
fn debian_kernel_sees_squibs_machine_through_pvh_and_linux64() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED linux_boot: /dev/kvm is absent");
        return;
    }
    let Some((vmlinux, initramfs)) = guest_kernel() else {
        eprintln!("SKIPPED linux_boot: `cargo xtask guest-kernel` failed (no Debian archive?)");
        return;
    };
    let full = hardware_kvm();
    eprintln!(
        "linux_boot: {}",
        if full {
            "hardware KVM: asserting the whole boot (init marker, /dev/vda read-back, power-off)"
        } else {
            "PVM testbed: asserting early boot (command line, e820, ACPI tables, CPU count)"
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = disk(dir.path());
    let (vmlinux, initramfs, disk) = (
        vmlinux.to_str().unwrap().to_owned(),
        initramfs.to_str().unwrap().to_owned(),
        disk.to_str().unwrap().to_owned(),
    );

    for protocol in ["pvh", "linux64"] {
        let token = format!("squibtest={protocol}");
        let cmdline = format!(
            "console=ttyS0 earlyprintk=serial reboot=k panic=1 pci=off i8042.noaux i8042.nomux \
             i8042.dumbkbd {token}"
        );
        let mut wanted: Vec<String> = [
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
            "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
            "ACPI: RSDP 0x00000000000E0000",
            "ACPI: XSDT 0x00000000000E",
            "ACPI: FACP 0x00000000000E",
            "ACPI: APIC 0x00000000000E",
            "ACPI: DSDT 0x00000000000E",
            "smpboot: Allowing 2 CPUs",
        ]
        .map(String::from)
        .to_vec();
        wanted.push(format!("Command line: {cmdline}"));
        if full {
            wanted.push("SQUIB-LINUX-INIT-OK".into());
            wanted.push(format!("squib-init: read back: {READBACK}"));
        }
        let args = [
            "--kernel",
            &vmlinux,
            "--initrd",
            &initramfs,
            "--disk",
            &disk,
            "--vcpus",
            VCPUS,
            "--mem-mib",
            MEM_MIB,
            "--boot-protocol",
            protocol,
            "--cmdline",
            &cmdline,
        ];
        let (output, status) = boot(&args, &wanted, full);
        let missing: Vec<_> = wanted
            .iter()
            .filter(|w| !output.contains(w.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{protocol}: missing {missing:#?}\noutput:\n{output}"
        );
        if full {
            assert_eq!(status, Some(0), "{protocol}: clean power-off\n{output}");
            assert!(
                output.contains("powered off"),
                "{protocol}: power-off logged\n{output}"
            );
        }
        eprintln!(
            "linux_boot: {protocol}: all {} expected lines seen",
            wanted.len()
        );
    }
}
