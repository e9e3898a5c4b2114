//! The jailer in front of the real squib (root and KVM; skipped loudly otherwise): the VMM runs
//! as the given uid/gid in the chroot, in its cgroup (v1 and v2), network namespace and new PID
//! namespace, with the limits set and no inherited descriptor, and the test guest passes.
//!
//! The jail holds only the binary, so squib is built statically for these tests (as Firecracker
//! requires a static binary): `cargo build` with `+crt-static` into `target/static`, once.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);
const UID: u32 = 12345;
const GID: u32 = 12346;
const PARENT_CGROUP: &str = "squib-sandbox-jailer-test";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace());
    c
}

/// Root and /dev/kvm, or a loud skip.
fn can_run(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().next() == Some("0"));
    if !root {
        eprintln!("SKIPPED {test}: the jailer needs root, this test did not run");
        return false;
    }
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {test}: /dev/kvm is absent, this test did not run");
        return false;
    }
    true
}

/// A statically linked squib, built once.
fn static_squib() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../static");
        let status = cargo()
            .args(["build", "-q", "-p", "squib-vmm", "--bin", "squib"])
            .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .unwrap();
        assert!(status.success(), "the static squib build failed");
        target_dir.join("x86_64-unknown-linux-gnu/debug/squib")
    })
}

fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| match std::env::var_os("SQUIB_TEST_GUEST") {
        Some(path) => PathBuf::from(path),
        None => {
            let out = cargo()
                .args(["run", "-q", "-p", "xtask", "--", "test-guest"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            PathBuf::from(stdout.lines().last().unwrap().trim())
        }
    })
}

/// One jail: its base directory, id, and the cgroups it may leave behind (removed on drop).
struct Jail {
    base: tempfile::TempDir,
    id: String,
    cgroups: Vec<PathBuf>,
    netns: Option<String>,
    /// The jailed squib, killed on drop if a failed test left it running.
    pid: Option<u32>,
}

