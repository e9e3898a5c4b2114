//! The microVM's resources (Firecracker's `VmResources`): what the command line, `PUT`s and a
//! `--config-file` build up before `InstanceStart`, or what a loaded snapshot brought.
//!
//! Every value is validated here, once, whichever front end sent it, and stored as the VMM's own
//! types; [`VmResources::vm_config`] hands the VMM a finished `VmConfig`. Files are opened at
//! configuration time, as Firecracker does, so a wrong path is reported by the request that named
//! it rather than by `InstanceStart`.

use std::path::{Path, PathBuf};

use super::action::VmmAction;
use super::models::{
    BootSourceBody, CpuTemplate, DriveBody, EntropyBody, HugePages, MachineConfigBody,
    NetworkInterfaceBody, PartialDriveBody, PartialNetworkInterfaceBody, VsockBody,
};
use crate::host_file::{self, Accept};
use crate::ids::{IdError, check_resource_id};
use crate::snapshot::state::DeviceConfigs;
use crate::vm_config::{
    BootOptions, BootSource, DriveConfig, EntropyConfig, MachineConfig, MachineLimitError,
    NetworkInterfaceConfig, RateLimiterConfig, RateLimiterError, VmConfig, VsockConfig,
    check_mem_size_mib, check_vcpu_count,
};

