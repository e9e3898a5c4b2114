//! `cargo xtask guest-kernel`: Debian's cloud kernel as an ELF `vmlinux`, plus an initramfs
//! that loads the virtio-mmio block driver, reads `/dev/vda` back and powers off.
//!
//! Steps (results cached under `target/guest-kernel/`; `--force` redoes them):
//! 1. resolve the current ABI with `apt-cache depends linux-image-cloud-amd64` (after
//!    `apt-get update` if the lists are empty), `apt-get download` it and `busybox-static`,
//!    unpack both with `dpkg-deb -x`;
//! 2. take the compressed payload out of the bzImage and decompress it (LZ4 legacy frames for
//!    6.1, zstd for 6.12) into the ELF `vmlinux`;
//! 3. write a `newc` cpio with busybox, the virtio modules (decompressed if shipped as `.ko.xz`
//!    or `.ko.zst`), `/dev/console` and [`INIT_SCRIPT`].
//!
//! `/init` prints `SQUIB-LINUX-INIT-OK` once the modules are loaded and `/dev/vda` exists, then
//! `squib-init: read back: <text>` with the contents of `squib-check.txt` on the ext4 filesystem
//! on `/dev/vda`, then powers off. The last two lines printed are the vmlinux path and the
//! initramfs path.

use std::path::Path;
use std::process::Command;

use crate::{bzimage, setup};

/// The virtio modules `/init` loads, in dependency order.
const MODULES: [&str; 4] = ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"];

/// `/init`: busybox sh. Built-in drivers simply have no `.ko` in the image.
const INIT_SCRIPT: &str = r#"#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /mnt
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_mmio virtio_blk; do
    if [ -f /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko || echo "squib-init: insmod $m failed"; fi
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
echo "SQUIB-LINUX-INIT-OK"
if mount -t ext4 -o ro /dev/vda /mnt; then
    echo "squib-init: read back: $(cat /mnt/squib-check.txt)"
else
    echo "squib-init: cannot mount /dev/vda"
fi
poweroff -f
"#;

/// Runs the task: `[--force]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let force = match args {
        [] => false,
        [flag] if flag == "--force" => true,
        _ => return Err("usage: cargo xtask guest-kernel [--force]".into()),
    };
    let out = setup::workspace().join("target/guest-kernel");
    let (vmlinux, initramfs) = (out.join("vmlinux"), out.join("initramfs.cpio"));
    if force || !vmlinux.exists() || !initramfs.exists() {
        build(&out, &vmlinux, &initramfs)?;
    } else {
        eprintln!("guest-kernel: cached in {}", out.display());
    }
    println!("{}", vmlinux.display());
    println!("{}", initramfs.display());
    Ok(())
}

fn build(out: &Path, vmlinux: &Path, initramfs: &Path) -> Result<(), String> {
    let debs = out.join("debs");
    let root = out.join("root");
    for dir in [&debs, &root] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let image_pkg = resolve_kernel_package()?;
    eprintln!("guest-kernel: downloading {image_pkg} and busybox-static");
    setup::run_command(
        Command::new("apt-get")
            .args(["download", "-q", &image_pkg, "busybox-static"])
            .current_dir(&debs),
    )?;
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let deb = entry.map_err(|e| e.to_string())?.path();
        setup::run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }

    let abi = image_pkg.trim_start_matches("linux-image-");
    let bz = root.join(format!("boot/vmlinuz-{abi}"));
    let image = std::fs::read(&bz).map_err(|e| format!("{}: {e}", bz.display()))?;
    let elf = payload::decompress(
        bzimage::payload(&image).map_err(|e| format!("{}: {e}", bz.display()))?,
    )
    .map_err(|e| format!("{}: {e}", bz.display()))?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(format!(
            "{}: the decompressed payload is not an ELF vmlinux",
            bz.display()
        ));
    }
    write(vmlinux, &elf)?;

    let mut cpio = cpio::Archive::default();
    for dir in ["bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())
        .ok_or("busybox-static did not contain bin/busybox")?;
    cpio.file("bin/busybox", 0o755, &read(&busybox)?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let modules_dir = root.join(format!("lib/modules/{abi}"));
    for module in MODULES {
        if let Some(bytes) = find_module(&modules_dir, module)? {
            cpio.file(&format!("lib/modules/{module}.ko"), 0o644, &bytes);
        }
    }
    write(initramfs, &cpio.finish())?;
    eprintln!(
        "guest-kernel: {abi}: vmlinux {} bytes, initramfs ready",
        elf.len()
    );
    Ok(())
}

/// `linux-image-<abi>-cloud-amd64`, the package the metapackage currently depends on.
fn resolve_kernel_package() -> Result<String, String> {
    let depends = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .map(str::to_owned)
    };
    if let Some(pkg) = depends() {
        return Ok(pkg);
    }
    eprintln!("guest-kernel: package lists empty or stale, running apt-get update");
    setup::run_command(Command::new("apt-get").args(["update", "-q"]))?;
    depends().ok_or_else(|| {
        "apt-cache cannot resolve linux-image-cloud-amd64 (no Debian archive?)".into()
    })
}

