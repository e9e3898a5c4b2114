//! Compiles squib's seccomp filters (Firecracker's JSON format, `resources/seccomp/`) into
//! Firecracker's compiled format at build time, as Firecracker does; `src/seccomp` embeds the
//! result with `include_bytes!`.
//!
//! `x86_64-unknown-linux-gnu.json` defines every thread category and its actions. Any other
//! `*.json` there is a fragment that only adds rules to existing categories (an engine's own
//! syscalls, e.g. `io_uring.json`): its entries are appended to the base file's before compiling.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

#[allow(dead_code)]
#[path = "src/seccomp/bpf_file.rs"]
mod bpf_file;

const DIR: &str = "resources/seccomp";
const BASE: &str = "x86_64-unknown-linux-gnu.json";

fn main() {
    println!("cargo::rerun-if-changed={DIR}");
    let dir = Path::new(DIR);
    let read = |path: &Path| -> serde_json::Value {
        println!("cargo::rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut base = read(&dir.join(BASE));
    let mut fragments: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {DIR}: {e}"))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with(BASE))
        .collect();
    fragments.sort();
    for path in fragments {
        let fragment = read(&path);
        let categories = fragment
            .as_object()
            .unwrap_or_else(|| panic!("{}: not an object", path.display()));
        for (category, filter) in categories {
            let rules = filter["filter"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: `{category}` has no filter", path.display()));
            base[category]["filter"]
                .as_array_mut()
                .unwrap_or_else(|| {
                    panic!(
                        "{}: `{category}` is not a category of {BASE}",
                        path.display()
                    )
                })
                .extend(rules.iter().cloned());
        }
    }
    let merged = serde_json::to_vec(&base).expect("JSON serialises");
    let compiled =
        seccompiler::compile_from_json(merged.as_slice(), seccompiler::TargetArch::x86_64)
            .unwrap_or_else(|e| panic!("{DIR}: the filters do not compile: {e}"));
    let map: BTreeMap<String, Vec<seccompiler::sock_filter>> = compiled.into_iter().collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("seccomp.bpf");
    std::fs::write(&out, bpf_file::encode(&map))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
