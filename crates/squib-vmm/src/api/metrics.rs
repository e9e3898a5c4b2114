//! The metrics file: one JSON object per line, written every [`FLUSH_INTERVAL`] and on
//! `FlushMetrics`, with Firecracker's groups and field names for everything squib measures.
//!
//! Every line carries every field, zeros included. As in Firecracker, counters are *deltas*
//! since the previous line (a consumer sums lines), while `api_server.*` and
//! `block*.latency_max_us` are values. Groups: `utc_timestamp_ms`, `api_server`,
//! `get_api_requests`, `put_api_requests`, `patch_api_requests`, `logger`, `uart`, `block` (all
//! drives), `block_{drive_id}`, `net`, `net_{iface_id}` and `latencies_us` (the last duration
//! of each snapshot, pause and resume request: values, not deltas).
//! `logger.missed_log_count` counts log lines lost: dropped by a full log pipe, or
//! guest-triggered lines the rate limit suppressed;
//! `uart.missed_write_count` counts guest console bytes dropped because stdout did not keep up.
//! Lines go through a [`LineSink`]: a full pipe drops the line and counts it in
//! `logger.missed_metrics_count`, never blocking the API thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use squib_virtio::net::NetMetricsSnapshot;

use super::logger::LogCounters;
use super::sink::{LineOutcome, LineSink};
use super::vmm_control::{DeviceCounters, DriveCounters};

/// How often a line is written without being asked (Firecracker's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Why the metrics file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `PUT /metrics` twice.
    #[error("metrics are already configured (to `{}`)", .0.display())]
    AlreadyConfigured(PathBuf),
    /// The path cannot be opened.
    #[error("cannot open metrics_path `{}`: {source}", path.display())]
    Open {
        /// As given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The destination had no room for the line (a pipe nobody reads); it was dropped and
    /// counted.
    #[error("cannot write metrics: the destination is full, the line was dropped")]
    Dropped,
}

/// One API request kind Firecracker counts: method, first path segment, group, field prefix,
/// and whether Firecracker also counts its failures.
struct Counted {
    method: &'static str,
    segment: &'static str,
    group: &'static str,
    field: &'static str,
    fails: bool,
}

/// The requests squib serves that Firecracker counts, with Firecracker's names.
const COUNTED: [Counted; 13] = [
    Counted {
        method: "GET",
        segment: "",
        group: "get_api_requests",
        field: "instance_info",
        fails: false,
    },
    Counted {
        method: "GET",
        segment: "machine-config",
        group: "get_api_requests",
        field: "machine_cfg",
        fails: false,
    },
    Counted {
        method: "GET",
        segment: "version",
        group: "get_api_requests",
        field: "vmm_version",
        fails: false,
    },
    Counted {
        method: "PUT",
        segment: "actions",
        group: "put_api_requests",
        field: "actions",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "boot-source",
        group: "put_api_requests",
        field: "boot_source",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "drives",
        group: "put_api_requests",
        field: "drive",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "logger",
        group: "put_api_requests",
        field: "logger",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "machine-config",
        group: "put_api_requests",
        field: "machine_cfg",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "metrics",
        group: "put_api_requests",
        field: "metrics",
        fails: true,
    },
    Counted {
        method: "PUT",
        segment: "network-interfaces",
        group: "put_api_requests",
        field: "network",
        fails: true,
    },
    Counted {
        method: "PATCH",
        segment: "network-interfaces",
        group: "patch_api_requests",
        field: "network",
        fails: true,
    },
    Counted {
        method: "PATCH",
        segment: "drives",
        group: "patch_api_requests",
        field: "drive",
        fails: true,
    },
    Counted {
        method: "PATCH",
        segment: "machine-config",
        group: "patch_api_requests",
        field: "machine_cfg",
        fails: true,
    },
];

/// Firecracker's `latencies_us` fields squib times (on the API thread, request to reply).
pub const LATENCIES: [&str; 5] = [
    "full_create_snapshot",
    "diff_create_snapshot",
    "load_snapshot",
    "pause_vm",
    "resume_vm",
];

/// Counts of one request kind since the last line.
#[derive(Clone, Copy, Debug, Default)]
struct RequestCount {
    count: u64,
    fails: u64,
}

