//! `vhostbench compare BASE.json NEW.json`: the same configurations in two results files, side
//! by side, each metric judged, and an exit status a CI job can gate on.
//!
//! Both files are read as [`Benchmark`]s ([`crate::results::benchmarks`]); a benchmark of one
//! file is matched with the benchmark of the other that has the same kind and key (the same
//! mode, backend, workload, frame size, busy-poll window, guest polling, batch, modeled exit
//! cost and queue size; for a peer pairing the same direction, size, driver and backend).
//! Every metric both have is judged ([`judge`]) against `--max-regression PCT`:
//!
//! - a **noisy** (timed) metric *regresses* when it is worse by more than PCT percent of the
//!   base value **and** the two 95% confidence intervals of the median do not overlap **and**
//!   both sides have at least [`MIN_TIMED_REPEATS`] repeats **and** the two runs had the same
//!   vCPU placement (their calibrations are not a placement apart): the change is larger
//!   than the threshold and larger than the repeats' own scatter can explain, in runs that
//!   can be compared. Anything else worse by more than PCT is *within noise*: run more
//!   repeats to decide it. (Timed runs on these shared VMs move by tens of percent from one
//!   invocation to the next; the noise-free lockstep metrics are what CI gates on);
//! - an **exact** metric (a count that repeats identically) regresses when it is worse by
//!   more than PCT, whatever its interval;
//! - *improvement* is the mirror image; anything else is *unchanged*.
//!
//! The exit status: [`EXIT_OK`] when nothing regressed, [`EXIT_REGRESSION`] when something did,
//! [`EXIT_UNUSABLE`] when the inputs cannot be compared (a file unreadable, not a results
//! document, of a schema version this build does not read, or no configuration in common),
//! with the reason on stderr. Configurations found in one file only are listed, not an error,
//! and so are differences between the two runs' settings, hosts and placements.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::CompareArgs;
use crate::results::benchmarks::{self, Benchmark, Direction, Estimate, Metric};
use crate::results::{self, placement_changed, Results};
use crate::stats::{fmt_num, Align, Table};

/// Exit status: no metric regressed.
pub const EXIT_OK: u8 = 0;
/// Exit status: at least one metric regressed.
pub const EXIT_REGRESSION: u8 = 1;
/// Exit status: the inputs could not be compared.
pub const EXIT_UNUSABLE: u8 = 2;
/// Default `--max-regression`, percent.
pub const DEFAULT_MAX_REGRESSION_PCT: f64 = 5.0;
/// Repeats each side of a timed metric needs before a change can be called a regression (or
/// an improvement). Measured on these shared 2-vCPU VMs: between 21 default runs of one build
/// (3 repeats each), consecutive runs' medians moved by up to 72% (throughput) with both
/// runs' 3-repeat intervals tight and apart — the host's placement and load change from one
/// run to the next, and three repeats in one sitting cannot show it. Fewer repeats: the change
/// is reported, as within noise.
pub const MIN_TIMED_REPEATS: usize = 5;

/// How `compare` prints its report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A fixed-width table for a terminal or a CI log.
    #[default]
    Text,
    /// The whole [`Comparison`] as one JSON object, for scripts.
    Json,
    /// GitHub-flavoured Markdown, for a pull-request comment or a job summary.
    Markdown,
}

/// What one metric's change amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Worse by more than the threshold, and (a noisy metric) the intervals apart.
    Regression,
    /// Better by more than the threshold, and (a noisy metric) the intervals apart.
    Improvement,
    /// Changed by more than the threshold, but the intervals overlap: the repeats cannot tell
    /// the change from their own scatter.
    WithinNoise,
    /// Changed by no more than the threshold.
    Unchanged,
}

impl Verdict {
    /// How the report shows it.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Regression => "REGRESSION",
            Verdict::Improvement => "improvement",
            Verdict::WithinNoise => "within noise",
            Verdict::Unchanged => "unchanged",
        }
    }
}

/// One metric of one configuration in both files.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The benchmark's name (the same in both files).
    pub benchmark: String,
    /// The metric's name.
    pub metric: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Which way is better.
    pub direction: Direction,
    /// Whether it was judged as a timed (noisy) metric.
    pub noisy: bool,
    /// Its value in the base file.
    pub base: Estimate,
    /// Its value in the new file.
    pub new: Estimate,
    /// `(new − base) / |base| × 100`; `None` when the base is 0 and the new value is not.
    pub delta_pct: Option<f64>,
    /// What the change amounts to.
    pub verdict: Verdict,
}

