//! Level 2: the virtio-blk device model without KVM — the criterion bench `device_model`.

use super::Context;
use super::criterion::{self, Measurement};
use super::level::{Better, Figure, Level, Verdict};

const TITLE: &str = "Device model without KVM (criterion `device_model`)";
const GOAL: &str = "≤ 1 µs added per request, 0 heap allocations per request";

pub fn run(ctx: &Context) -> Level {
    match criterion::run(ctx, "device_model") {
        Ok(run) => level(&run.measurements, &run.stdout),
        Err(reason) => Level::unavailable(2, TITLE, GOAL, reason),
    }
}

fn figure(m: &Measurement) -> Option<Figure> {
    let id = format!("device-model.{}", m.id.replace('/', "."));
    Figure::of(id, m.id.clone(), "µs").samples(
        &m.ns_per_element()
            .iter()
            .map(|ns| ns / 1e3)
            .collect::<Vec<_>>(),
        Better::Lower,
    )
}

fn level(measurements: &[Measurement], _stdout: &str) -> Level {
    let figures: Vec<Figure> = measurements.iter().filter_map(figure).collect();
    Level {
        number: 2,
        title: TITLE,
        goal: GOAL,
        verdict: Verdict::Unavailable("not yet interpreted".into()),
        figures,
        notes: Vec::new(),
    }
}
