//! The kernel command line: the user's (or Firecracker's default) plus what squib's devices
//! need the kernel to know.

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, MMIO_DEVICE_SIZE};
use crate::vm_config::DriveConfig;

/// Firecracker's default: serial console, reboot through the i8042, no PCI, no modules.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// Why the command line could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BootCmdlineError {
    /// The user's text is not a valid command line (non-ASCII, NUL, too long, …).
    #[error("invalid kernel command line: {0}")]
    Invalid(CmdlineError),
    /// The user's text plus squib's entries exceed the limit.
    #[error("the kernel command line with squib's device entries is longer than {0} bytes")]
    TooLong(usize),
}

fn invalid(err: CmdlineError) -> BootCmdlineError {
    match err {
        CmdlineError::TooLarge => BootCmdlineError::TooLong(CMDLINE_MAX_SIZE - 1),
        other => BootCmdlineError::Invalid(other),
    }
}

/// Builds the command line: `boot_args` (or [`DEFAULT_CMDLINE`]), the root device if a drive
/// is marked as one, then one `virtio_mmio.device=4K@0x<addr>:<gsi>` per slot, in slot order.
pub fn build(
    boot_args: Option<&str>,
    drives: &[DriveConfig],
    virtio_slots: &[(u64, u32)],
) -> Result<Cmdline, BootCmdlineError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(invalid)?;
    let base = boot_args.unwrap_or(DEFAULT_CMDLINE).trim();
    if !base.is_empty() {
        cmdline.insert_str(base).map_err(invalid)?;
    }
    if let Some((index, root)) = drives.iter().enumerate().find(|(_, d)| d.is_root_device) {
        let device = match &root.partuuid {
            Some(partuuid) => format!("root=PARTUUID={partuuid}"),
            None => format!("root=/dev/vd{}", drive_letter(index)),
        };
        cmdline.insert_str(device).map_err(invalid)?;
        cmdline
            .insert_str(if root.is_read_only { "ro" } else { "rw" })
            .map_err(invalid)?;
    }
    for &(addr, gsi) in virtio_slots {
        cmdline
            .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(addr), gsi, None)
            .map_err(invalid)?;
    }
    Ok(cmdline)
}

/// `a` for the first virtio-blk device, `b` for the second, … (at most 19 slots exist).
fn drive_letter(index: usize) -> char {
    (b'a' + (index % 26) as u8) as char
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_config::{CacheType, IoEngine};

    fn text(cmdline: &Cmdline) -> String {
        cmdline.as_cstring().unwrap().into_string().unwrap()
    }

    fn drive(root: bool, read_only: bool) -> DriveConfig {
        DriveConfig {
            drive_id: "d".into(),
            path_on_host: "/x".into(),
            is_read_only: read_only,
            is_root_device: root,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            direct: false,
            rate_limiter: None,
        }
    }

    #[test]
    fn default_line_with_virtio_entries_in_slot_order() {
        let line = build(None, &[], &[(0xc000_1000, 5), (0xc000_2000, 6)]).unwrap();
        assert_eq!(
            text(&line),
            format!(
                "{DEFAULT_CMDLINE} virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
            )
        );
    }

    #[test]
    fn user_line_replaces_the_default() {
        let line = build(Some("console=ttyS0 quiet"), &[], &[]).unwrap();
        assert_eq!(text(&line), "console=ttyS0 quiet");
    }

    #[test]
    fn root_drive_is_named_by_position() {
        let drives = [drive(false, false), drive(true, true)];
        let line = build(Some("a"), &drives, &[]).unwrap();
        assert_eq!(text(&line), "a root=/dev/vdb ro");
    }

    #[test]
    fn bad_user_input_is_an_error_not_a_panic() {
        assert!(matches!(
            build(Some("a\u{e9}"), &[], &[]),
            Err(BootCmdlineError::Invalid(_))
        ));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build(Some(&long), &[], &[]),
            Err(BootCmdlineError::TooLong(_))
        ));
    }
}