/// Where one side of a comparison came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Source {
    /// The file, as given.
    pub path: String,
    /// The source revision the run was built from.
    pub git_revision: String,
    /// When the run started.
    pub timestamp: String,
}

impl Source {
    fn of(path: &Path, doc: &Results) -> Source {
        Source {
            path: path.display().to_string(),
            git_revision: doc.git_revision.clone(),
            timestamp: doc.timestamp.clone(),
        }
    }
}

/// How many rows got each verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Configurations found in both files.
    pub matched: usize,
    /// Rows judged a regression.
    pub regressions: usize,
    /// Rows judged an improvement.
    pub improvements: usize,
    /// Rows changed past the threshold within the noise.
    pub within_noise: usize,
    /// Rows changed by no more than the threshold.
    pub unchanged: usize,
}

/// Two benchmark lists matched and judged (no files involved: see [`compare`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Matched {
    /// One per metric of each configuration both lists have, in the base's order.
    pub rows: Vec<Row>,
    /// Names of the base's configurations the new list does not have.
    pub only_in_base: Vec<String>,
    /// Names of the new list's configurations the base does not have.
    pub only_in_new: Vec<String>,
    /// Metrics one side of a matched configuration has and the other lacks.
    pub notes: Vec<String>,
    /// Verdicts, counted.
    pub counts: Counts,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The base file.
    pub base: Source,
    /// The new file.
    pub new: Source,
    /// The threshold, percent.
    pub max_regression_pct: f64,
    /// The matched rows, the unmatched configurations and the verdicts counted.
    #[serde(flatten)]
    pub matched: Matched,
    /// How the two runs differ beyond their records: settings, host, placement.
    pub run_differences: Vec<String>,
}

impl Comparison {
    /// Whether any metric regressed.
    pub fn has_regression(&self) -> bool {
        self.matched.counts.regressions > 0
    }

    /// The exit status this comparison gives.
    pub fn exit_code(&self) -> u8 {
        if self.has_regression() {
            EXIT_REGRESSION
        } else {
            EXIT_OK
        }
    }
}

/// The change from `base` to `new` of `metric` against `max_regression_pct`: the delta in
/// percent of the base value, and the verdict (module documentation). A change of exactly
/// the threshold is not past it.
/// `comparable`: the two runs had the same vCPU placement (their cross-core round trips are
/// not a placement apart); a timed metric of runs that were not is never judged.
pub fn judge(
    metric: &Metric,
    base: &Estimate,
    new: &Estimate,
    max_regression_pct: f64,
    comparable: bool,
) -> (Option<f64>, Verdict) {
    let delta_pct = if base.value != 0.0 {
        Some((new.value - base.value) / base.value.abs() * 100.0)
    } else if new.value == base.value {
        Some(0.0)
    } else {
        None
    };
    // Percent worse (negative: better); from a base of 0 any change is infinitely large.
    let change = delta_pct.unwrap_or(f64::INFINITY.copysign(new.value - base.value));
    let worse = match metric.direction {
        Direction::HigherIsBetter => -change,
        Direction::LowerIsBetter => change,
    };
    let apart = !metric.noisy
        || (base.repeats >= MIN_TIMED_REPEATS
            && new.repeats >= MIN_TIMED_REPEATS
            && comparable
            && (new.ci95_high < base.ci95_low || new.ci95_low > base.ci95_high));
    let verdict = if worse > max_regression_pct && apart {
        Verdict::Regression
    } else if -worse > max_regression_pct && apart {
        Verdict::Improvement
    } else if worse.abs() > max_regression_pct {
        Verdict::WithinNoise
    } else {
        Verdict::Unchanged
    };
    (delta_pct, verdict)
}

