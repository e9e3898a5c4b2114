//! Per-thread seccomp filters, in Firecracker's style.
//!
//! Each squib thread belongs to one [`ThreadKind`], and installs that kind's BPF allowlist on
//! itself before it does its work (vCPUs before their first `KVM_RUN`). A syscall outside the
//! list raises SIGSYS, whose handler (`squib_host::bad_syscall`) ends the process with
//! [`STATUS_BAD_SYSCALL`] (Firecracker's 148).
//!
//! The filters come from `resources/seccomp/*.json` (Firecracker's JSON format), compiled into
//! Firecracker's binary format by `build.rs` and embedded here; `--seccomp-filter FILE` loads a
//! file in that binary format instead (every category of [`ThreadKind`] must be present), and
//! `--no-seccomp` installs none.
//!
//! A filter is inherited by the threads its thread creates afterwards, and a thread can only
//! narrow it. So a thread kind that starts others must allow what they need: the vCPU thread
//! starts the virtio workers (a driver's DRIVER_OK write runs on it), the API thread restarts
//! them when a paused VM resumes, and a worker starts its block I/O threads; each of those
//! installs its own, narrower list first thing, through the hook this module gives
//! `squib_virtio::threads`. See docs/security.md.

pub mod bpf_file;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::sock_filter;

use crate::exit::STATUS_GENERIC_ERROR;

/// Exit status when a thread made a syscall outside its allowlist (Firecracker's `BadSyscall`).
pub const STATUS_BAD_SYSCALL: u8 = 148;

/// squib's filters, compiled by `build.rs` from `resources/seccomp/`.
static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp.bpf"));

/// The kinds of threads squib runs, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The API server thread (which also builds the microVM and applies API changes).
    Api,
    /// The VMM's other threads: the command-line mode's main thread, the signal waiter, the
    /// VMM waiter and the console input forwarder.
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// A virtio device's worker thread.
    Device,
    /// A virtio-blk I/O pool thread.
    BlockIo,
}

impl ThreadKind {
    /// Every kind, in the order of [`Filters::programs`].
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Api,
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::BlockIo,
    ];

    /// The category name in filter files (Firecracker's `api`, `vmm`, `vcpu`, and squib's own).
    pub fn category(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::BlockIo => "blk_io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which filters to install.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FilterSource {
    /// squib's own, built in.
    #[default]
    BuiltIn,
    /// `--seccomp-filter FILE`: Firecracker's compiled format.
    File(PathBuf),
    /// `--no-seccomp`.
    Disabled,
}

