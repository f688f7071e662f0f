//! The serde types of a results file and the summaries and ratios computed from them.

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure};
use serde::{Deserialize, Serialize};

use super::UtcTime;
use crate::calibrate::Calibration;
use crate::host::{self, HostInfo};
use crate::stats::Summary;

/// Version of the layout below; bump it on any incompatible change and update SCHEMA.md.
pub const SCHEMA_VERSION: u32 = 2;
/// Versions [`super::read_results`] reads: version 1 has the same layout (results/SCHEMA.md,
/// "Changelog").
pub const READABLE_SCHEMA_VERSIONS: std::ops::RangeInclusive<u32> = 1..=SCHEMA_VERSION;
/// Value of the `tool` field.
pub const TOOL: &str = "vhostbench";

/// Unit of throughput ceilings and limits: millions of packets per second.
pub const UNIT_MPPS: &str = "mpps";
/// Unit of latency ceilings and limits: nanoseconds.
pub const UNIT_NS: &str = "ns";

/// One ceiling row, measured `repeat` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitResult {
    /// Row name (`crate::ceilings::Ceiling::rows`).
    pub name: String,
    /// `"mpps"` or `"ns"`.
    pub unit: String,
    /// Smallest of `samples`.
    pub min: f64,
    /// Median of `samples`.
    pub median: f64,
    /// Largest of `samples`.
    pub max: f64,
    /// One value per repeat, in measurement order.
    pub samples: Vec<f64>,
    /// RX ceilings only: what their far-side injector offered during each repeat's window, in
    /// `unit`, paired with `samples` (a ceiling that delivers less than it was offered drops
    /// frames itself). Empty for the others and in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<f64>,
}

impl LimitResult {
    /// Summarises per-repeat `samples`; an error if there are none.
    pub fn from_samples(name: &str, unit: &str, samples: Vec<f64>) -> anyhow::Result<Self> {
        let s =
            Summary::from_values(&samples).ok_or_else(|| anyhow!("limit {name}: no samples"))?;
        Ok(Self {
            name: name.to_string(),
            unit: unit.to_string(),
            min: s.min,
            median: s.median,
            max: s.max,
            samples,
            offered: Vec::new(),
        })
    }

    /// The same with what was offered during each repeat ([`LimitResult::offered`]); an error
    /// unless there is one value per sample.
    pub fn with_offered(mut self, offered: Vec<f64>) -> anyhow::Result<Self> {
        ensure!(
            offered.len() == self.samples.len(),
            "limit {}: {} offered values for {} samples",
            self.name,
            offered.len(),
            self.samples.len()
        );
        self.offered = offered;
        Ok(self)
    }
}

/// A whole results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Always [`TOOL`].
    pub tool: String,
    /// The harness crate version (`CARGO_PKG_VERSION`).
    pub tool_version: String,
    /// [`host::git_revision`] of the build.
    pub git_revision: String,
    /// When the run started, RFC 3339 UTC (`2025-11-25T18:31:02Z`).
    pub timestamp: String,
    /// The machine.
    pub host: HostInfo,
    /// Cross-core cache-line round trip, measured in this run.
    pub calibration: CalibrationRecord,
    /// Machine ceilings measured in this run (may be empty).
    pub limits: Vec<LimitResult>,
    /// The full configuration of the run, as the command that produced the file saw it.
    pub config: serde_json::Value,
    /// Resident set size of the harness process when the file was assembled, bytes.
    pub process_rss_bytes: Option<u64>,
    /// One entry per measured combination.
    pub records: Vec<Record>,
    /// `run --peer dpdk`: the driver × backend pairings (absent without `--peer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::peers::pairings::PeerRecord>,
    /// `run --lockstep`: per combination, counts per packet with the guest and the device
    /// stepped on one thread (absent without `--lockstep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lockstep: Vec<super::LockstepRecord>,
    /// Combinations that failed (an error ended a repeat, or no repeat measured anything),
    /// with what went wrong; the run went on without them. Absent when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedCombination>,
    /// Why the run ended before its plan was done (`interrupted by SIGINT`, `stdout closed`):
    /// the records hold the repeats that finished. Absent for a run that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

