//! `vhostbench`: the command-line edge. Parses arguments and dispatches; errors are printed
//! with their causes and turn into a non-zero exit status.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{CommandFactory, FromArgMatches};

use harness::calibrate::{self, Calibration};
use harness::ceilings::Ceiling;
use harness::cli::{self, Cli, Command, ExportArgs, InterfaceArgs, LimitsArgs, RunArgs};
use harness::libvirt::{self, SysfsRoot};
use harness::results::{self, CalibrationRecord, Results, UtcTime};
use harness::run;
use harness::stats::{fmt_num, Align, Table};
use harness::topology;

/// Round trips per calibration (in batches of 1000; well under 0.5 s).
const CALIBRATION_ROUND_TRIPS: u64 = 200_000;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let parsed = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match parsed.into_command() {
        // compare has its own exit statuses: 1 is a regression, so an error is 2.
        Command::Compare(args) => {
            let result = harness::compare::main(&args);
            if let Err(e) = &result {
                eprintln!("vhostbench compare: {e:#}");
            }
            return ExitCode::from(harness::compare::exit_code(&result));
        }
        Command::Export(args) => export_command(&args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run_command(args, &cli::given_run_options(&matches)),
        Command::Limits(args) => limits_command(args).map(|()| ExitCode::SUCCESS),
        Command::Interface(args) => interface_command(&args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => harness::serve::main(args).map(|()| ExitCode::SUCCESS),
        Command::LockstepStep(args) => {
            harness::lockstep::step_command(&args).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhostbench: {e:#}");
            // A usage error or unusable input (found before anything ran) is 2, as clap's own
            // are; anything else that stopped the command is 1.
            if e.chain().any(|c| c.is::<run::UsageError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `vhostbench run`: with `--interface`, the mapping is applied and shown first. Exit status:
/// 0 every combination ran; 1 one failed (the others ran, and are in the results); 2 a usage
/// error or unusable input, found before anything was measured; 128 + the signal's number
/// when a signal ended it early, and 141 (as SIGPIPE would) when its stdout's reader went
/// away, each after writing what finished.
fn run_command(mut args: RunArgs, given: &[String]) -> anyhow::Result<ExitCode> {
    let mapped = libvirt::for_run(&mut args, given)
        .map_err(|e| anyhow::Error::new(run::UsageError(e.into())))?;
    if args.json || args.format.is_some() || args.out.as_deref() == Some(std::path::Path::new("-"))
    {
        harness::out::prose_to_stderr();
    }
    if let Some(m) = mapped {
        for line in m.lines() {
            harness::say!("interface: {line}");
        }
    }
    Ok(match run::main(args)? {
        run::Ended::Complete => ExitCode::SUCCESS,
        run::Ended::Failed(_) => ExitCode::FAILURE,
        run::Ended::Interrupted(sig) => ExitCode::from(128u8.saturating_add(sig as u8)),
        run::Ended::StdoutClosed => ExitCode::from(141),
    })
}

/// `vhostbench export`: the file in the asked format, on stdout.
fn export_command(args: &ExportArgs) -> anyhow::Result<()> {
    let doc = results::read_results(&args.file)?;
    print!("{}", harness::export::export(&doc, args.format));
    Ok(())
}

/// `vhostbench interface`: the mapping, line by line; nothing runs. Unsupported items are
/// warnings here (an error only for `run --interface`).
fn interface_command(args: &InterfaceArgs) -> anyhow::Result<()> {
    let sysfs = args
        .sysfs
        .clone()
        .map_or_else(SysfsRoot::default, SysfsRoot::new);
    let m = libvirt::map_files(
        &args.file,
        args.network.as_deref(),
        &topology::probe(),
        &sysfs,
    )?;
    for line in m.lines() {
        println!("{line}");
    }
    Ok(())
}

/// `vhostbench limits`: calibration line, then the ceilings table; optionally a results file.
fn limits_command(args: LimitsArgs) -> anyhow::Result<()> {
    let started = UtcTime::now();
    let repeat = usize::try_from(args.repeat).context("--repeat")?;
    let duration = Duration::from_millis(args.duration_ms);
    // Asked for by name: every one must parse, and a tap ceiling that cannot run is an error.
    // By default: the standard set, tap ceilings skipped with the reason where they cannot run.
    let asked = args
        .only
        .iter()
        .map(|n| n.parse::<Ceiling>().map_err(|e| anyhow!(e)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A round trip asked for by either row (`_p99` too) is measured once, giving both.
    let mut ceilings = Vec::new();
    for c in if asked.is_empty() {
        Ceiling::standard()
    } else {
        asked.clone()
    } {
        if !ceilings.contains(&c) {
            ceilings.push(c);
        }
    }
    for stale in harness::peers::dpdk::cleanup_stale() {
        eprintln!("{stale} (its vhostbench process is gone)");
    }
    // Only ever asked for by name: one that cannot run is an error, before anything runs.
    if let Some(c) = ceilings.iter().find(|c| c.needs_dpdk()) {
        harness::peers::dpdk::probe().with_context(|| format!("{c} needs DPDK's testpmd"))?;
    }
    if ceilings.iter().any(Ceiling::needs_tap) {
        let stale = topology::cleanup_stale();
        if !stale.is_empty() {
            eprintln!(
                "deleted network namespaces of processes that are gone: {}",
                stale.join(", ")
            );
        }
        let host = topology::probe();
        if !host.can_run && asked.is_empty() {
            let (skip, keep): (Vec<Ceiling>, Vec<Ceiling>) =
                ceilings.into_iter().partition(Ceiling::needs_tap);
            let names: Vec<String> = skip.iter().map(Ceiling::name).collect();
            eprintln!("skipping {}: {}", names.join(", "), host.summary());
            ceilings = keep;
        } else if !host.can_run {
            bail!("tap ceilings need a tap: {}", host.summary());
        }
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

    let mut measured = Vec::new();
    for c in &ceilings {
        measured.extend(
            c.measure(duration, repeat)
                .with_context(|| format!("measuring {c}"))?,
        );
    }
    let mut table = Table::new(&[
        ("name", Align::Left),
        ("unit", Align::Left),
        ("min", Align::Right),
        ("median", Align::Right),
        ("max", Align::Right),
        ("offered (median)", Align::Right),
    ]);
    for l in &measured {
        table.push_row(vec![
            l.name.clone(),
            l.unit.clone(),
            fmt_num(l.min),
            fmt_num(l.median),
            fmt_num(l.max),
            harness::stats::Summary::from_values(&l.offered)
                .map_or_else(|| "-".into(), |s| fmt_num(s.median)),
        ]);
    }
    print!("{}", table.render());
    if measured.iter().any(|l| !l.offered.is_empty()) {
        println!(
            "offered: what an RX ceiling's injector sent during its windows (received < offered: \
             the ceiling's own path dropped frames)"
        );
    }

    if let Some(path) = &args.json {
        let config = serde_json::json!({ "command": "limits", "limits": &args });
        let doc = Results::new(&started, calibration, measured, config);
        results::write_results(path, &doc)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
