//! Runs one of the workspace's criterion benchmarks and reads back what criterion stored.
//!
//! Criterion keeps, per benchmark, `new/benchmark.json` (its id and throughput) and
//! `new/sample.json` (iteration counts and total times per sample). The per-sample time per
//! iteration is what the report summarises: median with min–max over criterion's samples.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::Context;

/// One criterion benchmark's result.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Criterion's full id: `group/function/value`.
    pub id: String,
    /// Nanoseconds per iteration, one entry per sample.
    pub ns_per_iter: Vec<f64>,
    /// Elements (or bytes) per iteration, when the benchmark declared a throughput.
    pub elements: Option<f64>,
}

impl Measurement {
    /// Per-sample throughput in elements per second (requests per second for I/O benches).
    pub fn per_second(&self) -> Vec<f64> {
        let elements = self.elements.unwrap_or(1.0);
        self.ns_per_iter
            .iter()
            .map(|ns| elements * 1e9 / ns)
            .collect()
    }

    /// Per-sample time per element in nanoseconds.
    pub fn ns_per_element(&self) -> Vec<f64> {
        let elements = self.elements.unwrap_or(1.0);
        self.ns_per_iter.iter().map(|ns| ns / elements).collect()
    }
}

/// What a bench run produced: the measurements and everything the bench printed.
#[derive(Debug)]
pub struct Run {
    pub measurements: Vec<Measurement>,
    pub stdout: String,
}

/// Runs `cargo bench -p squib-benches --bench <name>` and collects its results.
pub fn run(ctx: &Context, name: &str) -> Result<Run, String> {
    let home = ctx.target_dir.join("bench-criterion").join(name);
    if home.exists() {
        std::fs::remove_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    }
    let mut command = Command::new(&ctx.cargo);
    command
        .args(["bench", "--locked", "-p", "squib-benches", "--bench", name])
        .current_dir(&ctx.workspace)
        .env("CRITERION_HOME", &home)
        .stderr(Stdio::inherit());
    if ctx.quick {
        command.env("SQUIB_BENCH_QUICK", "1");
    }
    eprintln!(
        "xtask bench: cargo bench --bench {name}{}",
        if ctx.quick { " (quick)" } else { "" }
    );
    let out = command
        .output()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let tail: Vec<&str> = stdout.lines().rev().take(20).collect();
        return Err(format!(
            "`cargo bench --bench {name}` failed ({}); last output:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let mut measurements = Vec::new();
    collect(&home, &mut measurements)?;
    measurements.sort_by(|a, b| a.id.cmp(&b.id));
    if measurements.is_empty() {
        return Err(format!(
            "`cargo bench --bench {name}` stored no results in {}",
            home.display()
        ));
    }
    Ok(Run {
        measurements,
        stdout,
    })
}

/// Finds every `new/` directory under `dir` and reads the measurement stored there.
fn collect(dir: &Path, into: &mut Vec<Measurement>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Some(measurement) = read_measurement(&path)? {
                into.push(measurement);
            }
        } else if path
            .file_name()
            .is_none_or(|n| n != "report" && n != "base")
        {
            collect(&path, into)?;
        }
    }
    Ok(())
}

fn read_measurement(new_dir: &Path) -> Result<Option<Measurement>, String> {
    let benchmark = new_dir.join("benchmark.json");
    let sample = new_dir.join("sample.json");
    if !benchmark.exists() || !sample.exists() {
        return Ok(None);
    }
    let benchmark = read_json(&benchmark)?;
    let sample = read_json(&sample)?;
    let text = |key: &str| benchmark[key].as_str().unwrap_or_default().to_owned();
    let numbers = |key: &str| -> Vec<f64> {
        sample[key]
            .as_array()
            .map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_f64).collect())
    };
    let (iters, times) = (numbers("iters"), numbers("times"));
    let ns_per_iter = iters.iter().zip(&times).map(|(n, t)| t / n).collect();
    let throughput = &benchmark["throughput"];
    let elements = ["Elements", "Bytes", "BytesDecimal"]
        .iter()
        .find_map(|kind| throughput[*kind].as_f64());
    Ok(Some(Measurement {
        id: text("full_id"),
        ns_per_iter,
        elements,
    }))
}

fn read_json(path: &PathBuf) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