/// A combination of the matrix that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCombination {
    /// Data path.
    pub mode: String,
    /// Traffic pattern.
    pub workload: Workload,
    /// Frame size, bytes.
    pub size_bytes: u32,
    /// Worker busy-poll window, µs.
    pub busy_poll_us: u64,
    /// Chains per backend submission.
    pub batch: u32,
    /// The combination as the table names it.
    pub label: String,
    /// What went wrong, one entry per failed repeat (`repeat N: …`).
    pub errors: Vec<String>,
}

impl Results {
    /// A results document stamped with this build and host, started at `started`, with no
    /// records yet.
    pub fn new(
        started: &UtcTime,
        calibration: CalibrationRecord,
        limits: Vec<LimitResult>,
        config: serde_json::Value,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            tool: TOOL.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: host::git_revision().to_string(),
            timestamp: started.rfc3339(),
            host: HostInfo::probe(),
            calibration,
            limits,
            config,
            process_rss_bytes: host::process_rss_bytes(),
            records: Vec::new(),
            peers: Vec::new(),
            failed: Vec::new(),
            partial: None,
            lockstep: Vec::new(),
        }
    }
}

/// The cross-core round trip of a run, measured once per repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// Median of `per_repeat_ns`.
    pub pingpong_rtt_ns: f64,
    /// Fastest batch of any repeat, ns per round trip.
    pub pingpong_rtt_min_ns: f64,
    /// Slowest batch of any repeat, ns per round trip.
    pub pingpong_rtt_max_ns: f64,
    /// Each repeat's median, ns, in order.
    pub per_repeat_ns: Vec<f64>,
    /// `run`: the same measured again at the end of each round, ns, in order (absent in
    /// files written before it was measured, and for `limits`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_repeat_end_ns: Vec<f64>,
    /// `run`: rounds (0-based, as `per_repeat[].round`) whose calibration at the end differs
    /// from the one at the start by more than [`PLACEMENT_CHANGE_RATIO`]: the host moved the
    /// vCPUs during the round, so its runs and ceilings may have seen different placements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_changed: Vec<usize>,
}

/// How far apart (as a ratio) a round's start and end calibrations may be before the round is
/// flagged in [`CalibrationRecord::placement_changed`]. Moving a thread to a core at another
/// distance changes the round trip several-fold; load alone, with the threads where they were,
/// changes it by less than this.
pub const PLACEMENT_CHANGE_RATIO: f64 = 2.0;

impl CalibrationRecord {
    /// Combines per-repeat calibrations; `None` when there are none.
    pub fn from_calibrations(c: &[Calibration]) -> Option<Self> {
        let per_repeat_ns: Vec<f64> = c.iter().map(|c| c.pingpong_rtt_ns).collect();
        let mins: Vec<f64> = c.iter().map(|c| c.pingpong_rtt_min_ns).collect();
        let maxs: Vec<f64> = c.iter().map(|c| c.pingpong_rtt_max_ns).collect();
        Some(Self {
            pingpong_rtt_ns: Summary::from_values(&per_repeat_ns)?.median,
            pingpong_rtt_min_ns: Summary::from_values(&mins)?.min,
            pingpong_rtt_max_ns: Summary::from_values(&maxs)?.max,
            per_repeat_ns,
            per_repeat_end_ns: Vec::new(),
            placement_changed: Vec::new(),
        })
    }

    /// Adds each round's end-of-round calibration (`ends[i]` for round `i`) and flags the
    /// rounds whose placement changed between start and end.
    pub fn with_round_ends(mut self, ends: &[Calibration]) -> Self {
        self.per_repeat_end_ns = ends.iter().map(|c| c.pingpong_rtt_ns).collect();
        self.placement_changed = self
            .per_repeat_ns
            .iter()
            .zip(&self.per_repeat_end_ns)
            .enumerate()
            .filter(|(_, (&a, &b))| placement_changed(a, b))
            .map(|(i, _)| i)
            .collect();
        self
    }
}

/// Whether two calibrations (ns) are too far apart to be the same placement.
pub fn placement_changed(a: f64, b: f64) -> bool {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    lo > 0.0 && hi / lo > PLACEMENT_CHANGE_RATIO
}

/// Traffic pattern of a record.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Guest transmits: the guest fills buffers, the worker drains them to the backend.
    Tx,
    /// Guest receives: the backend produces packets, the worker fills guest buffers.
    Rx,
    /// Request/response: one packet out, one back, then the next.
    Rr,
}

impl Workload {
    /// `"tx"`, `"rx"` or `"rr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Tx => "tx",
            Workload::Rx => "rx",
            Workload::Rr => "rr",
        }
    }
}

