//! Shared pieces of squib's fuzz targets: a fake VMM for the API targets and the sandbox that
//! keeps fuzz-chosen paths away from the host's files.
#![forbid(unsafe_code)]

use std::path::{Component, Path};
use std::sync::Once;

use squib_vmm::api::controller::{ApiController, InstanceSettings};
use squib_vmm::api::vmm_control::{ControlError, DriveCounters, ExitNotice, RunState, VmmControl};
use squib_vmm::snapshot::{CreateRequest, LoadRequest};
use squib_vmm::snapshot::state::DeviceConfigs;
use squib_vmm::vm_config::{DriveConfig, RateLimiterConfig, VmConfig};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A VMM that records nothing and always agrees: the targets exercise parsing and validation.
#[derive(Debug, Default)]
pub struct FakeVmm {
    state: Option<RunState>,
}

impl VmmControl for FakeVmm {
    fn start(&mut self, _config: &VmConfig, _exit: ExitNotice) -> Result<(), ControlError> {
        self.state = Some(RunState::Running);
        Ok(())
    }
    fn state(&self) -> RunState {
        self.state.unwrap_or(RunState::NotStarted)
    }
    fn pause(&mut self) -> Result<(), ControlError> {
        self.state = Some(RunState::Paused);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ControlError> {
        self.state = Some(RunState::Running);
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        Ok(())
    }
    fn swap_drive(&mut self, _: &DriveConfig) -> Result<(), ControlError> {
        Ok(())
    }
    fn update_rate_limiter(&mut self, _: &str, _: &RateLimiterConfig) -> Result<(), ControlError> {
        Ok(())
    }
    fn drive_counters(&self) -> Vec<(String, DriveCounters)> {
        Vec::new()
    }
    // The API's validation is what is fuzzed; no snapshot file is ever written or read.
    fn create_snapshot(&mut self, _: &CreateRequest, _: &DeviceConfigs) -> Result<(), ControlError> {
        Err(ControlError::new("the fuzzing VMM takes no snapshots"))
    }
    fn load_snapshot(&mut self, _: &LoadRequest, _: ExitNotice) -> Result<VmConfig, ControlError> {
        Err(ControlError::new("the fuzzing VMM loads no snapshots"))
    }
    fn exit_status(&self) -> Option<i32> {
        None
    }
}

/// A controller over [`FakeVmm`], its working directory the sandbox.
pub fn controller() -> ApiController<FakeVmm> {
    enter_sandbox();
    let settings = InstanceSettings {
        id: "fuzz".into(),
        boot_timer: false,
        boot_options: Default::default(),
    };
    let wake = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    ApiController::new(settings, FakeVmm::default(), None, wake)
}

static SANDBOX: Once = Once::new();

/// Makes a scratch directory with a `kernel`, an `initrd` and a `disk` file the current
/// directory, once per process.
pub fn enter_sandbox() {
    SANDBOX.call_once(|| {
        let dir = std::env::temp_dir().join(format!("squib-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("sandbox dir");
        for (name, len) in [("kernel", 4096), ("initrd", 512), ("disk", 1 << 20)] {
            std::fs::write(dir.join(name), vec![0u8; len]).expect("sandbox file");
        }
        std::env::set_current_dir(&dir).expect("enter the sandbox");
    });
}

/// Whether a fuzz-chosen path stays inside the sandbox: relative, plain names only. Anything
/// else is not handed to squib (it would open host files such as `/dev/watchdog`).
pub fn is_sandboxed(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

pub mod shadow_disk {
    //! A disk that checks every operation the device sends it and logs what changed.

    use std::sync::{Mutex, PoisonError};

    use squib_virtio::GuestMemory;
    use squib_virtio::block::backend::{BackendError, BlockBackend, Segment};
    use squib_virtio::testing::MemDisk;
    use vm_memory::Bytes;

    /// One change the device made to the disk.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Change {
        /// `write_vectored_at`: offset and the bytes written.
        Write(u64, Vec<u8>),
        /// `write_zeroes` or `discard`: offset and length.
        Zero(u64, u64),
    }

    /// A [`MemDisk`] that panics when the device sends it a range outside the disk or a write to
    /// a read-only disk (the device must refuse those itself), and logs every change.
    #[derive(Debug)]
    pub struct ShadowDisk {
        disk: MemDisk,
        size: u64,
        read_only: bool,
        changes: Mutex<Vec<Change>>,
    }

    impl ShadowDisk {
        /// A disk holding `contents`.
        pub fn new(contents: Vec<u8>, read_only: bool) -> Self {
            Self {
                size: contents.len() as u64,
                disk: MemDisk::with_contents(contents, read_only),
                read_only,
                changes: Mutex::new(Vec::new()),
            }
        }

        /// The disk's bytes now.
        pub fn contents(&self) -> Vec<u8> {
            self.disk.contents()
        }

        /// The changes, in the order they reached the disk.
        pub fn changes(&self) -> Vec<Change> {
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn check(&self, what: &str, offset: u64, len: u64, write: bool) {
            assert!(
                offset.checked_add(len).is_some_and(|end| end <= self.size),
                "{what} of {len} bytes at {offset:#x} reached a {:#x}-byte disk",
                self.size
            );
            assert!(
                !(write && self.read_only),
                "{what} reached a read-only disk"
            );
        }
    }

    fn total(segments: &[Segment]) -> u64 {
        segments.iter().map(|s| u64::from(s.len)).sum()
    }

    impl BlockBackend for ShadowDisk {
        fn size(&self) -> u64 {
            self.size
        }
        fn is_read_only(&self) -> bool {
            self.read_only
        }
        fn read_vectored_at(
            &self,
            mem: &GuestMemory,
            segments: &[Segment],
            offset: u64,
        ) -> Result<(), BackendError> {
            self.check("read", offset, total(segments), false);
            self.disk.read_vectored_at(mem, segments, offset)
        }
        fn write_vectored_at(
            &self,
            mem: &GuestMemory,
            segments: &[Segment],
            offset: u64,
        ) -> Result<(), BackendError> {
            self.check("write", offset, total(segments), true);
            let mut bytes = Vec::new();
            for s in segments {
                let mut part = vec![0u8; s.len as usize];
                if mem.read_slice(&mut part, s.addr).is_err() {
                    return Err(BackendError::GuestMemory {
                        addr: s.addr.0,
                        len: s.len,
                    });
                }
                bytes.extend_from_slice(&part);
            }
            self.disk.write_vectored_at(mem, segments, offset)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Write(offset, bytes));
            Ok(())
        }
        fn flush(&self) -> Result<(), BackendError> {
            self.disk.flush()
        }
        fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
            self.check("discard", offset, len, true);
            self.disk.discard(offset, len)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Zero(offset, len));
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
            self.check("write_zeroes", offset, len, true);
            self.disk.write_zeroes(offset, len)?;
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Zero(offset, len));
            Ok(())
        }
    }
}
