//! The API server over a real Unix socket, in-process, against a fake VMM: routing, validation,
//! wire rules and robustness. Needs no KVM, so it runs everywhere.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use squib_vmm::api::controller::{ApiController, InstanceSettings};
use squib_vmm::api::server::{ApiServer, REQUEST_TIMEOUT};
use squib_vmm::api::vmm_control::{ControlError, DriveCounters, ExitNotice, RunState, VmmControl};
use squib_vmm::snapshot::state::DeviceConfigs;
use squib_vmm::snapshot::{CreateRequest, LoadRequest};
use squib_vmm::vm_config::{DriveConfig, MachineConfig, RateLimiterConfig, VmConfig};

/// What the fake VMM was asked to do.
#[derive(Debug, Default)]
struct Calls {
    started: Option<VmConfig>,
    /// The device configuration the last snapshot was given.
    snapshot_config: Option<DeviceConfigs>,
    /// Machine sizes the controller asked to prepare ahead, as (vCPUs, MiB).
    prepared: Vec<(u8, usize)>,
    log: Vec<String>,
    exit: Option<ExitNotice>,
    exit_status: Option<i32>,
}

#[derive(Debug, Clone, Default)]
struct FakeVmm {
    calls: Arc<Mutex<Calls>>,
    paused: Arc<Mutex<bool>>,
}

impl FakeVmm {
    fn log(&self, what: impl Into<String>) {
        self.calls.lock().unwrap().log.push(what.into());
    }
}

impl VmmControl for FakeVmm {
    fn prepare(&mut self, machine: &MachineConfig) {
        let size = (machine.vcpu_count, machine.mem_size_mib);
        self.calls.lock().unwrap().prepared.push(size);
    }
    fn start(&mut self, config: &VmConfig, exit: ExitNotice) -> Result<(), ControlError> {
        let mut calls = self.calls.lock().unwrap();
        calls.started = Some(config.clone());
        calls.exit = Some(exit);
        Ok(())
    }
    fn state(&self) -> RunState {
        match (
            self.calls.lock().unwrap().started.is_some(),
            *self.paused.lock().unwrap(),
        ) {
            (false, _) => RunState::NotStarted,
            (true, false) => RunState::Running,
            (true, true) => RunState::Paused,
        }
    }
    fn pause(&mut self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = true;
        self.log("pause");
        Ok(())
    }
    fn resume(&mut self) -> Result<(), ControlError> {
        *self.paused.lock().unwrap() = false;
        self.log("resume");
        Ok(())
    }
    fn send_ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        // The fake guest reacts like the real test guest: it powers off.
        self.log("ctrl_alt_del");
        let mut calls = self.calls.lock().unwrap();
        calls.exit_status = Some(0);
        if let Some(exit) = &calls.exit {
            exit.notify();
        }
        Ok(())
    }
    fn swap_drive(&mut self, drive: &DriveConfig) -> Result<(), ControlError> {
        let (id, path, ro) = (&drive.drive_id, &drive.path_on_host, drive.is_read_only);
        self.log(format!("swap {id} {} ro={ro}", path.display()));
        Ok(())
    }
    fn update_rate_limiter(
        &mut self,
        id: &str,
        config: &RateLimiterConfig,
    ) -> Result<(), ControlError> {
        self.log(format!("limit {id} {config:?}"));
        Ok(())
    }
    fn create_snapshot(
        &mut self,
        request: &CreateRequest,
        config: &DeviceConfigs,
    ) -> Result<(), ControlError> {
        self.calls.lock().unwrap().snapshot_config = Some(config.clone());
        self.log(format!(
            "snapshot {} {} {:?}",
            request.snapshot_path.display(),
            request.mem_file_path.display(),
            request.snapshot_type
        ));
        Ok(())
    }
    fn load_snapshot(
        &mut self,
        request: &LoadRequest,
        exit: ExitNotice,
    ) -> Result<VmConfig, ControlError> {
        self.log(format!("load {request:?}"));
        let mut calls = self.calls.lock().unwrap();
        // The snapshot's machine: 2 vCPUs and one drive.
        let mut config = VmConfig::default();
        config.machine.vcpu_count = 2;
        config.drives.push(squib_vmm::vm_config::DriveConfig {
            drive_id: "rootfs".into(),
            path_on_host: "/snap/rootfs.img".into(),
            is_read_only: false,
            is_root_device: true,
            partuuid: None,
            cache_type: Default::default(),
            io_engine: Default::default(),
            direct: false,
            rate_limiter: None,
        });
        config
            .network_interfaces
            .push(squib_vmm::vm_config::NetworkInterfaceConfig {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            });
        config.entropy = Some(Default::default());
        calls.started = Some(config.clone());
        calls.exit = Some(exit);
        if !request.resume_vm {
            *self.paused.lock().unwrap() = true;
        }
        Ok(config)
    }
    fn drive_counters(&self) -> Vec<(String, DriveCounters)> {
        let c = DriveCounters {
            read_count: 3,
            read_bytes: 1536,
            ..Default::default()
        };
        vec![("rootfs".into(), c)]
    }
    fn update_net_rate_limiters(
        &mut self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), ControlError> {
        self.log(format!("net limit {id} rx={rx:?} tx={tx:?}"));
        Ok(())
    }
    fn net_counters(&self) -> Vec<(String, squib_virtio::net::NetMetricsSnapshot)> {
        let m = squib_virtio::net::NetMetricsSnapshot {
            rx_packets_count: 2,
            rx_bytes_count: 300,
            ..Default::default()
        };
        vec![("eth0".into(), m)]
    }
    fn exit_status(&self) -> Option<i32> {
        self.calls.lock().unwrap().exit_status
    }
}