/// Matches `new` to `base` by kind and key and judges every metric both sides of a match
/// have.
pub fn compare_benchmarks(
    base: &[Benchmark],
    new: &[Benchmark],
    max_regression_pct: f64,
    comparable: bool,
) -> Matched {
    let same = |a: &Benchmark, b: &Benchmark| a.kind == b.kind && a.key == b.key;
    let mut m = Matched::default();
    for b in base {
        let Some(n) = new.iter().find(|n| same(b, n)) else {
            m.only_in_base.push(b.name.clone());
            continue;
        };
        m.counts.matched += 1;
        for bm in &b.metrics {
            let Some(nm) = n.metric(bm.metric.name) else {
                m.notes
                    .push(format!("{}: {} only in base", b.name, bm.metric.name));
                continue;
            };
            // The base's descriptor decides how the change is judged.
            let (delta_pct, verdict) = judge(
                &bm.metric,
                &bm.estimate,
                &nm.estimate,
                max_regression_pct,
                comparable,
            );
            match verdict {
                Verdict::Regression => m.counts.regressions += 1,
                Verdict::Improvement => m.counts.improvements += 1,
                Verdict::WithinNoise => m.counts.within_noise += 1,
                Verdict::Unchanged => m.counts.unchanged += 1,
            }
            m.rows.push(Row {
                benchmark: b.name.clone(),
                metric: bm.metric.name,
                unit: bm.metric.unit,
                direction: bm.metric.direction,
                noisy: bm.metric.noisy,
                base: bm.estimate,
                new: nm.estimate,
                delta_pct,
                verdict,
            });
        }
        for nm in &n.metrics {
            if b.metric(nm.metric.name).is_none() {
                m.notes
                    .push(format!("{}: {} only in new", b.name, nm.metric.name));
            }
        }
    }
    m.only_in_new = new
        .iter()
        .filter(|n| !base.iter().any(|b| same(b, n)))
        .map(|n| n.name.clone())
        .collect();
    m
}

/// Compares two documents (read from `base_path` and `new_path`, which the report and the
/// errors name). An error when they have no configuration, or no metric, in common.
pub fn compare(
    base_path: &Path,
    base: &Results,
    new_path: &Path,
    new: &Results,
    max_regression_pct: f64,
) -> Result<Comparison> {
    let (bb, nb) = (benchmarks::benchmarks(base), benchmarks::benchmarks(new));
    for (path, list) in [(base_path, &bb), (new_path, &nb)] {
        if list.is_empty() {
            bail!(
                "{} has no records to compare (a `vhostbench limits` file?)",
                path.display()
            );
        }
    }
    let comparable = !placement_changed(
        base.calibration.pingpong_rtt_ns,
        new.calibration.pingpong_rtt_ns,
    );
    let matched = compare_benchmarks(&bb, &nb, max_regression_pct, comparable);
    let run_differences = run_differences(base, new);
    if matched.counts.matched == 0 {
        let sample = |list: &[Benchmark]| {
            let names: Vec<&str> = list.iter().take(3).map(|b| b.name.as_str()).collect();
            format!(
                "{}{}",
                names.join(", "),
                if list.len() > 3 { ", ..." } else { "" }
            )
        };
        let mut msg = format!(
            "no common records: {} has {} ({}), {} has {} ({}); records match on mode, \
             backend, workload, size, busy-poll window, guest polling, batch, modeled exit \
             cost and queue size",
            base_path.display(),
            bb.len(),
            sample(&bb),
            new_path.display(),
            nb.len(),
            sample(&nb),
        );
        if !run_differences.is_empty() {
            msg.push_str(&format!(
                "; the runs differ in: {}",
                run_differences.join("; ")
            ));
        }
        bail!(msg);
    }
    if matched.rows.is_empty() {
        bail!(
            "{} and {}: {} records in common but no metric both have",
            base_path.display(),
            new_path.display(),
            matched.counts.matched
        );
    }
    Ok(Comparison {
        base: Source::of(base_path, base),
        new: Source::of(new_path, new),
        max_regression_pct,
        matched,
        run_differences,
    })
}

/// `run` options whose difference says nothing about the measurement.
const IGNORED_ARGS: [&str; 4] = ["out", "json_only", "json", "format"];

