//! `cargo xtask snapshot-merge BASE DIFF`: applies a Diff snapshot's memory file onto the
//! memory file of the snapshot it was taken after, in place. The merged BASE then goes with
//! the Diff's state file (`/snapshot/load`), exactly as Firecracker's `rebase-snap` tool does.

use std::fs::{File, OpenOptions};

pub fn merge(args: &[String]) -> Result<(), String> {
    let [base, diff] = args else {
        return Err("usage: cargo xtask snapshot-merge BASE_MEM_FILE DIFF_MEM_FILE".into());
    };
    let src = File::open(diff).map_err(|e| format!("cannot open {diff}: {e}"))?;
    let dst = OpenOptions::new()
        .write(true)
        .open(base)
        .map_err(|e| format!("cannot open {base}: {e}"))?;
    let copied = squib_host::sparse::copy_data(&src, &dst)
        .map_err(|e| format!("cannot merge {diff} onto {base}: {e}"))?;
    println!("merged {copied} bytes of {diff} onto {base}");
    Ok(())
}