/// The metrics state: the sink, request counts, the values Firecracker stores once, and the
/// last drive counters written.
#[derive(Debug, Default)]
pub struct Metrics {
    sink: Option<LineSink>,
    requests: [RequestCount; COUNTED.len()],
    startup_time_us: u64,
    startup_time_cpu_us: u64,
    missed_metrics_count: u64,
    /// `missed_metrics_count` at the last line written.
    missed_metrics_written: u64,
    /// The logger's drop counter (absent when the logger is not squib's).
    log_counters: Option<Arc<LogCounters>>,
    missed_log_written: u64,
    /// Drive counters at the last line, to write deltas.
    last_drives: BTreeMap<String, DriveCounters>,
    /// Network interface counters at the last line.
    last_nets: BTreeMap<String, NetMetricsSnapshot>,
    /// Other devices' counters at the last line, by `(group, field)`.
    last_devices: BTreeMap<(&'static str, &'static str), u64>,
    /// Guest console bytes dropped, at the last line written.
    missed_console_written: u64,
    /// `latencies_us`: the last duration of each of [`LATENCIES`] (Firecracker's store
    /// metrics: values, kept from line to line; 0 until first timed).
    latencies_us: [u64; LATENCIES.len()],
}

impl Metrics {
    /// Metrics that also report the logger's dropped lines.
    pub fn new(log_counters: Option<Arc<LogCounters>>) -> Self {
        Self {
            log_counters,
            ..Self::default()
        }
    }

    /// Opens `path` (file or named pipe) without blocking (see [`LineSink`]).
    pub fn configure(&mut self, path: &Path) -> Result<(), MetricsError> {
        if let Some(sink) = &self.sink {
            return Err(MetricsError::AlreadyConfigured(sink.path().to_owned()));
        }
        let sink = LineSink::open(path).map_err(|source| MetricsError::Open {
            path: path.to_owned(),
            source,
        })?;
        self.sink = Some(sink);
        Ok(())
    }

    /// The configured path.
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(LineSink::path)
    }

    /// `api_server.process_startup_time_us` and `_cpu_us` (from the jailer's flags).
    pub fn set_startup_times(&mut self, wall_us: Option<u64>, cpu_us: Option<u64>) {
        self.startup_time_us = wall_us.unwrap_or(0);
        self.startup_time_cpu_us = cpu_us.unwrap_or(0);
    }

    /// Counts one API request, if Firecracker counts its kind.
    pub fn record_request(&mut self, method: &str, path: &str, ok: bool) {
        let segment = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let Some(i) = COUNTED
            .iter()
            .position(|c| c.method == method && c.segment == segment)
        else {
            return;
        };
        let c = &mut self.requests[i];
        c.count += 1;
        if !ok && COUNTED[i].fails {
            c.fails += 1;
        }
    }

    /// Records how long `operation` (one of [`LATENCIES`]) took, for `latencies_us`.
    pub fn record_latency(&mut self, operation: &'static str, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCIES.iter().position(|name| *name == operation) {
            self.latencies_us[i] = us;
        }
    }

    /// Writes one line with everything counted since the previous one. Not configured: nothing
    /// to do (as Firecracker).
    pub fn flush(
        &mut self,
        drives: &[(String, DriveCounters)],
        nets: &[(String, NetMetricsSnapshot)],
        devices: &[DeviceCounters],
    ) -> Result<(), MetricsError> {
        if self.sink.is_none() {
            return Ok(());
        }
        let (missed_metrics, missed_log, missed_console) = (
            self.missed_metrics_count,
            self.missed_log(),
            crate::devices::serial::dropped_output_bytes(),
        );
        let line = self.line(drives, nets, devices);
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let outcome = match self.sink.as_mut() {
            Some(sink) => sink.write_line(&bytes),
            None => return Ok(()),
        };
        match outcome {
            LineOutcome::Written => {
                // Only a line that went out has reported these drops.
                self.missed_metrics_written = missed_metrics;
                self.missed_log_written = missed_log;
                self.missed_console_written = missed_console;
                Ok(())
            }
            LineOutcome::Dropped => {
                self.missed_metrics_count += 1;
                Err(MetricsError::Dropped)
            }
        }
    }

    /// Log lines lost since start: dropped by a full log pipe, or guest-triggered lines the
    /// rate limit suppressed.
    fn missed_log(&self) -> u64 {
        let dropped = self
            .log_counters
            .as_ref()
            .map_or(0, |c| c.missed_log_count());
        dropped.saturating_add(squib_virtio::guest_log::suppressed_total())
    }

    /// Builds the next line and resets the deltas (drop counts reset once a line is written).
    fn line(
        &mut self,
        drives: &[(String, DriveCounters)],
        nets: &[(String, NetMetricsSnapshot)],
        devices: &[DeviceCounters],
    ) -> Value {
        let mut root = Map::new();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        root.insert(
            "utc_timestamp_ms".into(),
            json!(u64::try_from(ms).unwrap_or(u64::MAX)),
        );
        root.insert(
            "api_server".into(),
            json!({
                "process_startup_time_us": self.startup_time_us,
                "process_startup_time_cpu_us": self.startup_time_cpu_us,
            }),
        );
        let requests = std::mem::take(&mut self.requests);
        for (c, n) in COUNTED.iter().zip(requests) {
            let group = root
                .entry(c.group)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(group) = group {
                group.insert(format!("{}_count", c.field), json!(n.count));
                if c.fails {
                    group.insert(format!("{}_fails", c.field), json!(n.fails));
                }
            }
        }
        let missed_log = self.missed_log();
        root.insert(
            "logger".into(),
            json!({
                "missed_metrics_count": self.missed_metrics_count - self.missed_metrics_written,
                "metrics_fails": 0,
                "missed_log_count": missed_log.saturating_sub(self.missed_log_written),
            }),
        );
        let missed_console = crate::devices::serial::dropped_output_bytes();
        root.insert(
            "uart".into(),
            json!({
                "missed_write_count": missed_console.saturating_sub(self.missed_console_written),
            }),
        );
        let mut total = DriveCounters::default();
        for (id, now) in drives {
            let before = self
                .last_drives
                .insert(id.clone(), *now)
                .unwrap_or_default();
            let delta = delta(now, &before);
            add(&mut total, &delta);
            root.insert(format!("block_{id}"), block_group(&delta));
        }
        root.insert("block".into(), block_group(&total));
        // Firecracker's `net` (every interface) and `net_{iface_id}`, with its field names.
        let mut total = NetMetricsSnapshot::default();
        for (id, now) in nets {
            let before = self.last_nets.insert(id.clone(), *now).unwrap_or_default();
            let delta = now.since(&before);
            total = total.add(&delta);
            root.insert(format!("net_{id}"), net_json(&delta));
        }
        root.insert("net".into(), net_json(&total));
        for device in devices {
            let mut group = Map::new();
            for &(field, now) in &device.counters {
                let before = self
                    .last_devices
                    .insert((device.group, field), now)
                    .unwrap_or(0);
                group.insert(field.into(), json!(now.saturating_sub(before)));
            }
            root.insert(device.group.into(), Value::Object(group));
        }
        let latencies: Map<String, Value> = LATENCIES
            .iter()
            .zip(self.latencies_us)
            .map(|(name, us)| ((*name).to_owned(), json!(us)))
            .collect();
        root.insert("latencies_us".into(), Value::Object(latencies));
        Value::Object(root)
    }
}

