//! Level 1: squib's block engines against raw `pread`/`pwrite` on the host — the criterion
//! bench `backend` (4 KiB random I/O, 1/2/4/8 threads, page-cached and O_DIRECT).
//!
//! Each engine result is paired with the raw result that differs from it only in the
//! backend component of its criterion id, and reported as a ratio of the two.

use super::Context;
use super::criterion::{self, Measurement};
use super::level::{Better, Figure, Level, Verdict};

const TITLE: &str = "Backend (criterion `backend`)";
const GOAL: &str = "each engine ≥ 0.90× raw pread/pwrite at every thread count";
const GOAL_RATIO: f64 = 0.90;

pub fn run(ctx: &Context) -> Level {
    match criterion::run(ctx, "backend") {
        Ok(run) => {
            let mut level = level(&run.measurements);
            level
                .notes
                .extend(printed_summary(&run.stdout, "backend summary"));
            level
                .notes
                .extend(printed_summary(&run.stdout, "ring summary"));
            level
        }
        Err(reason) => Level::unavailable(1, TITLE, GOAL, reason),
    }
}

/// The summary table a bench prints after criterion's own output, as a report note.
pub fn printed_summary(stdout: &str, heading: &str) -> Option<String> {
    let start = stdout.find(heading)?;
    let table: Vec<&str> = stdout[start..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .collect();
    Some(format!(
        "The bench's own summary (its totals over every timed batch):\n\n```\n{}\n```",
        table.join("\n")
    ))
}

/// Whether an id component names the raw-syscall baseline.
fn is_raw(component: &str) -> bool {
    let c = component.to_ascii_lowercase();
    c.contains("raw") || c == "pread" || c == "pwrite" || c.contains("baseline")
}

/// Whether an id component names one of the engines or the baseline.
fn is_backend(component: &str) -> bool {
    let c = component.to_ascii_lowercase();
    is_raw(component) || c.contains("sync") || c.contains("async") || c.contains("engine")
}

/// The id without its backend component: what an engine result and its raw pair share.
fn pairing_key(id: &str) -> String {
    id.split('/')
        .filter(|c| !is_backend(c))
        .collect::<Vec<_>>()
        .join("/")
}

fn figure(m: &Measurement) -> Option<Figure> {
    let id = format!("backend.{}", m.id.replace('/', "."));
    Figure::of(id, label(&m.id), "IOPS").samples(&m.per_second(), Better::Higher)
}

/// `backend/<mode>/<op>/<backend>/<threads>` as words; other ids as they are.
fn label(id: &str) -> String {
    match id.split('/').collect::<Vec<_>>()[..] {
        ["backend", mode, op, backend, threads] => {
            let plural = if threads == "1" { "" } else { "s" };
            format!("{backend}: {mode} {op}, {threads} thread{plural}")
        }
        _ => id.to_owned(),
    }
}

fn level(measurements: &[Measurement]) -> Level {
    let mut figures = Vec::new();
    // The lowest ratio per engine: (engine, ratio, id).
    let mut worst: Vec<(String, f64, String)> = Vec::new();
    for m in measurements.iter().filter(|m| !m.id.split('/').any(is_raw)) {
        let key = pairing_key(&m.id);
        let raw = measurements
            .iter()
            .find(|r| r.id.split('/').any(is_raw) && pairing_key(&r.id) == key);
        let Some(mut engine) = figure(m) else {
            continue;
        };
        if let Some(raw) = raw.and_then(figure) {
            engine = engine.against(&raw);
            let name =
                m.id.split('/')
                    .find(|c| is_backend(c))
                    .unwrap_or("engine")
                    .to_owned();
            if let Some(ratio) = engine.ratio.as_ref().map(|r| r.value) {
                match worst.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) if ratio < entry.1 => *entry = (name, ratio, label(&m.id)),
                    Some(_) => {}
                    None => worst.push((name, ratio, label(&m.id))),
                }
            }
        }
        figures.push(engine);
    }
    for raw in measurements.iter().filter(|m| m.id.split('/').any(is_raw)) {
        figures.extend(figure(raw));
    }
    let lowest: Vec<String> = worst
        .iter()
        .map(|(_, ratio, what)| format!("lowest {ratio:.2}× ({what})"))
        .collect();
    let verdict = if worst.is_empty() {
        Verdict::Unavailable("the bench reported no engine/raw pairs".into())
    } else if worst.iter().all(|(_, ratio, _)| *ratio >= GOAL_RATIO) {
        Verdict::Met(lowest.join("; "))
    } else {
        Verdict::NotMet(lowest.join("; "))
    };
    let notes = vec![
        "Method: `cargo bench -p squib-benches --bench backend`; per criterion sample, requests \
         per second = elements per iteration / time per iteration; median with min–max over the \
         samples. Each engine row's ratio is against the raw row with the same cache mode, \
         operation and thread count. `cached` reads a page-cached file, `direct` opens it with \
         O_DIRECT (the engines' `direct` option)."
            .to_owned(),
    ];
    Level {
        number: 1,
        title: TITLE,
        goal: GOAL,
        verdict,
        figures,
        notes,
    }
}