/// Why the filters could not be loaded or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// `--seccomp-filter` could not be read.
    #[error("--seccomp-filter {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The filter map is malformed.
    #[error("{origin}: {source}")]
    Format {
        /// The file, or "built-in filters".
        origin: String,
        /// What is wrong.
        source: bpf_file::BpfFileError,
    },
    /// A thread category is missing from the map.
    #[error("{origin}: no filter for the `{category}` thread category (squib needs {expected})")]
    MissingCategory {
        /// The file, or "built-in filters".
        origin: String,
        /// The missing category.
        category: &'static str,
        /// Every category squib needs.
        expected: String,
    },
    /// The map has a category squib does not know.
    #[error("{origin}: unknown thread category `{category}` (squib has {expected})")]
    UnknownCategory {
        /// The file, or "built-in filters".
        origin: String,
        /// The unknown category.
        category: String,
        /// Every category squib knows.
        expected: String,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// glibc's arena limit could not be fixed (see `squib_host::malloc_arenas`).
    #[error("cannot fix the allocator's arena limit before filtering: {0}")]
    Allocator(std::io::Error),
    /// The kernel refused a filter.
    #[error("cannot install the `{category}` seccomp filter: {source}")]
    Install {
        /// The thread category.
        category: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
}

/// The loaded filters, one program per [`ThreadKind`] (empty: no filter for that kind).
#[derive(Debug)]
struct Filters {
    programs: Vec<Vec<sock_filter>>,
    /// Debug builds only: the kind of thread that makes a forbidden syscall right after
    /// installing its filter (`SQUIB_TEST_FORBIDDEN_SYSCALL`), for the tests of the trap.
    forbidden_syscall_in: Option<ThreadKind>,
}

/// `None` inside: `--no-seccomp`. Unset: [`init`] was never called (library use, tests).
static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

fn expected_categories() -> String {
    ThreadKind::ALL
        .iter()
        .map(|k| k.category())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes a compiled filter map and checks it has exactly squib's categories.
fn load(bytes: &[u8], origin: &str) -> Result<Vec<Vec<sock_filter>>, SeccompError> {
    let mut map = bpf_file::decode(bytes).map_err(|source| SeccompError::Format {
        origin: origin.into(),
        source,
    })?;
    let mut programs = Vec::with_capacity(ThreadKind::ALL.len());
    for kind in ThreadKind::ALL {
        let program = map
            .remove(kind.category())
            .ok_or_else(|| SeccompError::MissingCategory {
                origin: origin.into(),
                category: kind.category(),
                expected: expected_categories(),
            })?;
        programs.push(program);
    }
    if let Some(category) = map.into_keys().next() {
        return Err(SeccompError::UnknownCategory {
            origin: origin.into(),
            category,
            expected: expected_categories(),
        });
    }
    Ok(programs)
}

/// Takes `--no-seccomp` and `--seccomp-filter FILE` (or `--seccomp-filter=FILE`) out of `args`,
/// which both of squib's modes accept; they exclude each other, as in Firecracker.
pub fn take_flags(args: &mut Vec<OsString>) -> Result<FilterSource, String> {
    let mut source = FilterSource::BuiltIn;
    let mut rest = Vec::with_capacity(args.len());
    let mut it = std::mem::take(args).into_iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        let chosen = if text == "--no-seccomp" {
            FilterSource::Disabled
        } else if text == "--seccomp-filter" {
            match it.next() {
                Some(path) => FilterSource::File(path.into()),
                None => return Err("--seccomp-filter needs a value".into()),
            }
        } else if let Some(path) = text.strip_prefix("--seccomp-filter=") {
            FilterSource::File(path.into())
        } else {
            rest.push(arg);
            continue;
        };
        if source != FilterSource::BuiltIn {
            return Err("--no-seccomp and --seccomp-filter exclude each other".into());
        }
        source = chosen;
    }
    *args = rest;
    Ok(source)
}

/// Loads the filters `source` names, installs the SIGSYS handler and the worker-thread hook.
/// Call it once, in `main`, before any thread starts; threads then call [`enter`].
pub fn init(source: &FilterSource) -> Result<(), SeccompError> {
    let filters = match source {
        FilterSource::Disabled => None,
        FilterSource::BuiltIn => Some(load(EMBEDDED, "built-in filters")?),
        FilterSource::File(path) => Some(load(&read_file(path)?, &path.display().to_string())?),
    };
    if filters.is_some() {
        squib_host::bad_syscall::install_handler(STATUS_BAD_SYSCALL)
            .map_err(SeccompError::Handler)?;
        // glibc's default (8 per CPU), fixed now: computing it later opens a /sys file.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        squib_host::malloc_arenas::set_arena_limit(8 * cpus).map_err(SeccompError::Allocator)?;
    }
    let _ = FILTERS.set(filters.map(|programs| Filters {
        programs,
        forbidden_syscall_in: test_trigger(),
    }));
    squib_virtio::threads::set_start_hook(|thread| {
        enter_or_exit(match thread {
            squib_virtio::threads::WorkerThread::Device => ThreadKind::Device,
            squib_virtio::threads::WorkerThread::BlockIo => ThreadKind::BlockIo,
        });
    });
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, SeccompError> {
    use std::io::Read;
    let read = |source| SeccompError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" without reading an endless file.
    std::fs::File::open(path)
        .map_err(read)?
        .take(bpf_file::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    Ok(bytes)
}

/// `SQUIB_TEST_FORBIDDEN_SYSCALL=<category>`: a test-only trigger, compiled into debug builds
/// only, so that the tests can prove a forbidden syscall ends the process with 148.
#[cfg(debug_assertions)]
fn test_trigger() -> Option<ThreadKind> {
    let wanted = std::env::var("SQUIB_TEST_FORBIDDEN_SYSCALL").ok()?;
    ThreadKind::ALL.into_iter().find(|k| k.category() == wanted)
}

#[cfg(not(debug_assertions))]
fn test_trigger() -> Option<ThreadKind> {
    None
}

/// squib's built-in filters in Firecracker's compiled format (what `--seccomp-filter` reads).
pub fn built_in_filters() -> &'static [u8] {
    EMBEDDED
}

/// Whether filters are installed (not `--no-seccomp`, and [`init`] was called).
pub fn enabled() -> bool {
    matches!(FILTERS.get(), Some(Some(_)))
}

/// Installs `kind`'s filter on the calling thread. Does nothing under `--no-seccomp`, or when
/// [`init`] was not called (squib used as a library).
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(Some(filters)) = FILTERS.get() else {
        return Ok(());
    };
    let program = &filters.programs[kind.index()];
    if program.is_empty() {
        // An empty program in a `--seccomp-filter` file: no filter for this kind (Firecracker).
        return Ok(());
    }
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        category: kind.category(),
        source,
    })?;
    if filters.forbidden_syscall_in == Some(kind) {
        squib_host::bad_syscall::call_forbidden_syscall();
    }
    Ok(())
}

