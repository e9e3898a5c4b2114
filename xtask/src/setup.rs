//! What a fresh machine needs before squib's tasks can run: the guest target and a few Debian
//! packages. Each step checks first, so running it again is cheap.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the test suite uses, keyed by the command that shows they are installed.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iasl", "acpica-tools"), // disassembles squib's ACPI tables in the boot tests
    ("curl", "curl"),         // drives the API socket the way Firecracker's docs do
];

/// Installs the `x86_64-unknown-none` target the test guest is built for.
pub fn guest_target() -> Result<(), String> {
    let installed = output("rustup", &["target", "list", "--installed"])?;
    if installed
        .lines()
        .any(|line| line.trim() == "x86_64-unknown-none")
    {
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
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Runs a command to completion, inheriting stdio; a non-zero exit is an error.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    run_command(Command::new(program).args(args))
}

/// Runs a prepared command to completion, inheriting stdio; a non-zero exit is an error.
pub fn run_command(command: &mut Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {status}"))
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

/// The workspace root (the directory above `xtask/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where cargo puts the workspace's builds: `CARGO_TARGET_DIR` (a relative one taken from the
/// workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let workspace = workspace();
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_relative() => workspace.join(dir),
        Some(dir) => dir,
        None => workspace.join("target"),
    }
}

/// The `cargo` that runs this xtask (so the pinned toolchain is used throughout).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Where the backports source is written when the machine has none.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/squib-backports.sources";

/// Installs QEMU (the peer VMM the benchmarks compare against) when it is missing.
///
/// It comes from the release's backports, which carry the same QEMU as the `qemu-utils` this
/// image ships (the release's own package would replace it). When apt has no backports source,
/// one is added, on the same mirror as the release's main source.
pub fn qemu() -> Result<(), String> {
    if on_path("qemu-system-x86_64") {
        return Ok(());
    }
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .ok_or("/etc/os-release names no release codename")?
        .trim_matches('"')
        .to_owned();
    let backports = format!("{codename}-backports");
    let policy = output("apt-cache", &["policy"])?;
    if !policy.contains(&format!("a={backports}")) && !Path::new(BACKPORTS_SOURCES).exists() {
        add_backports_source(&codename)?;
    }
    eprintln!("xtask: installing qemu-system-x86 from {backports}");
    run("apt-get", &["update", "-qq"])?;
    run(
        "apt-get",
        &["install", "-y", "-qq", "-t", &backports, "qemu-system-x86"],
    )
}

/// Writes a deb822 source for `<codename>-backports` using the mirror of the release's own source.
fn add_backports_source(codename: &str) -> Result<(), String> {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .map_err(|e| format!("no backports source and cannot read debian.sources: {e}"))?;
    let stanza = sources
        .split("\n\n")
        .find(|stanza| {
            stanza.lines().any(|line| {
                line.strip_prefix("Suites:")
                    .is_some_and(|suites| suites.split_whitespace().any(|s| s == codename))
            })
        })
        .ok_or_else(|| format!("debian.sources has no `{codename}` stanza to copy"))?;
    let field = |name: &str| {
        stanza
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .ok_or_else(|| format!("debian.sources: the `{codename}` stanza has no {name}"))
    };
    let mut text = format!(
        "Types: deb\nURIs: {}\nSuites: {codename}-backports\nComponents: {}\n",
        field("URIs:")?,
        field("Components:")?
    );
    if let Ok(keyring) = field("Signed-By:") {
        text.push_str(&format!("Signed-By: {keyring}\n"));
    }
    std::fs::write(BACKPORTS_SOURCES, text).map_err(|e| format!("{BACKPORTS_SOURCES}: {e}"))
}
