//! The packages of a workspace, their crate roots and their source files, from `cargo metadata`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A workspace member.
#[derive(Debug)]
pub struct Package {
    pub name: String,
    /// The directory holding its `Cargo.toml`.
    pub dir: PathBuf,
    /// Every target's root file: lib, bins, benches, examples, tests, build script.
    pub roots: Vec<PathBuf>,
}

/// The members of the workspace at `root`, as `cargo metadata --no-deps` reports them (so
/// directories excluded from the workspace, like the lint's fixtures, are not among them).
pub fn packages(root: &Path) -> Result<Vec<Package>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = root.join("Cargo.toml");
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .map_err(|e| format!("cannot run {cargo} metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata for {} failed: {}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed bad JSON: {e}"))?;
    let mut packages = Vec::new();
    for package in array(&metadata, "packages")? {
        let name = string(package, "name")?;
        let manifest = PathBuf::from(string(package, "manifest_path")?);
        let dir = manifest
            .parent()
            .ok_or_else(|| format!("{name}: manifest path has no directory"))?
            .to_path_buf();
        let roots = array(package, "targets")?
            .iter()
            .map(|target| string(target, "src_path").map(PathBuf::from))
            .collect::<Result<_, _>>()?;
        packages.push(Package {
            name: name.to_owned(),
            dir,
            roots,
        });
    }
    Ok(packages)
}

/// Every `.rs` file of `package`: under its directory, minus build output, hidden directories
/// and nested packages (directories with their own `Cargo.toml`), plus any root outside it.
pub fn source_files(package: &Package) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    walk(&package.dir, true, &mut files)?;
    for root in &package.roots {
        if !files.contains(root) {
            files.push(root.clone());
        }
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, is_package_dir: bool, files: &mut Vec<PathBuf>) -> Result<(), String> {
    if !is_package_dir && dir.join("Cargo.toml").exists() {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, false, files)?;
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
    Ok(())
}

fn array<'v>(value: &'v Value, key: &str) -> Result<&'v Vec<Value>, String> {
    value[key]
        .as_array()
        .ok_or_else(|| format!("cargo metadata: `{key}` is not an array"))
}

fn string<'v>(value: &'v Value, key: &str) -> Result<&'v str, String> {
    value[key]
        .as_str()
        .ok_or_else(|| format!("cargo metadata: `{key}` is not a string"))
}