/// CPU time per packet of the two measured threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuNsPerPacket {
    /// The worker (or emulated event loop) thread, ns of thread CPU time per packet.
    pub worker: Summary,
    /// The guest's vCPU thread, ns of thread CPU time per packet.
    pub vcpu: Summary,
}

/// A record's median throughput (or latency) relative to one of the run's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PctOfCeiling {
    /// Name of the limit in `limits` (e.g. `spsc_copy_64`).
    pub ceiling: String,
    /// 100 means "at the ceiling". Throughput: Mpps / ceiling Mpps × 100. Latency (`ns`
    /// ceilings): ceiling ns / `rtt_p50_ns` × 100. Each ratio is taken per repeat, against
    /// the ceiling measured right before that repeat ran ([`RepeatValues::ceiling_sample`]; in
    /// older files, the sample of the same round), and this is their median, so a change of
    /// placement or of the host's load moves both sides of every ratio alike. Records without
    /// either fall back to the ratio of the two medians.
    pub median_pct: f64,
    /// The same-round ratios, in round order (empty for the fallback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_round_pct: Vec<f64>,
}

/// The raw values of one repeat. All numbers must be finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepeatValues {
    /// Packets (rr: transactions) completed per second, millions.
    pub throughput_mpps: f64,
    /// Worker thread CPU ns per packet.
    pub cpu_ns_per_packet_worker: f64,
    /// vCPU thread CPU ns per packet.
    pub cpu_ns_per_packet_vcpu: f64,
    /// Guest→host notifications (kick eventfd writes) per packet.
    pub kicks_per_packet: f64,
    /// Host→guest notifications (call eventfd writes) per packet.
    pub calls_per_packet: f64,
    /// rr only: median request→response time, ns.
    pub rtt_p50_ns: Option<f64>,
    /// rr only: 99th percentile, ns.
    pub rtt_p99_ns: Option<f64>,
    /// rr only: 99.9th percentile, ns.
    pub rtt_p999_ns: Option<f64>,
    /// rr only: mean, ns (not quantised to the clock's step like the percentiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_mean_ns: Option<f64>,
    /// Packets the sending side handed over.
    pub sent: u64,
    /// Packets the receiving side got.
    pub received: u64,
    /// Cross-core round trip measured just before this repeat, ns.
    pub calibration_rtt_ns: f64,
    /// Measured wall time of the repeat, seconds.
    pub duration_s: f64,
    /// Chains the device moved per used-ring publish (TX and RX together): how full its
    /// batches were. Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chains_per_batch: Option<f64>,
    /// The round (0-based) this repeat ran in: the index of the same round's sample in each
    /// limit's `samples`. Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<usize>,
    /// The record's ceiling (the limit `pct_of_ceiling.ceiling` names) measured once more
    /// right before this repeat ran, in the limit's unit; the repeat's ratio is taken against
    /// it. Absent in files written before it was recorded (their ratios use the round's sample
    /// in `limits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_sample: Option<f64>,
}

