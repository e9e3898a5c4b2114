//! The pre-boot configuration: what `PUT`s and a `--config-file` build up before `InstanceStart`.
//!
//! Every value is validated here, once, whichever front end sent it, and stored as the VMM's own
//! types; [`ConfigStore::vm_config`] hands the VMM a finished `VmConfig`. Files are opened at
//! configuration time, as Firecracker does, so a wrong path is reported by the request that named
//! it rather than by `InstanceStart`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::models::{
    BootSourceBody, CacheTypeBody, CpuTemplate, DriveBody, HugePages, IoEngineBody,
    MachineConfigBody, RateLimiterBody, TokenBucketBody,
};
use crate::vm_config::{
    BootSource, CacheType, DriveConfig, IoEngine, MachineConfig, RateLimiterConfig,
    TokenBucketConfig, VmConfig,
};
use crate::vmm::{MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB};

/// Firecracker's limit on resource ids.
pub const MAX_ID_LEN: usize = 64;
/// Longest `refill_time` (ms) whose nanoseconds fit in 64 bits.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / 1_000_000;

/// Why a configuration request was refused; the text is the API's `fault_message`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `vcpu_count` out of 1..=32.
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u64),
    /// `mem_size_mib` out of range.
    #[error("mem_size_mib must be between {MIN_MEM_MIB} and {MAX_MEM_MIB}, got {0}")]
    MemSize(u64),
    /// A `PUT /machine-config` without a required field.
    #[error("PUT /machine-config requires `{0}` (use PATCH to change some fields only)")]
    MachineFieldMissing(&'static str),
    /// A machine feature squib cannot provide.
    #[error("{0} is not supported by squib")]
    MachineFeature(&'static str),
    /// An id with characters other than ASCII alphanumerics and `_`, or too long or empty.
    #[error(
        "invalid {kind} `{id}`: ids are 1 to {MAX_ID_LEN} ASCII letters, digits or underscores"
    )]
    InvalidId {
        /// What the id names.
        kind: &'static str,
        /// The id as given.
        id: String,
    },
    /// The body's id is not the path's.
    #[error("the id from the path [{path}] does not match the id from the body [{body}]")]
    IdMismatch {
        /// Id in the URL.
        path: String,
        /// Id in the body.
        body: String,
    },
    /// A second root device.
    #[error("a root block device already exists: drive `{0}`")]
    SecondRootDevice(String),
    /// `partuuid` would corrupt the kernel command line.
    #[error("partuuid `{0}` is not a partition UUID (hex digits and `-`, at most 36 characters)")]
    PartUuid(String),
    /// vhost-user-block.
    #[error("drive `{0}`: vhost-user block devices (`socket`) are not supported by squib")]
    VhostUser(String),
    /// A drive without `path_on_host`.
    #[error("drive `{0}`: path_on_host is required")]
    DrivePathMissing(String),
    /// A file that cannot be used.
    #[error("cannot use {what} `{}`: {reason}", path.display())]
    File {
        /// What the file is for.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The OS error or the problem.
        reason: String,
    },
    /// A NUL byte in the command line.
    #[error("boot_args must not contain NUL bytes")]
    BootArgsNul,
    /// A token bucket that cannot be represented.
    #[error(
        "rate_limiter.{bucket}.refill_time {ms} ms is too large (at most {MAX_REFILL_TIME_MS})"
    )]
    RefillTime {
        /// `bandwidth` or `ops`.
        bucket: &'static str,
        /// The value given.
        ms: u64,
    },
    /// `InstanceStart` before `PUT /boot-source`.
    #[error("cannot start the microVM without a kernel: PUT /boot-source first")]
    NoBootSource,
    /// A `PATCH` naming a drive that was never configured.
    #[error("drive `{0}` does not exist")]
    UnknownDrive(String),
}

/// Checks a Firecracker resource id: 1 to 64 of `[A-Za-z0-9_]`.
pub fn check_id(kind: &'static str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidId {
            kind,
            id: id.to_owned(),
        })
    }
}