impl Jail {
    /// Prepares `<base>/squib/<id>/root` with the guest, a disk owned by the VMM's uid and a
    /// config file that names them inside the jail.
    fn new(tag: &str, bench: bool) -> Self {
        let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let id = format!("sbx{tag}{}", std::process::id());
        let jail = Self {
            base,
            id,
            cgroups: Vec::new(),
            netns: None,
            pid: None,
        };
        let root = jail.root();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy(test_guest(), root.join("guest")).unwrap();
        let disk = root.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        std::os::unix::fs::chown(&disk, Some(UID), Some(GID)).unwrap();
        let boot_args = if bench {
            "guest.bench=randread guest.ops=1000000000"
        } else {
            ""
        };
        let config = serde_json::json!({
            "boot-source": { "kernel_image_path": "/guest", "boot_args": boot_args },
            "drives": [{ "drive_id": "rootfs", "path_on_host": "/disk.img",
                         "is_root_device": true, "is_read_only": false }],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 }
        });
        std::fs::write(root.join("vm.json"), config.to_string()).unwrap();
        jail
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("squib").join(&self.id).join("root")
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_squib-jailer"));
        c.args(["--id", &self.id, "--exec-file"])
            .arg(static_squib())
            .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
            .arg("--chroot-base-dir")
            .arg(self.base.path())
            .args(extra)
            .args([
                "--",
                "--api-sock",
                "/run/firecracker.socket",
                "--config-file",
                "/vm.json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let proc_dir = format!("/proc/{pid}");
            if Path::new(&proc_dir).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                let running = || {
                    std::fs::read_to_string(format!("{proc_dir}/status"))
                        .is_ok_and(|s| !s.contains("State:\tZ"))
                };
                while running() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // Children first: the VM's cgroup, then the shared parent (if no other test uses it).
        for dir in &self.cgroups {
            let _ = std::fs::remove_dir(dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        if let Some(name) = &self.netns {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

/// Waits until `pid` runs squib with its vCPU thread.
fn wait_for_vcpu(pid: u32, child: &mut Option<&mut Child>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .map(|n| n.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if threads.iter().any(|t| t == "vcpu0") {
            return;
        }
        let exited = child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some());
        assert!(
            Instant::now() < deadline && !exited,
            "squib (pid {pid}) never ran its vCPU: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait(child: Child) -> Output {
    let deadline = Instant::now() + TIMEOUT;
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the jailed squib did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn kill_term(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The checks every jailed squib must pass while its guest runs.
fn assert_jailed(pid: u32, jail: &Jail) {
    let uids = status_field(pid, "Uid:");
    assert!(
        uids.split_whitespace().all(|u| u == UID.to_string()),
        "Uid: {uids}"
    );
    let gids = status_field(pid, "Gid:");
    assert!(
        gids.split_whitespace().all(|g| g == GID.to_string()),
        "Gid: {gids}"
    );
    assert_eq!(
        status_field(pid, "Groups:"),
        "",
        "supplementary groups kept"
    );
    // The process's root: the chroot (the kernel shows the path in the original namespace).
    // The process's root is the chroot: the same directory (device and inode; the path the
    // kernel shows is relative to squib's own mount namespace).
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let chroot = std::fs::metadata(jail.root()).unwrap();
    assert_eq!(
        (root.dev(), root.ino()),
        (chroot.dev(), chroot.ino()),
        "not in the chroot"
    );
    assert!(Path::new(&format!("/proc/{pid}/root/squib")).is_file());
    assert!(
        jail.root().join("run/firecracker.socket").exists(),
        "no API socket in the jail"
    );
    for (node, major, minor) in [
        ("dev/kvm", 10, 232),
        ("dev/net/tun", 10, 200),
        ("dev/urandom", 1, 9),
    ] {
        let meta = std::fs::metadata(jail.root().join(node)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, GID), "{node}");
        assert_eq!(
            (libc_major(meta.rdev()), libc_minor(meta.rdev())),
            (major, minor),
            "{node}"
        );
    }
    // Nothing inherited: the test holds extra descriptors, squib may only have its own.
    let seccomp = status_field(pid, "Seccomp:");
    assert_eq!(seccomp, "2", "the jailed squib runs without its filters");
}

fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

#[test]
fn jailed_squib_runs_as_the_uid_in_the_chroot_cgroup_v1_netns_and_limits() {
    if !can_run("jailed_squib_runs_as_the_uid_in_the_chroot_cgroup_v1_netns_and_limits") {
        return;
    }
    let mut jail = Jail::new("v1", true);
    let netns = format!("squib-sandbox-jail-{}", std::process::id());
    assert!(
        Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap()
            .success()
    );
    jail.netns = Some(netns.clone());
    jail.cgroups.push(
        Path::new("/sys/fs/cgroup/pids")
            .join(PARENT_CGROUP)
            .join(&jail.id),
    );
    let command = jail.command(&[
        "--cgroup",
        "pids.max=200",
        "--parent-cgroup",
        PARENT_CGROUP,
        "--netns",
        &format!("/var/run/netns/{netns}"),
        "--resource-limit",
        "no-file=512",
        "--resource-limit",
        "fsize=1073741824",
    ]);
    // A descriptor without close-on-exec, which the jailer must not pass on: the shell opens
    // it as fd 7 and execs the jailer (same pid).
    let marker = jail.base.path().join("inherited-marker");
    std::fs::write(&marker, b"x").unwrap();
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg("exec 7<\"$0\"; exec \"$@\"")
        .arg(&marker)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = shell.spawn().unwrap();
    let pid = child.id();
    jail.pid = Some(pid);
    wait_for_vcpu(pid, &mut Some(&mut child));
    assert_jailed(pid, &jail);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("pids:/{PARENT_CGROUP}/{}", jail.id);
    assert!(cgroup.lines().any(|l| l.ends_with(&want)), "{cgroup}");
    let max = std::fs::read_to_string(jail.cgroups[0].join("pids.max")).unwrap();
    assert_eq!(max.trim(), "200");
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    let wanted_ns = std::fs::metadata(format!("/var/run/netns/{netns}"))
        .unwrap()
        .ino();
    assert_eq!(ns, wanted_ns, "squib is not in the --netns namespace");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "512").count() == 2),
        "{limits}"
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let marker = marker.canonicalize().unwrap().display().to_string();
    assert!(
        !fds.contains(&marker),
        "the inherited descriptor reached squib: {fds:?}"
    );
    kill_term(pid);
    let output = wait(child);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_test_guest_passes_in_the_jail() {
    if !can_run("the_test_guest_passes_in_the_jail") {
        return;
    }
    let jail = Jail::new("ok", false);
    let output = wait(jail.command(&[]).spawn().unwrap());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn new_pid_ns_and_cgroup_v2_with_daemon_style_hand_off() {
    if !can_run("new_pid_ns_and_cgroup_v2_with_daemon_style_hand_off") {
        return;
    }
    let mut jail = Jail::new("v2", true);
    jail.cgroups.push(
        Path::new("/sys/fs/cgroup/unified")
            .join(PARENT_CGROUP)
            .join(&jail.id),
    );
    let mut child = jail
        .command(&[
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            PARENT_CGROUP,
        ])
        .spawn()
        .unwrap();
    // The jailer's own process exits once the child is in its namespace, leaving its pid.
    let mut stdout = child.stdout.take().unwrap();
    let status = child.wait().unwrap();
    if !status.success() {
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        panic!("jailer failed: {status:?}: {stderr}");
    }
    let pid: u32 = std::fs::read_to_string(jail.root().join("squib.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    jail.pid = Some(pid);
    // The pipe closes when squib exits.
    let mut text = String::new();
    let reader = std::thread::spawn(move || {
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    wait_for_vcpu(pid, &mut None);
    assert_jailed(pid, &jail);
    let nspid = status_field(pid, "NSpid:");
    assert_eq!(nspid.split_whitespace().nth(1), Some("1"), "NSpid: {nspid}");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("0::/{PARENT_CGROUP}/{}", jail.id);
    assert!(cgroup.lines().any(|l| l == want), "{cgroup}");
    // squib, init of its PID namespace, still stops in order on SIGTERM (it waits for it).
    kill_term(pid);
    let text = reader.join().unwrap();
    assert!(text.starts_with("squib-test-guest"), "{text}");
    let deadline = Instant::now() + TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "squib did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
