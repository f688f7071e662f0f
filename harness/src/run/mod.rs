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
pub fn main(args: RunArgs) -> Result<()> {
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
    let doc = aggregate::aggregate(&plan, &started, executed)?;
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
    }
    let path = args
        .out
        .clone()
        .unwrap_or_else(|| results::default_results_path(&started));
    results::write_results(&path, &doc)?;
    println!("wrote {}", path.display());
    Ok(())
}