fn check_file(what: &'static str, path: &str, writable: bool) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(path);
    let fail = |reason: String| ConfigError::File {
        what,
        path: path.clone(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(fail("the path is empty".into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if meta.is_dir() {
        return Err(fail("it is a directory".into()));
    }
    Ok(path)
}

fn bucket(name: &'static str, b: &TokenBucketBody) -> Result<TokenBucketConfig, ConfigError> {
    if b.refill_time > MAX_REFILL_TIME_MS {
        return Err(ConfigError::RefillTime {
            bucket: name,
            ms: b.refill_time,
        });
    }
    Ok(TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    })
}

/// Validates a `RateLimiter` body.
pub fn rate_limiter(body: &RateLimiterBody) -> Result<RateLimiterConfig, ConfigError> {
    Ok(RateLimiterConfig {
        bandwidth: body
            .bandwidth
            .as_ref()
            .map(|b| bucket("bandwidth", b))
            .transpose()?,
        ops: body.ops.as_ref().map(|b| bucket("ops", b)).transpose()?,
    })
}

/// Opens a drive's backing file the way the guest will use it, so permission errors show now.
pub fn check_drive_path(path: &str, read_only: bool) -> Result<PathBuf, ConfigError> {
    check_file("path_on_host", path, !read_only)
}

fn check_partuuid(p: &str) -> Result<(), ConfigError> {
    // It is pasted into the kernel command line: a space would inject parameters.
    let ok =
        !p.is_empty() && p.len() <= 36 && p.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::PartUuid(p.to_owned()))
    }
}

/// The configuration being built before boot.
#[derive(Debug, Default)]
pub struct ConfigStore {
    boot: Option<BootSource>,
    machine: MachineConfig,
    /// In the order configured; [`vm_config`](Self::vm_config) moves the root device first.
    drives: Vec<DriveConfig>,
}

impl ConfigStore {
    /// `PUT /boot-source`.
    pub fn set_boot_source(&mut self, body: &BootSourceBody) -> Result<(), ConfigError> {
        let kernel_image_path = check_file("kernel_image_path", &body.kernel_image_path, false)?;
        let initrd_path = body
            .initrd_path
            .as_deref()
            .map(|p| check_file("initrd_path", p, false))
            .transpose()?;
        if body.boot_args.as_deref().is_some_and(|a| a.contains('\0')) {
            return Err(ConfigError::BootArgsNul);
        }
        self.boot = Some(BootSource {
            kernel_image_path,
            initrd_path,
            boot_args: body.boot_args.clone(),
        });
        Ok(())
    }

    /// `PUT /machine-config`: every field not given returns to its default.
    pub fn put_machine_config(&mut self, body: &MachineConfigBody) -> Result<(), ConfigError> {
        if body.vcpu_count.is_none() {
            return Err(ConfigError::MachineFieldMissing("vcpu_count"));
        }
        if body.mem_size_mib.is_none() {
            return Err(ConfigError::MachineFieldMissing("mem_size_mib"));
        }
        self.machine = Self::apply_machine(MachineConfig::default(), body)?;
        Ok(())
    }

    /// `PATCH /machine-config`: only the fields given change.
    pub fn patch_machine_config(&mut self, body: &MachineConfigBody) -> Result<(), ConfigError> {
        self.machine = Self::apply_machine(self.machine.clone(), body)?;
        Ok(())
    }

    fn apply_machine(
        mut m: MachineConfig,
        body: &MachineConfigBody,
    ) -> Result<MachineConfig, ConfigError> {
        if let Some(n) = body.vcpu_count {
            m.vcpu_count = u8::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_VCPUS).contains(n))
                .ok_or(ConfigError::VcpuCount(n))?;
        }
        if let Some(mib) = body.mem_size_mib {
            m.mem_size_mib = usize::try_from(mib)
                .ok()
                .filter(|mib| (MIN_MEM_MIB..=MAX_MEM_MIB).contains(mib))
                .ok_or(ConfigError::MemSize(mib))?;
        }
        if body.smt == Some(true) {
            return Err(ConfigError::MachineFeature(
                "smt (simultaneous multithreading)",
            ));
        }
        if body.track_dirty_pages == Some(true) {
            return Err(ConfigError::MachineFeature(
                "track_dirty_pages (no snapshots yet)",
            ));
        }
        if matches!(body.cpu_template, Some(t) if t != CpuTemplate::None) {
            return Err(ConfigError::MachineFeature("cpu_template (only \"None\")"));
        }
        if matches!(body.huge_pages, Some(h) if h != HugePages::None) {
            return Err(ConfigError::MachineFeature("huge_pages (only \"None\")"));
        }
        Ok(m)
    }

    /// `PUT /drives/{path_id}`: creates the drive or replaces its configuration.
    pub fn put_drive(&mut self, path_id: &str, body: &DriveBody) -> Result<(), ConfigError> {
        let drive = Self::drive(path_id, body)?;
        if drive.is_root_device
            && let Some(other) = self
                .drives
                .iter()
                .find(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ConfigError::SecondRootDevice(other.drive_id.clone()));
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    fn drive(path_id: &str, body: &DriveBody) -> Result<DriveConfig, ConfigError> {
        check_id("drive_id", path_id)?;
        if body.drive_id != path_id {
            return Err(ConfigError::IdMismatch {
                path: path_id.to_owned(),
                body: body.drive_id.clone(),
            });
        }
        if body.socket.is_some() {
            return Err(ConfigError::VhostUser(path_id.to_owned()));
        }
        let read_only = body.is_read_only.unwrap_or(false);
        let path = body
            .path_on_host
            .as_deref()
            .ok_or_else(|| ConfigError::DrivePathMissing(path_id.to_owned()))?;
        let path_on_host = check_drive_path(path, read_only)?;
        // Firecracker ignores a partuuid on a non-root drive; squib does the same, but still
        // refuses one that could not be a UUID.
        if let Some(p) = &body.partuuid {
            check_partuuid(p)?;
        }
        Ok(DriveConfig {
            drive_id: path_id.to_owned(),
            path_on_host,
            is_read_only: read_only,
            is_root_device: body.is_root_device,
            partuuid: body.partuuid.clone().filter(|_| body.is_root_device),
            cache_type: match body.cache_type {
                None | Some(CacheTypeBody::Unsafe) => CacheType::Unsafe,
                Some(CacheTypeBody::Writeback) => CacheType::Writeback,
            },
            io_engine: match body.io_engine {
                None | Some(IoEngineBody::Sync) => IoEngine::Sync,
                Some(IoEngineBody::Async) => IoEngine::Async,
            },
            direct: false,
            rate_limiter: body.rate_limiter.as_ref().map(rate_limiter).transpose()?,
        })
    }

    /// A configured drive.
    pub fn drive_config(&self, drive_id: &str) -> Option<&DriveConfig> {
        self.drives.iter().find(|d| d.drive_id == drive_id)
    }

    /// Records a post-boot change so that `GET /vm/config` reports what the guest has now.
    pub fn drive_config_mut(&mut self, drive_id: &str) -> Option<&mut DriveConfig> {
        self.drives.iter_mut().find(|d| d.drive_id == drive_id)
    }

    /// The machine configuration (defaults until changed).
    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    /// The finished configuration. As in Firecracker, the root device comes first, so it is
    /// `/dev/vda`; the other drives keep the order they were added in.
    pub fn vm_config(&self, boot_timer: bool) -> Result<VmConfig, ConfigError> {
        let boot = self.boot.clone().ok_or(ConfigError::NoBootSource)?;
        Ok(VmConfig {
            boot: Some(boot),
            machine: self.machine.clone(),
            drives: self.ordered_drives().cloned().collect(),
            boot_timer,
            boot_options: Default::default(),
        })
    }

    fn ordered_drives(&self) -> impl Iterator<Item = &DriveConfig> {
        let root = self.drives.iter().filter(|d| d.is_root_device);
        root.chain(self.drives.iter().filter(|d| !d.is_root_device))
    }

    /// The boot source in API form.
    pub fn boot_source_body(&self) -> Option<BootSourceBody> {
        self.boot.as_ref().map(|b| BootSourceBody {
            kernel_image_path: path_string(&b.kernel_image_path),
            boot_args: b.boot_args.clone(),
            initrd_path: b.initrd_path.as_deref().map(path_string),
        })
    }

    /// The machine configuration in API form (what `GET /machine-config` answers).
    pub fn machine_body(&self) -> MachineConfigBody {
        MachineConfigBody {
            vcpu_count: Some(u64::from(self.machine.vcpu_count)),
            mem_size_mib: Some(self.machine.mem_size_mib as u64),
            smt: Some(self.machine.smt),
            track_dirty_pages: Some(self.machine.track_dirty_pages),
            cpu_template: None,
            huge_pages: Some(HugePages::None),
        }
    }

    /// The drives in API form, in guest order.
    pub fn drive_bodies(&self) -> Vec<DriveBody> {
        self.ordered_drives().map(drive_body).collect()
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn bucket_body(b: &TokenBucketConfig) -> TokenBucketBody {
    TokenBucketBody {
        size: b.size,
        one_time_burst: Some(b.one_time_burst).filter(|&n| n != 0),
        refill_time: b.refill_time_ms,
    }
}

fn drive_body(d: &DriveConfig) -> DriveBody {
    DriveBody {
        drive_id: d.drive_id.clone(),
        path_on_host: Some(path_string(&d.path_on_host)),
        is_root_device: d.is_root_device,
        is_read_only: Some(d.is_read_only),
        partuuid: d.partuuid.clone(),
        cache_type: Some(match d.cache_type {
            CacheType::Unsafe => CacheTypeBody::Unsafe,
            CacheType::Writeback => CacheTypeBody::Writeback,
        }),
        io_engine: Some(match d.io_engine {
            IoEngine::Sync => IoEngineBody::Sync,
            IoEngine::Async | IoEngine::Threads => IoEngineBody::Async,
        }),
        rate_limiter: d.rate_limiter.map(|r| RateLimiterBody {
            bandwidth: r.bandwidth.as_ref().map(bucket_body),
            ops: r.ops.as_ref().map(bucket_body),
        }),
        socket: None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0; 4096]).unwrap();
        f
    }

    fn drive_body(id: &str, path: &Path, root: bool) -> DriveBody {
        DriveBody {
            drive_id: id.into(),
            path_on_host: Some(path.to_string_lossy().into()),
            is_root_device: root,
            is_read_only: None,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("drive_id", "rootfs_1").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_id("drive_id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn machine_config_ranges_and_refusals() {
        let mut s = ConfigStore::default();
        let put = |v, m| MachineConfigBody {
            vcpu_count: Some(v),
            mem_size_mib: Some(m),
            ..Default::default()
        };
        assert_eq!(
            s.put_machine_config(&put(0, 128)),
            Err(ConfigError::VcpuCount(0))
        );
        assert_eq!(
            s.put_machine_config(&put(33, 128)),
            Err(ConfigError::VcpuCount(33))
        );
        assert_eq!(
            s.put_machine_config(&put(300, 128)),
            Err(ConfigError::VcpuCount(300))
        );
        assert_eq!(
            s.put_machine_config(&put(2, 0)),
            Err(ConfigError::MemSize(0))
        );
        assert_eq!(
            s.put_machine_config(&put(2, u64::MAX)),
            Err(ConfigError::MemSize(u64::MAX))
        );
        s.put_machine_config(&put(32, 256)).unwrap();
        assert_eq!(
            (s.machine().vcpu_count, s.machine().mem_size_mib),
            (32, 256)
        );
        let missing = MachineConfigBody {
            vcpu_count: Some(1),
            ..Default::default()
        };
        assert_eq!(
            s.put_machine_config(&missing),
            Err(ConfigError::MachineFieldMissing("mem_size_mib"))
        );
        s.patch_machine_config(&missing).unwrap();
        assert_eq!((s.machine().vcpu_count, s.machine().mem_size_mib), (1, 256));
        for body in [
            MachineConfigBody {
                smt: Some(true),
                ..Default::default()
            },
            MachineConfigBody {
                track_dirty_pages: Some(true),
                ..Default::default()
            },
            MachineConfigBody {
                cpu_template: Some(CpuTemplate::T2),
                ..Default::default()
            },
            MachineConfigBody {
                huge_pages: Some(HugePages::Hugetlbfs2M),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                s.patch_machine_config(&body),
                Err(ConfigError::MachineFeature(_))
            ));
        }
        // A refused PATCH changes nothing.
        assert_eq!((s.machine().vcpu_count, s.machine().mem_size_mib), (1, 256));
    }

    #[test]
    fn root_device_goes_first_and_is_unique() {
        let (a, b, c) = (temp_file(), temp_file(), temp_file());
        let mut s = ConfigStore::default();
        s.put_drive("data", &drive_body("data", a.path(), false))
            .unwrap();
        s.put_drive("rootfs", &drive_body("rootfs", b.path(), true))
            .unwrap();
        assert_eq!(
            s.put_drive("other", &drive_body("other", c.path(), true)),
            Err(ConfigError::SecondRootDevice("rootfs".into()))
        );
        // Re-PUTting the root device itself is an update, not a second root.
        s.put_drive("rootfs", &drive_body("rootfs", c.path(), true))
            .unwrap();
        assert_eq!(s.vm_config(false), Err(ConfigError::NoBootSource));
        s.set_boot_source(&BootSourceBody {
            kernel_image_path: a.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let cfg = s.vm_config(false).unwrap();
        let ids: Vec<_> = cfg.drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
        assert_eq!(cfg.drives[0].path_on_host, c.path());
    }

    #[test]
    fn drive_bodies_are_validated() {
        let f = temp_file();
        let mut s = ConfigStore::default();
        let mut body = drive_body("a", f.path(), true);
        assert!(matches!(
            s.put_drive("b", &body),
            Err(ConfigError::IdMismatch { .. })
        ));
        body.partuuid = Some("1234 init=/bin/sh".into());
        assert!(matches!(
            s.put_drive("a", &body),
            Err(ConfigError::PartUuid(_))
        ));
        body.partuuid = Some("0eaa91a0-01".into());
        s.put_drive("a", &body).unwrap();
        body.path_on_host = Some("/nonexistent/disk.img".into());
        let err = s.put_drive("a", &body).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/disk.img"), "{err}");
        body.path_on_host = Some("/".into());
        assert!(s.put_drive("a", &body).is_err());
        body.path_on_host = None;
        assert!(matches!(
            s.put_drive("a", &body),
            Err(ConfigError::DrivePathMissing(_))
        ));
        body.path_on_host = Some(f.path().to_string_lossy().into());
        body.socket = Some("/tmp/vhost.sock".into());
        assert!(matches!(
            s.put_drive("a", &body),
            Err(ConfigError::VhostUser(_))
        ));
        body.socket = None;
        body.rate_limiter = Some(RateLimiterBody {
            bandwidth: None,
            ops: Some(TokenBucketBody {
                size: 1,
                one_time_burst: None,
                refill_time: u64::MAX,
            }),
        });
        assert!(matches!(
            s.put_drive("a", &body),
            Err(ConfigError::RefillTime { .. })
        ));
    }

    #[test]
    fn config_round_trips_to_api_form() {
        let f = temp_file();
        let mut s = ConfigStore::default();
        let mut body = drive_body("rootfs", f.path(), true);
        body.is_read_only = Some(true);
        body.cache_type = Some(CacheTypeBody::Writeback);
        body.io_engine = Some(IoEngineBody::Async);
        body.rate_limiter = Some(RateLimiterBody {
            bandwidth: Some(TokenBucketBody {
                size: 1000,
                one_time_burst: Some(5),
                refill_time: 100,
            }),
            ops: None,
        });
        s.put_drive("rootfs", &body).unwrap();
        assert_eq!(s.drive_bodies(), vec![body]);
    }
}
