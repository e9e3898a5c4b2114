//! squib's command line, parsed by hand (start-up time and binary size matter).
//!
//! ```text
//! squib --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N]
//!       [--disk PATH[,ro][,engine=sync|async|threads][,direct][,id=NAME][,cache=unsafe|writeback]]...
//!       [--boot-timer] [--boot-protocol auto|pvh|linux64]
//!       [--no-acpi] [--no-mptable] [--no-cmdline-devices]
//!       [--no-seccomp | --seccomp-filter FILE]   (taken out by `seccomp::take_flags` in `main`)
//! ```
//!
//! Every option also accepts `--name=value`. Errors are one line naming the problem.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::arch::x86_64::layout::MAX_VIRTIO_MMIO_SLOTS;
use crate::ids::check_resource_id;
use crate::vm_config::{
    BootSource, CacheType, DriveConfig, IoEngine, VmConfig, check_mem_size_mib, check_vcpu_count,
};

/// The usage text.
pub const USAGE: &str =
    "usage: squib --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--mem-mib N]
             [--disk PATH[,ro][,engine=sync|async|threads][,direct][,id=NAME][,cache=unsafe|writeback]]...
             [--boot-timer] [--boot-protocol auto|pvh|linux64]
             [--no-acpi] [--no-mptable] [--no-cmdline-devices]
             [--no-seccomp | --seccomp-filter FILE]";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Boot this microVM.
    Run(Box<VmConfig>),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// A command-line mistake, as one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses squib's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let mut config = VmConfig::default();
    let mut kernel: Option<PathBuf> = None;
    let mut initrd: Option<PathBuf> = None;
    let mut cmdline: Option<String> = None;

    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| usage(format!("argument {a:?} is not valid UTF-8")))?;
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<OsString, UsageError> {
            match &inline {
                Some(v) => Ok(v.into()),
                None => args
                    .next()
                    .ok_or_else(|| usage(format!("{name} needs a value"))),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--kernel" => set_once(
                &mut kernel,
                "--kernel",
                existing_path("--kernel", value()?)?,
            )?,
            "--initrd" => set_once(
                &mut initrd,
                "--initrd",
                existing_path("--initrd", value()?)?,
            )?,
            "--cmdline" => set_once(&mut cmdline, "--cmdline", utf8("--cmdline", value()?)?)?,
            "--vcpus" => config.machine.vcpu_count = parse_vcpus(&utf8("--vcpus", value()?)?)?,
            "--mem-mib" => config.machine.mem_size_mib = parse_mem(&utf8("--mem-mib", value()?)?)?,
            "--disk" => {
                let drive = parse_disk(&utf8("--disk", value()?)?, config.drives.len())?;
                config.drives.push(drive);
            }
            "--boot-timer" if inline.is_none() => config.boot_timer = true,
            "--boot-timer" => return Err(usage("--boot-timer takes no value")),
            "--boot-protocol" => {
                let text = utf8("--boot-protocol", value()?)?;
                config.boot_options.protocol = text
                    .parse()
                    .map_err(|e| usage(format!("--boot-protocol: {e}")))?;
            }
            flag @ ("--no-acpi" | "--no-mptable" | "--no-cmdline-devices") => {
                if inline.is_some() {
                    return Err(usage(format!("{flag} takes no value")));
                }
                let options = &mut config.boot_options;
                match flag {
                    "--no-acpi" => options.acpi = false,
                    "--no-mptable" => options.mptable = false,
                    _ => options.cmdline_devices = false,
                }
            }
            other if other.starts_with('-') => {
                return Err(usage(format!("unknown option {other}")));
            }
            other => return Err(usage(format!("unexpected argument {other:?}"))),
        }
    }

    let kernel = kernel.ok_or_else(|| usage("--kernel is required"))?;
    check_drives(&config.drives)?;
    config.boot = Some(BootSource {
        kernel_image_path: kernel,
        initrd_path: initrd,
        boot_args: cmdline,
    });
    Ok(Command::Run(Box::new(config)))
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UsageError> {
    if slot.replace(value).is_some() {
        return Err(usage(format!("{name} given twice")));
    }
    Ok(())
}

fn utf8(name: &str, value: OsString) -> Result<String, UsageError> {
    value
        .into_string()
        .map_err(|v| usage(format!("{name} {v:?} is not valid UTF-8")))
}

fn existing_path(name: &str, value: OsString) -> Result<PathBuf, UsageError> {
    let path = PathBuf::from(value);
    check_exists(name, &path)?;
    Ok(path)
}