/// [`enter`] for threads with no one to report to: a thread that cannot confine itself ends
/// the process rather than run unconfined.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(err) = enter(kind) {
        tracing::error!("{err}");
        std::process::exit(i32::from(STATUS_GENERIC_ERROR));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_filters_cover_every_thread_kind() {
        let programs = load(EMBEDDED, "built-in").unwrap();
        assert_eq!(programs.len(), ThreadKind::ALL.len());
        assert!(programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn compiled_format_round_trips_and_refuses_bad_maps() {
        let map = bpf_file::decode(EMBEDDED).unwrap();
        assert_eq!(bpf_file::encode(&map), EMBEDDED);

        let mut missing = map.clone();
        missing.remove("blk_io");
        let err = load(&bpf_file::encode(&missing), "f").unwrap_err();
        assert!(err.to_string().contains("`blk_io`"), "{err}");

        let mut extra = map.clone();
        extra.insert("bogus".into(), map["vmm"].clone());
        let err = load(&bpf_file::encode(&extra), "f").unwrap_err();
        assert!(
            err.to_string().contains("unknown thread category `bogus`"),
            "{err}"
        );

        let bytes = bpf_file::encode(&map);
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            assert_eq!(
                bpf_file::decode(&bytes[..cut]).unwrap_err(),
                bpf_file::BpfFileError::Truncated,
                "cut at {cut}"
            );
        }
        // A count far beyond the file is refused without allocating for it.
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(bpf_file::decode(&huge).is_err());
        assert!(matches!(
            bpf_file::decode(&vec![0; bpf_file::MAX_FILE_BYTES + 1]),
            Err(bpf_file::BpfFileError::TooLarge(_))
        ));
    }

    #[test]
    fn flags_are_taken_out_of_the_arguments() {
        let os = |l: &[&str]| l.iter().map(OsString::from).collect::<Vec<_>>();
        let mut args = os(&["--api-sock", "s", "--no-seccomp", "--id", "x"]);
        assert_eq!(take_flags(&mut args), Ok(FilterSource::Disabled));
        assert_eq!(args, os(&["--api-sock", "s", "--id", "x"]));
        let mut args = os(&["--seccomp-filter", "f.bpf", "--kernel", "k"]);
        assert_eq!(
            take_flags(&mut args),
            Ok(FilterSource::File("f.bpf".into()))
        );
        assert_eq!(args, os(&["--kernel", "k"]));
        let mut args = os(&["--seccomp-filter=g"]);
        assert_eq!(take_flags(&mut args), Ok(FilterSource::File("g".into())));
        let mut args = os(&[]);
        assert_eq!(take_flags(&mut args), Ok(FilterSource::BuiltIn));
        for bad in [
            &["--no-seccomp", "--seccomp-filter", "f"][..],
            &["--seccomp-filter"],
        ] {
            assert!(take_flags(&mut os(bad)).is_err(), "{bad:?}");
        }
    }

    /// The JSON spells ioctl requests as numbers: check them against their definitions.
    #[test]
    fn the_json_ioctl_numbers_are_the_requests_they_name() {
        use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};
        const KVMIO: u32 = 0xAE;
        ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
        ioctl_iow_nr!(
            KVM_SET_SIGNAL_MASK,
            KVMIO,
            0x8b,
            kvm_bindings::kvm_signal_mask
        );
        ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
        // What a snapshot reads on the API thread.
        ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_bindings::kvm_mp_state);
        ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
        ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_bindings::kvm_fpu);
        ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
        ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
        ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_bindings::kvm_debugregs);
        ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_bindings::kvm_lapic_state);
        ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
        ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_bindings::kvm_cpuid2);
        ioctl_ior_nr!(
            KVM_GET_VCPU_EVENTS,
            KVMIO,
            0x9f,
            kvm_bindings::kvm_vcpu_events
        );
        ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
        ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_bindings::kvm_irqchip);
        ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_bindings::kvm_pit_state2);
        ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_bindings::kvm_clock_data);
        ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
        let expected = [
            ("KVM_RUN", KVM_RUN()),
            ("KVM_SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK()),
            ("KVM_GET_REGS", KVM_GET_REGS()),
            ("KVM_GET_MP_STATE", KVM_GET_MP_STATE()),
            ("KVM_GET_SREGS", KVM_GET_SREGS()),
            ("KVM_GET_FPU", KVM_GET_FPU()),
            ("KVM_GET_XSAVE", KVM_GET_XSAVE()),
            ("KVM_GET_XCRS", KVM_GET_XCRS()),
            ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS()),
            ("KVM_GET_LAPIC", KVM_GET_LAPIC()),
            ("KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ()),
            ("KVM_GET_CPUID2", KVM_GET_CPUID2()),
            ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
            ("KVM_GET_MSRS", KVM_GET_MSRS()),
            ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP()),
            ("KVM_GET_PIT2", KVM_GET_PIT2()),
            ("KVM_GET_CLOCK", KVM_GET_CLOCK()),
            ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG()),
            ("TCGETS", libc::TCGETS),
            ("TCSETS", libc::TCSETS),
            ("FIONBIO", libc::FIONBIO),
            ("TUNSETOFFLOAD", libc::TUNSETOFFLOAD),
            ("PR_SET_NAME", libc::PR_SET_NAME as u64),
            ("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS as u64),
            (
                "SECCOMP_SET_MODE_FILTER",
                u64::from(libc::SECCOMP_SET_MODE_FILTER),
            ),
            ("AF_UNIX", libc::AF_UNIX as u64),
        ];
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../resources/seccomp/x86_64-unknown-linux-gnu.json"
        ))
        .unwrap();
        let mut checked = 0;
        for filter in json.as_object().unwrap().values() {
            for rule in filter["filter"].as_array().unwrap() {
                for arg in rule["args"].as_array().into_iter().flatten() {
                    let name = arg["comment"].as_str().unwrap();
                    let (_, want) = expected
                        .iter()
                        .find(|(n, _)| *n == name)
                        .unwrap_or_else(|| panic!("no definition to check {name} against"));
                    assert_eq!(arg["val"].as_u64(), Some(*want), "{name}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 8, "only {checked} arguments checked");
    }

    #[test]
    fn names_are_lower_cased_as_firecracker_does() {
        let mut map = bpf_file::BpfMap::new();
        map.insert(
            "VMM".into(),
            bpf_file::decode(EMBEDDED).unwrap()["vmm"].clone(),
        );
        let decoded = bpf_file::decode(&bpf_file::encode(&map)).unwrap();
        assert!(decoded.contains_key("vmm"));
    }
}
