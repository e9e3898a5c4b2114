//! `--compare`: this run's ratios against those of a stored report.
//!
//! Only ratios are compared — each is measured against a baseline in its own run, so they carry
//! across noisy machines where absolute numbers do not. A ratio that moved the wrong way by more
//! than the threshold is a regression and makes the task fail.

use std::collections::BTreeMap;
use std::path::Path;

use super::level::{Better, Level};
use super::report::RATIOS_HEADING;

pub fn against(stored: &Path, levels: &[Level], threshold_percent: f64) -> Result<(), String> {
    let text = std::fs::read_to_string(stored).map_err(|e| format!("{}: {e}", stored.display()))?;
    let before = parse_ratios(&text);
    if before.is_empty() {
        return Err(format!(
            "{} has no ratios section to compare with",
            stored.display()
        ));
    }
    let limit = threshold_percent / 100.0;
    let mut regressions = Vec::new();
    println!(
        "\ncompared with {} (threshold {threshold_percent}%):",
        stored.display()
    );
    for figure in levels.iter().flat_map(|l| &l.figures) {
        let (Some(now), Some(&(then, better))) = (&figure.ratio, before.get(&figure.id)) else {
            continue;
        };
        // > 1 is an improvement whichever direction the figure prefers.
        let gain = match better {
            Better::Higher => now.value / then,
            Better::Lower => then / now.value,
        };
        let mark = if gain < 1.0 - limit {
            regressions.push(figure.id.clone());
            "REGRESSED"
        } else {
            ""
        };
        println!(
            "  {:<52} {then:>8.3} -> {:>8.3}  ({:+.1}%) {mark}",
            figure.id,
            now.value,
            (gain - 1.0) * 100.0
        );
    }
    if regressions.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} ratio(s) regressed by more than {threshold_percent}%: {}",
            regressions.len(),
            regressions.join(", ")
        ))
    }
}

/// Reads the `| `id` | ratio | better |` rows under [`RATIOS_HEADING`].
fn parse_ratios(report: &str) -> BTreeMap<String, (f64, Better)> {
    let Some((_, section)) = report.split_once(RATIOS_HEADING) else {
        return BTreeMap::new();
    };
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [id, ratio, better] = cells[..] else {
                return None;
            };
            let id = id.strip_prefix('`')?.strip_suffix('`')?;
            Some((id.to_owned(), (ratio.parse().ok()?, Better::parse(better)?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ratio_rows_back() {
        let report = format!(
            "# r\n\n{RATIOS_HEADING}\n\n| id | ratio | better |\n|---|---:|---|\n\
             | `a.b` | 1.5000 | higher |\n| `c` | 0.2500 | lower |\n\n## later\n| `d` | 1 | higher |\n"
        );
        let ratios = parse_ratios(&report);
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios["a.b"], (1.5, Better::Higher));
        assert_eq!(ratios["c"], (0.25, Better::Lower));
    }
}
