//! `vhostbench`: the command-line edge. Parses arguments and dispatches; errors are printed
//! with their causes and turn into a non-zero exit status.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;

use harness::calibrate::{self, Calibration};
use harness::cli::{Cli, Command, LimitsArgs};
use harness::limits;
use harness::results::{self, CalibrationRecord, Results, UtcTime};
use harness::stats::{fmt_num, Align, Table};

/// Round trips per calibration (in batches of 1000; well under 0.5 s).
const CALIBRATION_ROUND_TRIPS: u64 = 200_000;

fn main() -> ExitCode {
    let result = match Cli::parse().into_command() {
        Command::Run(args) => harness::run::main(args),
        Command::Limits(args) => limits_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhostbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vhostbench limits`: calibration line, then the limits table; optionally a results file.
fn limits_command(args: LimitsArgs) -> anyhow::Result<()> {
    let started = UtcTime::now();
    let repeat = usize::try_from(args.repeat).context("--repeat")?;
    let duration = Duration::from_millis(args.duration_ms);
    if let Some(bad) = args
        .only
        .iter()
        .find(|n| !limits::NAMES.contains(&n.as_str()))
    {
        bail!(
            "unknown limit {bad:?} (known: {})",
            limits::NAMES.join(", ")
        );
    }

    let calibrations = (0..repeat)
        .map(|_| calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS))
        .collect::<anyhow::Result<Vec<Calibration>>>()
        .context("calibration")?;
    let calibration = CalibrationRecord::from_calibrations(&calibrations)
        .ok_or_else(|| anyhow!("no calibration"))?;
    println!(
        "calibration: cross-core cache-line round trip {} ns (min {}, max {})",
        fmt_num(calibration.pingpong_rtt_ns),
        fmt_num(calibration.pingpong_rtt_min_ns),
        fmt_num(calibration.pingpong_rtt_max_ns),
    );

    let measured = if args.only.is_empty() {
        limits::measure_all(duration, repeat)
    } else {
        measure_only(&args.only, duration, repeat)
    }
    .context("measuring limits")?;
    let mut table = Table::new(&[
        ("name", Align::Left),
        ("unit", Align::Left),
        ("min", Align::Right),
        ("median", Align::Right),
        ("max", Align::Right),
    ]);
    for l in &measured {
        table.push_row(vec![
            l.name.clone(),
            l.unit.clone(),
            fmt_num(l.min),
            fmt_num(l.median),
            fmt_num(l.max),
        ]);
    }
    print!("{}", table.render());

    if let Some(path) = &args.json {
        let config = serde_json::json!({ "command": "limits", "limits": &args });
        let doc = Results::new(&started, calibration, measured, config);
        results::write_results(path, &doc)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The limits named in `names`, in that order; an RTT limit and its `_p99` are measured once.
fn measure_only(
    names: &[String],
    duration: Duration,
    repeat: usize,
) -> anyhow::Result<Vec<limits::LimitResult>> {
    let mut out: Vec<limits::LimitResult> = Vec::new();
    for name in names {
        if out.iter().any(|l| &l.name == name) {
            continue;
        }
        out.extend(limits::measure_by_name(name, duration, repeat)?);
    }
    Ok(out)
}
