//! Summaries over repeats (min / median / max, and a bootstrap confidence interval of the
//! median) and fixed-width table formatting.

use serde::{Deserialize, Serialize};

/// Minimum, median and maximum of a set of measurements, and for a summary over repeats a 95%
/// confidence interval of the median. The unit is the one named by the field that holds the
/// summary (`throughput_mpps`, `rtt_p99_ns`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Smallest value.
    pub min: f64,
    /// Median: the middle value, or the mean of the two middle values for an even count.
    pub median: f64,
    /// Largest value.
    pub max: f64,
    /// Lower end of the 95% bootstrap confidence interval of the median
    /// ([`bootstrap_median_ci`]); absent for summaries that are not over repeats and in files
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_low: Option<f64>,
    /// Upper end of the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_high: Option<f64>,
}

impl Summary {
    /// Summarises `values`, ignoring NaNs, without a confidence interval. `None` when no
    /// non-NaN value is left.
    pub fn from_values(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let (first, last) = (*v.first()?, *v.last()?);
        Some(Summary {
            min: first,
            median: median_of_sorted(&v)?,
            max: last,
            ci95_low: None,
            ci95_high: None,
        })
    }

    /// Summarises the per-repeat `values` of one measurement, with the 95% bootstrap
    /// confidence interval of their median ([`BOOTSTRAP_RESAMPLES`] resamples from
    /// [`BOOTSTRAP_SEED`], so the same values always give the same interval). `None` when no
    /// non-NaN value is left.
    pub fn over_repeats(values: &[f64]) -> Option<Summary> {
        let s = Summary::from_values(values)?;
        let (lo, hi) = bootstrap_median_ci(values, 0.95, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)?;
        Some(Summary {
            ci95_low: Some(lo),
            ci95_high: Some(hi),
            ..s
        })
    }

    /// The 95% confidence interval of the median, when the summary has one.
    pub fn ci95(&self) -> Option<(f64, f64)> {
        Some((self.ci95_low?, self.ci95_high?))
    }
}

/// Resamples behind a [`Summary::over_repeats`] interval. With 2000 the 2.5% and 97.5%
/// points are the 51st and 1950th of the sorted resampled medians, each with about 50
/// resamples beyond it: enough that the interval is stable, cheap for any repeat count the
/// CLI allows (one pass over the values per resample, no sort).
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Seed of the bootstrap's generator. Fixed: an interval is a function of the values alone,
/// so a file summarised twice, or on another machine, carries the same numbers.
pub const BOOTSTRAP_SEED: u64 = 0x7668_6f73_7462_656e; // "vhostben"

/// The percentile-bootstrap `confidence` interval (e.g. 0.95) of the median of `values`
/// (NaNs ignored): `resamples` samples of `values.len()` values drawn with replacement by a
/// SplitMix64 generator seeded with `seed`, the median of each, and the `(1 - confidence) / 2`
/// and `(1 + confidence) / 2` quantiles of those medians (ranks `⌊α·B⌋` and `⌈(1−α)·B⌉ − 1`
/// of the `B` sorted medians). The interval is widened to the sample median should the
/// resampling miss it, so it always contains it. One value, or all equal: the value itself
/// (zero width). `None` when no non-NaN value is left.
///
/// With few repeats the interval is coarse: every resampled median is one of the values (or,
/// for an even count, the mean of two), and with 3 repeats it is `[min, max]` whenever the
/// extremes are drawn as the median often enough, which they are (7 resamples in 27).
pub fn bootstrap_median_ci(
    values: &[f64],
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let median = median_of_sorted(&v)?;
    let (first, last) = (*v.first()?, *v.last()?);
    if first == last || resamples == 0 {
        return Some((median, median));
    }
    let n = v.len();
    let mut rng = SplitMix64(seed);
    // A resample is kept as how often each (sorted) value was drawn: its median is then
    // found in one pass, without sorting it.
    let mut counts = vec![0u32; n];
    let mut medians = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        counts.fill(0);
        for _ in 0..n {
            counts[rng.below(n)] += 1;
        }
        medians.push(median_of_counts(&v, &counts)?);
    }
    medians.sort_by(f64::total_cmp);
    let alpha = ((1.0 - confidence) / 2.0).clamp(0.0, 0.5);
    let b = resamples as f64;
    let lo_rank = ((alpha * b).floor() as usize).min(resamples - 1);
    let hi_rank = (((1.0 - alpha) * b).ceil() as usize)
        .saturating_sub(1)
        .clamp(lo_rank, resamples - 1);
    Some((medians[lo_rank].min(median), medians[hi_rank].max(median)))
}

/// Median of the multiset holding `sorted[i]` `counts[i]` times (the counts sum to
/// `sorted.len()`): the value at rank `(n - 1) / 2`, or the mean of those at `(n - 1) / 2`
/// and `n / 2` for an even count, as [`Summary::median`].
fn median_of_counts(sorted: &[f64], counts: &[u32]) -> Option<f64> {
    let n = sorted.len();
    let (want_lo, want_hi) = (n.checked_sub(1)? / 2, n / 2);
    let mut seen = 0usize;
    let mut lo = None;
    for (&x, &c) in sorted.iter().zip(counts) {
        seen += c as usize;
        if lo.is_none() && seen > want_lo {
            lo = Some(x);
        }
        if seen > want_hi {
            let lo = lo?;
            return Some(if n % 2 == 1 { x } else { lo / 2.0 + x / 2.0 });
        }
    }
    None
}

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014): a 64-bit counter through a mixing function. Written out here rather than
/// taken from `rand`, whose `StdRng` does not promise the same stream across versions: the
/// intervals in results files must not change with a dependency update.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` by Lemire's multiply-shift (bias below `n / 2^64`, nothing here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
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