fn net_json(m: &NetMetricsSnapshot) -> Value {
    Value::Object(
        m.fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), json!(value)))
            .collect(),
    )
}

/// A drive's counters under Firecracker's names (`execute_fails` is squib's `io_errors`);
/// `latency_total_us`/`latency_max_us` are squib's own (Firecracker splits reads and writes).
fn block_group(c: &DriveCounters) -> Value {
    json!({
        "read_count": c.read_count,
        "write_count": c.write_count,
        "flush_count": c.flush_count,
        "read_bytes": c.read_bytes,
        "write_bytes": c.write_bytes,
        "invalid_reqs_count": c.invalid_reqs_count,
        "execute_fails": c.io_errors,
        "rate_limiter_throttled_events": c.rate_limiter_throttled_events,
        "latency_total_us": c.latency_total_us,
        "latency_max_us": c.latency_max_us,
    })
}

fn delta(now: &DriveCounters, before: &DriveCounters) -> DriveCounters {
    DriveCounters {
        read_count: now.read_count.saturating_sub(before.read_count),
        write_count: now.write_count.saturating_sub(before.write_count),
        flush_count: now.flush_count.saturating_sub(before.flush_count),
        read_bytes: now.read_bytes.saturating_sub(before.read_bytes),
        write_bytes: now.write_bytes.saturating_sub(before.write_bytes),
        invalid_reqs_count: now
            .invalid_reqs_count
            .saturating_sub(before.invalid_reqs_count),
        io_errors: now.io_errors.saturating_sub(before.io_errors),
        latency_total_us: now.latency_total_us.saturating_sub(before.latency_total_us),
        latency_max_us: now.latency_max_us,
        rate_limiter_throttled_events: now
            .rate_limiter_throttled_events
            .saturating_sub(before.rate_limiter_throttled_events),
    }
}

fn add(total: &mut DriveCounters, d: &DriveCounters) {
    total.read_count += d.read_count;
    total.write_count += d.write_count;
    total.flush_count += d.flush_count;
    total.read_bytes += d.read_bytes;
    total.write_bytes += d.write_bytes;
    total.invalid_reqs_count += d.invalid_reqs_count;
    total.io_errors += d.io_errors;
    total.latency_total_us += d.latency_total_us;
    total.latency_max_us = total.latency_max_us.max(d.latency_max_us);
    total.rate_limiter_throttled_events += d.rate_limiter_throttled_events;
}

