//! From what the runs gave to the results document: per repeat the numbers of one run
//! ([`Acc::add`]), per combination a [`Record`] of summaries over its repeats, with its
//! drops, queue errors and ratio to its ceiling; then the whole document with its
//! configuration, calibration and ceilings. Nothing here measures.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use engine::metrics::get;
use guest_sim::traffic::Workload as GuestWorkload;

use super::execute::Executed;
use super::plan::{guest_workload, Combo, Plan};
use crate::host;
use crate::pair::RunOutcome;
use crate::pin::{VCPU_CORE, WORKER_CORE};
use crate::results::{CalibrationRecord, Record, RepeatValues, Results, UtcTime, Workload};

/// Everything gathered for one combination over its repeats.
#[derive(Debug, Default)]
pub struct Acc {
    /// One entry per repeat that measured something.
    pub repeats: Vec<RepeatValues>,
    /// Drops by reason, summed over the repeats.
    pub dropped: BTreeMap<String, u64>,
    /// Guest errors by kind, summed over the repeats.
    pub queue_errors: BTreeMap<String, u64>,
    /// What went wrong, one line each, prefixed with the repeat.
    pub errors: Vec<String>,
    /// Per repeat, the resident memory the running device added.
    pub engine_overhead_bytes: Vec<u64>,
}

impl Acc {
    /// Adds repeat `rep` of `c`: outcome `o`, measured in a round whose calibration was
    /// `calibration_rtt_ns`, right after its ceiling gave `ceiling_sample`.
    pub fn add(
        &mut self,
        c: &Combo,
        rep: usize,
        o: &RunOutcome,
        calibration_rtt_ns: f64,
        ceiling_sample: Option<f64>,
    ) {
        let w = guest_workload(c.workload);
        for (reason, n) in o.drops_by_reason() {
            *self.dropped.entry(reason).or_default() += n;
        }
        for note in &o.notes {
            self.errors.push(format!("repeat {rep}: {note}"));
        }
        for (kind, n) in o.metrics.queue_errors_by_kind() {
            *self.queue_errors.entry(kind.into()).or_default() += n;
        }
        for e in [&o.guest.error, &o.worker.fatal].into_iter().flatten() {
            self.errors.push(format!("repeat {rep}: {e}"));
        }
        for f in &o.worker.queue_failures {
            self.errors.push(format!("repeat {rep}: {f}"));
        }
        if o.lost(w) > 0 {
            self.errors
                .push(format!("repeat {rep}: {} packets lost", o.lost(w)));
        }
        if let Some(b) = o.engine_overhead_bytes() {
            self.engine_overhead_bytes.push(b);
        }
        match repeat_values(c, o, calibration_rtt_ns, rep, ceiling_sample) {
            Ok(v) => self.repeats.push(v),
            Err(e) => self.errors.push(format!("repeat {rep}: {e:#}")),
        }
    }
}

/// Per-repeat numbers of one run.
fn repeat_values(
    c: &Combo,
    o: &RunOutcome,
    calibration_rtt_ns: f64,
    round: usize,
    ceiling_sample: Option<f64>,
) -> Result<RepeatValues> {
    let w = guest_workload(c.workload);
    let window = o.guest.window.as_secs_f64();
    if window <= 0.0 || o.guest.window_packets == 0 {
        bail!(
            "no packets in the measured window (sent {}, received {}, errors: {:?} {:?} {:?})",
            o.sent(w),
            o.received(w),
            o.guest.error,
            o.worker.queue_failures,
            o.worker.fatal
        );
    }
    // The unit everything is "per": a frame for tx and rx, a transaction for rr.
    let units = match w {
        GuestWorkload::Tx => o.guest.sent.saturating_sub(o.guest.tx_unreturned),
        GuestWorkload::Rx | GuestWorkload::Rr | GuestWorkload::Echo => o.guest.received,
    }
    .max(1) as f64;
    let calls = get(&o.metrics.tx.calls) + get(&o.metrics.rx.calls);
    let rr = c.workload == Workload::Rr;
    let q = |p: f64| rr.then(|| o.guest.rtt_ns.value_at_quantile(p) as f64);
    Ok(RepeatValues {
        throughput_mpps: o.guest.window_packets as f64 / window / 1e6,
        cpu_ns_per_packet_worker: o.worker.cpu_ns as f64 / units,
        cpu_ns_per_packet_vcpu: o.vcpu_cpu_ns as f64 / units,
        kicks_per_packet: o.guest.kicks as f64 / units,
        calls_per_packet: calls as f64 / units,
        rtt_p50_ns: q(0.5),
        rtt_p99_ns: q(0.99),
        rtt_p999_ns: q(0.999),
        rtt_mean_ns: rr.then(|| o.guest.rtt_ns.mean()),
        sent: o.sent(w),
        received: o.received(w),
        calibration_rtt_ns,
        duration_s: window,
        chains_per_batch: {
            let batches = get(&o.metrics.tx.batches) + get(&o.metrics.rx.batches);
            let chains = get(&o.metrics.tx.chains) + get(&o.metrics.rx.chains);
            (batches > 0).then(|| chains as f64 / batches as f64)
        },
        round: Some(round),
        ceiling_sample,
    })
}

/// The results document of `plan`, started at `started`, from what [`super::execute`] gave.
/// Combinations with no successful repeat are left out, and said so on stderr.
pub fn aggregate(plan: &Plan, started: &UtcTime, ex: Executed) -> Result<Results> {
    let calibration = CalibrationRecord::from_calibrations(&ex.calibrations)
        .ok_or_else(|| anyhow!("no calibration"))?
        .with_round_ends(&ex.round_ends);
    let config = serde_json::json!({
        "command": "run",
        "args": &plan.args,
        "modes_run": plan.modes.run.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "modes_skipped": &plan.modes.skipped,
        "warmup_ms": plan.timing().1.as_millis() as u64,
        "vcpu_core": VCPU_CORE,
        "worker_core": WORKER_CORE,
    });
    let mut doc = Results::new(started, calibration, ex.ceilings.clone(), config);
    for (c, a) in plan.combos.iter().zip(ex.accs) {
        if a.repeats.is_empty() {
            eprintln!(
                "{}: no successful repeat: {}",
                c.label(),
                a.errors.join("; ")
            );
            continue;
        }
        let mut r = Record::from_repeats(
            c.mode.name(),
            c.workload,
            c.size,
            &a.repeats,
            a.dropped,
            a.queue_errors,
        )?;
        r.busy_poll_us = c.busy_poll_us;
        r.batch = c.batch;
        r.guest_poll = plan.guest_polls(c);
        r.modeled_exit_cost_ns = plan.args.exit_cost_ns;
        r.errors = a.errors;
        r.engine_overhead_bytes = a.engine_overhead_bytes.iter().copied().max();
        if let Some(name) = c.ceiling().map(|l| l.name()) {
            if let Some(l) = ex.ceilings.iter().find(|l| l.name == name) {
                r = r.with_ceiling(l);
            }
        }
        doc.records.push(r);
    }
    doc.process_rss_bytes = host::process_rss_bytes();
    Ok(doc)
}
