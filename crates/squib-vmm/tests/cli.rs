//! Bad command lines: one line naming the problem (then the usage), Firecracker's bad-arguments
//! status 153, no VM.
#![forbid(unsafe_code)]

mod common;

use std::time::Duration;

fn usage_error(args: &[&str]) -> String {
    let output = common::run_squib(args, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(153), "{args:?}: {output:?}");
    assert!(output.stdout.is_empty(), "{args:?}: printed on stdout");
    let stderr = common::stderr(&output);
    let first = stderr.lines().next().unwrap_or_default().to_owned();
    assert!(first.starts_with("squib: "), "{args:?}: {stderr:?}");
    assert!(
        stderr
            .lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("usage: squib"),
        "{stderr:?}"
    );
    first
}

#[test]
fn missing_values_are_named() {
    assert_eq!(usage_error(&["--kernel"]), "squib: --kernel needs a value");
    let kernel = std::env::current_exe().unwrap();
    let kernel = kernel.to_str().unwrap();
    assert_eq!(
        usage_error(&["--kernel", kernel, "--disk"]),
        "squib: --disk needs a value"
    );
}

#[test]
fn nonexistent_paths_are_named() {
    let line = usage_error(&["--kernel", "/nonexistent/vmlinux"]);
    assert!(
        line.contains("/nonexistent/vmlinux") && line.contains("No such file"),
        "{line}"
    );
    let kernel = std::env::current_exe().unwrap();
    let kernel = kernel.to_str().unwrap();
    let line = usage_error(&["--kernel", kernel, "--disk", "/nonexistent/disk.img,ro"]);
    assert!(line.contains("--disk /nonexistent/disk.img"), "{line}");
}

#[test]
fn bad_sizes_and_combinations_are_named() {
    let kernel = std::env::current_exe().unwrap();
    let kernel = kernel.to_str().unwrap();
    assert!(usage_error(&["--kernel", kernel, "--vcpus", "64"]).contains("--vcpus \"64\""));
    assert!(usage_error(&["--kernel", kernel, "--mem-mib", "lots"]).contains("--mem-mib \"lots\""));
    assert!(usage_error(&["--kernel", kernel, "--kernel", kernel]).contains("given twice"));
    assert!(usage_error(&["--kernel", kernel, "--bogus"]).contains("unknown option --bogus"));
}

#[test]
fn help_prints_the_version_then_both_usages() {
    let kernel = std::env::current_exe().unwrap();
    let kernel = kernel.to_str().unwrap();
    for args in [&["--help"][..], &["--kernel", kernel, "--help"]] {
        let output = common::run_squib(args, Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(0));
        let out = common::stdout(&output);
        assert!(out.starts_with("Firecracker v1.16.0 (squib "), "{out}");
        assert!(out.contains("usage: squib --kernel PATH"), "{out}");
        assert!(out.contains("usage: squib [--api-sock PATH]"), "{out}");
    }
}