/// One measured combination, summarised over its repeats.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Data path (`null`, `emulated`, `tap-vhost`, `direct-vf`, ...).
    pub mode: String,
    /// Traffic pattern.
    pub workload: Workload,
    /// Frame size, bytes (Ethernet header + payload; no virtio-net header, no FCS).
    pub size_bytes: u32,
    /// Worker busy-poll window, µs (0: notifications only).
    pub busy_poll_us: u64,
    /// Chains per backend submission (`VHOST_NET_BATCH`).
    pub batch: u32,
    /// Whether the guest polled its used rings instead of sleeping on interrupts.
    pub guest_poll: bool,
    /// MODELED, not measured: the VM-exit cost the guest added per kick and per interrupt
    /// taken, ns (`--exit-cost-ns`); 0 when the record is purely measured.
    pub modeled_exit_cost_ns: u64,
    /// Over repeats: `throughput_mpps`.
    pub throughput_mpps: Summary,
    /// Over repeats: `throughput_mpps × size_bytes × 8 / 1000`, Gbit/s.
    pub throughput_gbps: Summary,
    /// Over repeats: CPU ns per packet of each thread.
    pub cpu_ns_per_packet: CpuNsPerPacket,
    /// Over repeats: kicks per packet.
    pub kicks_per_packet: Summary,
    /// Over repeats: calls per packet.
    pub calls_per_packet: Summary,
    /// Over repeats: chains the device moved per used-ring publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chains_per_batch: Option<Summary>,
    /// rr only: over repeats of the per-repeat median, ns.
    pub rtt_p50_ns: Option<Summary>,
    /// rr only: over repeats of the per-repeat p99, ns.
    pub rtt_p99_ns: Option<Summary>,
    /// rr only: over repeats of the per-repeat p99.9, ns.
    pub rtt_p999_ns: Option<Summary>,
    /// rr only: over repeats of the per-repeat mean, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_mean_ns: Option<Summary>,
    /// Relative to a limit of the same run, if the caller named one.
    pub pct_of_ceiling: Option<PctOfCeiling>,
    /// Packets sent, summed over repeats.
    pub sent: u64,
    /// Packets received, summed over repeats.
    pub received: u64,
    /// Packets dropped on purpose, by reason, summed over repeats.
    pub dropped: BTreeMap<String, u64>,
    /// Queue errors (a broken chain, a bad index, ...) by kind, summed over repeats.
    pub queue_errors: BTreeMap<String, u64>,
    /// `sent - received - Σ dropped` (0 when that is negative): packets unaccounted for.
    pub lost: u64,
    /// Each repeat's raw values, in order.
    pub per_repeat: Vec<RepeatValues>,
    /// What went wrong, per repeat: broken queues, backend failures, lost packets, repeats
    /// that moved nothing. Empty for a clean record.
    pub errors: Vec<String>,
    /// Largest over repeats of the process's resident memory growth while the device ran,
    /// minus the guest memory it touched (shared-memory pages): what the engine itself costs
    /// per device, bytes.
    pub engine_overhead_bytes: Option<u64>,
    /// The device's backend counters, by name, summed over repeats (for example which way a
    /// frame-fd backend submitted its batches: `batches_uring`, `batches_writev`). Absent
    /// when the backend has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backend_stats: BTreeMap<String, u64>,
    /// The backend the device ran on, where the mode chooses one (`direct-vf`: `packet`,
    /// `macvtap`, `af-xdp`). Absent for modes with one backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

impl Record {
    /// Summarises `repeats` (at least one, all numbers finite), each summary with the 95%
    /// bootstrap interval of its median ([`Summary::over_repeats`]). `dropped` and
    /// `queue_errors` are already summed over the repeats.
    pub fn from_repeats(
        mode: &str,
        workload: Workload,
        size_bytes: u32,
        repeats: &[RepeatValues],
        dropped: BTreeMap<String, u64>,
        queue_errors: BTreeMap<String, u64>,
    ) -> anyhow::Result<Record> {
        ensure!(
            !repeats.is_empty(),
            "{mode}/{}/{size_bytes}: no repeats",
            workload.as_str()
        );
        for (i, r) in repeats.iter().enumerate() {
            check_finite(i, r)?;
        }
        let summary = |field: &str, f: &dyn Fn(&RepeatValues) -> f64| {
            let v: Vec<f64> = repeats.iter().map(f).collect();
            Summary::over_repeats(&v).ok_or_else(|| anyhow!("{field}: no values"))
        };
        let optional = |f: &dyn Fn(&RepeatValues) -> Option<f64>| {
            let v: Vec<f64> = repeats.iter().filter_map(f).collect();
            Summary::over_repeats(&v)
        };
        let sent: u64 = repeats.iter().map(|r| r.sent).sum();
        let received: u64 = repeats.iter().map(|r| r.received).sum();
        let dropped_total: u64 = dropped.values().sum();
        Ok(Record {
            mode: mode.to_string(),
            workload,
            size_bytes,
            busy_poll_us: 0,
            batch: 0,
            guest_poll: false,
            modeled_exit_cost_ns: 0,
            throughput_mpps: summary("throughput_mpps", &|r| r.throughput_mpps)?,
            throughput_gbps: summary("throughput_gbps", &|r| gbps(r.throughput_mpps, size_bytes))?,
            cpu_ns_per_packet: CpuNsPerPacket {
                worker: summary("cpu_ns_per_packet_worker", &|r| r.cpu_ns_per_packet_worker)?,
                vcpu: summary("cpu_ns_per_packet_vcpu", &|r| r.cpu_ns_per_packet_vcpu)?,
            },
            kicks_per_packet: summary("kicks_per_packet", &|r| r.kicks_per_packet)?,
            calls_per_packet: summary("calls_per_packet", &|r| r.calls_per_packet)?,
            rtt_p50_ns: optional(&|r| r.rtt_p50_ns),
            rtt_p99_ns: optional(&|r| r.rtt_p99_ns),
            rtt_p999_ns: optional(&|r| r.rtt_p999_ns),
            rtt_mean_ns: optional(&|r| r.rtt_mean_ns),
            chains_per_batch: optional(&|r| r.chains_per_batch),
            pct_of_ceiling: None,
            sent,
            received,
            dropped,
            queue_errors,
            lost: sent.saturating_sub(received).saturating_sub(dropped_total),
            per_repeat: repeats.to_vec(),
            errors: Vec::new(),
            engine_overhead_bytes: None,
            backend_stats: BTreeMap::new(),
            backend: None,
        })
    }

