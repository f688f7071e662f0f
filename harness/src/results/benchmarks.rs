//! A results document as named benchmarks: one per measured configuration, each with the
//! metrics that `vhostbench compare` gates on and the exports publish.
//!
//! - A [`Benchmark`] is what identifies one configuration across files (its `kind` and `key`:
//!   for a record mode, backend, workload, frame size, busy-poll window, guest polling, batch,
//!   queue size and modeled exit cost; for a `--peer` pairing direction, size, driver and
//!   backend) and a `name` made from it that is stable from run to run and unique within a
//!   document (`null/tx/64B/poll0/batch64/q256`).
//! - A [`Metric`] describes one number: its name, unit, which [`Direction`] is better, and
//!   whether it is `noisy` (timed on a shared machine, so a change counts only when the
//!   confidence intervals are apart) or exact (a count that repeats identically, such as
//!   instructions per packet under a lockstep run; any change past the threshold counts).
//! - An [`Estimate`] is the number in one file: the median and its 95% interval.
//!
//! Adding a kind of record (say, exact counts from a lockstep run) means: its metrics as
//! `Metric` constants with `noisy: false`, and a loop in [`benchmarks`] pushing one
//! `Benchmark` per entry. `compare` and the exports then handle it with nothing else to change.

use super::{Record, Results};
use crate::stats::Summary;

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Throughput and the like.
    HigherIsBetter,
    /// Costs: CPU time, latency, instructions.
    LowerIsBetter,
}

/// What one number in a benchmark is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Its name: the results field it is read from (`throughput_mpps`,
    /// `cpu_ns_per_packet.worker`).
    pub name: &'static str,
    /// Its name as a slug (lowercase, digits, `-`): the Bencher measure it is published as.
    pub slug: &'static str,
    /// Unit, as a person reads it (`Mpps`, `ns/packet`, `ns`).
    pub unit: &'static str,
    /// Which way is better.
    pub direction: Direction,
    /// Whether repeats scatter (a timed measurement on a shared machine): a change then
    /// counts only when the two confidence intervals are apart. `false` for exact counts.
    pub noisy: bool,
}

/// Frames (rr: transactions) per second, millions.
pub const THROUGHPUT_MPPS: Metric = Metric {
    name: "throughput_mpps",
    slug: "throughput-mpps",
    unit: "Mpps",
    direction: Direction::HigherIsBetter,
    noisy: true,
};
/// CPU time of the host-side thread per packet.
pub const CPU_NS_PER_PACKET_WORKER: Metric = Metric {
    name: "cpu_ns_per_packet.worker",
    slug: "cpu-ns-per-packet-worker",
    unit: "ns/packet",
    direction: Direction::LowerIsBetter,
    noisy: true,
};
/// CPU time of the guest's vCPU thread per packet.
pub const CPU_NS_PER_PACKET_VCPU: Metric = Metric {
    name: "cpu_ns_per_packet.vcpu",
    slug: "cpu-ns-per-packet-vcpu",
    unit: "ns/packet",
    direction: Direction::LowerIsBetter,
    noisy: true,
};
/// rr: median request→response time.
pub const RTT_P50_NS: Metric = Metric {
    name: "rtt_p50_ns",
    slug: "rtt-p50-ns",
    unit: "ns",
    direction: Direction::LowerIsBetter,
    noisy: true,
};
/// rr: 99th percentile request→response time.
pub const RTT_P99_NS: Metric = Metric {
    name: "rtt_p99_ns",
    slug: "rtt-p99-ns",
    unit: "ns",
    direction: Direction::LowerIsBetter,
    noisy: true,
};

/// An exact (lockstep) count per packet, lower is better.
const fn exact_count(name: &'static str, slug: &'static str, unit: &'static str) -> Metric {
    Metric {
        name,
        slug,
        unit,
        direction: Direction::LowerIsBetter,
        noisy: false,
    }
}
/// Lockstep: instructions per packet, both sides.
pub const INSTRUCTIONS_PER_PACKET: Metric = exact_count(
    "instructions_per_packet",
    "instructions-per-packet",
    "instructions",
);
/// Lockstep: instructions per packet on the guest's side.
pub const INSTRUCTIONS_PER_PACKET_GUEST: Metric = exact_count(
    "instructions_per_packet.guest",
    "instructions-per-packet-guest",
    "instructions",
);
/// Lockstep: instructions per packet in the device (the engine).
pub const INSTRUCTIONS_PER_PACKET_DEVICE: Metric = exact_count(
    "instructions_per_packet.device",
    "instructions-per-packet-device",
    "instructions",
);
/// Lockstep: system calls per packet.
pub const SYSCALLS_PER_PACKET: Metric =
    exact_count("syscalls_per_packet", "syscalls-per-packet", "syscalls");