/// Every `group.field` a line carries for these drive ids (for tests and docs).
pub fn field_names(drive_ids: &[&str]) -> Vec<String> {
    let mut names = vec![
        "utc_timestamp_ms".to_owned(),
        "api_server.process_startup_time_us".to_owned(),
        "api_server.process_startup_time_cpu_us".to_owned(),
        "logger.missed_metrics_count".to_owned(),
        "logger.metrics_fails".to_owned(),
        "logger.missed_log_count".to_owned(),
        "uart.missed_write_count".to_owned(),
    ];
    for c in &COUNTED {
        names.push(format!("{}.{}_count", c.group, c.field));
        if c.fails {
            names.push(format!("{}.{}_fails", c.group, c.field));
        }
    }
    let block_fields = match block_group(&DriveCounters::default()) {
        Value::Object(m) => m.keys().cloned().collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let groups =
        std::iter::once("block".to_owned()).chain(drive_ids.iter().map(|id| format!("block_{id}")));
    for group in groups {
        for f in &block_fields {
            names.push(format!("{group}.{f}"));
        }
    }
    for (f, _) in NetMetricsSnapshot::default().fields() {
        names.push(format!("net.{f}"));
    }
    for f in LATENCIES {
        names.push(format!("latencies_us.{f}"));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn get<'a>(line: &'a Value, dotted: &str) -> Option<&'a Value> {
        dotted.split('.').try_fold(line, |v, k| v.get(k))
    }

    #[test]
    fn writes_deltas_per_line_with_firecracker_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        assert!(
            m.flush(&[], &[], &[]).is_ok(),
            "not configured: nothing to do"
        );
        m.configure(&path).unwrap();
        assert!(matches!(
            m.configure(&path),
            Err(MetricsError::AlreadyConfigured(_))
        ));
        m.set_startup_times(Some(1234), Some(56));
        m.record_request("PUT", "/drives/root", true);
        m.record_request("PUT", "/drives/root", false);
        m.record_request("GET", "/", true);
        m.record_request("GET", "/nope", false);
        m.record_request("PATCH", "/machine-config", false);
        let c = |reads, bytes| DriveCounters {
            read_count: reads,
            read_bytes: bytes,
            latency_max_us: 7,
            io_errors: 1,
            rate_limiter_throttled_events: reads / 5,
            ..Default::default()
        };
        m.flush(
            &[("root".into(), c(10, 40960)), ("data".into(), c(1, 512))],
            &[],
            &[],
        )
        .unwrap();
        m.flush(
            &[("root".into(), c(15, 61440)), ("data".into(), c(1, 512))],
            &[],
            &[],
        )
        .unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 2);
        for line in &l {
            for name in field_names(&["root", "data"]) {
                assert!(get(line, &name).is_some(), "{name} missing from {line}");
            }
        }
        assert_eq!(l[0]["api_server"]["process_startup_time_us"], 1234);
        assert_eq!(l[1]["api_server"]["process_startup_time_cpu_us"], 56);
        assert_eq!(l[0]["put_api_requests"]["drive_count"], 2);
        assert_eq!(l[0]["put_api_requests"]["drive_fails"], 1);
        assert_eq!(l[0]["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(l[0]["patch_api_requests"]["machine_cfg_fails"], 1);
        assert_eq!(l[0]["block_root"]["read_count"], 10);
        assert_eq!(l[0]["block_root"]["execute_fails"], 1);
        assert_eq!(l[0]["block"]["read_bytes"], 40960 + 512);
        assert_eq!(l[1]["block_root"]["read_count"], 5);
        assert_eq!(l[1]["block_data"]["read_count"], 0);
        assert_eq!(l[1]["block"]["read_bytes"], 20480);
        assert_eq!(l[1]["block"]["latency_max_us"], 7);
        assert_eq!(l[0]["block_root"]["rate_limiter_throttled_events"], 2);
        assert_eq!(l[1]["block"]["rate_limiter_throttled_events"], 1);
        assert_eq!(l[1]["put_api_requests"]["drive_count"], 0);
        assert!(l[0]["logger"]["missed_log_count"].is_u64());
        assert!(l[0]["uart"]["missed_write_count"].is_u64());
    }

    #[test]
    fn unopenable_path_is_reported() {
        let mut m = Metrics::default();
        let err = m
            .configure(Path::new("/nonexistent/dir/m.json"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/m.json"), "{err}");
        assert!(m.path().is_none());
    }
}
