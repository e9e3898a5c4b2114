//! `cargo xtask lint-unsafe [--root <dir>]`: enforces I-CRATE-2 on a Cargo workspace.
//!
//! Every `.rs` file of every workspace package is parsed with `syn` and the lint fails, naming
//! file and line, when
//! - a crate that is not allowlisted contains `unsafe` in any form (blocks, fns, fn pointer
//!   types, impls, traits, extern blocks, `#[unsafe(...)]` attributes, macro bodies);
//! - a crate root of such a crate (lib, bins, benches, examples, tests, build script) lacks
//!   `#![forbid(unsafe_code)]`;
//! - an `unsafe` block or `unsafe impl` in an allowlisted crate lacks a `// SAFETY:` comment
//!   right above it.
//!
//! Comments and string literals are not tokens, so mentioning the word is never a violation.
//! The policy itself is `docs/unsafe-policy.md`.

mod safety_comment;
mod scan;
mod workspace;

use std::fmt;
use std::path::{Path, PathBuf};

use scan::{FileScan, UnsafeUse};

/// What a crate may do with `unsafe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// May contain `unsafe`; each block and `unsafe impl` argues its soundness in a
    /// `// SAFETY:` comment.
    Argued,
    /// Not linted at all.
    Exempt,
}

/// The crates allowed `unsafe`: the only place this list exists (docs/unsafe-policy.md explains
/// each entry). Every other crate must be free of `unsafe` and forbid it at each root.
const ALLOWLIST: &[(&str, Policy)] = &[
    // The host boundary: every FFI call squib makes, each behind a safe API.
    ("squib-host", Policy::Argued),
    // Guest code: runs inside the microVM on bare metal, built for x86_64-unknown-none outside
    // the host workspace; it programs hardware directly and cannot escape the VM by being unsafe.
    ("squib-test-guest", Policy::Exempt),
];

fn policy(package: &str) -> Option<Policy> {
    ALLOWLIST
        .iter()
        .find(|(name, _)| *name == package)
        .map(|&(_, policy)| policy)
}

/// One broken rule, at a place in a file.
#[derive(Debug)]
struct Violation {
    file: PathBuf,
    line: usize,
    column: usize,
    message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let root = match args {
        [] => std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?,
        [flag, dir] if flag == "--root" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask lint-unsafe [--root <workspace dir>]".into()),
    };
    // cargo metadata reports absolute paths; violations are shown relative to the root.
    let root = root
        .canonicalize()
        .map_err(|e| format!("cannot find {}: {e}", root.display()))?;
    let packages = workspace::packages(&root)?;
    let mut violations = Vec::new();
    let (mut files, mut argued) = (0, 0);
    for package in &packages {
        let policy = policy(&package.name);
        if policy == Some(Policy::Exempt) {
            continue;
        }
        for file in workspace::source_files(package)? {
            files += 1;
            let is_root = package.roots.contains(&file);
            argued += lint_file(&file, policy, is_root, &mut violations)?;
        }
    }
    let shown = |path: &Path| path.strip_prefix(&root).unwrap_or(path).to_path_buf();
    for violation in &mut violations {
        violation.file = shown(&violation.file);
        eprintln!("{violation}");
    }
    if violations.is_empty() {
        println!(
            "lint-unsafe: {} packages, {files} files clean; {argued} unsafe blocks/impls in \
             allowlisted crates, each with a SAFETY comment",
            packages.len()
        );
        Ok(())
    } else {
        Err(format!(
            "{} violation(s) of I-CRATE-2 (see docs/unsafe-policy.md)",
            violations.len()
        ))
    }
}

/// Lints one file; returns how many argued `unsafe` blocks/impls it holds.
fn lint_file(
    path: &Path,
    policy: Option<Policy>,
    is_root: bool,
    violations: &mut Vec<Violation>,
) -> Result<usize, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let scan = match FileScan::parse(&source) {
        Ok(scan) => scan,
        Err(e) => {
            let start = e.span().start();
            violations.push(Violation {
                file: path.to_path_buf(),
                line: start.line,
                column: start.column + 1,
                message: format!("cannot parse: {e}"),
            });
            return Ok(0);
        }
    };
    let at = |site: &UnsafeUse, message: String| Violation {
        file: path.to_path_buf(),
        line: site.line,
        column: site.column + 1,
        message,
    };
    match policy {
        None => {
            if is_root && !scan.forbids_unsafe {
                violations.push(Violation {
                    file: path.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: "crate root lacks `#![forbid(unsafe_code)]`".into(),
                });
            }
            for site in &scan.uses {
                let message = format!(
                    "{} outside squib-host: only allowlisted crates may use `unsafe`",
                    site.kind
                );
                violations.push(at(site, message));
            }
            Ok(0)
        }
        Some(Policy::Argued) => {
            let mut argued = 0;
            for site in scan.uses.iter().filter(|site| site.needs_argument) {
                if safety_comment::is_above(&source, site.line, site.column)
                    || (site.anchor_line < site.line
                        && safety_comment::is_above(&source, site.anchor_line, 0))
                {
                    argued += 1;
                } else {
                    let message = format!("{} without a `// SAFETY:` comment above it", site.kind);
                    violations.push(at(site, message));
                }
            }
            Ok(argued)
        }
        Some(Policy::Exempt) => Ok(0),
    }
}
