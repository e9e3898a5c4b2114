//! `cargo xtask lint-unsafe` end to end: each fixture workspace under `xtask/fixtures/` breaks one
//! rule of I-CRATE-2 (or none), and the lint must name exactly the offending files and lines.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs the lint on `root`: whether it passed, and the violations it printed.
fn lint(root: &Path) -> (bool, Vec<String>) {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("lint-unsafe")
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let violations = stderr
        .lines()
        .filter(|line| !line.starts_with("xtask lint-unsafe:"))
        .map(str::to_owned)
        .collect();
    (output.status.success(), violations)
}

/// The `file:line:column` of each violation.
fn places(violations: &[String]) -> Vec<&str> {
    violations
        .iter()
        .map(|v| v.split(": ").next().unwrap())
        .collect()
}

#[test]
fn clean_workspace_passes() {
    let (passed, violations) = lint(&fixture("clean"));
    assert!(passed, "{violations:#?}");
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn unsafe_outside_the_host_is_found_in_every_form() {
    let (passed, violations) = lint(&fixture("unsafe-outside-host"));
    assert!(!passed);
    let file = "app/src/forms.rs";
    let expected: Vec<String> = ["2:24", "3:5", "5:1", "6:5", "7:1", "8:3", "10:14", "11:31"]
        .iter()
        .map(|at| format!("{file}:{at}"))
        .collect();
    assert_eq!(places(&violations), expected, "{violations:#?}");
    assert!(violations.iter().all(|v| v.contains("outside squib-host")));
    assert!(
        violations[5].contains("`unsafe` attribute"),
        "{}",
        violations[5]
    );
    assert!(violations[7].contains("macro"), "{}", violations[7]);
}

#[test]
fn crate_roots_must_forbid_unsafe_code() {
    let (passed, violations) = lint(&fixture("missing-forbid"));
    assert!(!passed);
    // `build.rs` forbids it; `deny` in lib.rs is not enough.
    assert_eq!(
        places(&violations),
        [
            "app/src/lib.rs:1:1",
            "app/src/main.rs:1:1",
            "app/tests/it.rs:1:1"
        ],
        "{violations:#?}"
    );
    assert!(
        violations
            .iter()
            .all(|v| v.contains("#![forbid(unsafe_code)]"))
    );
}

#[test]
fn host_unsafe_needs_a_safety_comment() {
    let (passed, violations) = lint(&fixture("missing-safety"));
    assert!(!passed);
    let file = "squib-host/src/lib.rs";
    assert_eq!(
        places(&violations),
        [
            format!("{file}:7:5"),
            format!("{file}:13:5"),
            format!("{file}:18:5"),
            format!("{file}:22:1"),
        ],
        "{violations:#?}"
    );
    assert!(violations[3].contains("`unsafe impl`"));
}

#[test]
fn the_real_workspace_never_lints_the_fixtures() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // Whatever the state of the tree, the fixtures' deliberate violations must not show up.
    let (_, violations) = lint(repo);
    assert!(
        violations.iter().all(|v| !v.contains("fixtures")),
        "{violations:#?}"
    );
}
