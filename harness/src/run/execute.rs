//! Carrying out a [`Plan`]: rounds of every combination once, interleaved (A B C A B C …), each
//! round opened by a calibration and the round's ceilings and closed by a second calibration;
//! each run preceded by one more sample of its own ceiling, which its ratio is taken against.
//! A change of vCPU placement or of the host's load mid-invocation then hits every combination
//! and its yardstick alike. Each run's outcome is reduced to its numbers at once ([`Acc::add`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use engine::metrics::get;
use guest_sim::traffic::Workload as GuestWorkload;

use super::plan::{guest_workload, Combo, Plan};
use crate::calibrate::{self, Calibration};
use crate::ceilings::LimitResult;
use crate::pair::RunOutcome;
use crate::results::{self, RepeatValues, Workload};
use crate::stats::fmt_num;

/// Round trips per calibration.
const CALIBRATION_ROUND_TRIPS: u64 = 200_000;
/// How long each ceiling is measured, per sample.
pub const CEILING_DURATION: Duration = Duration::from_millis(300);

/// What a run measured, before it is summarised.
#[derive(Debug, Default)]
pub struct Executed {
    /// The calibration at each round's start.
    pub calibrations: Vec<Calibration>,
    /// The calibration at each round's end.
    pub round_ends: Vec<Calibration>,
    /// Each round-start ceiling, summarised over the rounds.
    pub ceilings: Vec<LimitResult>,
    /// Per combination (the plan's order), what its repeats gave.
    pub accs: Vec<Acc>,
    /// Why the run stopped before its plan was done, if it did.
    pub partial: Option<String>,
}

/// Why the run should stop now, if it should: an interrupt, or a stdout whose reader left.
pub fn stop_reason() -> Option<String> {
    if let Some(sig) = crate::exit::interrupted() {
        return Some(format!("interrupted by {}", signal_name(sig)));
    }
    crate::out::stdout_closed().then(|| "stdout closed".to_string())
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        s => format!("signal {s}"),
    }
}

/// Progress on stderr: combination i of N with an ETA, when `shown` (stderr is a terminal and
/// stdout does not carry the results); nothing otherwise.
fn progress(total: usize, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "[{elapsed_precise}] {bar:30} {pos}/{len} combinations, ETA {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs every round of `plan`, printing a line per round (and, when `show_progress`, a
/// progress bar on stderr). A combination whose run fails is recorded with its error and the
/// run goes on; an interrupt or a closed stdout ends it after the combination in progress.
pub fn execute(plan: &Plan, show_progress: bool) -> Result<Executed> {
    // Per row: its name, unit, one sample per round, and (RX ceilings) what was offered.
    let mut samples: Vec<LimitResult> = Vec::new();
    let mut ex = Executed {
        accs: plan.combos.iter().map(|_| Acc::default()).collect(),
        ..Executed::default()
    };
    let round_ceilings = plan.round_ceilings();
    let bar = progress(plan.repeat * plan.combos.len(), show_progress);
    'rounds: for rep in 0..plan.repeat {
        if let Some(why) = stop_reason() {
            ex.partial = Some(why);
            break;
        }
        let cal = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
        bar.suspend(|| {
            crate::say!(
                "round {}: calibration: cross-core cache-line round trip {} ns (min {}, max {})",
                rep + 1,
                fmt_num(cal.pingpong_rtt_ns),
                fmt_num(cal.pingpong_rtt_min_ns),
                fmt_num(cal.pingpong_rtt_max_ns)
            )
        });
        for ceiling in &round_ceilings {
            let measured = match ceiling.measure(CEILING_DURATION, 1) {
                Ok(m) => m,
                Err(e) => {
                    bar.suspend(|| {
                        crate::say!(
                            "round {}: the ceiling {} could not be measured: {e:#}",
                            rep + 1,
                            ceiling.name()
                        )
                    });
                    continue;
                }
            };
            for l in measured {
                match samples.iter_mut().find(|s| s.name == l.name) {
                    Some(s) => {
                        s.samples.extend(l.samples);
                        s.offered.extend(l.offered);
                    }
                    None => samples.push(l),
                }
            }
        }
        ex.calibrations.push(cal);
        for (c, acc) in plan.combos.iter().zip(ex.accs.iter_mut()) {
            if let Some(why) = stop_reason() {
                ex.partial = Some(why);
                break 'rounds;
            }
            bar.set_message(c.label());
            let ceiling = match c.ceiling() {
                Some(l) => match l.sample(CEILING_DURATION) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        acc.failures
                            .push(format!("repeat {rep}: measuring its ceiling: {e:#}"));
                        None
                    }
                },
                None => None,
            };
            match c.mode.run(&plan.pair_config(c)) {
                Ok(o) => acc.add(c, rep, &o, cal.pingpong_rtt_ns, ceiling),
                Err(e) => {
                    bar.suspend(|| crate::say!("{}: repeat {} failed: {e:#}", c.label(), rep + 1));
                    acc.failures.push(format!("repeat {rep}: {e:#}"));
                }
            }
            bar.inc(1);
        }
        let end = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
        if results::placement_changed(cal.pingpong_rtt_ns, end.pingpong_rtt_ns) {
            bar.suspend(|| {
                crate::say!(
                    "round {}: the vCPU placement changed during the round: calibration {} ns \
                     at its start, {} ns at its end; its same-round ratios may compare two \
                     placements",
                    rep + 1,
                    fmt_num(cal.pingpong_rtt_ns),
                    fmt_num(end.pingpong_rtt_ns)
                )
            });
        }
        ex.round_ends.push(end);
    }
    bar.finish_and_clear();
    ex.ceilings = samples
        .into_iter()
        .map(|s| {
            let l = LimitResult::from_samples(&s.name, &s.unit, s.samples)?;
            if s.offered.is_empty() {
                Ok(l)
            } else {
                l.with_offered(s.offered)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ex)
}

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
    /// The backend's counters, summed over the repeats.
    pub backend_stats: BTreeMap<String, u64>,
    /// The backend the mode chose, if it chooses one.
    pub backend: Option<&'static str>,
    /// Repeats that failed (the run, or its ceiling's sample, returned an error), one line
    /// each, prefixed with the repeat: the combination failed.
    pub failures: Vec<String>,
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
        self.backend = o.backend.or(self.backend);
        for (name, n) in &o.worker.backend_stats {
            *self.backend_stats.entry((*name).into()).or_default() += n;
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
