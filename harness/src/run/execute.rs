//! Carrying out a [`Plan`]: rounds of every combination once, interleaved (A B C A B C …), each
//! round opened by a calibration and the round's ceilings and closed by a second calibration;
//! each run preceded by one more sample of its own ceiling, which its ratio is taken against.
//! A change of vCPU placement or of the host's load mid-invocation then hits every combination
//! and its yardstick alike.

use std::time::Duration;

use anyhow::{Context, Result};

use super::aggregate::Acc;
use super::plan::Plan;
use crate::calibrate::{self, Calibration};
use crate::ceilings::LimitResult;
use crate::results;
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
}

/// Runs every round of `plan`, printing a line per round.
pub fn execute(plan: &Plan) -> Result<Executed> {
    let mut samples: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut ex = Executed {
        accs: plan.combos.iter().map(|_| Acc::default()).collect(),
        ..Executed::default()
    };
    let round_ceilings = plan.round_ceilings();
    for rep in 0..plan.repeat {
        let cal = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
        println!(
            "round {}: calibration: cross-core cache-line round trip {} ns (min {}, max {})",
            rep + 1,
            fmt_num(cal.pingpong_rtt_ns),
            fmt_num(cal.pingpong_rtt_min_ns),
            fmt_num(cal.pingpong_rtt_max_ns)
        );
        for ceiling in &round_ceilings {
            let measured = ceiling
                .measure(CEILING_DURATION, 1)
                .with_context(|| format!("measuring the ceiling {}", ceiling.name()))?;
            for l in measured {
                match samples.iter_mut().find(|(n, _, _)| *n == l.name) {
                    Some((_, _, v)) => v.extend(l.samples),
                    None => samples.push((l.name, l.unit, l.samples)),
                }
            }
        }
        for (c, acc) in plan.combos.iter().zip(ex.accs.iter_mut()) {
            let ceiling = match c.ceiling() {
                Some(l) => Some(
                    l.sample(CEILING_DURATION)
                        .with_context(|| format!("{}: measuring its ceiling", c.label()))?,
                ),
                None => None,
            };
            let o = c
                .mode
                .run(&plan.pair_config(c))
                .with_context(|| c.label())?;
            acc.add(c, rep, &o, cal.pingpong_rtt_ns, ceiling);
        }
        let end = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
        if results::placement_changed(cal.pingpong_rtt_ns, end.pingpong_rtt_ns) {
            println!(
                "round {}: the vCPU placement changed during the round: calibration {} ns at its \
                 start, {} ns at its end; its same-round ratios may compare two placements",
                rep + 1,
                fmt_num(cal.pingpong_rtt_ns),
                fmt_num(end.pingpong_rtt_ns)
            );
        }
        ex.calibrations.push(cal);
        ex.round_ends.push(end);
        eprintln!("repeat {}/{} done", rep + 1, plan.repeat);
    }
    ex.ceilings = samples
        .into_iter()
        .map(|(name, unit, v)| LimitResult::from_samples(&name, &unit, v))
        .collect::<Result<Vec<_>>>()?;
    Ok(ex)
}