/// Lockstep: io_uring enters per packet.
pub const IO_URING_ENTERS_PER_PACKET: Metric = exact_count(
    "io_uring_enters_per_packet",
    "io-uring-enters-per-packet",
    "enters",
);
/// Lockstep: kicks (guest notifications) per packet.
pub const KICKS_PER_PACKET: Metric = exact_count("kicks_per_packet", "kicks-per-packet", "kicks");
/// Lockstep: calls (interrupts) per packet.
pub const CALLS_PER_PACKET: Metric = exact_count("calls_per_packet", "calls-per-packet", "calls");

/// One metric's value in one file: the median over repeats and its 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Median over repeats (for an exact metric: the value).
    pub value: f64,
    /// Lower end of the median's 95% interval (`value` when there is no spread).
    pub ci95_low: f64,
    /// Upper end of the same.
    pub ci95_high: f64,
    /// How many repeats it is over.
    pub repeats: usize,
}

impl Estimate {
    /// From per-repeat values: their median and its bootstrap interval
    /// ([`Summary::over_repeats`]). `None` when there are none.
    pub fn from_repeats(values: &[f64]) -> Option<Estimate> {
        let s = Summary::over_repeats(values)?;
        Some(Estimate::from_summary(&s, values))
    }

    /// From a file's summary and the per-repeat values it summarises: the summary's median and
    /// interval, or, for files written before intervals were recorded, the interval of the
    /// per-repeat values.
    pub fn from_summary(s: &Summary, repeats: &[f64]) -> Estimate {
        let (lo, hi) = s
            .ci95()
            .or_else(|| Summary::over_repeats(repeats).and_then(|r| r.ci95()))
            .unwrap_or((s.median, s.median));
        Estimate {
            value: s.median,
            ci95_low: lo,
            ci95_high: hi,
            repeats: repeats.len(),
        }
    }

    /// An exact value: an interval of no width.
    pub fn exact(value: f64) -> Estimate {
        Estimate {
            value,
            ci95_low: value,
            ci95_high: value,
            repeats: 1,
        }
    }
}

/// One metric of a benchmark, with its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// What it is.
    pub metric: Metric,
    /// Its value in this file.
    pub estimate: Estimate,
}

/// One measured configuration of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Benchmark {
    /// What kind of entry it comes from: `record` (`records[]`) or `peer` (`peers[]`).
    pub kind: &'static str,
    /// The fields that identify the configuration, in a fixed order, as text. Two files'
    /// benchmarks are the same configuration when `kind` and `key` are equal.
    pub key: Vec<(&'static str, String)>,
    /// Made from `key`; stable across runs and unique within a document.
    pub name: String,
    /// Its metrics, in a fixed order.
    pub metrics: Vec<Measured>,
}

impl Benchmark {
    /// The metric named `name`, if this benchmark has it.
    pub fn metric(&self, name: &str) -> Option<&Measured> {
        self.metrics.iter().find(|m| m.metric.name == name)
    }
}

/// The queue size the document's records ran with (`config.args.queue_size` of a `run`),
/// when it says.
pub fn queue_size(doc: &Results) -> Option<u64> {
    doc.config
        .pointer("/args/queue_size")
        .and_then(serde_json::Value::as_u64)
}

/// Every benchmark of `doc`: its records in order, then its `--peer` pairings. A
/// configuration that appears more than once (no `run` writes that) gets `#2`, `#3`, ... on
/// its name and an `occurrence` in its key, so names stay unique.
pub fn benchmarks(doc: &Results) -> Vec<Benchmark> {
    let q = queue_size(doc);
    let mut out: Vec<Benchmark> = doc.records.iter().map(|r| record(r, q)).collect();
    out.extend(doc.peers.iter().map(peer));
    out.extend(doc.lockstep.iter().map(lockstep));
    dedupe(&mut out);
    out
}

/// Marks the second and later benchmarks with an already seen (kind, key).
fn dedupe(out: &mut [Benchmark]) {
    let mut seen: Vec<(&'static str, Vec<(&'static str, String)>)> = Vec::new();
    for b in out.iter_mut() {
        let id = (b.kind, b.key.clone());
        let n = seen.iter().filter(|s| **s == id).count() + 1;
        seen.push(id);
        if n > 1 {
            b.key.push(("occurrence", n.to_string()));
            b.name = format!("{} #{n}", b.name);
        }
    }
}

