//! Firecracker's jailer command line, parsed and validated in one place.
//!
//! ```text
//! squib-jailer --id ID --exec-file PATH --uid UID --gid GID
//!              [--chroot-base-dir DIR] [--netns PATH] [--daemonize] [--new-pid-ns]
//!              [--cgroup FILE=VALUE]... [--cgroup-version 1|2] [--parent-cgroup PATH]
//!              [--resource-limit fsize=N|no-file=N]... [-- ARGS FOR THE VMM...]
//! ```

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use squib_host::jail::Resource;

/// Firecracker's default chroot base.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Longest instance id (Firecracker's rule).
pub const MAX_ID_LEN: usize = 64;
/// `no-file` when no `--resource-limit` is given (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The usage text.
pub const USAGE: &str = "usage: squib-jailer --id ID --exec-file PATH --uid UID --gid GID
       [--chroot-base-dir DIR] [--netns PATH] [--daemonize] [--new-pid-ns]
       [--cgroup FILE=VALUE]... [--cgroup-version 1|2] [--parent-cgroup PATH]
       [--resource-limit fsize=N|no-file=N]... [-- ARGS FOR THE VMM...]";

/// One `--cgroup <controller>.<file>=<value>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The controller (`cpuset` in `cpuset.cpus`).
    pub controller: String,
    /// The file (`cpuset.cpus`).
    pub file: String,
    /// What is written to it.
    pub value: String,
}

/// Which cgroup hierarchy `--cgroup` settings go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller v1 hierarchies.
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// The validated command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailerArgs {
    /// `--id`.
    pub id: String,
    /// `--exec-file`, canonical.
    pub exec_file: PathBuf,
    /// The exec file's name: the chroot's parent directory and the name inside the jail.
    pub exec_name: String,
    /// `--uid`.
    pub uid: u32,
    /// `--gid`.
    pub gid: u32,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// `--netns`.
    pub netns: Option<PathBuf>,
    /// `--daemonize`.
    pub daemonize: bool,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// `--cgroup`, in order.
    pub cgroups: Vec<CgroupSetting>,
    /// `--cgroup-version`.
    pub cgroup_version: CgroupVersion,
    /// `--parent-cgroup` (default: the exec file's name, as in Firecracker).
    pub parent_cgroup: PathBuf,
    /// Whether `--parent-cgroup` was given.
    pub parent_cgroup_given: bool,
    /// `--resource-limit`, in order (default: `no-file=2048`).
    pub limits: Vec<(Resource, u64)>,
    /// Everything after `--`.
    pub vmm_args: Vec<OsString>,
}

impl JailerArgs {
    /// `<chroot base>/<exec name>/<id>`: the jail's directory (the chroot is its `root`).
    pub fn jail_dir(&self) -> PathBuf {
        self.chroot_base.join(&self.exec_name).join(&self.id)
    }

    /// `<chroot base>/<exec name>/<id>/root`.
    pub fn chroot_dir(&self) -> PathBuf {
        self.jail_dir().join("root")
    }
}

/// What `parse` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run the jailer.
    Run(Box<JailerArgs>),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// A command-line mistake, as one line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

fn err<T>(message: impl Into<String>) -> Result<T, ArgsError> {
    Err(ArgsError(message.into()))
}

/// Firecracker's instance id rule: 1 to 64 of `[A-Za-z0-9-]`.
pub fn check_id(id: &str) -> Result<(), ArgsError> {
    if !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        err(format!(
            "invalid --id {id:?}: 1 to {MAX_ID_LEN} letters, digits or hyphens"
        ))
    }
}

