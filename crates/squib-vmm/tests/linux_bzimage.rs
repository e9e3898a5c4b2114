//! squib's bzImage path, exercised for real: the project's test guest wrapped in a minimal
//! bzImage (`cargo xtask test-guest --bzimage`) boots through the setup header and the 64-bit
//! entry at load address + 0x200, and passes its virtio-blk checks.
#![forbid(unsafe_code)]

mod common;

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn test_guest_as_a_bzimage_boots_and_passes_its_checks() {
    if !common::kvm_available("test_guest_as_a_bzimage") {
        return;
    }
    let image = common::xtask_output_path(&["test-guest", "--bzimage"]);
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(
        &bytes[0x202..0x206],
        b"HdrS",
        "{} is a bzImage",
        image.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let disk = common::sparse_disk(dir.path(), "disk.img", 64 << 20);
    let ro_disk = common::sparse_disk(dir.path(), "ro.img", 8 << 20);
    let output = common::run_squib(
        &[
            "--kernel",
            image.to_str().unwrap(),
            "--disk",
            &disk,
            "--disk",
            &format!("{ro_disk},ro"),
        ],
        TIMEOUT,
    );
    let stdout = common::stdout(&output);
    let stderr = common::stderr(&output);
    assert!(
        stdout.lines().any(|l| l.starts_with("ok - ")),
        "no check ran:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("FAIL - ")),
        "failed checks:\n{stdout}"
    );
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xc0001000:5"),
        "the zero page's command line reached the guest:\n{stdout}"
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
