//! From an HTTP method, path and body to a [`VmmAction`], or a fault saying why not.
//!
//! Routing knows every Firecracker v1.16 resource: the ones squib implements parse into requests;
//! the others are refused by name, so a client learns that the feature is missing rather than
//! that it typed a wrong path.

use serde::de::DeserializeOwned;

use super::action::VmmAction;
use super::models::ActionBody;

/// Why a request could not be routed or parsed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No such resource, or not with this method.
    #[error("invalid request method and/or path: {method} {path}")]
    InvalidPathMethod {
        /// As sent.
        method: String,
        /// As sent.
        path: String,
    },
    /// A Firecracker resource squib does not implement.
    #[error("squib does not support {0} yet")]
    Unsupported(String),
    /// A PUT/PATCH with no body.
    #[error("{method} {path} requires a JSON body")]
    EmptyBody {
        /// As sent.
        method: String,
        /// As sent.
        path: String,
    },
    /// The body is not the JSON this resource takes.
    #[error("invalid body for {method} {path}: {source}")]
    Json {
        /// As sent.
        method: String,
        /// As sent.
        path: String,
        /// What serde found wrong (unknown field, wrong type, bad enum value, …).
        source: serde_json::Error,
    },
}

/// The Firecracker resources squib does not implement, by first path segment.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("mmds", "the microVM metadata service (/mmds)"),
    ("balloon", "balloon devices (/balloon)"),
    ("serial", "serial console configuration (/serial)"),
    ("cpu-config", "custom CPU templates (/cpu-config)"),
    ("pmem", "virtio-pmem devices (/pmem)"),
    ("hotplug", "memory hotplug (/hotplug)"),
];

/// Routes one request.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, RouteError> {
    let invalid = || RouteError::InvalidPathMethod {
        method: method.into(),
        path: path.into(),
    };
    let segments: Vec<&str> = match path.strip_prefix('/') {
        Some("") => Vec::new(),
        Some(rest) => rest.split('/').collect(),
        None => return Err(invalid()),
    };
    Ok(match (method, segments.as_slice()) {
        ("GET", []) => VmmAction::GetInstanceInfo,
        ("GET", ["version"]) => VmmAction::GetVersion,
        ("GET", ["vm", "config"]) => VmmAction::GetVmConfig,
        ("GET", ["machine-config"]) => VmmAction::GetMachineConfig,
        ("PUT", ["boot-source"]) => VmmAction::PutBootSource(parse_body(method, path, body)?),
        ("PUT", ["machine-config"]) => VmmAction::PutMachineConfig(parse_body(method, path, body)?),
        ("PATCH", ["machine-config"]) => {
            VmmAction::PatchMachineConfig(parse_body(method, path, body)?)
        }
        ("PUT", ["network-interfaces", id]) if !id.is_empty() => {
            VmmAction::PutNetworkInterface((*id).into(), parse_body(method, path, body)?)
        }
        ("PATCH", ["network-interfaces", id]) if !id.is_empty() => {
            VmmAction::PatchNetworkInterface((*id).into(), parse_body(method, path, body)?)
        }
        ("PUT", ["drives", id]) if !id.is_empty() => {
            VmmAction::PutDrive((*id).into(), parse_body(method, path, body)?)
        }
        ("PATCH", ["drives", id]) if !id.is_empty() => {
            VmmAction::PatchDrive((*id).into(), parse_body(method, path, body)?)
        }
        ("PUT", ["actions"]) => {
            VmmAction::Action(parse_body::<ActionBody>(method, path, body)?.action_type)
        }
        ("PATCH", ["vm"]) => VmmAction::PatchVm(parse_body(method, path, body)?),
        ("PUT", ["logger"]) => VmmAction::PutLogger(parse_body(method, path, body)?),
        ("PUT", ["metrics"]) => VmmAction::PutMetrics(parse_body(method, path, body)?),
        ("PUT", ["snapshot", "create"]) => {
            VmmAction::CreateSnapshot(parse_body(method, path, body)?)
        }
        ("PUT", ["snapshot", "load"]) => VmmAction::LoadSnapshot(parse_body(method, path, body)?),
        ("PUT", ["entropy"]) => VmmAction::PutEntropy(parse_body(method, path, body)?),
        ("PUT", ["vsock"]) => VmmAction::PutVsock(parse_body(method, path, body)?),
        (_, [first, ..]) => match UNSUPPORTED.iter().find(|(name, _)| name == first) {
            Some((_, what)) => return Err(RouteError::Unsupported((*what).into())),
            None => return Err(invalid()),
        },
        _ => return Err(invalid()),
    })
}

