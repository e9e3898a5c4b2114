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
//! Every option also accepts `--name=value`. The flags become the [`VmmAction`]s the API would
//! take for the same microVM (see [`CliRun`]), so their values are validated by `VmResources`,
//! like every other front end's. Errors are one line naming the flag and the problem.

use std::ffi::OsString;

use crate::api::action::VmmAction;
use crate::api::models::{BootSourceBody, DriveBody, MachineConfigBody};
use crate::api::resources::VmResources;
use crate::arch::x86_64::layout::MAX_VIRTIO_MMIO_SLOTS;
use crate::vm_config::{BootOptions, CacheType, IoEngine};

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
    Run(Box<CliRun>),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// A microVM described on the command line. The flags become the API requests that would
/// describe the same microVM, applied by the same [`VmResources`] (so a path, a size or an id is
/// validated once, in one place, whichever front end gave it); what the API cannot say (the boot
/// timer, the boot options) travels beside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliRun {
    /// Each action with the flag it came from, for error messages.
    actions: Vec<(String, VmmAction)>,
    /// `--boot-timer`.
    pub boot_timer: bool,
    /// `--boot-protocol`, `--no-acpi`, `--no-mptable`, `--no-cmdline-devices`.
    pub boot_options: BootOptions,
}

impl CliRun {
    /// The actions in the order they apply, each with the flag it came from.
    pub fn actions(&self) -> impl Iterator<Item = (&str, &VmmAction)> {
        self.actions.iter().map(|(flag, a)| (flag.as_str(), a))
    }

    /// Applies the actions to `resources`; a refusal names the flag.
    pub fn configure(&self, resources: &mut VmResources) -> Result<(), UsageError> {
        for (flag, action) in self.actions() {
            resources
                .apply(action)
                .map_err(|e| usage(format!("{flag}: {e}")))?;
        }
        Ok(())
    }
}

/// A command-line mistake, as one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// A mistake, said in one line.
pub fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses squib's arguments (without the program name). Only the syntax is checked here; the
/// values are checked when the actions are applied.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let mut kernel: Option<String> = None;
    let mut initrd: Option<String> = None;
    let mut cmdline: Option<String> = None;
    let mut machine: Vec<(String, VmmAction)> = Vec::new();
    let mut drives: Vec<(String, DriveBody)> = Vec::new();
    let mut boot_timer = false;
    let mut boot_options = BootOptions::default();

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
        let mut value = || -> Result<String, UsageError> {
            let value = match &inline {
                Some(v) => v.into(),
                None => args
                    .next()
                    .ok_or_else(|| usage(format!("{name} needs a value")))?,
            };
            value
                .into_string()
                .map_err(|v| usage(format!("{name} {v:?} is not valid UTF-8")))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--kernel" => set_once(&mut kernel, "--kernel", value()?)?,
            "--initrd" => set_once(&mut initrd, "--initrd", value()?)?,
            "--cmdline" => set_once(&mut cmdline, "--cmdline", value()?)?,
            flag @ ("--vcpus" | "--mem-mib") => {
                let text = value()?;
                let n = Some(number(flag, &text)?);
                let body = if flag == "--vcpus" {
                    MachineConfigBody {
                        vcpu_count: n,
                        ..MachineConfigBody::default()
                    }
                } else {
                    MachineConfigBody {
                        mem_size_mib: n,
                        ..MachineConfigBody::default()
                    }
                };
                machine.push((
                    format!("{flag} {text:?}"),
                    VmmAction::PatchMachineConfig(body),
                ));
            }
            "--disk" => {
                let spec = value()?;
                let drive = parse_disk(&spec, drives.len())?;
                drives.push((format!("--disk {spec}"), drive));
            }
            "--boot-timer" if inline.is_none() => boot_timer = true,
            "--boot-timer" => return Err(usage("--boot-timer takes no value")),
            "--boot-protocol" => {
                boot_options.protocol = value()?
                    .parse()
                    .map_err(|e| usage(format!("--boot-protocol: {e}")))?;
            }
            flag @ ("--no-acpi" | "--no-mptable" | "--no-cmdline-devices") => {
                if inline.is_some() {
                    return Err(usage(format!("{flag} takes no value")));
                }
                match flag {
                    "--no-acpi" => boot_options.acpi = false,
                    "--no-mptable" => boot_options.mptable = false,
                    _ => boot_options.cmdline_devices = false,
                }
            }
            other if other.starts_with('-') => {
                return Err(usage(format!("unknown option {other}")));
            }
            other => return Err(usage(format!("unexpected argument {other:?}"))),
        }
    }

    let kernel = kernel.ok_or_else(|| usage("--kernel is required"))?;
    check_drive_ids(&drives)?;
    // The boot source is named by the flag of whichever of its files a refusal is about.
    let boot = BootSourceBody {
        kernel_image_path: kernel.clone(),
        boot_args: cmdline,
        initrd_path: initrd.clone(),
    };
    let boot_flag = match initrd {
        Some(initrd) => format!("--kernel {kernel} / --initrd {initrd}"),
        None => format!("--kernel {kernel}"),
    };
    let mut actions = vec![(boot_flag, VmmAction::PutBootSource(boot))];
    actions.extend(machine);
    actions.extend(
        drives
            .into_iter()
            .map(|(flag, d)| (flag, VmmAction::PutDrive(d.drive_id.clone(), d))),
    );
    Ok(Command::Run(Box::new(CliRun {
        actions,
        boot_timer,
        boot_options,
    })))
}

fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UsageError> {
    if slot.replace(value).is_some() {
        return Err(usage(format!("{name} given twice")));
    }
    Ok(())
}

fn number(name: &str, text: &str) -> Result<u64, UsageError> {
    text.parse::<u64>()
        .map_err(|_| usage(format!("{name} {text:?}: expected a number")))
}

/// `PATH[,ro][,engine=sync|async|threads][,direct][,id=NAME][,cache=unsafe|writeback]`; `index`
/// names the drive (`disk0`, …) when no id is given.
fn parse_disk(spec: &str, index: usize) -> Result<DriveBody, UsageError> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(usage(format!("--disk {spec:?}: the path is missing")));
    }
    let mut drive = DriveBody {
        drive_id: format!("disk{index}"),
        path_on_host: Some(path.to_owned()),
        is_read_only: Some(false),
        cache_type: Some(CacheType::Unsafe),
        io_engine: Some(IoEngine::Sync),
        ..DriveBody::default()
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => drive.is_read_only = Some(true),
            None if option == "direct" => drive.direct = true,
            Some(("engine", "sync")) => drive.io_engine = Some(IoEngine::Sync),
            Some(("engine", "async")) => drive.io_engine = Some(IoEngine::Async),
            Some(("engine", "threads")) => drive.io_engine = Some(IoEngine::Threads),
            Some(("cache", "unsafe")) => drive.cache_type = Some(CacheType::Unsafe),
            Some(("cache", "writeback")) => drive.cache_type = Some(CacheType::Writeback),
            Some(("id", id)) => drive.drive_id = id.to_owned(),
            _ => return Err(usage(format!("--disk {spec:?}: unknown option {option:?}"))),
        }
    }
    Ok(drive)
}

/// On the command line a repeated id is a mistake, not the API's replacement.
fn check_drive_ids(drives: &[(String, DriveBody)]) -> Result<(), UsageError> {
    if drives.len() > MAX_VIRTIO_MMIO_SLOTS {
        return Err(usage(format!(
            "{} disks given: at most {MAX_VIRTIO_MMIO_SLOTS}",
            drives.len()
        )));
    }
    for (i, (_, drive)) in drives.iter().enumerate() {
        if drives[..i]
            .iter()
            .any(|(_, d)| d.drive_id == drive.drive_id)
        {
            return Err(usage(format!("disk id {:?} used twice", drive.drive_id)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::vm_config::VmConfig;

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

    /// The microVM the command line describes, as the VMM would get it.
    fn configure(args: &[&str]) -> Result<VmConfig, UsageError> {
        match parse_strs(args)? {
            Command::Run(run) => {
                let mut resources = VmResources::default();
                run.configure(&mut resources)?;
                Ok(resources
                    .vm_config(run.boot_timer, run.boot_options)
                    .unwrap())
            }
            other => panic!("expected a run, got {other:?}"),
        }
    }

    fn run(args: &[&str]) -> VmConfig {
        configure(args).unwrap()
    }

    fn err(args: &[&str]) -> String {
        configure(args).unwrap_err().to_string()
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
                "--kernel /nonexistent/vmlinux: cannot use kernel_image_path \
                 `/nonexistent/vmlinux`: No such file",
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
    fn flags_are_the_api_requests_for_the_same_microvm() {
        let f = Files::new();
        let disk = f.path("b.img");
        let Command::Run(run) = parse_strs(&[
            "--kernel",
            &f.path("vmlinux"),
            "--cmdline",
            "console=ttyS0",
            "--vcpus",
            "2",
            "--disk",
            &format!("{disk},ro,id=data,cache=writeback,engine=async"),
        ])
        .unwrap() else {
            panic!("expected a run")
        };
        let actions: Vec<&VmmAction> = run.actions().map(|(_, a)| a).collect();
        let api = |method: &str, path: &str, body: String| {
            crate::api::router::route(method, path, body.as_bytes()).unwrap()
        };
        let expected = [
            api(
                "PUT",
                "/boot-source",
                format!(
                    r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
                    f.path("vmlinux")
                ),
            ),
            api("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#.into()),
            api(
                "PUT",
                "/drives/data",
                format!(
                    r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false,
                        "is_read_only": true, "cache_type": "Writeback", "io_engine": "Async"}}"#
                ),
            ),
        ];
        assert_eq!(actions, expected.iter().collect::<Vec<_>>());
    }

    #[test]
    fn paths_are_checked_as_the_api_checks_them() {
        // The API's check opens without blocking and refuses what is not a regular file: a FIFO
        // as the kernel is refused at once instead of hanging the start on `open`.
        let f = Files::new();
        let fifo = f.dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let fifo = fifo.display().to_string();
        let message = err(&["--kernel", &fifo]);
        assert!(
            message.starts_with(&format!("--kernel {fifo}: cannot use kernel_image_path")),
            "{message}"
        );
        let mut resources = VmResources::default();
        let body = BootSourceBody {
            kernel_image_path: fifo.clone(),
            ..BootSourceBody::default()
        };
        let api = resources
            .apply(&VmmAction::PutBootSource(body))
            .unwrap_err()
            .to_string();
        assert!(message.ends_with(&api), "{message} vs the API's {api}");
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
