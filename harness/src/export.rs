//! A results document in other tools' formats: [`export`] (what `vhostbench export FILE
//! --format F` prints, and what `run` can print instead of its table).
//!
//! Every format names a configuration by its benchmark name
//! ([`crate::results::benchmarks`]: `null/tx/64B/poll0/batch64/q256`,
//! `peer/g2h/64B/guest-sim/engine`), the same from run to run and unique within a document, so
//! a dashboard's series stay continuous across commits.
//!
//! - [`Format::GithubActionBenchmark`]: the input of
//!   [benchmark-action/github-action-benchmark](https://github.com/benchmark-action/github-action-benchmark)
//!   with `tool: 'customBiggerIsBetter'`: a JSON array with one object per record (and peer
//!   pairing), its throughput:
//!   ```json
//!   [{ "name": "null/tx/64B/poll0/batch64/q256", "unit": "Mpps", "value": 26.41,
//!      "range": "± 1.58", "extra": "95% CI of the median 24.8-27.1 Mpps, 3 repeats; ..." }]
//!   ```
//!   `name`, `unit` (string) and `value` (number) are what the action requires; `range` and
//!   `extra` are optional strings it shows beside the value (`range`: the larger half of the
//!   median's 95% interval; `extra`: the exact interval, the repeats, the revision). Only the
//!   throughput goes in: the action takes one direction per file, and throughput is the
//!   metric every record has.
//! - [`Format::Bencher`]: the Bencher Metric Format (BMF) JSON that `bencher run --adapter
//!   json` reads: an object keyed by benchmark name, each an object keyed by measure slug,
//!   each a metric with `value` and the optional `lower_value` / `upper_value`, here the
//!   median and its 95% interval:
//!   ```json
//!   { "null/tx/64B/poll0/batch64/q256": {
//!       "throughput-mpps": { "value": 26.41, "lower_value": 24.83, "upper_value": 27.10 },
//!       "cpu-ns-per-packet-worker": { "value": 36.1, "lower_value": 35.2, "upper_value": 37.9 } } }
//!   ```
//!   Measures: `throughput-mpps`, `cpu-ns-per-packet-worker`, `cpu-ns-per-packet-vcpu`, and
//!   for rr `rtt-p50-ns`, `rtt-p99-ns`; Bencher creates a measure the first time its slug is
//!   seen (set its units and direction there once).
//! - [`Format::Markdown`]: the side-by-side table of `run` (and the peer table, if any) as
//!   GitHub-flavoured Markdown tables.
//! - [`Format::Csv`]: one row per record after a header row, columns in a fixed order
//!   ([`CSV_COLUMNS`]), RFC 4180 quoting, full-precision numbers; empty where a value does not
//!   apply (latencies of tx and rx). Peer pairings are left out (they are not records).

use serde_json::{json, Map, Value};

use crate::results::benchmarks::{self, Benchmark, Estimate, THROUGHPUT_MPPS};
use crate::results::{Record, Results};
use crate::run::render;
use crate::stats::{fmt_num, Summary};

/// What [`export`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// github-action-benchmark's custom JSON (use `tool: 'customBiggerIsBetter'`):
    /// throughput per record.
    GithubActionBenchmark,
    /// Bencher Metric Format JSON (`bencher run --adapter json`): every metric with its 95%
    /// interval.
    Bencher,
    /// The results table as GitHub-flavoured Markdown.
    Markdown,
    /// One CSV row per record, with a header row.
    Csv,
}

/// `doc` in `format`, ending with a newline.
pub fn export(doc: &Results, format: Format) -> String {
    match format {
        Format::GithubActionBenchmark => format!("{:#}\n", github_action_benchmark(doc)),
        Format::Bencher => format!("{:#}\n", bencher(doc)),
        Format::Markdown => markdown(doc),
        Format::Csv => csv(doc),
    }
}

/// The larger distance from the value to either end of its interval.
fn half_width(e: &Estimate) -> f64 {
    (e.value - e.ci95_low).max(e.ci95_high - e.value)
}