/// A record's benchmark: `mode[backend]/workload/<size>B/poll<µs>[+g]/batch<n>[/q<size>]
/// [/exit<ns>ns]`.
pub fn record(r: &Record, queue_size: Option<u64>) -> Benchmark {
    let mut key = vec![
        ("mode", r.mode.clone()),
        ("backend", r.backend.clone().unwrap_or_default()),
        ("workload", r.workload.as_str().to_string()),
        ("size_bytes", r.size_bytes.to_string()),
        ("busy_poll_us", r.busy_poll_us.to_string()),
        ("guest_poll", r.guest_poll.to_string()),
        ("batch", r.batch.to_string()),
        ("modeled_exit_cost_ns", r.modeled_exit_cost_ns.to_string()),
    ];
    if let Some(q) = queue_size {
        key.push(("queue_size", q.to_string()));
    }
    let name = format!(
        "{}{}/{}/{}B/poll{}{}/batch{}{}{}",
        r.mode,
        r.backend
            .as_deref()
            .map(|b| format!("[{b}]"))
            .unwrap_or_default(),
        r.workload.as_str(),
        r.size_bytes,
        r.busy_poll_us,
        if r.guest_poll { "+g" } else { "" },
        r.batch,
        queue_size.map(|q| format!("/q{q}")).unwrap_or_default(),
        if r.modeled_exit_cost_ns > 0 {
            format!("/exit{}ns", r.modeled_exit_cost_ns)
        } else {
            String::new()
        },
    );
    let per = |f: fn(&super::RepeatValues) -> Option<f64>| -> Vec<f64> {
        r.per_repeat.iter().filter_map(f).collect()
    };
    let mut metrics = vec![
        Measured {
            metric: THROUGHPUT_MPPS,
            estimate: Estimate::from_summary(&r.throughput_mpps, &per(|p| Some(p.throughput_mpps))),
        },
        Measured {
            metric: CPU_NS_PER_PACKET_WORKER,
            estimate: Estimate::from_summary(
                &r.cpu_ns_per_packet.worker,
                &per(|p| Some(p.cpu_ns_per_packet_worker)),
            ),
        },
        Measured {
            metric: CPU_NS_PER_PACKET_VCPU,
            estimate: Estimate::from_summary(
                &r.cpu_ns_per_packet.vcpu,
                &per(|p| Some(p.cpu_ns_per_packet_vcpu)),
            ),
        },
    ];
    for (metric, summary, values) in [
        (RTT_P50_NS, &r.rtt_p50_ns, per(|p| p.rtt_p50_ns)),
        (RTT_P99_NS, &r.rtt_p99_ns, per(|p| p.rtt_p99_ns)),
    ] {
        if let Some(s) = summary {
            metrics.push(Measured {
                metric,
                estimate: Estimate::from_summary(s, &values),
            });
        }
    }
    Benchmark {
        kind: "record",
        key,
        name,
        metrics,
    }
}

/// A `--peer` pairing's benchmark: `peer/<direction>/<size>B/<driver>/<backend>`, its Mpps
/// per repeat as the throughput.
pub fn peer(p: &crate::peers::pairings::PeerRecord) -> Benchmark {
    let key = vec![
        ("direction", p.direction.clone()),
        ("size_bytes", p.size_bytes.to_string()),
        ("driver", p.driver.name().to_string()),
        ("backend", p.backend.name().to_string()),
    ];
    let name = format!(
        "peer/{}/{}B/{}/{}",
        p.direction,
        p.size_bytes,
        p.driver.name(),
        p.backend.name()
    );
    let metrics = Estimate::from_repeats(&p.mpps)
        .map(|estimate| Measured {
            metric: THROUGHPUT_MPPS,
            estimate,
        })
        .into_iter()
        .collect();
    Benchmark {
        kind: "peer",
        key,
        name,
        metrics,
    }
}

