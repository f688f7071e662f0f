//! From what the runs gave ([`Executed`]) to the results document: per combination a
//! [`Record`] of summaries over its repeats, with its drops, queue errors and ratio to its
//! ceiling; then the whole document with its configuration, calibration and ceilings. Nothing
//! here measures.

use anyhow::{anyhow, Result};

use super::execute::Executed;
use super::plan::Plan;
use crate::host;
use crate::pin::{vcpu_core, worker_core};
use crate::results::{CalibrationRecord, FailedCombination, Record, Results, UtcTime};

/// The results document of `plan`, started at `started`, from what [`super::execute`] gave.
/// A combination with a failed repeat, or with repeats that all measured nothing, is listed
/// in `failed` with its errors (and has a record only for the repeats that measured).
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
        "vcpu_core": vcpu_core(),
        "worker_core": worker_core(),
        "cores": crate::pin::cores(),
    });
    let mut doc = Results::new(started, calibration, ex.ceilings.clone(), config);
    doc.partial = ex.partial.clone();
    for (c, a) in plan.combos.iter().zip(ex.accs) {
        // Failed: a repeat ended in an error, or repeats ran and none measured anything. (A
        // combination an interrupt kept from running at all is simply not in the file.)
        let ran = !a.repeats.is_empty() || !a.errors.is_empty() || !a.failures.is_empty();
        if !a.failures.is_empty() || (a.repeats.is_empty() && ran) {
            doc.failed.push(FailedCombination {
                mode: c.mode.name().to_string(),
                workload: c.workload,
                size_bytes: c.size,
                busy_poll_us: c.busy_poll_us,
                batch: c.batch,
                label: c.label(),
                errors: a.failures.iter().chain(&a.errors).cloned().collect(),
            });
        }
        if a.repeats.is_empty() {
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
        r.backend_stats = a.backend_stats;
        r.backend = a.backend.map(String::from);
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
