//! `vhostbench run`: the comparison, in four steps that each stand alone:
//!
//! - [`plan`]: the modes (resolved against the host), the matrix of mode × workload × size ×
//!   busy-poll × batch, what is left out and why, the ceilings of each round;
//! - [`execute`]: rounds of every combination once, interleaved, each round with its own
//!   calibration and ceilings, each run after a fresh sample of its own ceiling;
//! - [`aggregate`]: per combination, summaries over the repeats; the results document;
//! - [`mod@render`]: the side-by-side table.
//!
//! `compare` and `report` reuse planning, aggregation and rendering without running anything.

pub mod aggregate;
pub mod execute;
pub mod plan;
pub mod render;

use std::io::IsTerminal;

use anyhow::Result;

use crate::cli::RunArgs;
use crate::results::{self, UtcTime};
use crate::stats::fmt_num;
use crate::topology;
pub use plan::{Combo, Plan};
pub use render::render;

/// `; offered <median>` for an RX ceiling (what its injector sent during its windows), else
/// nothing.
fn offered(l: &crate::results::LimitResult) -> String {
    crate::stats::Summary::from_values(&l.offered)
        .map(|s| format!("; offered {}", fmt_num(s.median)))
        .unwrap_or_default()
}

/// Plans, runs, prints and writes the comparison `args` asks for.
/// `--peer dpdk`: the four driver × backend pairings, g2h for `tx` and h2g for `rx`, at each
/// size testpmd makes, the run's repeats interleaved; our side busy-polls as DPDK's PMDs do
/// (the run's largest `--busy-poll-us`, 50 µs if it has none).
fn peers(plan: &Plan, args: &RunArgs) -> Result<Vec<crate::peers::pairings::PeerRecord>> {
    use crate::peers::dpdk::pair::{PairDirection, SIZES};
    use crate::results::Workload;
    let (duration, warmup) = plan.timing();
    let window = duration;
    let poll = args.busy_poll_us.iter().copied().max().unwrap_or(0);
    let poll = if poll == 0 { 50 } else { poll };
    let base = plan
        .combos
        .first()
        .map(|c| plan.pair_config(c))
        .ok_or_else(|| anyhow::anyhow!("--peer needs at least one combination in the matrix"))?;
    let mut out = Vec::new();
    for (w, d) in [
        (Workload::Tx, PairDirection::G2h),
        (Workload::Rx, PairDirection::H2g),
    ] {
        if !args.workloads.contains(&w) {
            continue;
        }
        for &size in &args.sizes {
            if !SIZES.contains(&size) {
                crate::say!(
                    "peer dpdk: {size} B left out (testpmd's txonly makes {}..={} B)",
                    SIZES.start(),
                    SIZES.end()
                );
                continue;
            }
            crate::say!(
                "peer dpdk: {} {size} B, the four pairings x {} repeats",
                d.name(),
                args.repeat
            );
            out.extend(crate::peers::pairings::measure(
                d,
                size,
                window,
                warmup,
                args.repeat as usize,
                poll,
                &base,
            )?);
        }
    }
    Ok(out)
}

/// How a run ended: what the process's exit status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every combination ran.
    Complete,
    /// These combinations failed (the others ran; all are in the results).
    Failed(Vec<String>),
    /// A signal stopped it early; what finished was written.
    Interrupted(i32),
    /// Its stdout's reader went away; what finished was written.
    StdoutClosed,
}

/// A problem with what the user asked for, found before anything ran (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct UsageError(pub anyhow::Error);

fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(e))
}

/// Where the results go (`--out`, `--json`), checked now. `None`: only stdout
/// (`--json` without `--out`).
fn destinations(args: &RunArgs, started: &UtcTime) -> Result<Vec<results::Destination>> {
    let mut out = Vec::new();
    match &args.out {
        Some(p) => out.push(results::Destination::prepare(p, false).map_err(usage)?),
        None if args.json => {}
        None => {
            let p = results::default_results_path(started);
            out.push(results::Destination::prepare(&p, true).map_err(|e| {
                usage(e.context(format!(
                    "the default results file {} (choose one with --out)",
                    p.display()
                )))
            })?);
        }
    }
    if args.json && !out.contains(&results::Destination::Stdout) {
        out.push(results::Destination::Stdout);
    }
    if args.format.is_some() && out.contains(&results::Destination::Stdout) {
        return Err(usage(anyhow::anyhow!(
            "--format and --out - both print on stdout; give --out a file"
        )));
    }
    Ok(out)
}