/// How the two runs differ beyond their records: `run` settings, host, the cross-core round
/// trip (a different vCPU placement moves every number).
fn run_differences(base: &Results, new: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let args = |d: &Results| {
        d.config
            .get("args")
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (ba, na) = (args(base), args(new));
    let mut keys: Vec<&String> = ba.keys().chain(na.keys()).collect();
    keys.sort();
    keys.dedup();
    let null = serde_json::Value::Null;
    for k in keys {
        if IGNORED_ARGS.contains(&k.as_str()) {
            continue;
        }
        // An option the older build did not have is the same as one left unset.
        let (b, n) = (ba.get(k).unwrap_or(&null), na.get(k).unwrap_or(&null));
        if b != n {
            out.push(format!("setting {k}: {b} -> {n}"));
        }
    }
    for (what, b, n) in [
        ("host", &base.host.hostname, &new.host.hostname),
        ("cpu", &base.host.cpu_model, &new.host.cpu_model),
        ("kernel", &base.host.kernel, &new.host.kernel),
    ] {
        if b != n {
            out.push(format!("{what}: {b} -> {n}"));
        }
    }
    let (bc, nc) = (
        base.calibration.pingpong_rtt_ns,
        new.calibration.pingpong_rtt_ns,
    );
    if placement_changed(bc, nc) {
        out.push(format!(
            "cross-core round trip {} ns -> {} ns: the vCPUs were placed differently, which \
             moves every timed number",
            fmt_num(bc),
            fmt_num(nc)
        ));
    }
    out
}

/// `vhostbench compare`: reads both files, prints the report in the asked format, and
/// returns it; an error (exit status [`EXIT_UNUSABLE`]) when the files cannot be compared.
pub fn main(args: &CompareArgs) -> Result<Comparison> {
    let base = results::read_results(&args.base).context("base file")?;
    let new = results::read_results(&args.new).context("new file")?;
    let c = compare(&args.base, &base, &args.new, &new, args.max_regression)?;
    print!("{}", render(&c, args.format)?);
    Ok(c)
}

/// The exit status of a finished `compare`.
pub fn exit_code(result: &Result<Comparison>) -> u8 {
    match result {
        Ok(c) => c.exit_code(),
        Err(_) => EXIT_UNUSABLE,
    }
}

/// The report in `format`.
pub fn render(c: &Comparison, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => {
            serde_json::to_string_pretty(c).context("serializing the comparison")? + "\n"
        }
        Format::Text => render_text(c),
        Format::Markdown => render_markdown(c),
    })
}

/// `median [low-high]` of a noisy metric, the value alone for an exact one.
fn estimate(e: &Estimate, noisy: bool) -> String {
    if noisy {
        format!(
            "{} [{}-{}]",
            fmt_num(e.value),
            fmt_num(e.ci95_low),
            fmt_num(e.ci95_high)
        )
    } else {
        fmt_num(e.value)
    }
}

fn table(c: &Comparison) -> Table {
    let mut t = Table::new(&[
        ("benchmark", Align::Left),
        ("metric", Align::Left),
        ("base [95% CI]", Align::Right),
        ("new [95% CI]", Align::Right),
        ("delta", Align::Right),
        ("verdict", Align::Left),
    ]);
    for r in &c.matched.rows {
        t.push_row(vec![
            r.benchmark.clone(),
            r.metric.to_string(),
            estimate(&r.base, r.noisy),
            estimate(&r.new, r.noisy),
            r.delta_pct
                .map_or_else(|| "n/a".to_string(), |d| format!("{d:+.1}%")),
            r.verdict.name().to_string(),
        ]);
    }
    t
}

fn rule(c: &Comparison) -> String {
    // As given: 5, 2.5, 0.25.
    let pct = c.max_regression_pct;
    format!(
        "A timed metric regresses when it is worse by more than {pct}%, its 95% interval is \
         clear of the base's, both runs have at least {MIN_TIMED_REPEATS} repeats and the same \
         vCPU placement; an exact one when it is worse by more than {pct}%."
    )
}

fn counts_line(c: &Comparison) -> String {
    let k = &c.matched.counts;
    format!(
        "{} records matched, {} metrics: regressed {}, improved {}, within noise {}, \
         unchanged {}",
        k.matched,
        c.matched.rows.len(),
        k.regressions,
        k.improvements,
        k.within_noise,
        k.unchanged
    )
}

fn source_line(what: &str, s: &Source) -> String {
    format!(
        "{what}: {} (revision {}, {})",
        s.path, s.git_revision, s.timestamp
    )
}

