//! Placing the VMM in its cgroups, v1 or v2, as Firecracker's jailer does: find each
//! controller's hierarchy in `/proc/mounts`, create `<hierarchy>/<parent cgroup>/<id>`, write
//! the `--cgroup` values, then the pid.
//!
//! On a hybrid host (v1 controllers under `/sys/fs/cgroup/<controller>`, an empty v2 hierarchy
//! at `/sys/fs/cgroup/unified`) v2 has no controllers to enable: `--cgroup-version 2` then
//! only places the process (no `--cgroup` values can be written).

use std::io;
use std::path::{Path, PathBuf};

use crate::args::{CgroupSetting, CgroupVersion};

/// Why the cgroups could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/mounts` could not be read.
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(io::Error),
    /// No hierarchy holds the controller.
    #[error("no cgroup v1 hierarchy has the `{0}` controller mounted")]
    NoController(String),
    /// No v2 hierarchy is mounted.
    #[error("no cgroup v2 hierarchy is mounted")]
    NoUnified,
    /// A cgroup file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `(mount point, fstype, options)` of every cgroup mount.
fn cgroup_mounts() -> Result<Vec<(PathBuf, String, Vec<String>)>, CgroupError> {
    let text = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount, fstype, options, ..] = fields[..] else {
                return None;
            };
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    PathBuf::from(mount),
                    fstype.to_owned(),
                    options.split(',').map(str::to_owned).collect(),
                )
            })
        })
        .collect())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

/// cpuset refuses tasks until `cpuset.cpus` and `cpuset.mems` are set: a new cpuset cgroup
/// copies its parent's, level by level (as Firecracker does).
fn inherit_cpuset(hierarchy: &Path, dir: &Path) -> Result<(), CgroupError> {
    let Ok(relative) = dir.strip_prefix(hierarchy) else {
        return Ok(());
    };
    let mut current = hierarchy.to_owned();
    for part in relative.components() {
        let parent = current.clone();
        current.push(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = current.join(file);
            let value = std::fs::read_to_string(&own).map_err(io_err(&own))?;
            if value.trim().is_empty() {
                let from = parent.join(file);
                let inherited = std::fs::read_to_string(&from).map_err(io_err(&from))?;
                write(&own, inherited.trim())?;
            }
        }
    }
    Ok(())
}

/// Creates the VM's cgroups, writes the settings and moves `pid` in; returns the cgroup
/// directories it used (the VMM's cgroups).
pub fn place(
    version: CgroupVersion,
    parent: &Path,
    id: &str,
    settings: &[CgroupSetting],
    place_without_settings: bool,
    pid: u32,
) -> Result<Vec<PathBuf>, CgroupError> {
    if settings.is_empty() && !place_without_settings {
        return Ok(Vec::new());
    }
    let mounts = cgroup_mounts()?;
    let pid = pid.to_string();
    match version {
        CgroupVersion::V1 => {
            let mut dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
            for setting in settings {
                let hierarchy = mounts
                    .iter()
                    .find(|(_, fstype, options)| {
                        fstype == "cgroup" && options.contains(&setting.controller)
                    })
                    .map(|(mount, _, _)| mount.clone())
                    .ok_or_else(|| CgroupError::NoController(setting.controller.clone()))?;
                let dir = hierarchy.join(parent).join(id);
                if !dirs.iter().any(|(_, d)| *d == dir) {
                    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    if setting.controller == "cpuset" {
                        inherit_cpuset(&hierarchy, &dir)?;
                    }
                    dirs.push((hierarchy, dir.clone()));
                }
                write(&dir.join(&setting.file), &setting.value)?;
            }
            for (_, dir) in &dirs {
                write(&dir.join("tasks"), &pid)?;
            }
            Ok(dirs.into_iter().map(|(_, d)| d).collect())
        }
        CgroupVersion::V2 => {
            let hierarchy = mounts
                .iter()
                .find(|(_, fstype, _)| fstype == "cgroup2")
                .map(|(mount, _, _)| mount.clone())
                .ok_or(CgroupError::NoUnified)?;
            let dir = hierarchy.join(parent).join(id);
            // Each level above the VM's cgroup must hand the controllers down.
            let mut controllers: Vec<&str> =
                settings.iter().map(|s| s.controller.as_str()).collect();
            controllers.sort_unstable();
            controllers.dedup();
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let mut level = hierarchy.clone();
            for part in parent.join(id).components() {
                for controller in &controllers {
                    write(
                        &level.join("cgroup.subtree_control"),
                        &format!("+{controller}"),
                    )?;
                }
                level.push(part);
            }
            for setting in settings {
                write(&dir.join(&setting.file), &setting.value)?;
            }
            write(&dir.join("cgroup.procs"), &pid)?;
            Ok(vec![dir])
        }
    }
}
