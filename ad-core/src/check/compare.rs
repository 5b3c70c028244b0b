//! One comparison of values under test against references: errors, the worst few, pass/fail;
//! and how reports print their numbers.

use std::fmt;

use serde::{Serialize, Serializer};

use super::Tolerance;

/// Where an entry of an input matrix is: `(row, col)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Row of the entry.
    pub row: usize,
    /// Column of the entry.
    pub col: usize,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.row, self.col)
    }
}

/// One compared value: where it is (`at`: an [`Entry`], or the index of a random pair or
/// direction), the value under test and its reference, and the errors between them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Mismatch<L> {
    /// Where the value is.
    pub at: L,
    /// The value under test (from the reverse pass).
    #[serde(serialize_with = "number")]
    pub reverse: f64,
    /// The reference (`Dual64` or finite differences).
    #[serde(serialize_with = "number")]
    pub reference: f64,
    /// `|reverse − reference|` (infinite if either is not finite).
    #[serde(serialize_with = "number")]
    pub abs_error: f64,
    /// The relative error (see the [module docs](super); infinite if either is not finite).
    #[serde(serialize_with = "number")]
    pub rel_error: f64,
}

/// Values under test against their references: the largest errors, the worst entries, and
/// whether all are within the tolerance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison<L> {
    /// How many values were compared.
    pub compared: usize,
    /// How many of them (value under test or reference) were NaN or infinite.
    pub non_finite: usize,
    /// The largest absolute error.
    #[serde(serialize_with = "number")]
    pub max_abs_error: f64,
    /// The largest relative error.
    #[serde(serialize_with = "number")]
    pub max_rel_error: f64,
    /// The worst values by relative error, worst first (non-finite ones before all others).
    pub worst: Vec<Mismatch<L>>,
    /// What passing means.
    pub tolerance: Tolerance,
    /// Whether every value is finite and within the tolerance.
    pub passed: bool,
}

impl<L: Copy> Comparison<L> {
    /// Compare `(at, reverse, reference, scale)` items, keeping the `worst` largest errors.
    pub(crate) fn new(
        items: impl IntoIterator<Item = (L, f64, f64, f64)>,
        tolerance: Tolerance,
        worst: usize,
    ) -> Self {
        let mut all: Vec<Mismatch<L>> = items
            .into_iter()
            .map(|(at, reverse, reference, scale)| {
                let (abs_error, rel_error) = if reverse.is_finite() && reference.is_finite() {
                    let abs = (reverse - reference).abs();
                    let denominator = reverse
                        .abs()
                        .max(reference.abs())
                        .max(tolerance.floor * scale);
                    // Equal values (zeros included) have no error, whatever the denominator.
                    (abs, if abs == 0.0 { 0.0 } else { abs / denominator })
                } else {
                    (f64::INFINITY, f64::INFINITY)
                };
                Mismatch {
                    at,
                    reverse,
                    reference,
                    abs_error,
                    rel_error,
                }
            })
            .collect();
        let compared = all.len();
        let non_finite = all
            .iter()
            .filter(|m| !(m.reverse.is_finite() && m.reference.is_finite()))
            .count();
        let max_abs_error = all.iter().map(|m| m.abs_error).fold(0.0, f64::max);
        let max_rel_error = all.iter().map(|m| m.rel_error).fold(0.0, f64::max);
        // Stable: among equal errors the first in checking order comes first.
        all.sort_by(|a, b| b.rel_error.total_cmp(&a.rel_error));
        all.truncate(worst);
        Comparison {
            compared,
            non_finite,
            max_abs_error,
            max_rel_error,
            worst: all,
            tolerance,
            passed: non_finite == 0 && max_rel_error <= tolerance.rel,
        }
    }
}

/// The largest magnitude among the finite numbers given (0 if none): the scale of an input's
/// entries.
pub(crate) fn largest_magnitude(values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .filter(|x| x.is_finite())
        .fold(0.0, |m, x| m.max(x.abs()))
}

/// Serialise a number as JSON does, but a non-finite one as `"NaN"`, `"inf"` or `"-inf"`
/// (JSON has no such numbers, and `null` would hide which it was).
pub(crate) fn number<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_str(&text(*x))
    }
}

/// A number for a table: three significant digits in scientific notation, or `NaN`, `inf`.
pub(crate) fn text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:.2e}")
    }
}

pub(crate) use crate::table::TextTable as Table;

/// The tables a report prints: one summary row per comparison, and the worst values of the
/// comparisons that failed. Each row starts with the report's own label columns.
pub(crate) struct ComparisonTables {
    summary: Table,
    worst: Table,
}

impl ComparisonTables {
    /// Tables whose rows start with these label columns; `at` names the worst values' location.
    pub(crate) fn new(labels: &[&str], at: &str) -> Self {
        let header = |rest: &[&str]| {
            let all: Vec<&str> = labels.iter().chain(rest).copied().collect();
            Table::new(&all)
        };
        ComparisonTables {
            summary: header(&[
                "against", "compared", "max abs", "max rel", "tol rel", "status",
            ]),
            worst: header(&[
                "against",
                at,
                "reverse",
                "reference",
                "abs error",
                "rel error",
            ]),
        }
    }

    /// A row for comparison `c` against `reference`, and its worst values if it failed.
    pub(crate) fn add<L: fmt::Display>(
        &mut self,
        labels: &[String],
        reference: &str,
        c: &Comparison<L>,
    ) {
        let mut row = labels.to_vec();
        row.extend([
            reference.to_owned(),
            c.compared.to_string(),
            text(c.max_abs_error),
            text(c.max_rel_error),
            text(c.tolerance.rel),
            if c.passed { "ok" } else { "FAILED" }.to_owned(),
        ]);
        self.summary.row(row);
        if c.passed {
            return;
        }
        for m in &c.worst {
            let mut row = labels.to_vec();
            row.extend([
                reference.to_owned(),
                m.at.to_string(),
                text(m.reverse),
                text(m.reference),
                text(m.abs_error),
                text(m.rel_error),
            ]);
            self.worst.row(row);
        }
    }
}

impl fmt::Display for ComparisonTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary)?;
        if !self.worst.is_empty() {
            writeln!(f, "worst values of the failed comparisons:")?;
            write!(f, "{}", self.worst)?;
        }
        Ok(())
    }
}