fn check_exists(name: &str, path: &Path) -> Result<(), UsageError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            Err(usage(format!("{name} {} is a directory", path.display())))
        }
        Ok(_) => Ok(()),
        Err(err) => Err(usage(format!("{name} {}: {err}", path.display()))),
    }
}

fn parse_vcpus(text: &str) -> Result<u8, UsageError> {
    let n = text
        .parse::<u64>()
        .map_err(|_| usage(format!("--vcpus {text:?}: expected a number")))?;
    check_vcpu_count(n).map_err(|e| usage(format!("--vcpus {text:?}: {e}")))
}

fn parse_mem(text: &str) -> Result<usize, UsageError> {
    let n = text
        .parse::<u64>()
        .map_err(|_| usage(format!("--mem-mib {text:?}: expected a number")))?;
    check_mem_size_mib(n).map_err(|e| usage(format!("--mem-mib {text:?}: {e}")))
}

/// `PATH[,ro][,engine=sync|async|threads][,direct][,id=NAME][,cache=unsafe|writeback]`; `index` names the
/// drive (`disk0`, …) when no id is given.
fn parse_disk(spec: &str, index: usize) -> Result<DriveConfig, UsageError> {
    let mut parts = spec.split(',');
    let path = PathBuf::from(parts.next().unwrap_or_default());
    if path.as_os_str().is_empty() {
        return Err(usage(format!("--disk {spec:?}: the path is missing")));
    }
    check_exists("--disk", &path)?;
    let mut drive = DriveConfig {
        drive_id: format!("disk{index}"),
        path_on_host: path,
        is_read_only: false,
        is_root_device: false,
        partuuid: None,
        cache_type: CacheType::Unsafe,
        io_engine: IoEngine::Sync,
        direct: false,
        rate_limiter: None,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => drive.is_read_only = true,
            None if option == "direct" => drive.direct = true,
            Some(("engine", "sync")) => drive.io_engine = IoEngine::Sync,
            Some(("engine", "async")) => drive.io_engine = IoEngine::Async,
            Some(("engine", "threads")) => drive.io_engine = IoEngine::Threads,
            Some(("cache", "unsafe")) => drive.cache_type = CacheType::Unsafe,
            Some(("cache", "writeback")) => drive.cache_type = CacheType::Writeback,
            Some(("id", id)) => {
                check_resource_id(id).map_err(|e| usage(format!("--disk {spec:?}: {e}")))?;
                drive.drive_id = id.to_owned();
            }
            _ => return Err(usage(format!("--disk {spec:?}: unknown option {option:?}"))),
        }
    }
    Ok(drive)
}

