//! What a fresh machine needs before squib's tasks can run: the guest target and a few Debian
//! packages. Each step checks first, so running it again is cheap.

use std::process::Command;

/// Debian packages the test suite uses, keyed by the command that shows they are installed.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iasl", "acpica-tools"), // disassembles squib's ACPI tables in the boot tests
    ("curl", "curl"),         // drives the API socket the way Firecracker's docs do
];

/// Installs the `x86_64-unknown-none` target the test guest is built for.
pub fn guest_target() -> Result<(), String> {
    let installed = output("rustup", &["target", "list", "--installed"])?;
    if installed.lines().any(|line| line.trim() == "x86_64-unknown-none") {
        return Ok(());
    }
    run("rustup", &["target", "add", "x86_64-unknown-none"])
}

/// Installs the Debian packages the tests need, when any is missing.
pub fn test_packages() -> Result<(), String> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(command, _)| !on_path(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    run("apt-get", &args)
}

/// Whether `command` is an executable somewhere on `PATH`.
pub fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
    })
}

/// Runs a command to completion, inheriting stdio; a non-zero exit is an error.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed: {status}", args.join(" ")))
    }
}

/// Runs a command and returns its stdout; a non-zero exit is an error.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("`{program}` printed non-UTF-8 output"))
}

/// The `cargo` that runs this xtask (so the pinned toolchain is used throughout).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