/// github-action-benchmark's `customBiggerIsBetter` array: the throughput of every benchmark.
pub fn github_action_benchmark(doc: &Results) -> Value {
    let entries = benchmarks::benchmarks(doc)
        .iter()
        .filter_map(|b| {
            let t = b.metric(THROUGHPUT_MPPS.name)?;
            let e = &t.estimate;
            Some(json!({
                "name": b.name,
                "unit": t.metric.unit,
                "value": e.value,
                "range": format!("± {}", fmt_num(half_width(e))),
                "extra": format!(
                    "95% CI of the median {}-{} {}, {} repeats; revision {}; cross-core round \
                     trip {} ns",
                    fmt_num(e.ci95_low),
                    fmt_num(e.ci95_high),
                    t.metric.unit,
                    e.repeats,
                    doc.git_revision,
                    fmt_num(doc.calibration.pingpong_rtt_ns),
                ),
            }))
        })
        .collect();
    Value::Array(entries)
}

/// Bencher Metric Format: benchmark name → measure slug → value and interval.
pub fn bencher(doc: &Results) -> Value {
    let mut out = Map::new();
    for b in benchmarks::benchmarks(doc) {
        let mut measures = Map::new();
        for m in &b.metrics {
            let e = &m.estimate;
            measures.insert(
                m.metric.slug.to_string(),
                json!({ "value": e.value, "lower_value": e.ci95_low, "upper_value": e.ci95_high }),
            );
        }
        out.insert(b.name, Value::Object(measures));
    }
    Value::Object(out)
}

/// The results table, and the peer table when there is one, as Markdown.
pub fn markdown(doc: &Results) -> String {
    let mut out = render::table(doc).render_markdown();
    if !doc.peers.is_empty() {
        out.push('\n');
        out.push_str(&render::peers_table(&doc.peers).render_markdown());
    }
    out
}

/// The CSV header, in order. Metrics are medians over repeats unless the name says
/// otherwise (`_ci95_low`, `_min`, ...).
pub const CSV_COLUMNS: [&str; 43] = [
    "name",
    "mode",
    "backend",
    "workload",
    "size_bytes",
    "busy_poll_us",
    "guest_poll",
    "batch",
    "modeled_exit_cost_ns",
    "queue_size",
    "repeats",
    "throughput_mpps_median",
    "throughput_mpps_ci95_low",
    "throughput_mpps_ci95_high",
    "throughput_mpps_min",
    "throughput_mpps_max",
    "throughput_gbps_median",
    "cpu_ns_per_packet_worker_median",
    "cpu_ns_per_packet_worker_ci95_low",
    "cpu_ns_per_packet_worker_ci95_high",
    "cpu_ns_per_packet_vcpu_median",
    "cpu_ns_per_packet_vcpu_ci95_low",
    "cpu_ns_per_packet_vcpu_ci95_high",
    "kicks_per_packet_median",
    "calls_per_packet_median",
    "chains_per_batch_median",
    "rtt_p50_ns_median",
    "rtt_p50_ns_ci95_low",
    "rtt_p50_ns_ci95_high",
    "rtt_p99_ns_median",
    "rtt_p99_ns_ci95_low",
    "rtt_p99_ns_ci95_high",
    "rtt_p999_ns_median",
    "rtt_mean_ns_median",
    "ceiling",
    "pct_of_ceiling",
    "sent",
    "received",
    "dropped",
    "lost",
    "queue_errors",
    "engine_overhead_bytes",
    "errors",
];

/// One CSV row per record.
pub fn csv(doc: &Results) -> String {
    let mut out = csv_line(CSV_COLUMNS.iter().map(|c| (*c).to_string()));
    let q = benchmarks::queue_size(doc);
    // The records' benchmarks come first, in record order (names made unique over the whole
    // document).
    let benches = benchmarks::benchmarks(doc);
    for (r, b) in doc.records.iter().zip(&benches) {
        out.push_str(&csv_line(csv_row(r, b, q)));
    }
    out
}

fn num(v: f64) -> String {
    format!("{v}")
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_default()
}

fn median(s: &Option<Summary>) -> String {
    opt(s.map(|s| s.median))
}