/// A server on its own thread; joins to the exit status.
struct Running {
    dir: tempfile::TempDir,
    sock: PathBuf,
    vmm: FakeVmm,
    thread: Option<JoinHandle<i32>>,
}

impl Running {
    fn start(max_payload: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let vmm = FakeVmm::default();
        let mut server = ApiServer::bind(&sock, max_payload).unwrap();
        let settings = InstanceSettings {
            id: "fake_vm".into(),
            boot_timer: false,
            boot_options: Default::default(),
        };
        let wake = server.wake_event().unwrap();
        let fake = vmm.clone();
        let thread = std::thread::spawn(move || {
            let mut controller = ApiController::new(settings, fake, None, wake);
            server.run(&mut controller).unwrap()
        });
        Self {
            dir,
            sock,
            vmm,
            thread: Some(thread),
        }
    }

    /// The device configuration the last `/snapshot/create` handed the VMM.
    fn snapshot_config(&self) -> DeviceConfigs {
        let calls = self.vmm.calls.lock().unwrap();
        calls
            .snapshot_config
            .clone()
            .expect("no snapshot was taken")
    }

    fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn file(&self, name: &str, len: usize) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn join(mut self) -> i32 {
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A keep-alive HTTP/1.1 client.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn send_raw(&mut self, raw: &[u8]) -> (u16, String) {
        self.stream.write_all(raw).unwrap();
        self.response()
    }

    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send_raw(raw.as_bytes())
    }

