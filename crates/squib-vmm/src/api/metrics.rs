//! The metrics file: one JSON object per line, written every [`FLUSH_INTERVAL`] and on
//! `FlushMetrics`.
//!
//! As in Firecracker, counters are *deltas* since the previous line, so a consumer sums lines;
//! `latency_max_us` is the maximum seen since start. Keys follow Firecracker's layout
//! (`get_api_requests`, `put_api_requests`, `patch_api_requests`, `block`, `block_{drive_id}`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::vmm_control::{DeviceCounters, DriveCounters};

/// How often a line is written without being asked (Firecracker's period).
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Why the metrics file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `PUT /metrics` twice.
    #[error("metrics are already configured (to `{}`)", .0.display())]
    AlreadyConfigured(PathBuf),
    /// `FlushMetrics` before `PUT /metrics`.
    #[error("metrics are not configured: PUT /metrics first")]
    NotConfigured,
    /// The path cannot be opened.
    #[error("cannot open metrics_path `{}`: {source}", path.display())]
    Open {
        /// As given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the line failed.
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
}

/// Counts of one API resource and method.
#[derive(Clone, Copy, Debug, Default)]
struct RequestCount {
    count: u64,
    fails: u64,
}

/// The metrics state: the file, API request counts, the last drive counters written.
#[derive(Debug, Default)]
pub struct Metrics {
    sink: Option<(PathBuf, File)>,
    /// `(method, resource)` → counts since the last line.
    requests: BTreeMap<(String, &'static str), RequestCount>,
    /// Drive counters at the last line, to write deltas.
    last_drives: BTreeMap<String, DriveCounters>,
    /// Other devices' counters at the last line, by `(group, field)`.
    last_devices: BTreeMap<(&'static str, &'static str), u64>,
}

impl Metrics {
    /// Opens `path` for appending. A named pipe is opened non-blocking so that neither the open
    /// nor a full pipe ever stalls the API thread (a line that does not fit is dropped).
    pub fn configure(&mut self, path: &Path) -> Result<(), MetricsError> {
        if let Some((existing, _)) = &self.sink {
            return Err(MetricsError::AlreadyConfigured(existing.clone()));
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| MetricsError::Open {
                path: path.to_owned(),
                source,
            })?;
        self.sink = Some((path.to_owned(), file));
        Ok(())
    }

    /// The configured path.
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(|(p, _)| p.as_path())
    }

    /// Counts one API request.
    pub fn record_request(&mut self, method: &str, resource: &'static str, ok: bool) {
        let c = self
            .requests
            .entry((method.to_ascii_lowercase(), resource))
            .or_default();
        c.count += 1;
        if !ok {
            c.fails += 1;
        }
    }

    /// Writes one line with everything counted since the previous one.
    pub fn flush(
        &mut self,
        drives: &[(String, DriveCounters)],
        devices: &[DeviceCounters],
    ) -> Result<(), MetricsError> {
        let line = self.line(drives, devices);
        let Some((_, file)) = self.sink.as_mut() else {
            return Err(MetricsError::NotConfigured);
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        file.write_all(&bytes).map_err(MetricsError::Write)
    }

    /// Builds the next line and resets the deltas.
    fn line(&mut self, drives: &[(String, DriveCounters)], devices: &[DeviceCounters]) -> Value {
        let mut root = Map::new();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        root.insert(
            "utc_timestamp_ms".into(),
            json!(u64::try_from(ms).unwrap_or(u64::MAX)),
        );
        for ((method, resource), c) in std::mem::take(&mut self.requests) {
            let group = root
                .entry(format!("{method}_api_requests"))
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(group) = group {
                group.insert(format!("{resource}_count"), json!(c.count));
                group.insert(format!("{resource}_fails"), json!(c.fails));
            }
        }
        let mut total = DriveCounters::default();
        for (id, now) in drives {
            let before = self
                .last_drives
                .insert(id.clone(), *now)
                .unwrap_or_default();
            let delta = delta(now, &before);
            add(&mut total, &delta);
            root.insert(format!("block_{id}"), json!(delta));
        }
        root.insert("block".into(), json!(total));
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
        Value::Object(root)
    }
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

    #[test]
    fn writes_deltas_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut m = Metrics::default();
        assert!(matches!(
            m.flush(&[], &[]),
            Err(MetricsError::NotConfigured)
        ));
        m.configure(&path).unwrap();
        assert!(matches!(
            m.configure(&path),
            Err(MetricsError::AlreadyConfigured(_))
        ));
        m.record_request("PUT", "drives", true);
        m.record_request("PUT", "drives", false);
        m.record_request("GET", "instance_info", true);
        let c = |reads, bytes| DriveCounters {
            read_count: reads,
            read_bytes: bytes,
            latency_max_us: 7,
            rate_limiter_throttled_events: reads / 5,
            ..Default::default()
        };
        m.flush(
            &[("root".into(), c(10, 40960)), ("data".into(), c(1, 512))],
            &[],
        )
        .unwrap();
        m.flush(
            &[("root".into(), c(15, 61440)), ("data".into(), c(1, 512))],
            &[],
        )
        .unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0]["put_api_requests"]["drives_count"], 2);
        assert_eq!(l[0]["put_api_requests"]["drives_fails"], 1);
        assert_eq!(l[0]["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(l[0]["block_root"]["read_count"], 10);
        assert_eq!(l[0]["block"]["read_bytes"], 40960 + 512);
        assert_eq!(l[1]["block_root"]["read_count"], 5);
        assert_eq!(l[1]["block_data"]["read_count"], 0);
        assert_eq!(l[1]["block"]["read_bytes"], 20480);
        assert_eq!(l[1]["block"]["latency_max_us"], 7);
        assert_eq!(l[0]["block_root"]["rate_limiter_throttled_events"], 2);
        assert_eq!(l[1]["block"]["rate_limiter_throttled_events"], 1);
        assert!(l[1].get("put_api_requests").is_none());
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
