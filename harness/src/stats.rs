//! Summaries over repeats (min / median / max) and fixed-width table formatting.

use serde::{Deserialize, Serialize};

/// Minimum, median and maximum of a set of measurements. The unit is the one named by the
/// field that holds the summary (`throughput_mpps`, `rtt_p99_ns`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Smallest value.
    pub min: f64,
    /// Median: the middle value, or the mean of the two middle values for an even count.
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values`, ignoring NaNs. `None` when no non-NaN value is left.
    pub fn from_values(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let (first, last) = (*v.first()?, *v.last()?);
        Some(Summary {
            min: first,
            median: median_of_sorted(&v)?,
            max: last,
        })
    }
}

/// Median of a slice, ignoring NaNs; `None` when no non-NaN value is left.
pub fn median(values: &[f64]) -> Option<f64> {
    Summary::from_values(values).map(|s| s.median)
}

/// Median of an already sorted, NaN-free slice.
fn median_of_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    if n % 2 == 1 {
        Some(v[n / 2])
    } else {
        // Halve before adding so two huge values cannot overflow to infinity.
        Some(v[n / 2 - 1] / 2.0 + v[n / 2] / 2.0)
    }
}

/// Formats a measurement with about three significant digits and no exponent:
/// `312`, `63.2`, `1.23`, `0.0412`. Large values keep all their integer digits. Non-finite
/// values print as `nan`, `inf`, `-inf`.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}").to_lowercase();
    }
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        // Three significant digits below 1: 0.123, 0.0123, ... capped at 9 decimals.
        let lead_zeros = (-a.log10()).floor() as usize;
        (lead_zeros + 3).min(9)
    };
    format!("{v:.decimals$}")
}

/// Column alignment in a [`Table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left so the digits line up.
    Right,
}

/// A plain-text table with fixed-width columns sized to their widest cell.
///
/// ```text
/// name            unit      min   median      max
/// spsc_handoff    mpps      201      254      262
/// ```
#[derive(Clone, Debug)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with the given column headers and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|(h, _)| (*h).to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Missing cells print empty; extra cells are dropped.
    pub fn push_row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Renders the header and all rows, two spaces between columns, one line each, trailing
    /// whitespace trimmed, ending with a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain(std::iter::once(self.headers[c].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(&self.align)
                .map(|((cell, w), a)| pad(cell, *w, *a))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Pads `s` to `width` characters, on the right for [`Align::Left`], on the left for
/// [`Align::Right`]. Longer strings are returned unchanged.
pub fn pad(s: &str, width: usize, align: Align) -> String {
    match align {
        Align::Left => format!("{s:<width$}"),
        Align::Right => format!("{s:>width$}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        let s = Summary::from_values(&[3.0, 1.0, 2.0]).expect("summary");
        assert_eq!(
            s,
            Summary {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        let s = Summary::from_values(&[4.0, 1.0, 3.0, 2.0]).expect("summary");
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(median(&[7.0]), Some(7.0));
    }

    #[test]
    fn empty_and_nan() {
        assert_eq!(Summary::from_values(&[]), None);
        assert_eq!(Summary::from_values(&[f64::NAN, f64::NAN]), None);
        let s = Summary::from_values(&[f64::NAN, 5.0, 1.0]).expect("summary");
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        // Huge values do not overflow in the even-count mean.
        assert_eq!(median(&[f64::MAX, f64::MAX]), Some(f64::MAX));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(312.4), "312");
        assert_eq!(fmt_num(63.24), "63.2");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.04123), "0.0412");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(123456.7), "123457");
        assert_eq!(fmt_num(f64::NAN), "nan");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[("name", Align::Left), ("v", Align::Right)]);
        t.push_row(vec!["a".into(), "1.5".into()]);
        t.push_row(vec!["long_name".into(), "312".into()]);
        assert_eq!(
            t.render(),
            "name         v\na          1.5\nlong_name  312\n"
        );
    }
}
