//! What each benchmark level hands back: its figures, its goal and whether the goal was met.

use super::stats::Summary;

/// Which direction of a figure (or of its ratio) is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

impl Better {
    pub fn word(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }

    pub fn parse(word: &str) -> Option<Better> {
        match word {
            "higher" => Some(Better::Higher),
            "lower" => Some(Better::Lower),
            _ => None,
        }
    }
}

/// A figure against the baseline measured in the same run: `value.median / baseline.median`.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub baseline: String,
    pub value: f64,
}

/// One measured quantity, summarised over several runs.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable key, used by `--compare` to match figures across reports.
    pub id: String,
    pub label: String,
    pub unit: &'static str,
    pub value: Summary,
    pub better: Better,
    pub ratio: Option<Ratio>,
}

impl Figure {
    pub fn of(
        id: impl Into<String>,
        label: impl Into<String>,
        unit: &'static str,
    ) -> FigureBuilder {
        FigureBuilder {
            id: id.into(),
            label: label.into(),
            unit,
        }
    }
}

/// The first half of a [`Figure`]: what it is, before its samples are known.
#[derive(Debug)]
pub struct FigureBuilder {
    id: String,
    label: String,
    unit: &'static str,
}

impl FigureBuilder {
    /// Completes the figure from its samples; `None` when there were none.
    pub fn samples(self, samples: &[f64], better: Better) -> Option<Figure> {
        Some(Figure {
            id: self.id,
            label: self.label,
            unit: self.unit,
            value: Summary::of(samples)?,
            better,
            ratio: None,
        })
    }
}

impl Figure {
    /// Attaches the ratio of this figure's median to `baseline`'s.
    pub fn against(mut self, baseline: &Figure) -> Figure {
        if baseline.value.median != 0.0 {
            self.ratio = Some(Ratio {
                baseline: baseline.label.clone(),
                value: self.value.median / baseline.value.median,
            });
        }
        self
    }
}

/// Where a level's goal stands after this run.
#[derive(Debug, Clone)]
pub enum Verdict {
    Met(String),
    NotMet(String),
    /// The level could not run here; the reason is reported instead of the figures.
    Unavailable(String),
}

/// The outcome of one benchmark level.
#[derive(Debug, Clone)]
pub struct Level {
    pub number: u8,
    pub title: &'static str,
    pub goal: &'static str,
    pub verdict: Verdict,
    pub figures: Vec<Figure>,
    /// How the figures were obtained and how to read them (one paragraph each).
    pub notes: Vec<String>,
}

impl Level {
    pub fn unavailable(
        number: u8,
        title: &'static str,
        goal: &'static str,
        reason: String,
    ) -> Level {
        Level {
            number,
            title,
            goal,
            verdict: Verdict::Unavailable(reason),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }
}
