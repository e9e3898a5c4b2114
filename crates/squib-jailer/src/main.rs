//! `squib-jailer`: Firecracker's jailer for squib. It builds a chroot at
//! `<chroot base>/<exec file name>/<id>/root` holding a copy of the VMM binary and the device
//! nodes it needs, puts the process in its cgroups and namespaces, limits its resources, closes
//! every inherited descriptor, drops to `--uid`/`--gid` and execs the VMM with `--id` and the
//! timing flags. The order of the steps is Firecracker's (docs/security.md); every syscall is
//! behind `squib_host::jail`.
#![forbid(unsafe_code)]

mod args;
mod cgroup;

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use squib_host::jail::{self, Forked};

use args::{JailerArgs, Parsed};

/// Exit status for any failure (Firecracker's jailer exits 1 on bad arguments, panics on a failed
/// step; one status and one line for both is easier to handle).
const STATUS_ERROR: u8 = 1;

/// The device nodes created in the jail: path, major, minor (fixed kernel numbers).
const DEVICES: [(&str, u32, u32); 3] = [
    ("dev/kvm", 10, 232),
    ("dev/net/tun", 10, 200),
    ("dev/urandom", 1, 9),
];

/// Why the jail could not be built.
#[derive(Debug, thiserror::Error)]
enum JailError {
    /// A step failed on a path.
    #[error("{what} {path}: {source}")]
    Path {
        /// The step.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A step failed.
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// cgroup set-up failed.
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |source| JailError::Path {
        what,
        path: path.to_owned(),
        source,
    }
}

fn step(what: &'static str) -> impl FnOnce(io::Error) -> JailError {
    move |source| JailError::Step { what, source }
}

/// Timestamps taken first thing, handed to the VMM.
#[derive(Clone, Copy, Debug)]
struct StartTimes {
    wall_us: u64,
    cpu_us: u64,
}

fn main() -> ExitCode {
    let start = StartTimes {
        wall_us: jail::monotonic_us().unwrap_or(0),
        cpu_us: jail::process_cpu_time_us().unwrap_or(0),
    };
    let raw: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = match args::parse(&raw) {
        Ok(Parsed::Run(args)) => args,
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("squib-jailer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("squib-jailer: {err}\n{}", args::USAGE);
            return ExitCode::from(STATUS_ERROR);
        }
    };
    // Only returns on failure: success ends in exec (or the parent's exit with --new-pid-ns).
    let err = run(&args, start);
    eprintln!("squib-jailer: {err}");
    ExitCode::from(STATUS_ERROR)
}

fn run(args: &JailerArgs, start: StartTimes) -> JailError {
    match build_and_exec(args, start) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn build_and_exec(
    args: &JailerArgs,
    start: StartTimes,
) -> Result<std::convert::Infallible, JailError> {
    // Nothing inherited reaches the VMM but stdin, stdout and stderr.
    jail::close_fds_above_stdio().map_err(step("close_range"))?;

    let chroot = args.chroot_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&chroot)
        .map_err(at("create", &chroot))?;
    let exec_in_jail = chroot.join(&args.exec_name);
    fs::copy(&args.exec_file, &exec_in_jail).map_err(at("copy the VMM to", &exec_in_jail))?;
    fs::set_permissions(&exec_in_jail, fs::Permissions::from_mode(0o755))
        .map_err(at("chmod", &exec_in_jail))?;

    for &(resource, value) in &args.limits {
        jail::set_rlimit(resource, value).map_err(step("setrlimit"))?;
    }

    cgroup::place(
        args.cgroup_version,
        &args.parent_cgroup,
        &args.id,
        &args.cgroups,
        args.parent_cgroup_given && args.cgroup_version == args::CgroupVersion::V2,
        std::process::id(),
    )?;

    if let Some(netns) = &args.netns {
        let ns = File::open(netns).map_err(at("open the network namespace", netns))?;
        jail::setns(ns.as_fd(), libc::CLONE_NEWNET)
            .map_err(at("join the network namespace", netns))?;
    }
    let dev_null = if args.daemonize {
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(step("open /dev/null"))?,
        )
    } else {
        None
    };