    /// Sets `pct_of_ceiling` relative to `ceiling` (an `mpps` limit compares throughput, an
    /// `ns` limit compares `rtt_p50_ns`). Left unset when the comparison is undefined.
    pub fn with_ceiling(mut self, ceiling: &LimitResult) -> Self {
        let pct = |limit: f64, mpps: f64, rtt: Option<f64>| -> Option<f64> {
            match ceiling.unit.as_str() {
                UNIT_MPPS => Some(mpps / limit * 100.0),
                UNIT_NS => rtt.map(|rtt| limit / rtt * 100.0),
                _ => None,
            }
            .filter(|p| p.is_finite())
        };
        // Per-repeat ratios: against the ceiling measured right before the repeat, or (older
        // files) the round's sample, when every repeat has one.
        let per_round: Option<Vec<f64>> = self
            .per_repeat
            .iter()
            .map(|r| {
                let limit = match r.ceiling_sample {
                    Some(adjacent) => adjacent,
                    None => *ceiling.samples.get(r.round?)?,
                };
                pct(limit, r.throughput_mpps, r.rtt_p50_ns)
            })
            .collect();
        let (median_pct, per_round_pct) = match per_round {
            Some(v) if !v.is_empty() => (Summary::from_values(&v).map(|s| s.median), v),
            _ => (
                pct(
                    ceiling.median,
                    self.throughput_mpps.median,
                    self.rtt_p50_ns.map(|r| r.median),
                ),
                Vec::new(),
            ),
        };
        self.pct_of_ceiling = median_pct.map(|median_pct| PctOfCeiling {
            ceiling: ceiling.name.clone(),
            median_pct,
            per_round_pct,
        });
        self
    }
}

/// Gbit/s of `mpps` packets of `size_bytes`.
pub fn gbps(mpps: f64, size_bytes: u32) -> f64 {
    mpps * f64::from(size_bytes) * 8.0 / 1000.0
}