/// A metric's median and interval from its benchmark (empty when it has none).
fn estimate_cells(b: &Benchmark, metric: &str) -> [String; 3] {
    match b.metric(metric) {
        Some(m) => [
            num(m.estimate.value),
            num(m.estimate.ci95_low),
            num(m.estimate.ci95_high),
        ],
        None => Default::default(),
    }
}

fn csv_row(r: &Record, b: &Benchmark, queue_size: Option<u64>) -> Vec<String> {
    let [t, t_lo, t_hi] = estimate_cells(b, benchmarks::THROUGHPUT_MPPS.name);
    let [w, w_lo, w_hi] = estimate_cells(b, benchmarks::CPU_NS_PER_PACKET_WORKER.name);
    let [v, v_lo, v_hi] = estimate_cells(b, benchmarks::CPU_NS_PER_PACKET_VCPU.name);
    let [p50, p50_lo, p50_hi] = estimate_cells(b, benchmarks::RTT_P50_NS.name);
    let [p99, p99_lo, p99_hi] = estimate_cells(b, benchmarks::RTT_P99_NS.name);
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    };
    vec![
        b.name.clone(),
        r.mode.clone(),
        r.backend.clone().unwrap_or_default(),
        r.workload.as_str().to_string(),
        r.size_bytes.to_string(),
        r.busy_poll_us.to_string(),
        r.guest_poll.to_string(),
        r.batch.to_string(),
        r.modeled_exit_cost_ns.to_string(),
        queue_size.map(|q| q.to_string()).unwrap_or_default(),
        r.per_repeat.len().to_string(),
        t,
        t_lo,
        t_hi,
        num(r.throughput_mpps.min),
        num(r.throughput_mpps.max),
        num(r.throughput_gbps.median),
        w,
        w_lo,
        w_hi,
        v,
        v_lo,
        v_hi,
        num(r.kicks_per_packet.median),
        num(r.calls_per_packet.median),
        median(&r.chains_per_batch),
        p50,
        p50_lo,
        p50_hi,
        p99,
        p99_lo,
        p99_hi,
        median(&r.rtt_p999_ns),
        median(&r.rtt_mean_ns),
        r.pct_of_ceiling
            .as_ref()
            .map(|p| p.ceiling.clone())
            .unwrap_or_default(),
        opt(r.pct_of_ceiling.as_ref().map(|p| p.median_pct)),
        r.sent.to_string(),
        r.received.to_string(),
        counts(&r.dropped),
        r.lost.to_string(),
        counts(&r.queue_errors),
        r.engine_overhead_bytes
            .map(|b| b.to_string())
            .unwrap_or_default(),
        r.errors.join("; "),
    ]
}