/// The module's bytes, decompressed; `None` if the kernel has it built in.
fn find_module(modules_dir: &Path, name: &str) -> Result<Option<Vec<u8>>, String> {
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    if builtin
        .lines()
        .any(|l| l.rsplit('/').next() == Some(&format!("{name}.ko")))
    {
        return Ok(None);
    }
    let dirs = ["kernel/drivers/virtio", "kernel/drivers/block"];
    for dir in dirs {
        let base = modules_dir.join(dir).join(format!("{name}.ko"));
        if base.exists() {
            return read(&base).map(Some);
        }
        let zst = base.with_extension("ko.zst");
        if zst.exists() {
            return payload::zstd(&read(&zst)?).map(Some);
        }
        let xz = base.with_extension("ko.xz");
        if xz.exists() {
            // xz-utils is part of every Debian system; no pure-Rust decoder earns a dependency.
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .map_err(|e| format!("xz: {e}"))?;
            if !out.status.success() {
                return Err(format!("xz -dc {} failed", xz.display()));
            }
            return Ok(Some(out.stdout));
        }
    }
    Err(format!(
        "module {name} is neither built in nor in {}",
        modules_dir.display()
    ))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Kernel payload codecs.
mod payload {
    use std::io::Read;

    const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
    const ZSTD_MAGIC: u32 = 0xfd2f_b528;
    /// LZ4 legacy frames hold blocks of at most 8 MiB decompressed.
    const LZ4_LEGACY_BLOCK: usize = 8 << 20;

    /// Decompresses a kernel payload by its magic.
    pub fn decompress(payload: &[u8]) -> Result<Vec<u8>, String> {
        let magic = payload
            .get(..4)
            .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
        match magic {
            Some(LZ4_LEGACY_MAGIC) => lz4_legacy(payload),
            Some(ZSTD_MAGIC) => zstd(payload),
            Some(other) => Err(format!(
                "unsupported kernel compression (magic {other:#010x})"
            )),
            None => Err("empty kernel payload".into()),
        }
    }

    /// LZ4 legacy format: the magic, then blocks of `u32 size` + compressed bytes. The kernel
    /// appends the decompressed size, so a "block" that runs past the end ends the stream.
    pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
        let mut pos = 4;
        while let Some(size) = data.get(pos..pos + 4) {
            let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
            if size == LZ4_LEGACY_MAGIC {
                pos += 4; // concatenated frame
                continue;
            }
            let Some(input) = data.get(pos + 4..pos + 4 + size as usize) else {
                break;
            };
            let n = lz4_flex::block::decompress_into(input, &mut block)
                .map_err(|e| format!("LZ4: {e}"))?;
            out.extend_from_slice(&block[..n]);
            pos += 4 + size as usize;
        }
        if out.is_empty() {
            return Err("LZ4: no block decompressed".into());
        }
        Ok(out)
    }

    /// One zstd frame (trailing bytes, such as the kernel's size word, are ignored).
    pub fn zstd(mut data: &[u8]) -> Result<Vec<u8>, String> {
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut data).map_err(|e| format!("zstd: {e}"))?;
        let mut out = Vec::new();
        decoder
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd: {e}"))?;
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lz4_legacy_frames_with_the_kernels_size_trailer() {
            let text: Vec<u8> = b"squib vmlinux "
                .iter()
                .cycle()
                .take(100_000)
                .copied()
                .collect();
            let block = lz4_flex::block::compress(&text);
            let mut stream = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
            for _ in 0..2 {
                stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
                stream.extend_from_slice(&block);
            }
            stream.extend_from_slice(&(2 * text.len() as u32).to_le_bytes());
            let out = decompress(&stream).unwrap();
            assert_eq!(out.len(), 2 * text.len());
            assert_eq!(&out[..text.len()], &text[..]);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic() {
            assert!(decompress(&[]).is_err());
            assert!(
                decompress(b"\x1f\x8b\x08\x00")
                    .unwrap_err()
                    .contains("unsupported")
            );
            let mut bad = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
            bad.extend_from_slice(&4u32.to_le_bytes());
            bad.extend_from_slice(&[0xff; 4]);
            assert!(decompress(&bad).is_err());
            assert!(decompress(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]).is_err());
        }
    }
}

