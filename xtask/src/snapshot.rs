//! Snapshot tools. `cargo xtask snapshot-merge BASE DIFF` applies a Diff snapshot's memory file onto the
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

/// `cargo xtask snapshot-uffd-handler SOCKET MEM_FILE`: an example page-fault handler for
/// `/snapshot/load` with `"backend_type": "Uffd"`. It listens on SOCKET, takes one VMM's
/// handshake (Firecracker's: a JSON array of `GuestRegionUffdMapping` and the userfaultfd),
/// and serves every missing page from MEM_FILE until the VMM goes away. Handlers written for
/// Firecracker speak the same protocol.
pub fn uffd_handler(args: &[String]) -> Result<(), String> {
    let [socket, mem_file] = args else {
        return Err("usage: cargo xtask snapshot-uffd-handler SOCKET MEM_FILE".into());
    };
    let file = File::open(mem_file).map_err(|e| format!("cannot open {mem_file}: {e}"))?;
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {socket}: {e}"))?;
    println!("listening on {socket}");
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("accept on {socket}: {e}"))?;
    let (message, uffd) = squib_host::uffd::receive(&stream, 64 << 10)
        .map_err(|e| format!("handshake on {socket}: {e}"))?;
    let regions = parse_mappings(&message)?;
    // The VMM's end of the connection closes when it exits; the userfaultfd alone would not
    // tell (reads just block), so a watcher thread ends the handler then.
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while matches!(std::io::Read::read(&mut &stream, &mut byte), Ok(n) if n > 0) {}
        println!("the VMM closed its connection: stopping");
        std::process::exit(0);
    });
    let mut page = vec![0u8; 4096];
    let mut served = 0u64;
    loop {
        let fault = match uffd.next_fault() {
            Ok(Some(address)) => address,
            Ok(None) => continue,
            Err(e) => {
                // The VMM exited (or closed the descriptor): done.
                println!("served {served} pages; stopping: {e}");
                return Ok(());
            }
        };
        let Some(region) = regions
            .iter()
            .find(|r| fault >= r.base && fault - r.base < r.size)
        else {
            return Err(format!("fault at {fault:#x} outside every region"));
        };
        let page_addr = fault & !(region.page_size - 1);
        page.resize(region.page_size as usize, 0);
        let offset = region.offset + (page_addr - region.base);
        // Holes of the sparse memory file read as zeros, as they should.
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut page, offset)
            .map_err(|e| format!("read {mem_file} at {offset:#x}: {e}"))?;
        uffd.copy(page_addr, &page)
            .map_err(|e| format!("UFFDIO_COPY at {page_addr:#x}: {e}"))?;
        served += 1;
    }
}

struct Region {
    base: u64,
    size: u64,
    offset: u64,
    page_size: u64,
}

fn parse_mappings(message: &[u8]) -> Result<Vec<Region>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(message).map_err(|e| format!("handshake JSON: {e}"))?;
    let field = |m: &serde_json::Value, name: &str| {
        m[name]
            .as_u64()
            .ok_or_else(|| format!("handshake: mapping without `{name}`: {m}"))
    };
    value
        .as_array()
        .ok_or("handshake: not a JSON array")?
        .iter()
        .map(|m| {
            let page_size = field(m, "page_size").or_else(|_| field(m, "page_size_kib"))?;
            if !page_size.is_power_of_two() {
                return Err(format!("handshake: page size {page_size}"));
            }
            Ok(Region {
                base: field(m, "base_host_virt_addr")?,
                size: field(m, "size")?,
                offset: field(m, "offset")?,
                page_size,
            })
        })
        .collect()
}
