//! Level 2: the virtio-blk device model without KVM — the criterion bench `device_model`.
//!
//! The bench times the bare backend call (`device_model/bare_backend`) and requests through the
//! whole device at QD 1 and 32 (`device_model/device/qd1|qd32`); the added cost per request is
//! the device's time per request minus the bare call's median. Heap allocations per request
//! come from the summary the bench prints (it counts them with a counting global allocator).

use super::Context;
use super::backend::printed_summary;
use super::criterion::{self, Measurement};
use super::level::{Better, Figure, Level, Verdict};

const TITLE: &str = "Device model without KVM (criterion `device_model`)";
const GOAL: &str = "≤ 1 µs added per request, 0 heap allocations per request";
const ADDED_GOAL_US: f64 = 1.0;
const BARE: &str = "device_model/bare_backend";
const DEPTHS: [(&str, &str); 2] = [("qd1", "QD 1"), ("qd32", "QD 32")];

pub fn run(ctx: &Context) -> Level {
    match criterion::run(ctx, "device_model") {
        Ok(run) => level(&run.measurements, &run.stdout),
        Err(reason) => Level::unavailable(2, TITLE, GOAL, reason),
    }
}

fn us_per_request(m: &Measurement) -> Vec<f64> {
    m.ns_per_element().iter().map(|ns| ns / 1e3).collect()
}

fn level(measurements: &[Measurement], stdout: &str) -> Level {
    let find = |id: &str| measurements.iter().find(|m| m.id == id);
    let Some(bare) = find(BARE).and_then(|m| {
        Figure::of(
            "device-model.bare",
            "bare backend call (MemDisk read)",
            "µs",
        )
        .samples(&us_per_request(m), Better::Lower)
    }) else {
        return Level::unavailable(2, TITLE, GOAL, format!("the bench reported no `{BARE}`"));
    };
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    let mut verdicts = Vec::new();
    for (key, words) in DEPTHS {
        let Some(device) = find(&format!("device_model/device/{key}")) else {
            failures.push(format!("no {words} result"));
            continue;
        };
        let per_request = us_per_request(device);
        let added: Vec<f64> = per_request
            .iter()
            .map(|us| us - bare.value.median)
            .collect();
        let total = Figure::of(
            format!("device-model.{key}"),
            format!("device, {words}: time per request"),
            "µs",
        )
        .samples(&per_request, Better::Lower)
        .map(|f| f.against(&bare));
        let added = Figure::of(
            format!("device-model.{key}.added"),
            format!("device, {words}: added over the bare call"),
            "µs",
        )
        .samples(&added, Better::Lower);
        if let Some(added) = &added {
            let us = added.value.median;
            verdicts.push(format!("{words} adds {us:.2} µs per request"));
            if us > ADDED_GOAL_US {
                failures.push(format!("{words} adds {us:.2} µs per request"));
            }
        }
        match allocations(stdout, key) {
            Some(allocs) => {
                verdicts.push(format!("{allocs} heap allocations per request"));
                if allocs > 0.0 {
                    failures.push(format!("{words}: {allocs} heap allocations per request"));
                }
                figures.extend(
                    Figure::of(
                        format!("device-model.{key}.allocations"),
                        format!("device, {words}: heap allocations per request"),
                        "",
                    )
                    .samples(&[allocs], Better::Lower),
                );
            }
            None => failures.push(format!(
                "{words}: no allocation count in the bench's summary"
            )),
        }
        figures.extend(total);
        figures.extend(added);
    }
    figures.push(bare);
    let summary = verdicts.join(", ");
    let verdict = if failures.is_empty() {
        Verdict::Met(summary)
    } else {
        Verdict::NotMet(summary)
    };
    let mut notes = vec![
        "Method: `cargo bench -p squib-benches --bench device_model`: a simulated driver feeds \
         the virtio-blk device through the virtio-mmio transport and split rings (EVENT_IDX on) \
         over an in-memory disk, so the figures are the device model's own cost. Per criterion \
         sample, time per request = time per iteration / requests per iteration; the added \
         cost subtracts the bare backend call's median; the ratio is device / bare. Allocations \
         are counted by the bench over every thread after a warm-up."
            .to_owned(),
    ];
    notes.extend(printed_summary(stdout, "device_model summary"));
    Level {
        number: 2,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    }
}

/// The last column (`allocs/req`) of the summary row for `device/<key>`.
fn allocations(stdout: &str, key: &str) -> Option<f64> {
    let row = format!("device/{key}");
    stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(row.as_str()))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::allocations;

    #[test]
    fn reads_allocations_from_the_summary() {
        let stdout = "\ndevice_model summary (4 KiB random reads, MemDisk, EVENT_IDX on)\n\
                      \x20              requests/s   ns/request  added over bare   allocs/req\n\
                      bare_backend      1000000         1000                -            -\n\
                      device/qd1         200000         5000          4000 ns        0.000\n\
                      device/qd32        500000         2000          1000 ns        0.031\n";
        assert_eq!(allocations(stdout, "qd1"), Some(0.0));
        assert_eq!(allocations(stdout, "qd32"), Some(0.031));
        assert_eq!(allocations(stdout, "qd8"), None);
    }
}
