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
                println!(
                    "peer dpdk: {size} B left out (testpmd's txonly makes {}..={} B)",
                    SIZES.start(),
                    SIZES.end()
                );
                continue;
            }
            println!(
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

pub fn main(args: RunArgs) -> Result<()> {
    if args.lockstep {
        return crate::lockstep::main(args);
    }
    let started = UtcTime::now();
    for stale in topology::cleanup_stale() {
        println!("removed stale namespace {stale} (its vhostbench process is gone)");
    }
    for stale in crate::peers::dpdk::cleanup_stale() {
        println!("{stale} (its vhostbench process is gone)");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = Plan::new(&args, &topology::probe(), cores)?;
    for note in &plan.modes.notes {
        println!("{note}");
    }
    for s in plan.modes.skipped.iter().chain(&plan.left_out) {
        println!("skipped {s}");
    }

    let executed = execute::execute(&plan)?;
    for l in &executed.ceilings {
        println!(
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
    if args.peer.is_some() {
        doc.peers = peers(&plan, &args)?;
    }
    let cal = &doc.calibration;
    println!(
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
        println!(
            "placement changed during round(s) {}: compare their rows' per-round ratios with care",
            cal.placement_changed
                .iter()
                .map(|r| (r + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !args.json_only {
        print!("{}", render(&doc));
        if !doc.peers.is_empty() {
            print!("{}", render::peers(&doc.peers));
        }
    }
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| results::default_results_path(&started));
    results::write_results(&path, &doc)?;
    println!("wrote {}", path.display());
    Ok(())
}