/// A lockstep record's benchmark: `lockstep/<mode>/<workload>/<size>B/poll<µs>[+g]/batch<n>
/// /q<size>[/<features>]/<counter>-<profile>`. Its metrics are exact: the same build counts
/// the same every time. What it was counted with and in which build profile are part of the
/// key (callgrind and perf_event counts, or a debug and a release build, are not
/// comparable); the packet count and a test slowdown are not (the slowdown is what a gate
/// must catch).
pub fn lockstep(r: &super::LockstepRecord) -> Benchmark {
    let features = [
        (!r.event_idx, "no-event-idx"),
        (!r.in_order, "no-in-order"),
        (!r.mrg_rxbuf, "no-mrg-rxbuf"),
        (r.indirect, "indirect"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(",");
    let key = vec![
        ("mode", r.mode.clone()),
        ("workload", r.workload.as_str().to_string()),
        ("size_bytes", r.size_bytes.to_string()),
        ("busy_poll_us", r.busy_poll_us.to_string()),
        ("guest_poll", r.guest_poll.to_string()),
        ("batch", r.batch.to_string()),
        ("queue_size", r.queue_size.to_string()),
        ("features", features.clone()),
        ("counter", r.counter.name().to_string()),
        ("profile", r.profile.clone()),
    ];
    let name = format!(
        "lockstep/{}/{}/{}B/poll{}{}/batch{}/q{}{}/{}-{}",
        r.mode,
        r.workload.as_str(),
        r.size_bytes,
        r.busy_poll_us,
        if r.guest_poll { "+g" } else { "" },
        r.batch,
        r.queue_size,
        if features.is_empty() {
            String::new()
        } else {
            format!("/{features}")
        },
        r.counter.name(),
        r.profile,
    );
    let m = |metric: Metric, v: f64| Measured {
        metric,
        estimate: Estimate::exact(v),
    };
    Benchmark {
        kind: "lockstep",
        key,
        name,
        metrics: vec![
            m(INSTRUCTIONS_PER_PACKET, r.instructions_per_packet.total),
            m(
                INSTRUCTIONS_PER_PACKET_GUEST,
                r.instructions_per_packet.guest,
            ),
            m(
                INSTRUCTIONS_PER_PACKET_DEVICE,
                r.instructions_per_packet.device,
            ),
            m(SYSCALLS_PER_PACKET, r.syscalls_per_packet),
            m(IO_URING_ENTERS_PER_PACKET, r.io_uring_enters_per_packet),
            m(KICKS_PER_PACKET, r.kicks_per_packet),
            m(CALLS_PER_PACKET, r.calls_per_packet),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{read_results, workspace_root};

    #[test]
    fn names_are_stable_and_unique_in_every_committed_file() {
        let dir = workspace_root().join("results");
        let mut files = Vec::new();
        for d in std::iter::once(dir.clone()).chain(
            std::fs::read_dir(&dir)
                .expect("results directory")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.is_dir()),
        ) {
            files.extend(
                std::fs::read_dir(&d)
                    .expect("directory")
                    .map(|e| e.expect("entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json")),
            );
        }
        assert!(files.len() > 20, "{files:?}");
        for path in files {
            let doc = read_results(&path).unwrap_or_else(|e| panic!("{e:#}"));
            let b = benchmarks(&doc);
            assert_eq!(
                b.len(),
                doc.records.len() + doc.peers.len() + doc.lockstep.len()
            );
            let mut names: Vec<&str> = b.iter().map(|b| b.name.as_str()).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n, "{}: duplicate names", path.display());
            for b in &b {
                assert!(!b.metrics.is_empty(), "{}", b.name);
                for m in &b.metrics {
                    let e = m.estimate;
                    assert!(
                        e.ci95_low <= e.value && e.value <= e.ci95_high,
                        "{} {}: {e:?}",
                        b.name,
                        m.metric.name
                    );
                }
            }
        }
        let doc = read_results(&dir.join("baseline-2026-12-03b-default.json")).expect("read");
        let b = benchmarks(&doc);
        assert_eq!(b[0].name, "null/tx/64B/poll0/batch64/q256");
        assert!(
            b.iter()
                .any(|b| b.name == "direct-vf[af-xdp (native XDP)]/rr/1500B/poll0/batch64/q256"),
            "{:?}",
            b.iter().map(|b| &b.name).collect::<Vec<_>>()
        );
        // rr records carry their latencies; tx records do not.
        assert!(b
            .iter()
            .all(|b| b.metric("rtt_p50_ns").is_some() == b.name.contains("/rr/")));
        let peers = read_results(&dir.join("peer-dpdk-2026-12-03.json")).expect("read");
        assert!(benchmarks(&peers)
            .iter()
            .any(|b| b.name == "peer/g2h/64B/guest-sim/engine" && b.kind == "peer"));
    }

    #[test]
    fn old_files_get_their_interval_from_the_repeats() {
        let doc = read_results(&workspace_root().join("results/baseline-2026-12-03b-default.json"))
            .expect("read");
        let r = &doc.records[0];
        assert_eq!(r.throughput_mpps.ci95(), None, "written before intervals");
        let t = record(r, None).metrics[0].estimate;
        let values: Vec<f64> = r.per_repeat.iter().map(|p| p.throughput_mpps).collect();
        let s = Summary::over_repeats(&values).expect("summary");
        assert_eq!(
            (t.value, Some((t.ci95_low, t.ci95_high)), t.repeats),
            (r.throughput_mpps.median, s.ci95(), 3)
        );
    }

    #[test]
    fn repeated_configurations_get_distinct_names() {
        let mut doc = crate::results::schema::tests::sample_results();
        let r = doc.records[0].clone();
        doc.records.push(r.clone());
        doc.records.push(r);
        let names: Vec<String> = benchmarks(&doc).into_iter().map(|b| b.name).collect();
        assert_eq!(
            names,
            [
                "tap-vhost/rr/64B/poll0/batch0",
                "tap-vhost/rr/64B/poll0/batch0 #2",
                "tap-vhost/rr/64B/poll0/batch0 #3"
            ]
        );
    }
}