fn check_finite(i: usize, r: &RepeatValues) -> anyhow::Result<()> {
    let fields = [
        ("throughput_mpps", Some(r.throughput_mpps)),
        ("cpu_ns_per_packet_worker", Some(r.cpu_ns_per_packet_worker)),
        ("cpu_ns_per_packet_vcpu", Some(r.cpu_ns_per_packet_vcpu)),
        ("kicks_per_packet", Some(r.kicks_per_packet)),
        ("calls_per_packet", Some(r.calls_per_packet)),
        ("rtt_p50_ns", r.rtt_p50_ns),
        ("rtt_p99_ns", r.rtt_p99_ns),
        ("rtt_p999_ns", r.rtt_p999_ns),
        ("rtt_mean_ns", r.rtt_mean_ns),
        ("calibration_rtt_ns", Some(r.calibration_rtt_ns)),
        ("duration_s", Some(r.duration_s)),
        ("chains_per_batch", r.chains_per_batch),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            ensure!(
                v.is_finite(),
                "repeat {i}: {name} is {v}, not a finite number"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn repeat(mpps: f64, rtt: Option<f64>) -> RepeatValues {
        RepeatValues {
            throughput_mpps: mpps,
            cpu_ns_per_packet_worker: 101.5,
            cpu_ns_per_packet_vcpu: 88.25,
            kicks_per_packet: 0.015625,
            calls_per_packet: 0.1,
            rtt_p50_ns: rtt,
            rtt_p99_ns: rtt.map(|r| r * 3.0),
            rtt_p999_ns: rtt.map(|r| r * 7.1),
            rtt_mean_ns: rtt.map(|r| r * 1.2),
            sent: 1_000_003,
            received: 1_000_000,
            calibration_rtt_ns: 63.123456789,
            duration_s: 1.0000021,
            chains_per_batch: Some(40.5),
            round: None,
            ceiling_sample: None,
        }
    }

    pub(crate) fn sample_results() -> Results {
        let repeats = [
            repeat(1.7, Some(41_000.0)),
            repeat(1.6, Some(39_500.5)),
            repeat(1.9, None),
        ];
        let dropped = BTreeMap::from([("no_buffer".to_string(), 2u64)]);
        let rec = Record::from_repeats(
            "tap-vhost",
            Workload::Rr,
            64,
            &repeats,
            dropped,
            BTreeMap::new(),
        )
        .expect("record");
        let limit = LimitResult::from_samples("busy_poll_wake_rtt", UNIT_NS, vec![900.0, 950.0])
            .expect("limit");
        let rec = rec.with_ceiling(&limit);
        let cal = Calibration {
            pingpong_rtt_ns: 63.2,
            pingpong_rtt_min_ns: 60.1,
            pingpong_rtt_max_ns: 370.0,
            batches: 200,
        };
        let mut r = Results::new(
            &UtcTime::from_unix_secs(1_764_095_462),
            CalibrationRecord::from_calibrations(&[cal]).expect("calibration"),
            vec![limit],
            serde_json::json!({"modes": ["null"], "duration_ms": 1000, "event_idx": true}),
        );
        r.records.push(rec);
        r
    }

    #[test]
    fn rounds_whose_placement_moved_are_flagged() {
        let cal = |ns: f64| Calibration {
            pingpong_rtt_ns: ns,
            pingpong_rtt_min_ns: ns * 0.9,
            pingpong_rtt_max_ns: ns * 2.0,
            batches: 200,
        };
        let starts = [cal(68.0), cal(70.0), cal(450.0), cal(60.0)];
        let ends = [cal(474.0), cal(95.0), cal(451.0), cal(29.0)];
        let r = CalibrationRecord::from_calibrations(&starts)
            .expect("calibration")
            .with_round_ends(&ends);
        assert_eq!(r.per_repeat_end_ns, vec![474.0, 95.0, 451.0, 29.0]);
        // Near to far, and near to the closer SMT-like placement; a 1.4x drift is not a move.
        assert_eq!(r.placement_changed, vec![0, 3]);
        assert!(
            !placement_changed(0.0, 100.0),
            "no calibration is no evidence"
        );
        // Older files (and `limits`) have neither field and still read.
        let text = serde_json::to_string(
            &CalibrationRecord::from_calibrations(&starts).expect("calibration"),
        )
        .expect("serialize");
        assert!(!text.contains("placement_changed"), "{text}");
        let back: CalibrationRecord = serde_json::from_str(&text).expect("deserialize");
        assert!(back.per_repeat_end_ns.is_empty() && back.placement_changed.is_empty());
    }

    #[test]
    fn serde_round_trip() {
        let r = sample_results();
        let text = serde_json::to_string(&r).expect("serialize");
        let back: Results = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, r);
        assert!(text.contains("\"workload\":\"rr\""), "{text}");
        assert!(text.contains("\"schema_version\":2"), "{text}");
    }

    #[test]
    fn record_summaries() {
        let r = &sample_results().records[0];
        assert_eq!(r.throughput_mpps.median, 1.7);
        assert!((r.throughput_gbps.median - 1.7 * 64.0 * 8.0 / 1000.0).abs() < 1e-12);
        assert_eq!(r.rtt_p50_ns.map(|s| s.median), Some(40_250.25));
        let mean = r.rtt_mean_ns.map(|s| s.median).expect("rr mean");
        assert!((mean - 40_250.25 * 1.2).abs() < 1e-6, "{mean}");
        assert_eq!((r.sent, r.received, r.lost), (3_000_009, 3_000_000, 7));
        // Every summary over repeats carries its median's interval; three repeats give
        // [min, max], two the pair, and a value present in one repeat only, that value.
        assert_eq!(r.throughput_mpps.ci95(), Some((1.6, 1.9)));
        assert_eq!(
            r.rtt_p50_ns.and_then(|s| s.ci95()),
            Some((39_500.5, 41_000.0))
        );
        assert_eq!(r.cpu_ns_per_packet.worker.ci95(), Some((101.5, 101.5)));
        let pct = r.pct_of_ceiling.as_ref().expect("pct");
        assert_eq!(pct.ceiling, "busy_poll_wake_rtt");
        assert!((pct.median_pct - 925.0 / 40_250.25 * 100.0).abs() < 1e-9);
        assert!(Record::from_repeats(
            "null",
            Workload::Tx,
            64,
            &[],
            BTreeMap::new(),
            BTreeMap::new()
        )
        .is_err());
        let bad = [repeat(f64::NAN, None)];
        assert!(Record::from_repeats(
            "null",
            Workload::Tx,
            64,
            &bad,
            BTreeMap::new(),
            BTreeMap::new()
        )
        .is_err());
    }

    #[test]
    fn ceiling_ratios_use_the_sample_taken_before_each_repeat() {
        // The host got busy after the round's ceilings were measured: round 1's run slowed, and
        // so did the ceiling measured right before it, which the round's own sample missed.
        // Round 2's repeat comes from an older file, without its own sample.
        let rows = [
            (0, 60.0, Some(90.0)),
            (1, 35.0, Some(62.5)),
            (2, 57.0, None),
        ];
        let repeats: Vec<RepeatValues> = rows
            .iter()
            .map(|&(k, mpps, adjacent)| RepeatValues {
                round: Some(k),
                ceiling_sample: adjacent,
                ..repeat(mpps, None)
            })
            .collect();
        let rec = Record::from_repeats(
            "null",
            Workload::Tx,
            64,
            &repeats,
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .expect("record");
        let copy = LimitResult::from_samples("spsc_copy_64", UNIT_MPPS, vec![90.0, 90.0, 95.0])
            .expect("limit");
        let pct = rec.clone().with_ceiling(&copy).pct_of_ceiling.expect("pct");
        assert_eq!(
            pct.per_round_pct,
            vec![
                60.0 / 90.0 * 100.0,
                35.0 / 62.5 * 100.0,
                57.0 / 95.0 * 100.0
            ],
            "each repeat against its own sample, else its round's"
        );
        assert_eq!(pct.median_pct, 57.0 / 95.0 * 100.0);
        // The sample survives a round trip through the file; an absent one stays absent.
        let back: Record =
            serde_json::from_str(&serde_json::to_string(&rec).expect("json")).expect("parse");
        assert_eq!(back.per_repeat[1].ceiling_sample, Some(62.5));
        assert_eq!(back.per_repeat[2].ceiling_sample, None);
    }

    #[test]
    fn ceiling_ratios_are_taken_within_each_round() {
        // Round 1 ran in a far placement: the ceiling and the record both slowed there.
        let rounds = [(0, 250.0, 50.0), (1, 800.0, 20.0), (2, 260.0, 48.0)];
        let repeats: Vec<RepeatValues> = rounds
            .iter()
            .map(|&(k, rtt, mpps)| RepeatValues {
                round: Some(k),
                ..repeat(mpps, Some(rtt))
            })
            .collect();
        let rec = Record::from_repeats(
            "null",
            Workload::Rr,
            64,
            &repeats,
            BTreeMap::new(),
            BTreeMap::new(),
        )
        .expect("record");
        let wake =
            LimitResult::from_samples("busy_poll_wake_rtt", UNIT_NS, vec![100.0, 400.0, 100.0])
                .expect("limit");
        let pct = rec.clone().with_ceiling(&wake).pct_of_ceiling.expect("pct");
        assert_eq!(pct.per_round_pct, vec![40.0, 50.0, 100.0 / 260.0 * 100.0]);
        assert_eq!(pct.median_pct, 40.0);
        let copy = LimitResult::from_samples("spsc_copy_64", UNIT_MPPS, vec![100.0, 40.0, 96.0])
            .expect("limit");
        let pct = rec.clone().with_ceiling(&copy).pct_of_ceiling.expect("pct");
        assert_eq!(pct.per_round_pct, vec![50.0, 50.0, 50.0]);
        assert_eq!(pct.median_pct, 50.0);
        // A round the ceiling has no sample for: the ratio of medians instead.
        let short = LimitResult::from_samples("busy_poll_wake_rtt", UNIT_NS, vec![100.0, 400.0])
            .expect("limit");
        let pct = rec.with_ceiling(&short).pct_of_ceiling.expect("pct");
        assert!(pct.per_round_pct.is_empty());
        assert_eq!(pct.median_pct, 250.0 / 260.0 * 100.0);
    }
}