fn check_drives(drives: &[DriveConfig]) -> Result<(), UsageError> {
    if drives.len() > MAX_VIRTIO_MMIO_SLOTS {
        return Err(usage(format!(
            "{} disks given: at most {MAX_VIRTIO_MMIO_SLOTS}",
            drives.len()
        )));
    }
    for (i, drive) in drives.iter().enumerate() {
        if drives[..i].iter().any(|d| d.drive_id == drive.drive_id) {
            return Err(usage(format!("disk id {:?} used twice", drive.drive_id)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for name in ["vmlinux", "initrd", "a.img", "b.img"] {
                std::fs::write(dir.path().join(name), b"x").unwrap();
            }
            Self { dir }
        }
        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
    }

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(args: &[&str]) -> VmConfig {
        match parse_strs(args).unwrap() {
            Command::Run(config) => *config,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        parse_strs(args).unwrap_err().to_string()
    }

    #[test]
    fn minimal_command_uses_defaults() {
        let f = Files::new();
        let config = run(&["--kernel", &f.path("vmlinux")]);
        let boot = config.boot.unwrap();
        assert_eq!(boot.kernel_image_path, PathBuf::from(f.path("vmlinux")));
        assert_eq!((boot.initrd_path, boot.boot_args), (None, None));
        assert_eq!(
            (config.machine.vcpu_count, config.machine.mem_size_mib),
            (1, 128)
        );
        assert!(config.drives.is_empty());
        assert!(!config.boot_timer);
    }

    #[test]
    fn every_option_is_understood() {
        let f = Files::new();
        let config = run(&[
            "--kernel",
            &f.path("vmlinux"),
            "--initrd",
            &f.path("initrd"),
            "--cmdline=console=ttyS0 quiet",
            "--vcpus",
            "4",
            "--mem-mib=256",
            "--disk",
            &f.path("a.img"),
            "--disk",
            &format!(
                "{},ro,engine=async,direct,id=data,cache=writeback",
                f.path("b.img")
            ),
            "--boot-timer",
        ]);
        let boot = config.boot.as_ref().unwrap();
        assert_eq!(boot.initrd_path, Some(PathBuf::from(f.path("initrd"))));
        assert_eq!(boot.boot_args.as_deref(), Some("console=ttyS0 quiet"));
        assert_eq!(
            (config.machine.vcpu_count, config.machine.mem_size_mib),
            (4, 256)
        );
        assert!(config.boot_timer);
        let [a, b] = &config.drives[..] else {
            panic!("two drives expected")
        };
        assert_eq!(
            (a.drive_id.as_str(), a.is_read_only, a.io_engine, a.direct),
            ("disk0", false, IoEngine::Sync, false)
        );
        assert_eq!(a.cache_type, CacheType::Unsafe);
        assert_eq!(
            (b.drive_id.as_str(), b.is_read_only, b.io_engine, b.direct),
            ("data", true, IoEngine::Async, true)
        );
        assert_eq!(b.cache_type, CacheType::Writeback);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn mistakes_are_named_in_one_line() {
        let f = Files::new();
        let k = f.path("vmlinux");
        let cases: &[(&[&str], &str)] = &[
            (&[], "--kernel is required"),
            (&["--kernel"], "--kernel needs a value"),
            (
                &["--kernel", "/nonexistent/vmlinux"],
                "--kernel /nonexistent/vmlinux: No such file",
            ),
            (&["--kernel", "/tmp"], "is a directory"),
            (&["--kernel", &k, "--kernel", &k], "--kernel given twice"),
            (
                &["--kernel", &k, "--vcpus", "0"],
                "--vcpus \"0\": vcpu_count must be between 1 and 32, got 0",
            ),
            (
                &["--kernel", &k, "--vcpus", "33"],
                "between 1 and 32, got 33",
            ),
            (
                &["--kernel", &k, "--vcpus", "-1"],
                "--vcpus \"-1\": expected a number",
            ),
            (&["--kernel", &k, "--mem-mib", "1"], "--mem-mib \"1\""),
            (
                &["--kernel", &k, "--mem-mib", "99999999999999999999"],
                "--mem-mib",
            ),
            (&["--kernel", &k, "--disk", ""], "the path is missing"),
            (
                &["--kernel", &k, "--disk", "/nonexistent.img"],
                "--disk /nonexistent.img",
            ),
            (
                &["--kernel", &k, "--disk", &format!("{},rw", f.path("a.img"))],
                "unknown option \"rw\"",
            ),
            (
                &[
                    "--kernel",
                    &k,
                    "--disk",
                    &format!("{},engine=uring", f.path("a.img")),
                ],
                "engine=uring",
            ),
            (
                &[
                    "--kernel",
                    &k,
                    "--disk",
                    &format!("{},id=a b", f.path("a.img")),
                ],
                "API Resource IDs can only contain",
            ),
            (
                &[
                    "--kernel",
                    &k,
                    "--disk",
                    &format!("{},id=x", f.path("a.img")),
                    "--disk",
                    &format!("{},id=x", f.path("b.img")),
                ],
                "disk id \"x\" used twice",
            ),
            (
                &["--kernel", &k, "--frobnicate"],
                "unknown option --frobnicate",
            ),
            (&["--kernel", &k, "extra"], "unexpected argument \"extra\""),
            (
                &["--kernel", &k, "--boot-timer=yes"],
                "--boot-timer takes no value",
            ),
        ];
        for (args, expected) in cases {
            let message = err(args);
            assert!(
                message.contains(expected),
                "{args:?}: {message:?} lacks {expected:?}"
            );
            assert!(
                !message.contains('\n'),
                "{args:?}: not one line: {message:?}"
            );
        }
    }

    #[test]
    fn too_many_disks_are_refused() {
        let f = Files::new();
        let k = f.path("vmlinux");
        let disk = f.path("a.img");
        let mut args = vec!["--kernel", &k];
        let specs: Vec<String> = (0..=MAX_VIRTIO_MMIO_SLOTS)
            .map(|i| format!("{disk},id=d{i}"))
            .collect();
        for spec in &specs {
            args.extend(["--disk", spec.as_str()]);
        }
        assert!(err(&args).contains("disks given"));
    }
}