fn parse_body<T: DeserializeOwned>(method: &str, path: &str, body: &[u8]) -> Result<T, RouteError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::EmptyBody {
            method: method.into(),
            path: path.into(),
        });
    }
    serde_json::from_slice(body).map_err(|source| RouteError::Json {
        method: method.into(),
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::models::{ActionType, VmBody, VmStateRequest};

    #[test]
    fn routes_every_supported_resource() {
        assert_eq!(route("GET", "/", b"").unwrap(), VmmAction::GetInstanceInfo);
        assert_eq!(
            route("GET", "/version", b"").unwrap(),
            VmmAction::GetVersion
        );
        assert_eq!(
            route("GET", "/vm/config", b"").unwrap(),
            VmmAction::GetVmConfig
        );
        assert_eq!(
            route("GET", "/machine-config", b"").unwrap(),
            VmmAction::GetMachineConfig
        );
        assert!(matches!(
            route("PUT", "/boot-source", br#"{"kernel_image_path":"/k"}"#).unwrap(),
            VmmAction::PutBootSource(b) if b.kernel_image_path == "/k"
        ));
        assert!(matches!(
            route("PATCH", "/machine-config", br#"{"vcpu_count":2}"#).unwrap(),
            VmmAction::PatchMachineConfig(m) if m.vcpu_count == Some(2)
        ));
        assert!(matches!(
            route("PUT", "/drives/root", br#"{"drive_id":"root","is_root_device":true}"#).unwrap(),
            VmmAction::PutDrive(id, d) if id == "root" && d.is_root_device
        ));
        assert!(matches!(
            route("PATCH", "/drives/root", br#"{"drive_id":"root","path_on_host":"/x"}"#).unwrap(),
            VmmAction::PatchDrive(id, d) if id == "root" && d.path_on_host.as_deref() == Some("/x")
        ));
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#).unwrap(),
            VmmAction::Action(ActionType::InstanceStart)
        );
        assert!(matches!(
            route("PATCH", "/vm", br#"{"state":"Paused"}"#).unwrap(),
            VmmAction::PatchVm(VmBody {
                state: VmStateRequest::Paused
            })
        ));
        assert!(matches!(
            route("PUT", "/logger", br#"{"level":"warning"}"#).unwrap(),
            VmmAction::PutLogger(_)
        ));
        assert!(matches!(
            route("PUT", "/metrics", br#"{"metrics_path":"/m"}"#).unwrap(),
            VmmAction::PutMetrics(_)
        ));
        assert!(matches!(
            route(
                "PUT",
                "/snapshot/create",
                br#"{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Diff"}"#
            )
            .unwrap(),
            VmmAction::CreateSnapshot(b) if b.snapshot_path == "/s"
        ));
        assert!(matches!(
            route(
                "PUT",
                "/snapshot/load",
                br#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"resume_vm":true}"#
            )
            .unwrap(),
            VmmAction::LoadSnapshot(b) if b.resume_vm == Some(true)
        ));
        assert!(route("PUT", "/snapshot/create", br#"{"snapshot_path":"/s"}"#).is_err());
        assert!(route("GET", "/snapshot/load", b"").is_err());
    }

    #[test]
    fn refuses_unknown_paths_methods_and_bodies() {
        let msg = |m, p, b: &[u8]| route(m, p, b).unwrap_err().to_string();
        assert_eq!(
            msg("GET", "/nope", b""),
            "invalid request method and/or path: GET /nope"
        );
        assert_eq!(
            msg("DELETE", "/drives/a", b""),
            "invalid request method and/or path: DELETE /drives/a"
        );
        assert!(msg("GET", "/boot-source", b"").starts_with("invalid request method"));
        assert!(msg("PUT", "/drives/", b"{}").starts_with("invalid request method"));
        assert!(msg("PUT", "/drives/a/b", b"{}").starts_with("invalid request method"));
        assert_eq!(
            msg("PUT", "/boot-source", b" "),
            "PUT /boot-source requires a JSON body"
        );
        let unknown = msg(
            "PUT",
            "/boot-source",
            br#"{"kernel_image_path":"/k","bogus":1}"#,
        );
        assert!(unknown.contains("unknown field `bogus`"), "{unknown}");
        let bad_enum = msg("PUT", "/actions", br#"{"action_type":"Reboot"}"#);
        assert!(bad_enum.contains("unknown variant `Reboot`"), "{bad_enum}");
        let bad_type = msg("PUT", "/machine-config", br#"{"vcpu_count":"two"}"#);
        assert!(bad_type.contains("invalid type"), "{bad_type}");
        assert!(msg("PUT", "/machine-config", br#"{"vcpu_count":-1}"#).contains("invalid value"));
        assert!(msg("PUT", "/actions", b"{").contains("EOF"));
    }

    #[test]
    fn routes_network_interfaces() {
        let body = br#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#;
        assert!(matches!(
            route("PUT", "/network-interfaces/eth0", body).unwrap(),
            VmmAction::PutNetworkInterface(id, b) if id == "eth0" && b.host_dev_name == "tap0"
        ));
        let patch = br#"{"iface_id":"eth0","rx_rate_limiter":{"ops":{"size":1,"refill_time":10}}}"#;
        assert!(matches!(
            route("PATCH", "/network-interfaces/eth0", patch).unwrap(),
            VmmAction::PatchNetworkInterface(id, b) if id == "eth0" && b.rx_rate_limiter.is_some()
        ));
        // Firecracker's PATCH takes only the limiters.
        let bad = route(
            "PATCH",
            "/network-interfaces/eth0",
            br#"{"iface_id":"eth0","host_dev_name":"x"}"#,
        );
        assert!(bad.is_err());
        assert!(route("PUT", "/network-interfaces/", body).is_err());
    }

    #[test]
    fn routes_entropy_and_vsock() {
        assert!(matches!(
            route("PUT", "/entropy", br#"{"rate_limiter":{"ops":{"size":5,"refill_time":100}}}"#)
                .unwrap(),
            VmmAction::PutEntropy(b) if b.rate_limiter.is_some_and(|r| r.ops.is_some())
        ));
        assert!(matches!(
            route("PUT", "/vsock", br#"{"vsock_id":"v","guest_cid":3,"uds_path":"/v.sock"}"#)
                .unwrap(),
            VmmAction::PutVsock(b) if b.guest_cid == 3 && b.uds_path == "/v.sock"
        ));
        assert!(route("PUT", "/vsock", br#"{"guest_cid":3}"#).is_err());
        assert!(
            route(
                "PUT",
                "/vsock",
                br#"{"guest_cid":4294967296,"uds_path":"/v"}"#
            )
            .is_err()
        );
        assert!(route("PUT", "/entropy", br#"{"rate":1}"#).is_err());
    }

    #[test]
    fn names_unsupported_firecracker_resources() {
        for (method, path) in [
            ("GET", "/mmds"),
            ("PUT", "/mmds/config"),
            ("GET", "/balloon/statistics"),
            ("PUT", "/serial"),
            ("PUT", "/cpu-config"),
            ("PUT", "/pmem/p0"),
            ("PATCH", "/hotplug/memory"),
        ] {
            let err = route(method, path, b"{}").unwrap_err();
            assert!(
                matches!(err, RouteError::Unsupported(_)),
                "{method} {path}: {err}"
            );
            assert!(err.to_string().starts_with("squib does not support"));
        }
    }
}