/// One CSV line: fields joined by commas, a field quoted (its quotes doubled) when it holds a
/// comma, a quote or a line break (RFC 4180), ending with `\n`.
fn csv_line(fields: impl IntoIterator<Item = String>) -> String {
    let fields: Vec<String> = fields
        .into_iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect();
    fields.join(",") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{read_results, workspace_root};

    fn doc(name: &str) -> Results {
        read_results(&workspace_root().join("results").join(name)).expect("read")
    }

    fn unique(names: &[String]) -> bool {
        let mut s = names.to_vec();
        s.sort();
        s.dedup();
        s.len() == names.len()
    }

    #[test]
    fn github_action_benchmark_is_an_array_of_named_values() {
        for d in [
            doc("baseline-2026-12-03b-default.json"),
            doc("peer-dpdk-2026-12-03.json"),
        ] {
            let v: Value =
                serde_json::from_str(&export(&d, Format::GithubActionBenchmark)).expect("JSON");
            let a = v.as_array().expect("an array");
            assert_eq!(a.len(), d.records.len() + d.peers.len());
            let mut names = Vec::new();
            for e in a {
                let o = e.as_object().expect("object");
                // Exactly the fields the action reads: name, unit, value, range, extra.
                let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
                keys.sort_unstable();
                assert_eq!(keys, ["extra", "name", "range", "unit", "value"]);
                assert!(o["value"].as_f64().is_some_and(f64::is_finite));
                assert!(o["range"].as_str().is_some_and(|r| r.starts_with("± ")));
                assert_eq!(o["unit"], "Mpps");
                names.push(o["name"].as_str().expect("name").to_string());
            }
            assert!(unique(&names), "{names:?}");
        }
        let d = doc("baseline-2026-12-03b-default.json");
        let v = github_action_benchmark(&d);
        assert_eq!(v[0]["name"], "null/tx/64B/poll0/batch64/q256");
        assert_eq!(
            v[0]["value"].as_f64(),
            Some(d.records[0].throughput_mpps.median)
        );
    }

    #[test]
    fn bencher_metric_format() {
        let d = doc("baseline-2026-12-03b-default.json");
        let v: Value = serde_json::from_str(&export(&d, Format::Bencher)).expect("JSON");
        let o = v.as_object().expect("an object");
        assert_eq!(
            o.len(),
            d.records.len(),
            "one benchmark per record, names unique"
        );
        for (name, measures) in o {
            let measures = measures.as_object().expect("measures");
            assert!(measures.contains_key("throughput-mpps"), "{name}");
            assert_eq!(measures.contains_key("rtt-p50-ns"), name.contains("/rr/"));
            for (slug, m) in measures {
                assert!(
                    slug.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{slug}"
                );
                let get = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
                let (lo, val, hi) = (get("lower_value"), get("value"), get("upper_value"));
                assert!(lo <= val && val <= hi, "{name} {slug}: {m}");
            }
        }
        let t = &o["null/tx/64B/poll0/batch64/q256"]["throughput-mpps"];
        let r = &d.records[0].throughput_mpps;
        assert_eq!(t["value"].as_f64(), Some(r.median));
        // Three repeats: the interval is the range.
        assert_eq!(
            (t["lower_value"].as_f64(), t["upper_value"].as_f64()),
            (Some(r.min), Some(r.max))
        );
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_record() {
        for name in [
            "baseline-2026-12-03b-default.json",
            "peer-dpdk-2026-12-03.json",
            "baseline-2026-11-25-default.json",
        ] {
            let d = doc(name);
            let text = export(&d, Format::Csv);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), d.records.len() + 1, "{name}");
            assert_eq!(lines[0], CSV_COLUMNS.join(","));
            let mut names = Vec::new();
            for l in &lines[1..] {
                let cells = parse_csv_line(l);
                assert_eq!(cells.len(), CSV_COLUMNS.len(), "{l}");
                names.push(cells[0].clone());
                let col = |c: &str| {
                    let i = CSV_COLUMNS.iter().position(|x| *x == c).expect("column");
                    cells[i].clone()
                };
                let m: f64 = col("throughput_mpps_median").parse().expect("number");
                let lo: f64 = col("throughput_mpps_ci95_low").parse().expect("number");
                assert!(lo <= m, "{l}");
                assert_eq!(col("rtt_p50_ns_median").is_empty(), col("workload") != "rr");
            }
            assert!(unique(&names), "{names:?}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(
            csv_line(["a".into(), "b,c".into(), "say \"hi\"".into(), "x\ny".into()]),
            "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\"\n"
        );
        let mut d = doc("baseline-2026-12-03b-default.json");
        d.records[0].errors = vec!["repeat 1: lost 3, of 10".into()];
        let text = csv(&d);
        let row = parse_csv_line(text.lines().nth(1).expect("row"));
        assert_eq!(
            row.last().map(String::as_str),
            Some("repeat 1: lost 3, of 10")
        );
    }

    #[test]
    fn markdown_is_the_table() {
        let d = doc("peer-dpdk-2026-12-03.json");
        let md = export(&d, Format::Markdown);
        let rows = md.lines().filter(|l| l.starts_with('|')).count();
        // Two tables: header and rule each, plus one line per record and per pairing.
        assert_eq!(rows, 2 + d.records.len() + 2 + d.peers.len());
        assert!(md.starts_with("| mode | wl |"), "{md}");
    }

    /// Splits one CSV line (no line breaks inside fields) the RFC 4180 way.
    fn parse_csv_line(l: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut quoted = false;
        let mut chars = l.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    out.last_mut().expect("field").push('"');
                }
                ('"', _) => quoted = !quoted,
                (',', false) => out.push(String::new()),
                (c, _) => out.last_mut().expect("field").push(c),
            }
        }
        out
    }
}