    // The new PID namespace's first process is forked here, before the chroot rather than
    // after it as in Firecracker (`fork` checks the process is single-threaded through /proc,
    // which the jail does not have); the child builds the jail. Nothing else differs.
    let mut parent_cpu_us = None;
    if args.new_pid_ns {
        jail::unshare(libc::CLONE_NEWPID).map_err(step("unshare(CLONE_NEWPID)"))?;
        let cpu_us = jail::process_cpu_time_us().map_err(step("clock_gettime"))?;
        match jail::fork().map_err(step("fork"))? {
            Forked::Parent(pid) => {
                let pid_file = chroot.join(format!("{}.pid", args.exec_name));
                fs::write(&pid_file, format!("{pid}\n")).map_err(at("write", &pid_file))?;
                std::process::exit(0);
            }
            Forked::Child => parent_cpu_us = Some(cpu_us),
        }
    }

    enter_chroot(&chroot)?;
    make_devices(args)?;
    // The VMM creates its API socket in the jail: `/` and `/run` belong to it.
    let run_dir = Path::new("/run");
    DirBuilder::new()
        .mode(0o755)
        .create(run_dir)
        .or_else(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(at("create", run_dir))?;
    for dir in [Path::new("/"), run_dir] {
        std::os::unix::fs::chown(dir, Some(args.uid), Some(args.gid)).map_err(at("chown", dir))?;
    }

    if let Some(dev_null) = dev_null {
        jail::setsid().map_err(step("setsid"))?;
        for target in 0..=2 {
            jail::redirect_stdio(dev_null.as_fd(), target).map_err(step("redirect stdio"))?;
        }
    }

    let mut command = std::process::Command::new(Path::new("/").join(&args.exec_name));
    command
        .arg(format!("--id={}", args.id))
        .arg(format!("--start-time-us={}", start.wall_us))
        .arg(format!("--start-time-cpu-us={}", start.cpu_us));
    if let Some(cpu_us) = parent_cpu_us {
        command.arg(format!("--parent-cpu-time-us={cpu_us}"));
    }
    // exec drops supplementary groups, then sets the gid and the uid (std's order).
    let err = command
        .args(&args.vmm_args)
        .env_clear()
        .current_dir("/")
        .uid(args.uid)
        .gid(args.gid)
        .exec();
    Err(JailError::Step {
        what: "exec",
        source: err,
    })
}

/// A new mount namespace whose root is `chroot` (`pivot_root`, old root detached), then
/// `chroot(".")` for good measure, as Firecracker does.
fn enter_chroot(chroot: &Path) -> Result<(), JailError> {
    jail::unshare(libc::CLONE_NEWNS).map_err(step("unshare(CLONE_NEWNS)"))?;
    jail::make_mounts_private().map_err(step("make mounts private"))?;
    jail::bind_mount_onto_itself(chroot).map_err(at("bind-mount", chroot))?;
    std::env::set_current_dir(chroot).map_err(at("chdir", chroot))?;
    let old_root = Path::new("old_root");
    fs::create_dir_all(old_root).map_err(at("create", old_root))?;
    jail::pivot_root(Path::new("."), old_root).map_err(at("pivot_root", chroot))?;
    jail::unmount_detach(old_root).map_err(at("unmount", old_root))?;
    fs::remove_dir(old_root).map_err(at("remove", old_root))?;
    std::os::unix::fs::chroot(".").map_err(step("chroot"))?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    Ok(())
}

/// `/dev/kvm`, `/dev/net/tun`, `/dev/urandom` in the jail, owned by the VMM's uid and gid.
fn make_devices(args: &JailerArgs) -> Result<(), JailError> {
    for (path, major, minor) in DEVICES {
        let path = Path::new("/").join(path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(at("create", dir))?;
        }
        match jail::mknod_char(&path, 0o600, major, minor) {
            Ok(()) => {}
            // A re-used jail (same id) keeps its nodes, as Firecracker keeps existing dirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(at("mknod", &path)(e)),
        }
        std::os::unix::fs::chown(&path, Some(args.uid), Some(args.gid))
            .map_err(at("chown", &path))?;
    }
    Ok(())
}