/// Why a configuration request was refused; the text is the API's `fault_message`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A machine size out of squib's limits.
    #[error(transparent)]
    MachineLimit(#[from] MachineLimitError),
    /// A `PUT /machine-config` without a required field.
    #[error("PUT /machine-config requires `{0}` (use PATCH to change some fields only)")]
    MachineFieldMissing(&'static str),
    /// A machine feature squib cannot provide.
    #[error("{0} is not supported by squib")]
    MachineFeature(&'static str),
    /// An id Firecracker's rules refuse (see [`crate::ids`]).
    #[error(transparent)]
    InvalidId(#[from] IdError),
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
    /// An action that does not configure resources (a caller's mistake, not the client's).
    #[error("{0} does not configure the microVM's resources")]
    NotConfiguration(&'static str),
    /// A NUL byte in the command line.
    #[error("boot_args must not contain NUL bytes")]
    BootArgsNul,
    /// A token bucket that cannot be represented.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
    /// `InstanceStart` before `PUT /boot-source`.
    #[error("cannot start the microVM without a kernel: PUT /boot-source first")]
    NoBootSource,
    /// `guest_cid` 0, 1 and 2 are reserved (hypervisor, local, host).
    #[error("guest_cid must be at least 3, got {0}")]
    GuestCid(u32),
    /// A `uds_path` squib cannot bind.
    #[error("cannot use uds_path `{}`: {reason}", path.display())]
    UdsPath {
        /// The path as given.
        path: PathBuf,
        /// The problem.
        reason: &'static str,
    },
    /// A `PATCH` naming a drive that was never configured.
    #[error("drive `{0}` does not exist")]
    UnknownDrive(String),
    /// A `PATCH` naming an interface that was never configured.
    #[error("network interface `{0}` does not exist")]
    UnknownNetworkInterface(String),
    /// `guest_mac` is not a MAC address.
    #[error("network interface `{iface}`: {reason}")]
    GuestMac {
        /// The interface.
        iface: String,
        /// What is wrong.
        reason: String,
    },
    /// `host_dev_name` is not a Linux interface name.
    #[error(
        "network interface `{0}`: host_dev_name must be 1 to 15 bytes, without `/`, NUL or whitespace"
    )]
    HostDevName(String),
    /// Two interfaces on one TAP device or with one MAC (Firecracker refuses both).
    #[error("network interface `{iface}`: {what} `{value}` is already used by interface `{other}`")]
    NetworkInterfaceClash {
        /// The interface being configured.
        iface: String,
        /// `host_dev_name` or `guest_mac`.
        what: &'static str,
        /// The shared value.
        value: String,
        /// The interface that has it.
        other: String,
    },
}

fn check_file(
    what: &'static str,
    path: &str,
    writable: bool,
    accept: Accept,
) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(path);
    let fail = |reason: String| ConfigError::File {
        what,
        path: path.clone(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(fail("the path is empty".into()));
    }
    host_file::open(&path, writable, accept).map_err(|e| fail(e.to_string()))?;
    Ok(path)
}

/// Validates an optional `RateLimiter` body (the one check lives with the type).
fn rate_limiter(
    body: Option<&RateLimiterConfig>,
) -> Result<Option<RateLimiterConfig>, ConfigError> {
    body.map(|b| b.check().map(|()| *b))
        .transpose()
        .map_err(ConfigError::from)
}

/// A resource id from the path, which the body must repeat.
fn check_path_id(path_id: &str, body_id: &str) -> Result<(), ConfigError> {
    check_resource_id(path_id)?;
    if body_id != path_id {
        return Err(ConfigError::IdMismatch {
            path: path_id.to_owned(),
            body: body_id.to_owned(),
        });
    }
    Ok(())
}

/// Opens a drive's backing file the way the guest will use it, so permission errors show now.
pub fn check_drive_path(path: &str, read_only: bool) -> Result<PathBuf, ConfigError> {
    check_file(
        "path_on_host",
        path,
        !read_only,
        Accept::RegularFileOrBlockDevice,
    )
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

/// A validated `PATCH /drives`: the drive as it becomes with a new file, and a new throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveUpdate {
    /// The drive's configuration with the new `path_on_host`, if one was given.
    pub swapped: Option<DriveConfig>,
    /// The buckets given (absent ones keep their configuration).
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A validated `PATCH /network-interfaces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkInterfaceUpdate {
    /// Receive buckets given.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Transmit buckets given.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// The configuration being built before boot.
#[derive(Debug, Default)]
pub struct VmResources {
    boot: Option<BootSource>,
    machine: MachineConfig,
    /// In the order configured; [`vm_config`](Self::vm_config) moves the root device first.
    drives: Vec<DriveConfig>,
    /// In the order configured.
    network_interfaces: Vec<NetworkInterfaceConfig>,
    entropy: Option<EntropyConfig>,
    vsock: Option<VsockConfig>,
}

impl VmResources {
    /// Takes the machine and devices of a loaded snapshot, so that `GET /vm/config` reports them,
    /// `PATCH` finds them and a later snapshot records them.
    pub fn adopt_loaded(&mut self, config: &VmConfig) {
        self.machine = config.machine.clone();
        self.drives = config.drives.clone();
        self.network_interfaces = config.network_interfaces.clone();
        self.entropy = config.entropy;
        self.vsock = config.vsock.clone();
    }

    /// The virtio devices' configuration as the guest has it now (every `PATCH` since the boot
    /// or the load included), in slot order: what a snapshot records.
    pub fn device_configs(&self) -> DeviceConfigs {
        DeviceConfigs {
            drives: self.ordered_drives().cloned().collect(),
            network_interfaces: self.network_interfaces.clone(),
            entropy: self.entropy,
            vsock: self.vsock.clone(),
        }
    }

    /// Whether anything was configured (a snapshot loads only into an unconfigured microVM,
    /// as in Firecracker).
    pub fn is_configured(&self) -> bool {
        self.boot.is_some() || !self.drives.is_empty() || self.machine != MachineConfig::default()
    }

    /// Applies one action that configures the machine or a device (`PUT /boot-source`,
    /// `/machine-config`, `/drives`, `/network-interfaces`, `/entropy`, `/vsock`), whichever front
    /// end produced it: the one place where requests become validated resources.
    pub fn apply(&mut self, action: &VmmAction) -> Result<(), ConfigError> {
        match action {
            VmmAction::PutBootSource(body) => self.set_boot_source(body),
            VmmAction::PutMachineConfig(body) => self.put_machine_config(body),
            VmmAction::PatchMachineConfig(body) => self.patch_machine_config(body),
            VmmAction::PutDrive(id, body) => self.put_drive(id, body),
            VmmAction::PutNetworkInterface(id, body) => self.put_network_interface(id, body),
            VmmAction::PutEntropy(body) => self.set_entropy(body),
            VmmAction::PutVsock(body) => self.set_vsock(body),
            other => Err(ConfigError::NotConfiguration(other.endpoint())),
        }
    }

    /// `PUT /boot-source`.
    pub fn set_boot_source(&mut self, body: &BootSourceBody) -> Result<(), ConfigError> {
        let kernel_image_path = check_file(
            "kernel_image_path",
            &body.kernel_image_path,
            false,
            Accept::RegularFile,
        )?;
        let initrd_path = body
            .initrd_path
            .as_deref()
            .map(|p| check_file("initrd_path", p, false, Accept::RegularFile))
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
            m.vcpu_count = check_vcpu_count(n)?;
        }
        if let Some(mib) = body.mem_size_mib {
            m.mem_size_mib = check_mem_size_mib(mib)?;
        }
        if body.smt == Some(true) {
            return Err(ConfigError::MachineFeature(
                "smt (simultaneous multithreading)",
            ));
        }
        if let Some(track) = body.track_dirty_pages {
            m.track_dirty_pages = track;
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
        check_path_id(path_id, &body.drive_id)?;
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
            cache_type: body.cache_type.unwrap_or_default(),
            io_engine: body.io_engine.unwrap_or_default(),
            direct: body.direct,
            rate_limiter: rate_limiter(body.rate_limiter.as_ref())?,
        })
    }

    /// `PUT /network-interfaces/{path_id}`: creates the interface or replaces its configuration.
    /// As in Firecracker, no two interfaces share a TAP device or a MAC.
    pub fn put_network_interface(
        &mut self,
        path_id: &str,
        body: &NetworkInterfaceBody,
    ) -> Result<(), ConfigError> {
        check_path_id(path_id, &body.iface_id)?;
        let name = &body.host_dev_name;
        if name.is_empty()
            || name.len() > 15
            || name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(ConfigError::HostDevName(path_id.to_owned()));
        }
        let guest_mac = body
            .guest_mac
            .as_deref()
            .map(|m| {
                m.parse::<squib_virtio::net::MacAddr>()
                    .map_err(|e| ConfigError::GuestMac {
                        iface: path_id.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .transpose()?;
        for other in self
            .network_interfaces
            .iter()
            .filter(|i| i.iface_id != path_id)
        {
            let clash = |what, value: String| ConfigError::NetworkInterfaceClash {
                iface: path_id.to_owned(),
                what,
                value,
                other: other.iface_id.clone(),
            };
            if other.host_dev_name == *name {
                return Err(clash("host_dev_name", name.clone()));
            }
            if let Some(mac) = guest_mac.filter(|m| other.guest_mac == Some(*m)) {
                return Err(clash("guest_mac", mac.to_string()));
            }
        }
        let iface = NetworkInterfaceConfig {
            iface_id: path_id.to_owned(),
            host_dev_name: name.clone(),
            guest_mac,
            rx_rate_limiter: rate_limiter(body.rx_rate_limiter.as_ref())?,
            tx_rate_limiter: rate_limiter(body.tx_rate_limiter.as_ref())?,
        };
        match self
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == path_id)
        {
            Some(existing) => *existing = iface,
            None => self.network_interfaces.push(iface),
        }
        Ok(())
    }

    /// The interfaces in API form, in the order configured.
    pub fn network_interface_bodies(&self) -> Vec<NetworkInterfaceBody> {
        self.network_interfaces
            .iter()
            .map(|i| NetworkInterfaceBody {
                iface_id: i.iface_id.clone(),
                host_dev_name: i.host_dev_name.clone(),
                guest_mac: i.guest_mac.map(|m| m.to_string()),
                rx_rate_limiter: i.rx_rate_limiter,
                tx_rate_limiter: i.tx_rate_limiter,
            })
            .collect()
    }

    /// `PUT /entropy`: adds the entropy device or replaces its configuration.
    pub fn set_entropy(&mut self, body: &EntropyBody) -> Result<(), ConfigError> {
        self.entropy = Some(EntropyConfig {
            rate_limiter: rate_limiter(body.rate_limiter.as_ref())?,
        });
        Ok(())
    }

    /// `PUT /vsock`: adds the vsock device or replaces its configuration. The socket is bound
    /// at `InstanceStart`; a path that already exists is refused now, as Firecracker's bind
    /// would refuse it. `vsock_id` is deprecated and ignored.
    pub fn set_vsock(&mut self, body: &VsockBody) -> Result<(), ConfigError> {
        if body.guest_cid < 3 {
            return Err(ConfigError::GuestCid(body.guest_cid));
        }
        let path = PathBuf::from(&body.uds_path);
        let fail = |reason| ConfigError::UdsPath {
            path: path.clone(),
            reason,
        };
        if body.uds_path.is_empty() {
            return Err(fail("the path is empty"));
        }
        if body.uds_path.contains('\0') {
            return Err(fail("the path contains a NUL byte"));
        }
        // sun_path holds 108 bytes with the NUL; guest-initiated sockets add `_<port>`.
        if body.uds_path.len() > 96 {
            return Err(fail("the path is longer than 96 bytes"));
        }
        if path.symlink_metadata().is_ok() {
            return Err(fail("a file already exists there (address in use)"));
        }
        self.vsock = Some(VsockConfig {
            guest_cid: body.guest_cid,
            uds_path: path,
        });
        Ok(())
    }

    /// Validates a `PATCH /drives/{path_id}` against the drive it names; nothing changes until
    /// [`commit_drive`](Self::commit_drive), once the running VMM has applied it.
    pub fn drive_update(
        &self,
        path_id: &str,
        body: &PartialDriveBody,
    ) -> Result<DriveUpdate, ConfigError> {
        check_path_id(path_id, &body.drive_id)?;
        let current = self
            .drives
            .iter()
            .find(|d| d.drive_id == path_id)
            .ok_or_else(|| ConfigError::UnknownDrive(path_id.to_owned()))?;
        let swapped = body
            .path_on_host
            .as_deref()
            .map(|p| -> Result<DriveConfig, ConfigError> {
                Ok(DriveConfig {
                    path_on_host: check_drive_path(p, current.is_read_only)?,
                    ..current.clone()
                })
            })
            .transpose()?;
        Ok(DriveUpdate {
            swapped,
            rate_limiter: rate_limiter(body.rate_limiter.as_ref())?,
        })
    }

    /// Records a drive update the running VMM applied, so that `GET /vm/config` (and a snapshot)
    /// describe what the guest has now.
    pub fn commit_drive(&mut self, drive_id: &str, update: &DriveUpdate) {
        if let Some(d) = self.drives.iter_mut().find(|d| d.drive_id == drive_id) {
            if let Some(swapped) = &update.swapped {
                d.path_on_host = swapped.path_on_host.clone();
            }
            d.rate_limiter = RateLimiterConfig::patched(d.rate_limiter, update.rate_limiter);
        }
    }

    /// Validates a `PATCH /network-interfaces/{path_id}`; nothing changes until
    /// [`commit_network_interface`](Self::commit_network_interface).
    pub fn network_interface_update(
        &self,
        path_id: &str,
        body: &PartialNetworkInterfaceBody,
    ) -> Result<NetworkInterfaceUpdate, ConfigError> {
        check_path_id(path_id, &body.iface_id)?;
        if !self
            .network_interfaces
            .iter()
            .any(|i| i.iface_id == path_id)
        {
            return Err(ConfigError::UnknownNetworkInterface(path_id.to_owned()));
        }
        Ok(NetworkInterfaceUpdate {
            rx_rate_limiter: rate_limiter(body.rx_rate_limiter.as_ref())?,
            tx_rate_limiter: rate_limiter(body.tx_rate_limiter.as_ref())?,
        })
    }

    /// Records an interface update the running VMM applied.
    pub fn commit_network_interface(&mut self, iface_id: &str, update: &NetworkInterfaceUpdate) {
        if let Some(i) = self
            .network_interfaces
            .iter_mut()
            .find(|i| i.iface_id == iface_id)
        {
            i.rx_rate_limiter =
                RateLimiterConfig::patched(i.rx_rate_limiter, update.rx_rate_limiter);
            i.tx_rate_limiter =
                RateLimiterConfig::patched(i.tx_rate_limiter, update.tx_rate_limiter);
        }
    }

    /// The machine configuration (defaults until changed).
    pub fn machine(&self) -> &MachineConfig {
        &self.machine
    }

    /// The finished configuration. As in Firecracker, the root device comes first, so it is
    /// `/dev/vda`; the other drives keep the order they were added in.
    pub fn vm_config(
        &self,
        boot_timer: bool,
        boot_options: BootOptions,
    ) -> Result<VmConfig, ConfigError> {
        let boot = self.boot.clone().ok_or(ConfigError::NoBootSource)?;
        Ok(VmConfig {
            boot: Some(boot),
            machine: self.machine.clone(),
            drives: self.ordered_drives().cloned().collect(),
            network_interfaces: self.network_interfaces.clone(),
            boot_timer,
            boot_options,
            entropy: self.entropy,
            vsock: self.vsock.clone(),
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

    /// The entropy device in API form.
    pub fn entropy_body(&self) -> Option<EntropyBody> {
        self.entropy.map(|e| EntropyBody {
            rate_limiter: e.rate_limiter,
        })
    }

    /// The vsock device in API form.
    pub fn vsock_body(&self) -> Option<VsockBody> {
        self.vsock.as_ref().map(|v| VsockBody {
            guest_cid: v.guest_cid,
            uds_path: path_string(&v.uds_path),
            vsock_id: None,
        })
    }

    /// The drives in API form, in guest order.
    pub fn drive_bodies(&self) -> Vec<DriveBody> {
        self.ordered_drives().map(drive_body).collect()
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn drive_body(d: &DriveConfig) -> DriveBody {
    DriveBody {
        drive_id: d.drive_id.clone(),
        path_on_host: Some(path_string(&d.path_on_host)),
        is_root_device: d.is_root_device,
        is_read_only: Some(d.is_read_only),
        partuuid: d.partuuid.clone(),
        cache_type: Some(d.cache_type),
        io_engine: Some(d.io_engine),
        rate_limiter: d.rate_limiter,
        socket: None,
        direct: d.direct,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::vm_config::{CacheType, IoEngine, TokenBucketConfig};

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
            direct: false,
        }
    }

    #[test]
    fn machine_config_ranges_and_refusals() {
        let mut s = VmResources::default();
        let put = |v, m| MachineConfigBody {
            vcpu_count: Some(v),
            mem_size_mib: Some(m),
            ..Default::default()
        };
        assert_eq!(
            s.put_machine_config(&put(0, 128)),
            Err(MachineLimitError::VcpuCount(0).into())
        );
        assert_eq!(
            s.put_machine_config(&put(33, 128)),
            Err(MachineLimitError::VcpuCount(33).into())
        );
        assert_eq!(
            s.put_machine_config(&put(300, 128)),
            Err(MachineLimitError::VcpuCount(300).into())
        );
        assert_eq!(
            s.put_machine_config(&put(2, 0)),
            Err(MachineLimitError::MemSize(0).into())
        );
        assert_eq!(
            s.put_machine_config(&put(2, u64::MAX)),
            Err(MachineLimitError::MemSize(u64::MAX).into())
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
        let mut s = VmResources::default();
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
        assert_eq!(
            s.vm_config(false, BootOptions::default()),
            Err(ConfigError::NoBootSource)
        );
        s.set_boot_source(&BootSourceBody {
            kernel_image_path: a.path().to_string_lossy().into(),
            ..Default::default()
        })
        .unwrap();
        let cfg = s.vm_config(false, BootOptions::default()).unwrap();
        let ids: Vec<_> = cfg.drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
        assert_eq!(cfg.drives[0].path_on_host, c.path());
    }

    #[test]
    fn drive_bodies_are_validated() {
        let f = temp_file();
        let mut s = VmResources::default();
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
        body.rate_limiter = Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: u64::MAX,
            }),
        });
        assert!(matches!(
            s.put_drive("a", &body),
            Err(ConfigError::RateLimiter(RateLimiterError {
                bucket: "ops",
                ..
            }))
        ));
    }

    #[test]
    fn config_round_trips_to_api_form() {
        let f = temp_file();
        let mut s = VmResources::default();
        let mut body = drive_body("rootfs", f.path(), true);
        body.is_read_only = Some(true);
        body.cache_type = Some(CacheType::Writeback);
        body.io_engine = Some(IoEngine::Async);
        body.rate_limiter = Some(RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: 5,
                refill_time_ms: 100,
            }),
            ops: None,
        });
        s.put_drive("rootfs", &body).unwrap();
        assert_eq!(s.drive_bodies(), vec![body]);
    }

    fn iface(id: &str, tap: &str, mac: Option<&str>) -> NetworkInterfaceBody {
        NetworkInterfaceBody {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    #[test]
    fn network_interfaces_follow_firecrackers_rules() {
        let mut s = VmResources::default();
        let mut eth0 = iface("eth0", "tap0", Some("06:00:00:00:00:01"));
        eth0.tx_rate_limiter = Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(crate::vm_config::TokenBucketConfig {
                size: 10,
                one_time_burst: 0,
                refill_time_ms: 100,
            }),
        });
        s.put_network_interface("eth0", &eth0).unwrap();
        assert_eq!(s.network_interface_bodies(), vec![eth0.clone()]);
        // Replacing by id is fine; sharing a TAP or a MAC with another interface is not.
        s.put_network_interface("eth0", &eth0).unwrap();
        let tap = s.put_network_interface("eth1", &iface("eth1", "tap0", None));
        assert!(matches!(
            tap,
            Err(ConfigError::NetworkInterfaceClash {
                what: "host_dev_name",
                ..
            })
        ));
        let mac =
            s.put_network_interface("eth1", &iface("eth1", "tap1", Some("06:00:00:00:00:01")));
        assert!(matches!(
            mac,
            Err(ConfigError::NetworkInterfaceClash {
                what: "guest_mac",
                ..
            })
        ));
        for (id, body) in [
            ("eth1", iface("eth2", "tap1", None)),
            ("eth-1", iface("eth-1", "tap1", None)),
            ("eth1", iface("eth1", "", None)),
            ("eth1", iface("eth1", "a_very_long_tap_name", None)),
            ("eth1", iface("eth1", "tap/1", None)),
            ("eth1", iface("eth1", "tap1", Some("06:00:00:00:00"))),
        ] {
            assert!(s.put_network_interface(id, &body).is_err(), "{id} {body:?}");
        }
        s.put_network_interface("eth1", &iface("eth1", "tap1", None))
            .unwrap();
        let boot = BootSourceBody {
            kernel_image_path: temp_file().path().display().to_string(),
            boot_args: None,
            initrd_path: None,
        };
        let f = temp_file();
        let boot = BootSourceBody {
            kernel_image_path: f.path().display().to_string(),
            ..boot
        };
        s.set_boot_source(&boot).unwrap();
        let cfg = s.vm_config(false, BootOptions::default()).unwrap();
        let ids: Vec<_> = cfg
            .network_interfaces
            .iter()
            .map(|i| i.iface_id.as_str())
            .collect();
        assert_eq!(ids, ["eth0", "eth1"]);
        assert_eq!(
            cfg.network_interfaces[0].guest_mac.unwrap().bytes(),
            [6, 0, 0, 0, 0, 1]
        );
    }
}