/// A `newc` ("070701") cpio archive, the format the kernel unpacks as an initramfs.
mod cpio {
    const S_IFDIR: u32 = 0o040_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFLNK: u32 = 0o120_000;
    const S_IFCHR: u32 = 0o020_000;

    /// Entries appended in order; `finish` adds the trailer.
    #[derive(Debug, Default)]
    pub struct Archive {
        bytes: Vec<u8>,
        next_inode: u32,
    }

    impl Archive {
        pub fn dir(&mut self, name: &str) {
            self.entry(name, S_IFDIR | 0o755, 2, (0, 0), &[]);
        }

        pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
            self.entry(name, S_IFREG | perm, 1, (0, 0), data);
        }

        pub fn symlink(&mut self, name: &str, target: &str) {
            self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
        }

        pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
            self.entry(name, S_IFCHR | 0o600, 1, (major, minor), &[]);
        }

        pub fn finish(mut self) -> Vec<u8> {
            self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
            self.bytes
        }

        fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
            self.next_inode += 1;
            let fields = [
                self.next_inode,
                mode,
                0, // uid
                0, // gid
                nlink,
                0, // mtime
                data.len() as u32,
                0, // devmajor
                0, // devminor
                rdev.0,
                rdev.1,
                name.len() as u32 + 1,
                0, // check
            ];
            self.bytes.extend_from_slice(b"070701");
            for field in fields {
                self.bytes
                    .extend_from_slice(format!("{field:08x}").as_bytes());
            }
            self.bytes.extend_from_slice(name.as_bytes());
            self.bytes.push(0);
            self.pad();
            self.bytes.extend_from_slice(data);
            self.pad();
        }

        /// Header + name and data are each padded to 4 bytes.
        fn pad(&mut self) {
            self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Parses an archive back into (name, mode, rdev major, data).
        fn parse(mut bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
            let mut out = Vec::new();
            let start = bytes.len();
            loop {
                assert_eq!(&bytes[..6], b"070701");
                let field = |i: usize| {
                    u32::from_str_radix(
                        std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap(),
                        16,
                    )
                    .unwrap()
                };
                let (mode, size, rmajor, namesize) =
                    (field(1), field(6) as usize, field(9), field(11) as usize);
                let name = String::from_utf8(bytes[110..110 + namesize - 1].to_vec()).unwrap();
                let data_at = (110 + namesize).next_multiple_of(4);
                let data = bytes[data_at..data_at + size].to_vec();
                bytes = &bytes[(data_at + size).next_multiple_of(4)..];
                assert_eq!((start - bytes.len()) % 4, 0);
                if name == "TRAILER!!!" {
                    assert!(bytes.is_empty());
                    return out;
                }
                out.push((name, mode, rmajor, data));
            }
        }

        #[test]
        fn entries_round_trip_through_the_newc_layout() {
            let mut a = Archive::default();
            a.dir("bin");
            a.file("init", 0o755, b"#!/bin/sh\n");
            a.symlink("bin/sh", "busybox");
            a.char_device("dev/console", 5, 1);
            let entries = parse(&a.finish());
            assert_eq!(entries.len(), 4);
            assert_eq!(entries[0].1, S_IFDIR | 0o755);
            assert_eq!(
                (entries[1].0.as_str(), entries[1].3.as_slice()),
                ("init", &b"#!/bin/sh\n"[..])
            );
            assert_eq!(
                (entries[2].1, entries[2].3.as_slice()),
                (S_IFLNK | 0o777, &b"busybox"[..])
            );
            assert_eq!((entries[3].1 & 0o170_000, entries[3].2), (S_IFCHR, 5));
        }
    }
}