/// Plans, runs, prints and writes the comparison `args` asks for. Everything that can be
/// checked before measuring is (the output, every combination's configuration); a
/// combination that fails while running is recorded and the others go on.
pub fn main(args: RunArgs) -> Result<Ended> {
    let started = UtcTime::now();
    let outs = destinations(&args, &started)?;
    if outs.contains(&results::Destination::Stdout) || args.format.is_some() {
        crate::out::prose_to_stderr();
    }
    if !args.cores.is_empty() {
        crate::pin::set_cores(&args.cores).map_err(usage)?;
    }
    if args.lockstep {
        crate::lockstep::main(args, &outs)?;
        return Ok(Ended::Complete);
    }
    for stale in topology::cleanup_stale() {
        crate::say!("removed stale namespace {stale} (its vhostbench process is gone)");
    }
    for stale in crate::peers::dpdk::cleanup_stale() {
        crate::say!("{stale} (its vhostbench process is gone)");
    }
    let cores = crate::pin::cores();
    let plan = Plan::new(&args, &topology::probe(), cores.len()).map_err(usage)?;
    plan.validate().map_err(usage)?;
    crate::say!(
        "cores: vCPU on {}, worker on {} (of {})",
        crate::pin::vcpu_core(),
        crate::pin::worker_core(),
        crate::pin::fmt_cores(cores)
    );
    if cores.len() < 2 {
        crate::say!(
            "one core: the vCPU and the worker share core {}, so every figure measures their \
             time-sharing, not a hand-off between cores",
            cores[0]
        );
    }
    for note in &plan.modes.notes {
        crate::say!("{note}");
    }
    for s in plan.modes.skipped.iter().chain(&plan.left_out) {
        crate::say!("skipped {s}");
    }

    crate::exit::graceful();
    let show_progress = !crate::out::prose_on_stderr() && std::io::stderr().is_terminal();
    let executed = execute::execute(&plan, show_progress)?;
    for l in &executed.ceilings {
        crate::say!(
            "ceiling {}: {} {} (min {}, max {}, over the rounds{})",
            l.name,
            fmt_num(l.median),
            l.unit,
            fmt_num(l.min),
            fmt_num(l.max),
            offered(l)
        );
    }
    let mut doc = aggregate::aggregate(&plan, &started, executed)?;
    if args.peer.is_some() && doc.partial.is_none() {
        match peers(&plan, &args) {
            Ok(p) => doc.peers = p,
            Err(e) => {
                crate::say!("peer dpdk: {e:#}");
                doc.failed.push(crate::results::FailedCombination {
                    mode: "peer-dpdk".into(),
                    workload: crate::results::Workload::Tx,
                    size_bytes: 0,
                    busy_poll_us: 0,
                    batch: 0,
                    label: "--peer dpdk".into(),
                    errors: vec![format!("{e:#}")],
                });
            }
        }
        if let Some(why) = execute::stop_reason() {
            doc.partial = Some(why);
        }
    }
    let cal = &doc.calibration;
    crate::say!(
        "calibration: cross-core cache-line round trip {} ns (min {}, max {}; per round: {})",
        fmt_num(cal.pingpong_rtt_ns),
        fmt_num(cal.pingpong_rtt_min_ns),
        fmt_num(cal.pingpong_rtt_max_ns),
        cal.per_repeat_ns
            .iter()
            .map(|v| fmt_num(*v))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !cal.placement_changed.is_empty() {
        crate::say!(
            "placement changed during round(s) {}: compare their rows' per-round ratios with care",
            cal.placement_changed
                .iter()
                .map(|r| (r + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match args.format {
        // The results in the asked format are stdout's; the table goes with the prose.
        Some(f) => {
            crate::out::say_text(&render(&doc));
            crate::out::write_stdout_text(&crate::export::export(&doc, f));
        }
        None => {
            crate::out::say_text(&render(&doc));
            if !doc.peers.is_empty() {
                crate::out::say_text(&render::peers(&doc.peers));
            }
        }
    }
    for f in &doc.failed {
        crate::say!("FAILED {}: {}", f.label, f.errors.join("; "));
    }
    if let Some(why) = &doc.partial {
        crate::say!("partial: the run stopped early ({why}); the results hold what finished");
    }
    for d in &outs {
        d.write(&doc)?;
        if *d != results::Destination::Stdout {
            crate::say!("wrote {}", d.describe());
        }
    }
    Ok(match (crate::exit::interrupted(), &doc.partial) {
        (Some(sig), _) => Ended::Interrupted(sig),
        (None, Some(_)) => Ended::StdoutClosed,
        (None, None) if !doc.failed.is_empty() => {
            Ended::Failed(doc.failed.iter().map(|f| f.label.clone()).collect())
        }
        (None, None) => Ended::Complete,
    })
}