fn render_text(c: &Comparison) -> String {
    let mut out = String::new();
    out.push_str(&source_line("base", &c.base));
    out.push('\n');
    out.push_str(&source_line("new ", &c.new));
    out.push('\n');
    out.push_str(&rule(c));
    out.push('\n');
    out.push_str(&table(c).render());
    for (what, names) in [
        ("only in base", &c.matched.only_in_base),
        ("only in new", &c.matched.only_in_new),
    ] {
        if !names.is_empty() {
            out.push_str(&format!("{what}: {}\n", names.join(", ")));
        }
    }
    for n in c.matched.notes.iter().chain(&c.run_differences) {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&counts_line(c));
    out.push('\n');
    out
}

fn render_markdown(c: &Comparison) -> String {
    let k = &c.matched.counts;
    let mut out = if c.has_regression() {
        format!("**{} regression(s)**\n\n", k.regressions)
    } else {
        "**No regression**\n\n".to_string()
    };
    out.push_str(&format!(
        "- base: `{}` (revision `{}`, {})\n- new: `{}` (revision `{}`, {})\n\n{}\n\n",
        c.base.path,
        c.base.git_revision,
        c.base.timestamp,
        c.new.path,
        c.new.git_revision,
        c.new.timestamp,
        rule(c)
    ));
    out.push_str(&table(c).render_markdown());
    out.push('\n');
    for (what, names) in [
        ("Only in base", &c.matched.only_in_base),
        ("Only in new", &c.matched.only_in_new),
    ] {
        if !names.is_empty() {
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            out.push_str(&format!("{what}: {}\n\n", names.join(", ")));
        }
    }
    let notes: Vec<&String> = c.matched.notes.iter().chain(&c.run_differences).collect();
    for n in &notes {
        out.push_str(&format!("- note: {n}\n"));
    }
    if !notes.is_empty() {
        out.push('\n');
    }
    out.push_str(&counts_line(c));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::benchmarks::{Measured, THROUGHPUT_MPPS};
    use crate::results::{read_results, workspace_root, RepeatValues};

    /// An exact metric of the kind a lockstep run records.
    const INSTRUCTIONS_PER_PACKET: Metric = Metric {
        name: "instructions_per_packet",
        slug: "instructions-per-packet",
        unit: "instructions",
        direction: Direction::LowerIsBetter,
        noisy: false,
    };

    fn bench(name: &str, metrics: Vec<Measured>) -> Benchmark {
        Benchmark {
            kind: "record",
            key: vec![("name", name.to_string())],
            name: name.to_string(),
            metrics,
        }
    }

    fn mpps(values: &[f64]) -> Measured {
        Measured {
            metric: THROUGHPUT_MPPS,
            estimate: Estimate::from_repeats(values).expect("values"),
        }
    }

    fn verdicts(base: &[f64], new: &[f64], pct: f64) -> Vec<Verdict> {
        let m = compare_benchmarks(
            &[bench("a", vec![mpps(base)])],
            &[bench("a", vec![mpps(new)])],
            pct,
            true,
        );
        m.rows.iter().map(|r| r.verdict).collect()
    }

    #[test]
    fn a_significant_drop_is_a_regression_and_a_rise_an_improvement() {
        let base = [10.0, 10.1, 9.9, 10.05, 9.95];
        let worse = [8.0, 8.1, 7.9, 8.05, 7.95];
        assert_eq!(verdicts(&base, &worse, 5.0), [Verdict::Regression]);
        assert_eq!(verdicts(&worse, &base, 5.0), [Verdict::Improvement]);
        let m = compare_benchmarks(
            &[bench("a", vec![mpps(&base)])],
            &[bench("a", vec![mpps(&worse)])],
            5.0,
            true,
        );
        let d = m.rows[0].delta_pct.expect("delta");
        assert!((d + 20.0).abs() < 1e-9, "{d}");
        assert_eq!((m.counts.regressions, m.counts.matched), (1, 1));
    }

    #[test]
    fn a_timed_change_needs_five_repeats_a_side_and_one_placement() {
        let base = [10.0, 10.1, 9.9, 10.05, 9.95];
        let worse = [8.0, 8.1, 7.9, 8.05, 7.95];
        // Three repeats a side: tight, apart, 20% worse, and still not called.
        assert_eq!(
            verdicts(&base[..3], &worse[..3], 5.0),
            [Verdict::WithinNoise]
        );
        assert_eq!(verdicts(&base, &worse[..4], 5.0), [Verdict::WithinNoise]);
        // Five a side, but the runs' vCPUs were placed differently.
        let m = compare_benchmarks(
            &[bench("a", vec![mpps(&base)])],
            &[bench("a", vec![mpps(&worse)])],
            5.0,
            false,
        );
        assert_eq!(m.rows[0].verdict, Verdict::WithinNoise);
        // An exact metric needs neither.
        let exact = |v: f64| Measured {
            metric: INSTRUCTIONS_PER_PACKET,
            estimate: Estimate::exact(v),
        };
        let m = compare_benchmarks(
            &[bench("b", vec![exact(100.0)])],
            &[bench("b", vec![exact(120.0)])],
            5.0,
            false,
        );
        assert_eq!(m.rows[0].verdict, Verdict::Regression);
    }

    #[test]
    fn a_change_within_the_noise_is_not_flagged() {
        // The median fell by 10%, but the repeats scatter more than that.
        let base = [10.0, 6.0, 14.0, 9.0, 12.0];
        let new = [9.0, 5.0, 13.0, 8.5, 11.0];
        assert_eq!(verdicts(&base, &new, 5.0), [Verdict::WithinNoise]);
        assert_eq!(verdicts(&new, &base, 5.0), [Verdict::WithinNoise]);
    }

    #[test]
    fn the_threshold_is_respected() {
        let base = [100.0; 5];
        // Tight, clearly apart, but small: 4% is under the default 5%, 6% is over it.
        assert_eq!(verdicts(&base, &[96.0; 5], 5.0), [Verdict::Unchanged]);
        assert_eq!(verdicts(&base, &[94.0; 5], 5.0), [Verdict::Regression]);
        // Exactly at the threshold is not past it.
        assert_eq!(verdicts(&base, &[95.0; 5], 5.0), [Verdict::Unchanged]);
        // A looser gate lets 6% through, a stricter one catches 4%.
        assert_eq!(verdicts(&base, &[94.0; 5], 10.0), [Verdict::Unchanged]);
        assert_eq!(verdicts(&base, &[96.0; 5], 2.0), [Verdict::Regression]);
        // Lower-is-better metrics regress upwards.
        let cpu = |v: f64| Measured {
            metric: benchmarks::CPU_NS_PER_PACKET_WORKER,
            estimate: Estimate::from_repeats(&[v; 5]).expect("values"),
        };
        let m = compare_benchmarks(
            &[bench("a", vec![cpu(100.0)])],
            &[bench("a", vec![cpu(107.0)])],
            5.0,
            true,
        );
        assert_eq!(m.rows[0].verdict, Verdict::Regression);
    }

    #[test]
    fn an_exact_metric_regresses_past_the_threshold_whatever_its_interval() {
        let exact = |v: f64| Measured {
            metric: INSTRUCTIONS_PER_PACKET,
            estimate: Estimate::exact(v),
        };
        let ipp = |base: f64, new: f64, pct: f64| {
            compare_benchmarks(
                &[bench("lockstep/tx/64B", vec![exact(base)])],
                &[bench("lockstep/tx/64B", vec![exact(new)])],
                pct,
                true,
            )
            .rows[0]
                .verdict
        };
        // 1% more instructions is past a 0.5% threshold: exact counts do not scatter.
        assert_eq!(ipp(200.0, 202.0, 0.5), Verdict::Regression);
        assert_eq!(ipp(200.0, 201.0, 0.5), Verdict::Unchanged);
        assert_eq!(ipp(200.0, 190.0, 0.5), Verdict::Improvement);
        // The same 1% on a noisy metric with overlapping intervals is not flagged: noisy is
        // what the descriptor says, not the shape of the numbers.
        let noisy = |v: f64| Measured {
            metric: Metric {
                noisy: true,
                ..INSTRUCTIONS_PER_PACKET
            },
            estimate: Estimate {
                ci95_low: v - 5.0,
                ci95_high: v + 5.0,
                ..Estimate::exact(v)
            },
        };
        let m = compare_benchmarks(
            &[bench("b", vec![noisy(200.0)])],
            &[bench("b", vec![noisy(202.0)])],
            0.5,
            true,
        );
        assert_eq!(m.rows[0].verdict, Verdict::WithinNoise);
        assert!(!m.rows[0].noisy || m.rows[0].metric == "instructions_per_packet");
    }

    #[test]
    fn unmatched_configurations_are_listed() {
        let m = compare_benchmarks(
            &[
                bench("a", vec![mpps(&[1.0])]),
                bench("b", vec![mpps(&[1.0])]),
            ],
            &[
                bench("b", vec![mpps(&[1.0])]),
                bench("c", vec![mpps(&[1.0])]),
            ],
            5.0,
            true,
        );
        assert_eq!(
            (m.only_in_base, m.only_in_new),
            (vec!["a".into()], vec!["c".into()])
        );
        assert_eq!(m.counts.matched, 1);
        assert_eq!(m.rows.len(), 1);
    }

    /// The committed default run, its three repeats cycled to five (what a timed verdict
    /// needs).
    fn baseline() -> Results {
        let doc = read_results(&workspace_root().join("results/baseline-2026-12-03b-default.json"))
            .expect("read");
        scaled(&doc, 1.0)
    }

    /// `doc` with every repeat's throughput of every record scaled by `factor`.
    fn scaled(doc: &Results, factor: f64) -> Results {
        let mut d = doc.clone();
        for r in &mut d.records {
            // Five repeats (the committed file's, cycled): what a timed verdict needs.
            let n = r.per_repeat.len().max(MIN_TIMED_REPEATS);
            let repeats: Vec<RepeatValues> = r
                .per_repeat
                .iter()
                .cycle()
                .take(n)
                .map(|p| RepeatValues {
                    throughput_mpps: p.throughput_mpps * factor,
                    ..p.clone()
                })
                .collect();
            let mut again = crate::results::Record::from_repeats(
                &r.mode,
                r.workload,
                r.size_bytes,
                &repeats,
                r.dropped.clone(),
                r.queue_errors.clone(),
            )
            .expect("record");
            again.busy_poll_us = r.busy_poll_us;
            again.batch = r.batch;
            again.guest_poll = r.guest_poll;
            again.backend = r.backend.clone();
            *r = again;
        }
        d
    }

    #[test]
    fn a_file_compared_with_itself_never_fails() {
        let dir = workspace_root().join("results");
        for name in [
            "baseline-2026-12-03b-default.json",
            "peer-dpdk-2026-12-03.json",
            "baseline-2026-11-25-default.json",
        ] {
            let p = dir.join(name);
            let doc = read_results(&p).expect("read");
            // Even with no tolerance at all.
            for pct in [5.0, 0.0] {
                let c = compare(&p, &doc, &p, &doc, pct).expect("compare");
                assert_eq!(c.exit_code(), EXIT_OK, "{name}");
                assert!(c
                    .matched
                    .rows
                    .iter()
                    .all(|r| r.verdict == Verdict::Unchanged && r.delta_pct == Some(0.0)));
                assert!(c.matched.only_in_base.is_empty() && c.matched.only_in_new.is_empty());
                assert!(c.run_differences.is_empty(), "{:?}", c.run_differences);
            }
        }
    }

    #[test]
    fn documents_halved_throughput_fails_and_exit_codes_follow() {
        let base = baseline();
        let p = Path::new("base.json");
        let q = Path::new("new.json");
        let slow = scaled(&base, 0.5);
        let c = compare(p, &base, q, &slow, 5.0).expect("compare");
        assert_eq!(c.exit_code(), EXIT_REGRESSION);
        assert_eq!(exit_code(&Ok(c.clone())), EXIT_REGRESSION);
        // Throughput is what moved: every regression is a throughput row, and only rows
        // whose repeats do not overlap once halved are flagged.
        assert!(c
            .matched
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regression)
            .all(|r| r.metric == "throughput_mpps"));
        assert!(c.matched.counts.regressions >= 20, "{:?}", c.matched.counts);
        // The other way round it is an improvement, and the gate passes.
        let c = compare(q, &slow, p, &base, 5.0).expect("compare");
        assert_eq!((c.exit_code(), c.matched.counts.regressions), (EXIT_OK, 0));
        assert!(c.matched.counts.improvements >= 20);
        // A scale inside the threshold passes.
        let c = compare(p, &base, q, &scaled(&base, 0.97), 5.0).expect("compare");
        assert_eq!(c.exit_code(), EXIT_OK);
        // Unusable input.
        let e = anyhow::anyhow!("unusable");
        assert_eq!(exit_code(&Err(e)), EXIT_UNUSABLE);
    }

    #[test]
    fn the_lockstep_baseline_gates_on_its_exact_counts() {
        let p = workspace_root().join("results/lockstep-baseline.json");
        let base = read_results(&p).expect("read");
        assert!(!base.lockstep.is_empty());
        // Against itself: every count unchanged, even at a 0% threshold.
        let c = compare(&p, &base, &p, &base, 0.0).expect("compare");
        assert_eq!(c.exit_code(), EXIT_OK);
        assert!(c.matched.rows.iter().all(|r| !r.noisy));
        // Three percent more device instructions in one record: past a 2% gate, whatever
        // the run's repeats or placement (there are none to speak of).
        let mut slow = base.clone();
        slow.lockstep[0].instructions_per_packet.device *= 1.03;
        slow.lockstep[0].instructions_per_packet.total =
            slow.lockstep[0].instructions_per_packet.guest
                + slow.lockstep[0].instructions_per_packet.device;
        slow.calibration.pingpong_rtt_ns *= 10.0;
        let c = compare(&p, &base, Path::new("slow.json"), &slow, 2.0).expect("compare");
        assert_eq!(c.exit_code(), EXIT_REGRESSION);
        let bad: Vec<&str> = c
            .matched
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regression)
            .map(|r| r.metric)
            .collect();
        assert_eq!(bad, ["instructions_per_packet.device"], "{bad:?}");
    }

    #[test]
    fn no_common_records_is_an_error_naming_both_files() {
        let base = baseline();
        let mut other = base.clone();
        if let Some(a) = other
            .config
            .get_mut("args")
            .and_then(serde_json::Value::as_object_mut)
        {
            a.insert("queue_size".into(), serde_json::json!(1024));
        }
        let e = compare(
            Path::new("q256.json"),
            &base,
            Path::new("q1024.json"),
            &other,
            5.0,
        )
        .expect_err("nothing in common");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("no common records")
                && msg.contains("q256.json has 24 (null/tx/64B/poll0/batch64/q256")
                && msg.contains("q1024.json has 24 (null/tx/64B/poll0/batch64/q1024")
                && msg.contains("setting queue_size: 256 -> 1024"),
            "{msg}"
        );
        // A file with no records at all says so.
        let mut empty = base.clone();
        empty.records.clear();
        let msg = format!(
            "{:#}",
            compare(
                Path::new("b.json"),
                &base,
                Path::new("limits.json"),
                &empty,
                5.0
            )
            .expect_err("empty")
        );
        assert!(msg.contains("limits.json has no records"), "{msg}");
    }

    #[test]
    fn some_records_in_common_is_enough() {
        let base = baseline();
        let mut new = base.clone();
        new.records.retain(|r| r.mode == "null");
        let c = compare(Path::new("b"), &base, Path::new("n"), &new, 5.0).expect("compare");
        assert_eq!(c.matched.counts.matched, 6);
        assert_eq!(c.matched.only_in_base.len(), 18);
        assert_eq!(c.exit_code(), EXIT_OK);
        let text = render(&c, Format::Text).expect("render");
        assert!(
            text.contains("only in base: emulated/tx/64B/poll0/batch64/q256"),
            "{text}"
        );
    }

    #[test]
    fn reports_in_every_format() {
        let base = baseline();
        let slow = scaled(&base, 0.5);
        let c =
            compare(Path::new("b.json"), &base, Path::new("n.json"), &slow, 5.0).expect("compare");
        let text = render(&c, Format::Text).expect("text");
        assert!(
            text.contains("REGRESSION") && text.contains("-50.0%"),
            "{text}"
        );
        assert!(text
            .lines()
            .last()
            .is_some_and(|l| l.contains("regressed ")));
        let md = render(&c, Format::Markdown).expect("markdown");
        assert!(md.starts_with("**") && md.contains("|:--|"), "{md}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&c, Format::Json).expect("json")).expect("parse");
        assert_eq!(json["base"]["path"], "b.json");
        assert_eq!(json["max_regression_pct"], 5.0);
        let rows = json["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), c.matched.rows.len());
        assert!(rows
            .iter()
            .any(|r| r["verdict"] == "regression" && r["direction"] == "higher-is-better"));
        assert_eq!(
            json["counts"]["regressions"].as_u64(),
            Some(c.matched.counts.regressions as u64)
        );
    }
}