fn parse_cgroup(text: &str) -> Result<CgroupSetting, ArgsError> {
    let bad = || {
        err(format!(
            "--cgroup {text:?}: expected <controller>.<file>=<value>"
        ))
    };
    let Some((file, value)) = text.split_once('=') else {
        return bad();
    };
    let Some((controller, rest)) = file.split_once('.') else {
        return bad();
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if !plain(controller) || !plain(rest) || value.contains('\n') {
        return bad();
    }
    Ok(CgroupSetting {
        controller: controller.to_owned(),
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_limit(text: &str) -> Result<(Resource, u64), ArgsError> {
    let (name, value) = text.split_once('=').unwrap_or((text, ""));
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::OpenFiles,
        _ => {
            return err(format!(
                "--resource-limit {text:?}: the resources are fsize and no-file"
            ));
        }
    };
    let value = value
        .parse()
        .or_else(|_| err(format!("--resource-limit {text:?}: the value is a number")))?;
    Ok((resource, value))
}

/// A relative path without `..`: it must stay inside the cgroup hierarchy.
fn parse_parent_cgroup(text: &str) -> Result<PathBuf, ArgsError> {
    let path = PathBuf::from(text);
    let inside = !text.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(path)
    } else {
        err(format!(
            "--parent-cgroup {text:?}: a relative path without `..`"
        ))
    }
}

fn exec_file(text: &str) -> Result<(PathBuf, String), ArgsError> {
    let path = Path::new(text)
        .canonicalize()
        .or_else(|e| err(format!("--exec-file {text}: {e}")))?;
    if !path.is_file() {
        return err(format!("--exec-file {text}: not a regular file"));
    }
    if has_interpreter(&path).or_else(|e| err(format!("--exec-file {text}: {e}")))? {
        return err(format!(
            "--exec-file {text}: dynamically linked; the jail holds only the binary, so it must \
             be static (as Firecracker's jailer requires; see docs/security.md)"
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    match name {
        Some(name) => Ok((path, name)),
        None => err(format!("--exec-file {text}: the file name is not UTF-8")),
    }
}

/// Whether the ELF file at `path` names a program interpreter (`PT_INTERP`): a dynamically
/// linked executable, which cannot run in a jail that holds no shared libraries.
fn has_interpreter(path: &Path) -> std::io::Result<bool> {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path)?;
    let not_elf = || std::io::Error::other("not a 64-bit little-endian ELF executable");
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().map_err(|_| not_elf())?);
    let (phentsize, phnum) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    let phoff = usize::try_from(phoff).map_err(|_| not_elf())?;
    for i in 0..phnum {
        let start = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(not_elf)?;
        let header = bytes.get(start..start + 4).ok_or_else(not_elf)?;
        if u32::from_le_bytes(header.try_into().map_err(|_| not_elf())?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Parses and validates the jailer's arguments (without the program name).
pub fn parse(args: &[OsString]) -> Result<Parsed, ArgsError> {
    let mut id = None;
    let mut exec = None;
    let (mut uid, mut gid) = (None, None);
    let mut chroot_base = PathBuf::from(DEFAULT_CHROOT_BASE);
    let mut netns = None;
    let (mut daemonize, mut new_pid_ns) = (false, false);
    let mut cgroups = Vec::new();
    let mut cgroup_version = CgroupVersion::V1;
    let mut parent_cgroup = None;
    let mut limits = Vec::new();
    let mut vmm_args = Vec::new();

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(arg) = arg.to_str() else {
            return err(format!("argument {arg:?} is not UTF-8"));
        };
        if arg == "--" {
            vmm_args.extend(it.by_ref().cloned());
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, ArgsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| ArgsError(format!("{name} needs a value"))),
            }
        };
        let number = |name: &str, v: String| -> Result<u32, ArgsError> {
            v.parse()
                .or_else(|_| err(format!("{name} {v:?}: expected a number")))
        };
        match name {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--version" | "-V" => return Ok(Parsed::Version),
            "--id" => {
                let v = value()?;
                check_id(&v)?;
                id = Some(v);
            }
            "--exec-file" => exec = Some(exec_file(&value()?)?),
            "--uid" => uid = Some(number(name, value()?)?),
            "--gid" => gid = Some(number(name, value()?)?),
            "--chroot-base-dir" => {
                let v = PathBuf::from(value()?);
                if !v.is_absolute() {
                    return err(format!(
                        "--chroot-base-dir {}: an absolute path",
                        v.display()
                    ));
                }
                chroot_base = v;
            }
            "--netns" => netns = Some(PathBuf::from(value()?)),
            "--daemonize" if inline.is_none() => daemonize = true,
            "--new-pid-ns" if inline.is_none() => new_pid_ns = true,
            "--cgroup" => cgroups.push(parse_cgroup(&value()?)?),
            "--cgroup-version" => {
                cgroup_version = match value()?.as_str() {
                    "1" => CgroupVersion::V1,
                    "2" => CgroupVersion::V2,
                    other => return err(format!("--cgroup-version {other:?}: 1 or 2")),
                }
            }
            "--parent-cgroup" => parent_cgroup = Some(parse_parent_cgroup(&value()?)?),
            "--resource-limit" => limits.push(parse_limit(&value()?)?),
            // Firecracker's `--node` is gone since 1.1; `--seccomp-level` likewise.
            other => return err(format!("unknown option {other:?}")),
        }
    }
    let missing = |flag: &str| ArgsError(format!("{flag} is required"));
    let id = id.ok_or_else(|| missing("--id"))?;
    let (exec_file, exec_name) = exec.ok_or_else(|| missing("--exec-file"))?;
    let uid = uid.ok_or_else(|| missing("--uid"))?;
    let gid = gid.ok_or_else(|| missing("--gid"))?;
    if limits.is_empty() {
        limits.push((Resource::OpenFiles, DEFAULT_NO_FILE));
    }
    let parent_cgroup_given = parent_cgroup.is_some();
    Ok(Parsed::Run(Box::new(JailerArgs {
        parent_cgroup: parent_cgroup.unwrap_or_else(|| PathBuf::from(&exec_name)),
        parent_cgroup_given,
        id,
        exec_file,
        exec_name,
        uid,
        gid,
        chroot_base,
        netns,
        daemonize,
        new_pid_ns,
        cgroups,
        cgroup_version,
        limits,
        vmm_args,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A minimal static ELF (no program headers) in a temporary directory, named `squib`.
    fn exe() -> String {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        let path = dir.path().join("squib");
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        std::fs::write(&path, elf).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn a_dynamically_linked_exec_file_is_refused() {
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let e = parse(&os(&[
            "--id",
            "x",
            "--exec-file",
            me.to_str().unwrap(),
            "--uid",
            "1",
            "--gid",
            "1",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("dynamically linked"), "{e}");
    }

    fn run(list: &[&str]) -> JailerArgs {
        match parse(&os(list)).unwrap() {
            Parsed::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_flag_and_the_defaults() {
        let exe = exe();
        let base = [
            "--id",
            "551e7604-e35c-42b3-b825-416853441234",
            "--exec-file",
            &exe,
            "--uid",
            "123",
            "--gid",
            "100",
        ];
        let a = run(&base);
        assert_eq!(a.chroot_base, Path::new(DEFAULT_CHROOT_BASE));
        assert_eq!(a.limits, vec![(Resource::OpenFiles, DEFAULT_NO_FILE)]);
        assert_eq!(a.cgroup_version, CgroupVersion::V1);
        assert_eq!(a.parent_cgroup, Path::new(&a.exec_name));
        assert!(!a.daemonize && !a.new_pid_ns && a.vmm_args.is_empty());
        assert_eq!(
            a.chroot_dir(),
            Path::new(DEFAULT_CHROOT_BASE)
                .join(&a.exec_name)
                .join("551e7604-e35c-42b3-b825-416853441234/root")
        );

        let mut all = base.to_vec();
        all.extend([
            "--chroot-base-dir=/tmp/j",
            "--netns",
            "/var/run/netns/x",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup",
            "cpuset.cpus=0",
            "--cgroup",
            "pids.max=10",
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            "all/vms",
            "--resource-limit",
            "fsize=1000",
            "--resource-limit",
            "no-file=64",
            "--",
            "--api-sock",
            "/run/x",
        ]);
        let a = run(&all);
        assert_eq!(a.chroot_base, Path::new("/tmp/j"));
        assert_eq!(a.netns.as_deref(), Some(Path::new("/var/run/netns/x")));
        assert!(a.daemonize && a.new_pid_ns && a.parent_cgroup_given);
        assert_eq!(a.cgroups[0].controller, "cpuset");
        assert_eq!(a.cgroups[1].file, "pids.max");
        assert_eq!(a.cgroup_version, CgroupVersion::V2);
        assert_eq!(a.parent_cgroup, Path::new("all/vms"));
        assert_eq!(
            a.limits,
            vec![(Resource::FileSize, 1000), (Resource::OpenFiles, 64)]
        );
        assert_eq!(a.vmm_args, os(&["--api-sock", "/run/x"]));
    }

    #[test]
    fn refuses_bad_input() {
        let exe = exe();
        let base = ["--exec-file", exe.as_str(), "--uid", "1", "--gid", "1"];
        for (extra, want) in [
            (&["--id", "a_b"][..], "invalid --id"),
            (&["--id", &"a".repeat(65)], "invalid --id"),
            (&["--id", ""], "invalid --id"),
            (&["--id", "x", "--cgroup", "nodot=1"], "--cgroup"),
            (&["--id", "x", "--cgroup", "../../x.y=1"], "--cgroup"),
            (
                &["--id", "x", "--parent-cgroup", "../escape"],
                "--parent-cgroup",
            ),
            (&["--id", "x", "--parent-cgroup", "/abs"], "--parent-cgroup"),
            (
                &["--id", "x", "--resource-limit", "stack=1"],
                "fsize and no-file",
            ),
            (&["--id", "x", "--resource-limit", "fsize=big"], "a number"),
            (&["--id", "x", "--cgroup-version", "3"], "1 or 2"),
            (&["--id", "x", "--chroot-base-dir", "rel"], "absolute"),
            (&["--id", "x", "--node", "0"], "unknown option"),
            (&["--uid", "1"], "--id is required"),
        ] {
            let mut list: Vec<&str> = base.to_vec();
            list.extend_from_slice(extra);
            let e = parse(&os(&list)).unwrap_err().to_string();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = parse(&os(&[
            "--id",
            "x",
            "--exec-file",
            "/nonexistent",
            "--uid",
            "1",
            "--gid",
            "1",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--exec-file /nonexistent"), "{e}");
    }
}