impl Table {
    /// Renders the same rows as a GitHub-flavoured Markdown table: a header row, the
    /// alignment row (`:--` text, `--:` numbers), one row per line; `|` in a cell escaped,
    /// line breaks turned into spaces.
    pub fn render_markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace(['\r', '\n'], " ");
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = self
            .align
            .iter()
            .map(|a| match a {
                Align::Left => ":--".to_string(),
                Align::Right => "--:".to_string(),
            })
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for r in &self.rows {
            out.push_str(&line(r));
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
                max: 3.0,
                ci95_low: None,
                ci95_high: None,
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

    /// A known sample of 11: the bootstrap distribution of its median is exact,
    /// `P(M* <= x(j)) = P(Binomial(11, j/11) >= 6)`: 0.0072 for j = 2, 0.0512 for j = 3,
    /// 0.9488 for j = 8, 0.9928 for j = 9. So the 2.5% point is x(3) and the 97.5% point x(9),
    /// each about five standard deviations of the resampling's count away from the next order
    /// statistic: any seed gives them.
    #[test]
    fn bootstrap_ci_of_a_known_sample() {
        let v = [3.1, 4.7, 2.2, 5.9, 4.1, 3.8, 6.4, 4.4, 3.3, 5.2, 4.9];
        for seed in [BOOTSTRAP_SEED, 1, 0xdead_beef] {
            assert_eq!(
                bootstrap_median_ci(&v, 0.95, BOOTSTRAP_RESAMPLES, seed),
                Some((3.3, 5.2)),
                "seed {seed:#x}"
            );
        }
        let s = Summary::over_repeats(&v).expect("summary");
        assert_eq!((s.median, s.ci95()), (4.4, Some((3.3, 5.2))));
        // A wider level gives a wider interval, never a narrower one.
        let (lo, hi) = bootstrap_median_ci(&v, 0.999, 2000, BOOTSTRAP_SEED).expect("ci");
        assert!(lo <= 3.3 && hi >= 5.2, "{lo} {hi}");
    }

    #[test]
    fn bootstrap_ci_contains_the_median() {
        // Skewed, even-sized and tiny samples alike.
        let samples: [&[f64]; 5] = [
            &[1.0, 1.0, 1.0, 1.0, 9.0, 50.0, 1000.0],
            &[0.2, 0.25, 0.9, 1.4],
            &[26.4, 24.8, 27.1],
            &[5.0, 7.0],
            &[f64::NAN, 3.0, 8.0, 4.0],
        ];
        for v in samples {
            let s = Summary::over_repeats(v).expect("summary");
            let (lo, hi) = s.ci95().expect("ci");
            assert!(
                lo <= s.median && s.median <= hi,
                "{v:?}: {lo} {} {hi}",
                s.median
            );
            assert!(s.min <= lo && hi <= s.max, "{v:?}: within the range");
        }
        // Three repeats: the extremes are the resampled median 7 times in 27 each.
        let s = Summary::over_repeats(&[26.4, 24.8, 27.1]).expect("summary");
        assert_eq!(s.ci95(), Some((24.8, 27.1)));
    }

    #[test]
    fn bootstrap_ci_of_identical_values_or_one_value_has_no_width() {
        assert_eq!(
            Summary::over_repeats(&[2.5, 2.5, 2.5, 2.5]).and_then(|s| s.ci95()),
            Some((2.5, 2.5))
        );
        assert_eq!(
            Summary::over_repeats(&[7.25]).and_then(|s| s.ci95()),
            Some((7.25, 7.25))
        );
        assert_eq!(bootstrap_median_ci(&[], 0.95, 2000, 1), None);
        assert_eq!(bootstrap_median_ci(&[f64::NAN], 0.95, 2000, 1), None);
        assert_eq!(Summary::over_repeats(&[]), None);
        // Plain summaries (limits, calibration) carry none.
        assert_eq!(
            Summary::from_values(&[1.0, 2.0]).and_then(|s| s.ci95()),
            None
        );
    }

    #[test]
    fn bootstrap_is_deterministic() {
        let v: Vec<f64> = (0..40).map(|i| f64::from(i * 37 % 23) + 0.5).collect();
        let a = bootstrap_median_ci(&v, 0.95, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
        assert_eq!(
            a,
            bootstrap_median_ci(&v, 0.95, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        );
        // The order the values come in does not matter either.
        let mut rev = v.clone();
        rev.reverse();
        assert_eq!(
            a,
            bootstrap_median_ci(&rev, 0.95, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        );
        // The generator's stream is pinned: SplitMix64's published first outputs for seed 0.
        let mut g = SplitMix64(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
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
    fn table_as_markdown() {
        let mut t = Table::new(&[("name", Align::Left), ("v", Align::Right)]);
        t.push_row(vec!["a|b".into(), "1.5".into()]);
        t.push_row(vec!["two\nlines".into()]);
        assert_eq!(
            t.render_markdown(),
            "| name | v |\n|:--|--:|\n| a\\|b | 1.5 |\n| two lines |  |\n"
        );
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