    fn response(&mut self) -> (u16, String) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&self.buf).unwrap() {
                let code = resp.code.unwrap();
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if self.buf.len() >= head + len {
                    let body = String::from_utf8(self.buf[head..head + len].to_vec()).unwrap();
                    self.buf.drain(..head + len);
                    return (code, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "server closed the connection mid-response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server has closed the connection.
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn fault(body: &str) -> String {
    json(body)["fault_message"]
        .as_str()
        .expect("fault_message")
        .to_owned()
}

#[test]
fn socket_is_private_and_a_live_one_is_not_stolen() {
    let running = Running::start(51_200);
    let mode = std::fs::metadata(&running.sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let err = ApiServer::bind(&running.sock, 100).unwrap_err().to_string();
    assert!(err.contains("another API server is answering"), "{err}");
    // Not a socket: refused, and left alone.
    let plain = running.dir.path().join("plain");
    std::fs::write(&plain, b"keep me").unwrap();
    assert!(ApiServer::bind(&plain, 100).is_err());
    assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");
    let mut c = running.connect();
    c.call(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{}"}}"#, running.file("k", 1)),
    );
    c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    c.call("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    assert_eq!(running.join(), 0);
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = ApiServer::bind(&sock, 100).unwrap();
    assert!(UnixStream::connect(&sock).is_ok());
    drop(server);
    assert!(!sock.exists(), "the server removes its socket when it ends");
}

#[test]
fn getting_started_sequence_over_one_keep_alive_connection() {
    let running = Running::start(51_200);
    let kernel = running.file("vmlinux", 4096);
    let rootfs = running.file("rootfs.ext4", 1 << 20);
    let data = running.file("data.img", 1 << 20);
    let swapped = running.file("swapped.img", 2 << 20);
    let mut c = running.connect();

    let (code, body) = c.call("GET", "/", "");
    assert_eq!(code, 200);
    let info = json(&body);
    assert_eq!(info["app_name"], "squib");
    assert_eq!(info["id"], "fake_vm");
    assert_eq!(info["state"], "Not started");
    assert!(info["vmm_version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(
        json(&c.call("GET", "/version", "").1)["firecracker_version"],
        "1.16.0"
    );

    let machine = json(&c.call("GET", "/machine-config", "").1);
    assert_eq!(
        (
            machine["vcpu_count"].as_u64(),
            machine["mem_size_mib"].as_u64()
        ),
        (Some(1), Some(128))
    );

    let boot = format!(
        r#"{{"kernel_image_path":"{kernel}","boot_args":"console=ttyS0 reboot=k panic=1"}}"#
    );
    assert_eq!(c.call("PUT", "/boot-source", &boot), (204, String::new()));
    let d = format!(
        r#"{{"drive_id":"data","path_on_host":"{data}","is_root_device":false,"is_read_only":true,"io_engine":"Async"}}"#
    );
    assert_eq!(c.call("PUT", "/drives/data", &d).0, 204);
    let r = format!(
        r#"{{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true,"is_read_only":false,"cache_type":"Writeback","rate_limiter":{{"ops":{{"size":200,"refill_time":1000}}}}}}"#
    );
    assert_eq!(c.call("PUT", "/drives/rootfs", &r).0, 204);
    assert_eq!(
        c.call(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":256}"#
        )
        .0,
        204
    );
    assert_eq!(
        c.call("PATCH", "/machine-config", r#"{"mem_size_mib":512}"#)
            .0,
        204
    );

    let entropy = r#"{"rate_limiter":{"bandwidth":{"size":4096,"refill_time":100}}}"#;
    assert_eq!(c.call("PUT", "/entropy", entropy).0, 204);
    let uds_path = format!("{kernel}.vsock");
    let vsock = format!(r#"{{"vsock_id":"vsock0","guest_cid":7,"uds_path":"{uds_path}"}}"#);
    assert_eq!(c.call("PUT", "/vsock", &vsock).0, 204);

    let config = json(&c.call("GET", "/vm/config", "").1);
    assert_eq!(config["entropy"]["rate_limiter"]["bandwidth"]["size"], 4096);
    assert_eq!(config["vsock"]["guest_cid"], 7);
    assert_eq!(config["vsock"]["uds_path"], uds_path.as_str());
    assert_eq!(config["boot-source"]["kernel_image_path"], kernel.as_str());
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
    // Root first, as Firecracker orders them: it is /dev/vda.
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["drives"][0]["cache_type"], "Writeback");
    assert_eq!(config["drives"][0]["rate_limiter"]["ops"]["size"], 200);
    assert_eq!(config["drives"][1]["io_engine"], "Async");

    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    // Start on request: each machine change asked the VMM to prepare that size ahead.
    let prepared = running.vmm.calls.lock().unwrap().prepared.clone();
    assert_eq!(prepared, [(2, 256), (2, 512)]);
    let started = running.vmm.calls.lock().unwrap().started.clone().unwrap();
    assert_eq!(started.machine.vcpu_count, 2);
    assert_eq!(started.machine.mem_size_mib, 512);
    assert_eq!(started.drives[0].drive_id, "rootfs");
    assert!(started.drives[0].is_root_device);
    assert_eq!(
        started.drives[0].rate_limiter.unwrap().ops.unwrap().size,
        200
    );
    assert!(started.drives[1].is_read_only);
    let started_entropy = started.entropy.unwrap().rate_limiter.unwrap();
    assert_eq!(started_entropy.bandwidth.unwrap().size, 4096);
    assert_eq!(started.vsock.as_ref().unwrap().guest_cid, 7);
    assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Running");
    // Both are pre-boot only, as in Firecracker.
    assert_eq!(c.call("PUT", "/vsock", &vsock).0, 400);
    assert_eq!(c.call("PUT", "/entropy", entropy).0, 400);

    let patch = format!(r#"{{"drive_id":"rootfs","path_on_host":"{swapped}"}}"#);
    assert_eq!(c.call("PATCH", "/drives/rootfs", &patch).0, 204);
    let limit =
        r#"{"drive_id":"data","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}"#;
    assert_eq!(c.call("PATCH", "/drives/data", limit).0, 204);
    let config = json(&c.call("GET", "/vm/config", "").1);
    assert_eq!(config["drives"][0]["path_on_host"], swapped.as_str());

    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Paused");
    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Running");
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#)
            .0,
        204
    );
    let log = running.vmm.calls.lock().unwrap().log.clone();
    assert_eq!(log[0], format!("swap rootfs {swapped} ro=false"));
    assert!(
        log[1].starts_with("limit data RateLimiterConfig { bandwidth: Some("),
        "{log:?}"
    );
    assert_eq!(&log[2..], ["pause", "resume", "ctrl_alt_del"]);
    assert_eq!(running.join(), 0, "the server ends when the microVM stops");
}

#[test]
fn bad_input_table_gets_400_with_a_reason_and_the_server_keeps_serving() {
    let running = Running::start(51_200);
    let file = running.file("disk.img", 4096);
    let mut c = running.connect();
    let drive = |id: &str, extra: &str| {
        format!(r#"{{"drive_id":"{id}","path_on_host":"{file}","is_root_device":false{extra}}}"#)
    };
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "GET",
            "/nope",
            String::new(),
            "invalid request method and/or path: GET /nope",
        ),
        (
            "DELETE",
            "/drives/a",
            String::new(),
            "invalid request method and/or path",
        ),
        (
            "POST",
            "/actions",
            "{}".into(),
            "invalid request method and/or path",
        ),
        ("PUT", "/boot-source", String::new(), "requires a JSON body"),
        (
            "PUT",
            "/boot-source",
            "{not json".into(),
            "invalid body for PUT /boot-source",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/k","extra":1}"#.into(),
            "unknown field `extra`",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#.into(),
            "/nonexistent/vmlinux",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":128}"#.into(),
            "vcpu_count must be between 1 and 32, got 0",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":33,"mem_size_mib":128}"#.into(),
            "got 33",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":-5}"#.into(),
            "invalid value",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1}"#.into(),
            "requires `mem_size_mib`",
        ),
        ("PATCH", "/machine-config", r#"{"smt":true}"#.into(), "smt"),
        (
            "PATCH",
            "/machine-config",
            r#"{"huge_pages":"2M"}"#.into(),
            "huge_pages",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"cpu_template":"T2"}"#.into(),
            "cpu_template",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"cpu_template":"Bogus"}"#.into(),
            "unknown variant `Bogus`",
        ),
        (
            "PUT",
            "/drives/a",
            drive("b", ""),
            "does not match the id from the body",
        ),
        (
            "PUT",
            "/drives/bad%20id",
            drive("bad%20id", ""),
            "API Resource IDs can only contain alphanumeric characters and underscores",
        ),
        (
            "PUT",
            "/drives/a",
            drive("a", r#","cache_type":"Sometimes""#),
            "unknown variant `Sometimes`",
        ),
        (
            "PUT",
            "/drives/a",
            drive("a", r#","io_engine":"Uring""#),
            "unknown variant `Uring`",
        ),
        (
            "PUT",
            "/drives/a",
            drive("a", r#","socket":"/tmp/vhost""#),
            "vhost-user",
        ),
        (
            "PUT",
            "/drives/a",
            drive("a", r#","rate_limiter":{"ops":{"size":1}}"#),
            "missing field `refill_time`",
        ),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id":"a","is_root_device":false}"#.into(),
            "path_on_host is required",
        ),
        (
            "PATCH",
            "/drives/a",
            r#"{"drive_id":"a"}"#.into(),
            "PATCH /drives is not supported before starting",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state":"Paused"}"#.into(),
            "PATCH /vm is not supported before starting",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state":"Sleeping"}"#.into(),
            "unknown variant `Sleeping`",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#.into(),
            "SendCtrlAltDel is not supported before starting",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#.into(),
            "without a kernel",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"Reboot"}"#.into(),
            "unknown variant `Reboot`",
        ),
        (
            "PUT",
            "/logger",
            r#"{"level":"Loud"}"#.into(),
            "unknown log level `Loud`",
        ),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path":"/nonexistent/dir/m"}"#.into(),
            "cannot open metrics_path",
        ),
        ("PUT", "/vsock", "{}".into(), "missing field `guest_cid`"),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid":2,"uds_path":"/tmp/squib-v.sock"}"#.into(),
            "guest_cid must be at least 3, got 2",
        ),
        (
            "PUT",
            "/vsock",
            format!(r#"{{"guest_cid":3,"uds_path":"{file}"}}"#),
            "a file already exists there",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid":3,"uds_path":""}"#.into(),
            "the path is empty",
        ),
        (
            "PUT",
            "/mmds",
            "{}".into(),
            "squib does not support the microVM metadata service",
        ),
        (
            "PUT",
            "/snapshot/create",
            "{}".into(),
            "missing field `snapshot_path`",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/s","bogus":1}"#.into(),
            "unknown field `bogus`",
        ),
        (
            "PUT",
            "/balloon",
            "{}".into(),
            "squib does not support balloon",
        ),
        (
            "PUT",
            "/entropy",
            r#"{"rate_limiter":{"ops":{"size":1,"refill_time":18446744073709551615}}}"#.into(),
            "rate_limiter.ops.refill_time",
        ),
        (
            "PUT",
            "/entropy",
            r#"{"bandwidth":{}}"#.into(),
            "unknown field `bandwidth`",
        ),
        (
            "PUT",
            "/serial",
            "{}".into(),
            "squib does not support serial",
        ),
        (
            "PUT",
            "/cpu-config",
            "{}".into(),
            "squib does not support custom CPU templates",
        ),
        (
            "PUT",
            "/pmem/p0",
            "{}".into(),
            "squib does not support virtio-pmem",
        ),
        (
            "PUT",
            "/hotplug/memory",
            "{}".into(),
            "squib does not support memory hotplug",
        ),
    ];
    for (method, path, body, want) in &cases {
        let (code, resp) = c.call(method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {resp}");
        let message = fault(&resp);
        assert!(
            message.contains(want),
            "{method} {path} {body}:\n  got  {message}\n  want {want}"
        );
        // Still serving on the same connection.
        assert_eq!(c.call("GET", "/", "").0, 200);
    }
    // A second root device.
    assert_eq!(
        c.call(
            "PUT",
            "/drives/r1",
            &drive("r1", "").replace("false", "true")
        )
        .0,
        204
    );
    let (code, resp) = c.call(
        "PUT",
        "/drives/r2",
        &drive("r2", "").replace("false", "true"),
    );
    assert_eq!(
        (
            code,
            fault(&resp).contains("a root block device already exists")
        ),
        (400, true)
    );
    assert!(
        running.vmm.calls.lock().unwrap().started.is_none(),
        "nothing started the VM"
    );

    // After boot, pre-boot resources are refused and runtime ones checked.
    let kernel = running.file("k", 1);
    c.call(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{kernel}"}}"#),
    );
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    for (method, path, body, want) in [
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{kernel}"}}"#),
            "not supported after starting",
        ),
        (
            "PUT",
            "/drives/r1",
            drive("r1", ""),
            "not supported after starting",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128}"#.into(),
            "not supported after starting",
        ),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path":"/tmp/x"}"#.into(),
            "not supported after starting",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#.into(),
            "already started",
        ),
        (
            "PATCH",
            "/drives/zz",
            r#"{"drive_id":"zz"}"#.into(),
            "drive `zz` does not exist",
        ),
        (
            "PATCH",
            "/drives/r1",
            r#"{"drive_id":"r1","path_on_host":"/nonexistent"}"#.into(),
            "/nonexistent",
        ),
        (
            "PATCH",
            "/drives/r1",
            r#"{"drive_id":"r1","is_read_only":true}"#.into(),
            "unknown field `is_read_only`",
        ),
    ] {
        let (code, resp) = c.call(method, path, &body);
        assert_eq!(code, 400, "{method} {path}: {resp}");
        assert!(fault(&resp).contains(want), "{method} {path}: {resp}");
    }
    c.call("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    assert_eq!(running.join(), 0);
}

#[test]
fn oversized_body_is_refused_from_its_header_without_being_read() {
    let running = Running::start(1024);
    let mut c = running.connect();
    // Only the head is sent: the server must answer without waiting for 10 MB.
    let (code, body) = c.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n");
    assert_eq!(code, 413);
    assert!(
        fault(&body).contains("larger than the limit of 1024"),
        "{body}"
    );
    assert!(c.is_closed());
    // Exactly at the limit is fine (and only then parsed).
    let mut c = running.connect();
    let padded = format!(
        r#"{{"kernel_image_path":"/nonexistent"{}}}"#,
        " ".repeat(1024 - 36)
    );
    assert_eq!(padded.len(), 1024);
    let (code, body) = c.call("PUT", "/boot-source", &padded);
    assert_eq!(code, 400, "{body}");
    assert!(fault(&body).contains("/nonexistent"));
    // Expect: 100-continue gets the go-ahead only within the limit.
    let mut c = running.connect();
    c.stream
        .write_all(b"PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 18\r\n\r\n")
        .unwrap();
    let mut cont = [0u8; 25];
    c.stream.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.stream.write_all(br#"{"state":"Paused"}"#).unwrap();
    let (code, body) = c.response();
    assert_eq!(
        (code, fault(&body).contains("before starting")),
        (400, true)
    );
    drop(running);
}

#[test]
fn malformed_http_closes_only_that_connection() {
    let running = Running::start(51_200);
    let mut good = running.connect();
    let mut bad = running.connect();
    let (code, body) = bad.send_raw(b"\x16\x03\x01 not http at all\r\n\r\n");
    assert_eq!(code, 400);
    assert!(fault(&body).contains("malformed HTTP request"));
    assert!(bad.is_closed());
    let mut chunked = running.connect();
    let (code, body) =
        chunked.send_raw(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(
        (code, fault(&body).contains("Transfer-Encoding")),
        (400, true)
    );
    assert_eq!(good.call("GET", "/", "").0, 200);
    // Connection: close is honoured.
    let mut once = running.connect();
    let (code, _) = once.send_raw(b"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    assert!(once.is_closed());
    drop(running);
}

#[test]
fn a_slow_client_does_not_block_others_and_is_timed_out() {
    let running = Running::start(51_200);
    let mut slow = running.connect();
    slow.stream
        .write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Le")
        .unwrap();
    // One round trip on another connection: the server has now seen the slow client's bytes.
    assert_eq!(running.connect().call("GET", "/", "").0, 200);
    // Many idle connections too: the server evicts the oldest idle ones instead of refusing.
    let idle: Vec<Client> = (0..20).map(|_| running.connect()).collect();
    let mut fast = running.connect();
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(fast.call("GET", "/", "").0, 200);
    }
    assert!(t.elapsed() < REQUEST_TIMEOUT, "other clients were held up");
    let (code, body) = slow.response();
    assert_eq!(code, 400);
    assert!(fault(&body).contains("timed out"), "{body}");
    assert!(t.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(500));
    drop(idle);
    drop(running);
}

#[test]
fn network_interfaces_are_configured_before_boot_and_throttled_after() {
    let running = Running::start(51_200);
    let kernel = running.file("vmlinux", 4096);
    let mut c = running.connect();
    let eth0 = r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02","tx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
    assert_eq!(
        c.call("PUT", "/network-interfaces/eth0", eth0),
        (204, String::new())
    );
    for (path, body, why) in [
        (
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#,
            "already used",
        ),
        (
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth2","host_dev_name":"tap1"}"#,
            "does not match",
        ),
        (
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"zz"}"#,
            "MAC",
        ),
        (
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1"}"#,
            "host_dev_name",
        ),
    ] {
        let (code, body) = c.call("PUT", path, body);
        assert_eq!(code, 400, "{path}");
        assert!(fault(&body).contains(why), "{}", fault(&body));
    }
    let patch = r#"{"iface_id":"eth0","rx_rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#;
    let (code, body) = c.call("PATCH", "/network-interfaces/eth0", patch);
    assert_eq!(code, 400);
    assert!(fault(&body).contains("before starting"), "{body}");
    let config = json(&c.call("GET", "/vm/config", "").1);
    let ifaces = &config["network-interfaces"];
    assert_eq!(ifaces[0]["iface_id"], "eth0");
    assert_eq!(ifaces[0]["guest_mac"], "06:00:ac:10:00:02");
    assert_eq!(ifaces[0]["tx_rate_limiter"]["bandwidth"]["size"], 1000);

    let boot = format!(r#"{{"kernel_image_path":"{kernel}"}}"#);
    assert_eq!(c.call("PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    let started = running.vmm.calls.lock().unwrap().started.clone().unwrap();
    assert_eq!(started.network_interfaces.len(), 1);
    assert_eq!(started.network_interfaces[0].host_dev_name, "tap0");

    assert_eq!(
        c.call(
            "PUT",
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1"}"#
        )
        .0,
        400
    );
    assert_eq!(
        c.call("PATCH", "/network-interfaces/eth0", patch),
        (204, String::new())
    );
    assert_eq!(
        c.call(
            "PATCH",
            "/network-interfaces/eth9",
            r#"{"iface_id":"eth9"}"#
        )
        .0,
        400
    );
    assert!(
        running
            .vmm
            .calls
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l.starts_with("net limit eth0 rx=Some"))
    );
    let config = json(&c.call("GET", "/vm/config", "").1);
    let eth0 = &config["network-interfaces"][0];
    assert_eq!(eth0["rx_rate_limiter"]["ops"]["size"], 10);
    assert_eq!(
        eth0["tx_rate_limiter"]["bandwidth"]["size"], 1000,
        "PATCH keeps what it omits"
    );
    drop(running);
}

#[test]
fn flush_metrics_writes_a_json_line() {
    let running = Running::start(51_200);
    let metrics = running.dir.path().join("metrics.json");
    let mut c = running.connect();
    // As Firecracker: flushing before metrics are configured has nothing to do, and succeeds.
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#)
            .0,
        204
    );
    let body = format!(r#"{{"metrics_path":"{}"}}"#, metrics.display());
    assert_eq!(c.call("PUT", "/metrics", &body).0, 204);
    assert_eq!(
        c.call("PUT", "/metrics", &body).0,
        400,
        "metrics are configured once"
    );
    c.call("GET", "/nope", "");
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#)
            .0,
        204
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["put_api_requests"]["metrics_count"], 2);
    assert_eq!(line["put_api_requests"]["metrics_fails"], 1);
    assert_eq!(line["put_api_requests"]["actions_count"], 1, "FlushMetrics");
    assert_eq!(line["get_api_requests"]["instance_info_count"], 0);
    assert_eq!(line["block_rootfs"]["read_count"], 3);
    assert_eq!(line["block"]["read_bytes"], 1536);
    assert_eq!(line["net_eth0"]["rx_packets_count"], 2);
    assert_eq!(line["net"]["rx_bytes_count"], 300);
    assert_eq!(line["net"]["tx_malformed_frames"], 0);
    let config = json(&c.call("GET", "/vm/config", "").1);
    assert_eq!(
        config["metrics"]["metrics_path"],
        metrics.to_string_lossy().as_ref()
    );
    drop(running);
}

#[test]
fn snapshot_create_needs_a_paused_vm_and_records_its_latency() {
    let running = Running::start(51_200);
    let mut c = running.connect();
    let metrics = running.dir.path().join("metrics");
    let create = r#"{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Diff"}"#;
    let (code, body) = c.call("PUT", "/snapshot/create", create);
    assert_eq!(code, 400);
    assert!(fault(&body).contains("before starting"), "{body}");
    let kernel = running.file("vmlinux", 16);
    let boot = format!(r#"{{"kernel_image_path":"{kernel}"}}"#);
    assert_eq!(c.call("PUT", "/boot-source", &boot).0, 204);
    let m = format!(r#"{{"metrics_path":"{}"}}"#, metrics.display());
    assert_eq!(c.call("PUT", "/metrics", &m).0, 204);
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    let (code, body) = c.call("PUT", "/snapshot/create", create);
    assert_eq!(code, 400);
    assert!(fault(&body).contains("must be paused"), "{body}");
    let (code, body) = c.call(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path":"","mem_file_path":"/m"}"#,
    );
    assert_eq!(code, 400);
    assert!(
        fault(&body).contains("snapshot_path must not be empty"),
        "{body}"
    );
    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert_eq!(c.call("PUT", "/snapshot/create", create).0, 204);
    let (code, body) = c.call(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
    );
    assert_eq!(code, 400, "load after start: {body}");
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#)
            .0,
        204
    );
    let log = running.vmm.calls.lock().unwrap().log.clone();
    assert!(log.contains(&"snapshot /s /m Diff".to_owned()), "{log:?}");
    let line = std::fs::read_to_string(&metrics).unwrap();
    let line = json(line.lines().last().unwrap());
    assert!(
        line["latencies_us"]["diff_create_snapshot"].is_u64(),
        "{line}"
    );
    assert!(line["latencies_us"]["pause_vm"].is_u64(), "{line}");
    // Every field in every line: never timed yet, still there.
    assert_eq!(line["latencies_us"]["load_snapshot"], 0, "{line}");
}

#[test]
fn a_snapshot_records_the_drive_as_patched_since_the_boot() {
    let running = Running::start(51_200);
    let mut c = running.connect();
    let kernel = running.file("vmlinux", 16);
    let first = running.file("first.img", 4096);
    let second = running.file("second.img", 4096);
    let boot = format!(r#"{{"kernel_image_path":"{kernel}"}}"#);
    assert_eq!(c.call("PUT", "/boot-source", &boot).0, 204);
    let drive = format!(
        r#"{{"drive_id":"data","path_on_host":"{first}","is_root_device":false,"is_read_only":false}}"#
    );
    assert_eq!(c.call("PUT", "/drives/data", &drive).0, 204);
    assert_eq!(
        c.call("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
            .0,
        204
    );
    let swap = format!(r#"{{"drive_id":"data","path_on_host":"{second}"}}"#);
    assert_eq!(c.call("PATCH", "/drives/data", &swap), (204, String::new()));
    let limit =
        r#"{"drive_id":"data","rate_limiter":{"bandwidth":{"size":4096,"refill_time":100}}}"#;
    assert_eq!(c.call("PATCH", "/drives/data", limit), (204, String::new()));
    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    let create = r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#;
    assert_eq!(c.call("PUT", "/snapshot/create", create).0, 204);
    let saved = running.snapshot_config();
    // A load must reopen the file the guest had, not the one it booted with.
    assert_eq!(
        saved.drives[0].path_on_host,
        std::path::PathBuf::from(&second)
    );
    let limiter = saved.drives[0].rate_limiter.and_then(|r| r.bandwidth);
    assert_eq!(limiter.map(|b| b.size), Some(4096));
}

#[test]
fn snapshot_load_validates_its_body_and_starts_the_vm() {
    let running = Running::start(51_200);
    let mut c = running.connect();
    for (body, expected) in [
        (
            r#"{"snapshot_path":"/s"}"#,
            "mem_backend (or the deprecated",
        ),
        (
            r#"{"snapshot_path":"/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
            "not both",
        ),
        (
            r#"{"snapshot_path":"/s","mem_file_path":"/m","vsock_override":{"uds_path":""}}"#,
            "vsock_override.uds_path must not be empty",
        ),
        (
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}"#,
            "unknown variant `Disk`",
        ),
    ] {
        let (code, answer) = c.call("PUT", "/snapshot/load", body);
        assert_eq!(code, 400, "{body}");
        assert!(fault(&answer).contains(expected), "{body}: {answer}");
    }
    assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Not started");
    let body = r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"enable_diff_snapshots":true}"#;
    assert_eq!(c.call("PUT", "/snapshot/load", body).0, 204);
    // resume_vm defaults to false: the microVM is loaded paused.
    assert_eq!(json(&c.call("GET", "/", "").1)["state"], "Paused");
    let log = running.vmm.calls.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|l| l.contains("Uffd(\"/u\")") && l.contains("track_dirty_pages: true")),
        "{log:?}"
    );
    let config = json(&c.call("GET", "/vm/config", "").1);
    assert_eq!(config["machine-config"]["vcpu_count"], 2, "{config}");
    assert_eq!(config["drives"][0]["drive_id"], "rootfs", "{config}");
    let limit = r#"{"drive_id":"rootfs","rate_limiter":{"ops":{"size":100,"refill_time":1000}}}"#;
    assert_eq!(
        c.call("PATCH", "/drives/rootfs", limit).0,
        204,
        "PATCH a loaded drive"
    );
    // Every device the snapshot brought is the API's to report and patch, and a later
    // snapshot records it.
    assert_eq!(
        config["network-interfaces"][0]["iface_id"], "eth0",
        "{config}"
    );
    assert!(config["entropy"].is_object(), "{config}");
    let patch = r#"{"iface_id":"eth0","rx_rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#;
    assert_eq!(
        c.call("PATCH", "/network-interfaces/eth0", patch),
        (204, String::new()),
        "PATCH a loaded interface"
    );
    let create = r#"{"snapshot_path":"/s2","mem_file_path":"/m2"}"#;
    assert_eq!(c.call("PUT", "/snapshot/create", create).0, 204);
    let saved = running.snapshot_config();
    assert_eq!(saved.drives[0].drive_id, "rootfs");
    assert!(saved.entropy.is_some());
    let rx = saved.network_interfaces[0].rx_rate_limiter;
    assert_eq!(rx.and_then(|r| r.ops).map(|b| b.size), Some(10));
    let (code, _) = c.call("PUT", "/snapshot/load", body);
    assert_eq!(code, 400, "a second load");
    let (code, _) = c.call("PUT", "/boot-source", r#"{"kernel_image_path":"/k"}"#);
    assert_eq!(code, 400, "configuration after a load");
}

#[test]
fn snapshot_load_is_refused_once_the_vm_is_configured() {
    let running = Running::start(51_200);
    let mut c = running.connect();
    assert_eq!(
        c.call("PATCH", "/machine-config", r#"{"vcpu_count":2}"#).0,
        204
    );
    let (code, body) = c.call(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
    );
    assert_eq!(code, 400);
    assert!(fault(&body).contains("after configuring"), "{body}");
}

/// A FIFO, a socket or a character device named as a kernel, initrd or drive is refused with a
/// 400 that says what it is, and opening it does not block the server: a blocking `open` of a
/// FIFO waits for a writer, and the whole API with it.
#[test]
fn a_fifo_or_device_path_is_refused_without_blocking_the_server() {
    let running = Running::start(51_200);
    let fifo = running.dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let fifo = fifo.to_string_lossy().into_owned();
    let kernel = running.file("vmlinux", 4096);
    let mut c = running.connect();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let cases = [
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{fifo}"}}"#),
            "it is a FIFO, not a regular file",
        ),
        (
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{kernel}","initrd_path":"{fifo}"}}"#),
            "it is a FIFO, not a regular file",
        ),
        (
            "/drives/ro",
            format!(
                r#"{{"drive_id":"ro","path_on_host":"{fifo}","is_root_device":false,"is_read_only":true}}"#
            ),
            "it is a FIFO, not a regular file or a block device",
        ),
        (
            "/drives/rw",
            format!(
                r#"{{"drive_id":"rw","path_on_host":"{fifo}","is_root_device":false,"is_read_only":false}}"#
            ),
            "it is a FIFO, not a regular file or a block device",
        ),
        (
            "/drives/null",
            r#"{"drive_id":"null","path_on_host":"/dev/null","is_root_device":false,"is_read_only":true}"#.into(),
            "it is a character device, not a regular file or a block device",
        ),
    ];
    for (path, body, want) in cases {
        let t = Instant::now();
        let (code, answer) = c.call("PUT", path, &body);
        assert_eq!(code, 400, "{path} {body}: {answer}");
        assert!(fault(&answer).contains(want), "{path}: {answer}");
        // Another client is answered promptly.
        assert_eq!(running.connect().call("GET", "/", "").0, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    drop(running);
}

/// How long another client's `GET /` may take while hostile clients hold connections: generous
/// for a loaded machine, far below the seconds a blocked loop costs.
const FAIR_LATENCY: Duration = Duration::from_millis(200);

/// The worst of several `GET /` round trips on fresh connections.
fn worst_get_latency(running: &Running, rounds: usize) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let mut c = running.connect();
            assert_eq!(c.call("GET", "/", "").0, 200);
            t.elapsed()
        })
        .max()
        .unwrap()
}

#[test]
fn connections_that_each_send_one_byte_do_not_lock_others_out() {
    let running = Running::start(51_200);
    let mut squatters: Vec<Client> = (0..20).map(|_| running.connect()).collect();
    for s in &mut squatters {
        s.stream.write_all(b"G").unwrap();
    }
    // Let the server read every byte: each connection now has a request in progress.
    std::thread::sleep(Duration::from_millis(100));
    let worst = worst_get_latency(&running, 10);
    assert!(
        worst < FAIR_LATENCY,
        "GET / took {worst:?} behind one-byte clients"
    );
    // And again, after the squatters come back.
    let _more: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = running.connect();
            c.stream.write_all(b"P").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let worst = worst_get_latency(&running, 10);
    assert!(
        worst < FAIR_LATENCY,
        "GET / took {worst:?} behind one-byte clients"
    );
    drop(running);
}

#[test]
fn a_client_that_pipelines_and_never_reads_does_not_stall_the_loop() {
    let running = Running::start(51_200);
    let hogs: Vec<UnixStream> = (0..3)
        .map(|_| {
            let s = UnixStream::connect(&running.sock).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // Each sends as many pipelined requests as its socket takes, and never reads an answer.
    let request = b"GET /vm/config HTTP/1.1\r\n\r\n".repeat(64);
    for _ in 0..200 {
        for mut hog in &hogs {
            let _ = hog.write(&request);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let worst = worst_get_latency(&running, 20);
    assert!(
        worst < FAIR_LATENCY,
        "GET / took {worst:?} behind non-reading clients"
    );
    drop(hogs);
    drop(running);
}
