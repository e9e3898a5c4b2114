//! The results as text: a short table for the terminal and the markdown report.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::Context;
use super::level::{Figure, Level, Verdict};
use super::machine::Machine;

/// Heading of the section `--compare` reads back.
pub const RATIOS_HEADING: &str = "## Ratios (read by `cargo xtask bench --compare`)";

/// A number with about three significant digits and a thousands suffix for rates.
pub fn number(value: f64, unit: &str) -> String {
    let (scaled, suffix) = match unit {
        "IOPS" | "req/s" if value >= 1e6 => (value / 1e6, " M"),
        "IOPS" | "req/s" if value >= 1e3 => (value / 1e3, " K"),
        _ => (value, ""),
    };
    let digits = match scaled.abs() {
        v if v >= 100.0 || v == 0.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    let spaced_unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    format!("{scaled:.digits$}{suffix}{spaced_unit}")
}

fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Met(why) => format!("**met** — {why}"),
        Verdict::NotMet(why) => format!("**not met** — {why}"),
        Verdict::Unavailable(why) => format!("**not available** — {why}"),
    }
}

fn figures_table(figures: &[Figure]) -> String {
    let mut table = String::from(
        "| figure | median | min – max | runs | ratio (median / median) |\n|---|---:|---:|---:|---|\n",
    );
    for figure in figures {
        let v = figure.value;
        let ratio = figure
            .ratio
            .as_ref()
            .map_or_else(String::new, |r| format!("{:.2}× {}", r.value, r.baseline));
        let _ = writeln!(
            table,
            "| {} | {} | {} – {} | {} | {ratio} |",
            figure.label,
            number(v.median, figure.unit),
            number(v.min, figure.unit),
            number(v.max, figure.unit),
            v.runs
        );
    }
    table
}

/// One level as printed to the terminal while the suite runs.
pub fn level_table(level: &Level) -> String {
    let mut text = format!("\n== level {}: {}\n", level.number, level.title);
    for figure in &level.figures {
        let v = figure.value;
        let ratio = figure
            .ratio
            .as_ref()
            .map_or_else(String::new, |r| format!("  {:.2}×", r.value));
        let _ = writeln!(
            text,
            "  {:<58} {:>14}  [{} – {}]{ratio}",
            figure.label,
            number(v.median, figure.unit),
            number(v.min, figure.unit),
            number(v.max, figure.unit),
        );
    }
    let _ = write!(
        text,
        "  goal: {}\n  {}",
        level.goal,
        verdict_text(&level.verdict).replace("**", "")
    );
    // The report has them too; a `--no-report` run would otherwise lose them.
    for note in &level.notes {
        let _ = write!(text, "\n  note: {note}");
    }
    text
}

/// The short table printed on stdout at the end.
pub fn summary(machine: &Machine, levels: &[Level], quick: bool) -> String {
    let mut text = format!(
        "\nsquib bench{} — {} ({} cores), KVM {}, commit {}\n",
        if quick { " --quick" } else { "" },
        machine.cpu,
        machine.cores,
        machine.kvm,
        machine.commit
    );
    for level in levels {
        let _ = writeln!(
            text,
            "{}. {:<34} {}",
            level.number,
            level.title,
            verdict_text(&level.verdict).replace("**", "")
        );
    }
    text
}

/// Writes `docs/perf/report-<date>.md` and returns its path.
pub fn write(
    ctx: &Context,
    machine: &Machine,
    levels: &[Level],
    quick: bool,
) -> Result<PathBuf, String> {
    let dir = ctx.workspace.join("docs/perf");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let suffix = if quick { "-quick" } else { "" };
    // A second run on the same day gets its own file rather than replacing the first.
    let path = (1..)
        .map(|n| match n {
            1 => dir.join(format!("report-{}{suffix}.md", machine.day())),
            n => dir.join(format!("report-{}{suffix}-{n}.md", machine.day())),
        })
        .find(|path| !path.exists())
        .ok_or("no free report name")?;
    std::fs::write(&path, markdown(machine, levels, quick))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn markdown(machine: &Machine, levels: &[Level], quick: bool) -> String {
    let mut md = format!("# squib performance report, {}\n\n", machine.day());
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}`. How to read it: [README.md](README.md).\n",
        if quick { " --quick" } else { "" }
    );
    md.push_str("| machine | |\n|---|---|\n");
    for (key, value) in [
        ("CPU", machine.cpu.clone()),
        ("cores", machine.cores.to_string()),
        ("kernel", machine.kernel.clone()),
        ("KVM", machine.kvm.to_owned()),
        ("date", machine.date.clone()),
        ("commit", machine.commit.clone()),
        ("load average at start (1, 5, 15 min)", machine.load.clone()),
        (
            "mode",
            if quick { "quick (smoke run)" } else { "full" }.to_owned(),
        ),
    ] {
        let _ = writeln!(md, "| {key} | {value} |");
    }
    md.push_str("\n## Goals\n\n| level | goal | where it stands |\n|---|---|---|\n");
    for level in levels {
        let _ = writeln!(
            md,
            "| {}. {} | {} | {} |",
            level.number,
            level.title,
            level.goal,
            verdict_text(&level.verdict).replace('\n', " ")
        );
    }
    for level in levels {
        let _ = write!(
            md,
            "\n## {}. {}\n\nGoal: {}.\n\n{}\n\n",
            level.number,
            level.title,
            level.goal,
            verdict_text(&level.verdict)
        );
        if !level.figures.is_empty() {
            md.push_str(&figures_table(&level.figures));
            md.push('\n');
        }
        for note in &level.notes {
            let _ = write!(md, "{note}\n\n");
        }
    }
    let _ = write!(
        md,
        "{RATIOS_HEADING}\n\n| id | ratio | better |\n|---|---:|---|\n"
    );
    for figure in levels.iter().flat_map(|l| &l.figures) {
        if let Some(ratio) = &figure.ratio {
            let _ = writeln!(
                md,
                "| `{}` | {:.4} | {} |",
                figure.id,
                ratio.value,
                figure.better.word()
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(123_456.0, "IOPS"), "123 K IOPS");
        assert_eq!(number(1_234_567.0, "IOPS"), "1.23 M IOPS");
        assert_eq!(number(6.789, "ms"), "6.79 ms");
        assert_eq!(number(0.4567, "µs"), "0.457 µs");
    }
}
