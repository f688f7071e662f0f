//! `vhostbench run`: the comparison. Every (mode, workload, size, busy-poll, batch)
//! combination is run `--repeat` times, repeats interleaved (A B C A B C …) with a fresh
//! calibration before each round, so a change of vCPU placement hits every combination alike.
//! The machine's ceilings are measured in the same invocation and each throughput is also
//! shown as a percentage of its ceiling.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use engine::metrics::get;
use guest_sim::traffic::Workload as GuestWorkload;

use crate::calibrate::{self, Calibration};
use crate::cli::{Mode, RunArgs};
use crate::host;
use crate::limits::{self, LimitResult};
use crate::modes::{self, TapDevice};
use crate::pair::{self, PairConfig, RunOutcome};
use crate::pin::{VCPU_CORE, WORKER_CORE};
use crate::results::{self, CalibrationRecord, Record, RepeatValues, Results, UtcTime, Workload};
use crate::stats::{fmt_num, Align, Summary, Table};
use crate::topology;

/// Round trips per calibration.
const CALIBRATION_ROUND_TRIPS: u64 = 200_000;
/// How long each ceiling is measured, per repeat.
const LIMIT_DURATION: Duration = Duration::from_millis(300);

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Combo {
    mode: Mode,
    workload: Workload,
    size: u32,
    busy_poll_us: u64,
    batch: u32,
}

/// The modes to run, and why the others are not run. `all` runs every mode this host can
/// and lists the rest as skipped; `auto` picks `tap-vhost` when the host allows it, else
/// `emulated`, saying why; a mode asked for by name that cannot run is an error naming what is
/// missing.
fn resolve_modes(asked: &[Mode], host: &topology::Privileges) -> Result<(Vec<Mode>, Vec<String>)> {
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    let why_not = |m: Mode| -> Option<String> {
        match m {
            Mode::DirectVf => Some("not built yet: it needs the VF-pool topology".into()),
            Mode::TapVhost if !host.can_run => Some(host.summary()),
            Mode::Emulated if !host.taps => Some(host.summary()),
            _ => None,
        }
    };
    for &m in asked {
        match m {
            Mode::All => {
                for m in [Mode::Null, Mode::Emulated, Mode::TapVhost, Mode::DirectVf] {
                    match why_not(m) {
                        None => run.push(m),
                        Some(why) => skipped.push(format!("{}: {why}", mode_name(m))),
                    }
                }
            }
            Mode::Auto => {
                if why_not(Mode::TapVhost).is_none() {
                    println!("auto: tap-vhost (root, /dev/net/tun and io_uring are available)");
                    run.push(Mode::TapVhost);
                } else if why_not(Mode::Emulated).is_none() {
                    println!(
                        "auto: emulated, because tap-vhost cannot run: {}",
                        host.summary()
                    );
                    run.push(Mode::Emulated);
                } else {
                    bail!(
                        "auto: neither tap-vhost nor emulated can run here: {}",
                        host.summary()
                    );
                }
            }
            m => match why_not(m) {
                None => run.push(m),
                Some(why) => bail!("mode {} cannot run here: {why}", mode_name(m)),
            },
        }
    }
    let mut seen = Vec::new();
    run.retain(|m| {
        let new = !seen.contains(m);
        seen.push(*m);
        new
    });
    Ok((run, skipped))
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::All => "all",
        Mode::Auto => "auto",
        Mode::Null => "null",
        Mode::Emulated => "emulated",
        Mode::TapVhost => "tap-vhost",
        Mode::DirectVf => "direct-vf",
    }
}

fn guest_workload(w: Workload) -> GuestWorkload {
    match w {
        Workload::Tx => GuestWorkload::Tx,
        Workload::Rx => GuestWorkload::Rx,
        Workload::Rr => GuestWorkload::Rr,
    }
}

/// Whether the guest polls its used rings in this combination: forced by `--guest-poll`,
/// otherwise exactly when the worker busy-polls (the low-latency set-up on both sides).
fn guest_polls(args: &RunArgs, c: &Combo) -> bool {
    args.guest_poll || c.busy_poll_us > 0
}

fn pair_config(args: &RunArgs, c: &Combo) -> PairConfig {
    let duration = Duration::from_millis(args.duration_ms);
    let warmup = (duration / 10).max(Duration::from_millis(20));
    PairConfig {
        workload: guest_workload(c.workload),
        frame_len: c.size as usize,
        queue_size: args.queue_size,
        guest_mem_bytes: args.guest_mem_mb << 20,
        event_idx: args.event_idx,
        indirect: args.indirect,
        mrg_rxbuf: args.mrg_rxbuf,
        in_order: args.in_order,
        batch: c.batch as usize,
        busy_poll_us: c.busy_poll_us,
        guest_poll: guest_polls(args, c),
        rate_pps: args.rate_pps,
        duration: duration + warmup,
        warmup,
        verify_bytes: false,
        exit_cost_ns: args.exit_cost_ns,
        vcpu_core: Some(VCPU_CORE),
        worker_core: Some(WORKER_CORE),
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
    let q =
        |p: f64| (c.workload == Workload::Rr).then(|| o.guest.rtt_ns.value_at_quantile(p) as f64);
    Ok(RepeatValues {
        throughput_mpps: o.guest.window_packets as f64 / window / 1e6,
        cpu_ns_per_packet_worker: o.worker.cpu_ns as f64 / units,
        cpu_ns_per_packet_vcpu: o.vcpu_cpu_ns as f64 / units,
        kicks_per_packet: o.guest.kicks as f64 / units,
        calls_per_packet: calls as f64 / units,
        rtt_p50_ns: q(0.5),
        rtt_p99_ns: q(0.99),
        rtt_p999_ns: q(0.999),
        rtt_mean_ns: (c.workload == Workload::Rr).then(|| o.guest.rtt_ns.mean()),
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

/// The kinds of ceiling a combination is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ceiling {
    /// The busy-poll wake round trip (rr latency).
    Wake,
    /// The ring + copy of the same frame size (null throughput).
    Copy,
    /// The same frames written to a tap one `write(2)` each (what emulated does).
    TapWrite,
    /// The same frames written to a tap in io_uring batches on a fixed file (tap-vhost).
    TapUring,
}

fn ceiling_of(c: &Combo) -> Ceiling {
    match (c.mode, c.workload) {
        (_, Workload::Rr) => Ceiling::Wake,
        (Mode::TapVhost, Workload::Tx) => Ceiling::TapUring,
        (Mode::Emulated, Workload::Tx) | (Mode::Emulated | Mode::TapVhost, Workload::Rx) => {
            Ceiling::TapWrite
        }
        _ => Ceiling::Copy,
    }
}

/// The name of the limit a combination is compared with.
fn ceiling_name(c: &Combo) -> String {
    match ceiling_of(c) {
        Ceiling::Wake => "busy_poll_wake_rtt".into(),
        Ceiling::Copy => format!("spsc_copy_{}", c.size),
        Ceiling::TapWrite => format!("tap_write_{}", c.size),
        Ceiling::TapUring => format!("tap_uring_{}", c.size),
    }
}

/// A tap takes frames of 30..=1514 bytes; the tap ceilings exist for those sizes only.
fn tap_size(size: u32) -> bool {
    (30..=1514).contains(&size)
}

/// `c`'s ceiling measured once, to be taken right before `c` runs. The ratio of a run to its
/// ceiling then compares two measurements a moment apart rather than up to a round apart: on
/// these shared hosts the other tenants' load comes and goes within a round, and a ceiling
/// measured in a quiet moment against a run in a busy one (or the reverse) gave same-round
/// ratios of 40 % and 89 % for the same code. `None` when the combination has no ceiling (a
/// tap ceiling for a frame size a tap cannot take).
fn measure_adjacent_ceiling(c: &Combo) -> Result<Option<f64>> {
    let size = c.size as usize;
    let l = match ceiling_of(c) {
        Ceiling::Wake => limits::busy_poll_wake_rtt(LIMIT_DURATION, 1)?.p50,
        Ceiling::Copy => limits::spsc_copy(size, LIMIT_DURATION, 1)?,
        Ceiling::TapWrite | Ceiling::TapUring if !tap_size(c.size) => return Ok(None),
        Ceiling::TapWrite => limits::tap_write(size, LIMIT_DURATION, 1)?,
        Ceiling::TapUring => limits::tap_uring(size, LIMIT_DURATION, 1)?,
    };
    Ok(l.samples.first().copied())
}

fn measure_ceilings(combos: &[Combo], repeat: usize) -> Result<Vec<LimitResult>> {
    let mut out: Vec<LimitResult> = Vec::new();
    let mut sizes: Vec<u32> = combos.iter().map(|c| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let taps = combos
        .iter()
        .any(|c| matches!(c.mode, Mode::Emulated | Mode::TapVhost));
    for s in sizes {
        out.push(limits::spsc_copy(s as usize, LIMIT_DURATION, repeat)?);
        if taps && tap_size(s) {
            out.push(limits::tap_write(s as usize, LIMIT_DURATION, repeat)?);
            out.push(limits::tap_uring(s as usize, LIMIT_DURATION, repeat)?);
        }
    }
    if combos.iter().any(|c| c.workload == Workload::Rr) {
        out.extend(limits::busy_poll_wake_rtt(LIMIT_DURATION, repeat)?.into_results());
    }
    Ok(out)
}

/// Why a combination cannot give a meaningful number on this machine, if it cannot: `rr` in
/// a tap mode runs two guests and two devices (four threads); with busy polling on both sides
/// they all spin, and with fewer than four cores they only take turns in scheduler time slices
/// (round trips of milliseconds that measure the scheduler, not the data path).
fn oversubscribed(args: &RunArgs, c: &Combo) -> Option<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tap = matches!(c.mode, Mode::Emulated | Mode::TapVhost);
    (tap && c.workload == Workload::Rr && guest_polls(args, c) && cores < 4).then(|| {
        format!(
            "rr across the bridge with polling needs 4 spinning threads (2 vCPUs, 2 devices); \
             this machine has {cores} cores"
        )
    })
}

/// One run of one combination.
fn run_once(c: &Combo, cfg: &PairConfig) -> Result<RunOutcome> {
    match c.mode {
        Mode::TapVhost => modes::run_tap(TapDevice::Vhost, cfg),
        Mode::Emulated => modes::run_tap(TapDevice::Emulated, cfg),
        _ => pair::run_null(cfg),
    }
}

/// Everything gathered for one combination over its repeats.
#[derive(Default)]
struct Acc {
    repeats: Vec<RepeatValues>,
    dropped: BTreeMap<String, u64>,
    queue_errors: BTreeMap<String, u64>,
    errors: Vec<String>,
    engine_overhead_bytes: Vec<u64>,
}

/// Runs the matrix and prints and writes the results.
pub fn main(args: RunArgs) -> Result<()> {
    let started = UtcTime::now();
    for stale in topology::cleanup_stale() {
        println!("removed stale namespace {stale} (its vhostbench process is gone)");
    }
    let host_privileges = topology::probe();
    let (modes, skipped) = resolve_modes(&args.modes, &host_privileges)?;
    for s in &skipped {
        println!("skipped {s}");
    }
    let repeat = usize::try_from(args.repeat).context("--repeat")?;
    let mut combos = Vec::new();
    for &mode in &modes {
        for &workload in &args.workloads {
            for &size in &args.sizes {
                for &busy_poll_us in &args.busy_poll_us {
                    for &batch in &args.batch {
                        let c = Combo {
                            mode,
                            workload,
                            size,
                            busy_poll_us,
                            batch,
                        };
                        match oversubscribed(&args, &c) {
                            None => combos.push(c),
                            Some(why) => println!("skipped {}: {why}", label(&c)),
                        }
                    }
                }
            }
        }
    }
    if combos.is_empty() {
        bail!("nothing to run");
    }

    // The ceilings are measured at the start of every round (the `limits` of the file, their
    // summaries over the rounds), and each run's own ceiling once more right before it runs
    // (`measure_adjacent_ceiling`, what its ratio is taken against), so a change of vCPU
    // placement or of the host's load mid-invocation moves both sides alike.
    let mut ceiling_samples: Vec<(String, String, Vec<f64>)> = Vec::new();
    let mut calibrations: Vec<Calibration> = Vec::new();
    // Measured again after each round's runs: the host can move the vCPUs mid-round, and then
    // the round's ceilings and runs did not all see one placement.
    let mut round_ends: Vec<Calibration> = Vec::new();
    let mut acc: Vec<Acc> = combos.iter().map(|_| Acc::default()).collect();
    for rep in 0..repeat {
        let cal = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
        println!(
            "round {}: calibration: cross-core cache-line round trip {} ns (min {}, max {})",
            rep + 1,
            fmt_num(cal.pingpong_rtt_ns),
            fmt_num(cal.pingpong_rtt_min_ns),
            fmt_num(cal.pingpong_rtt_max_ns)
        );
        for l in measure_ceilings(&combos, 1).context("measuring the ceilings")? {
            match ceiling_samples.iter_mut().find(|(n, _, _)| *n == l.name) {
                Some((_, _, v)) => v.extend(l.samples),
                None => ceiling_samples.push((l.name, l.unit, l.samples)),
            }
        }
        for (c, a) in combos.iter().zip(acc.iter_mut()) {
            let cfg = pair_config(&args, c);
            let ceiling = measure_adjacent_ceiling(c)
                .with_context(|| format!("{}: measuring its ceiling", label(c)))?;
            let o = run_once(c, &cfg).with_context(|| label(c))?;
            let w = guest_workload(c.workload);
            for (reason, n) in o.drops_by_reason() {
                *a.dropped.entry(reason).or_default() += n;
            }
            for note in &o.notes {
                a.errors.push(format!("repeat {rep}: {note}"));
            }
            for (kind, n) in o.metrics.queue_errors_by_kind() {
                *a.queue_errors.entry(kind.into()).or_default() += n;
            }
            for e in [&o.guest.error, &o.worker.fatal].into_iter().flatten() {
                a.errors.push(format!("repeat {rep}: {e}"));
            }
            for f in &o.worker.queue_failures {
                a.errors.push(format!("repeat {rep}: {f}"));
            }
            if o.lost(w) > 0 {
                a.errors
                    .push(format!("repeat {rep}: {} packets lost", o.lost(w)));
            }
            if let Some(b) = o.engine_overhead_bytes() {
                a.engine_overhead_bytes.push(b);
            }
            match repeat_values(c, &o, cal.pingpong_rtt_ns, rep, ceiling) {
                Ok(v) => a.repeats.push(v),
                Err(e) => a.errors.push(format!("repeat {rep}: {e:#}")),
            }
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
        calibrations.push(cal);
        round_ends.push(end);
        eprintln!("repeat {}/{repeat} done", rep + 1);
    }
    let ceilings = ceiling_samples
        .into_iter()
        .map(|(name, unit, v)| LimitResult::from_samples(&name, &unit, v))
        .collect::<Result<Vec<_>>>()?;
    for l in &ceilings {
        println!(
            "ceiling {}: {} {} (min {}, max {}, over the rounds)",
            l.name,
            fmt_num(l.median),
            l.unit,
            fmt_num(l.min),
            fmt_num(l.max)
        );
    }

    let calibration = CalibrationRecord::from_calibrations(&calibrations)
        .ok_or_else(|| anyhow!("no calibration"))?
        .with_round_ends(&round_ends);
    println!(
        "calibration: cross-core cache-line round trip {} ns (min {}, max {}; per round: {})",
        fmt_num(calibration.pingpong_rtt_ns),
        fmt_num(calibration.pingpong_rtt_min_ns),
        fmt_num(calibration.pingpong_rtt_max_ns),
        calibration
            .per_repeat_ns
            .iter()
            .map(|v| fmt_num(*v))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !calibration.placement_changed.is_empty() {
        println!(
            "placement changed during round(s) {}: compare their rows' per-round ratios with care",
            calibration
                .placement_changed
                .iter()
                .map(|r| (r + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let config = serde_json::json!({
        "command": "run",
        "args": &args,
        "modes_run": modes.iter().map(|m| mode_name(*m)).collect::<Vec<_>>(),
        "modes_skipped": &skipped,
        "warmup_ms": pair_config(&args, &combos[0]).warmup.as_millis() as u64,
        "vcpu_core": VCPU_CORE,
        "worker_core": WORKER_CORE,
    });
    let mut doc = Results::new(&started, calibration, ceilings.clone(), config);
    for (c, a) in combos.iter().zip(acc) {
        if a.repeats.is_empty() {
            eprintln!(
                "{}: no successful repeat: {}",
                label(c),
                a.errors.join("; ")
            );
            continue;
        }
        let mut r = Record::from_repeats(
            mode_name(c.mode),
            c.workload,
            c.size,
            &a.repeats,
            a.dropped,
            a.queue_errors,
        )?;
        r.busy_poll_us = c.busy_poll_us;
        r.batch = c.batch;
        r.guest_poll = guest_polls(&args, c);
        r.modeled_exit_cost_ns = args.exit_cost_ns;
        r.errors = a.errors;
        r.engine_overhead_bytes = a.engine_overhead_bytes.iter().copied().max();
        if let Some(l) = ceilings.iter().find(|l| l.name == ceiling_name(c)) {
            r = r.with_ceiling(l);
        }
        doc.records.push(r);
    }
    doc.process_rss_bytes = host::process_rss_bytes();
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

fn label(c: &Combo) -> String {
    format!(
        "{}/{}/{}B/busy-poll {}us/batch {}",
        mode_name(c.mode),
        c.workload.as_str(),
        c.size,
        c.busy_poll_us,
        c.batch
    )
}

fn range(s: &Summary) -> String {
    format!(
        "{} [{}-{}]",
        fmt_num(s.median),
        fmt_num(s.min),
        fmt_num(s.max)
    )
}

fn us(s: &Option<Summary>) -> String {
    s.map(|s| fmt_num(s.median / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// For a `tap-vhost` row: its median throughput ÷ that of the `emulated` row with the same
/// workload, size, busy-poll window and batch.
fn vs_emulated(doc: &Results, r: &Record) -> String {
    if r.mode != "tap-vhost" {
        return "-".into();
    }
    doc.records
        .iter()
        .find(|e| {
            e.mode == "emulated"
                && e.workload == r.workload
                && e.size_bytes == r.size_bytes
                && e.busy_poll_us == r.busy_poll_us
                && e.batch == r.batch
        })
        .map(|e| {
            format!(
                "{:.2}x",
                r.throughput_mpps.median / e.throughput_mpps.median
            )
        })
        .unwrap_or_else(|| "-".into())
}

/// The side-by-side table.
pub fn render(doc: &Results) -> String {
    let mut t = Table::new(&[
        ("mode", Align::Left),
        ("wl", Align::Left),
        ("size", Align::Right),
        ("poll us", Align::Right),
        ("batch", Align::Right),
        ("Mpps median [min-max]", Align::Right),
        ("Gbit/s", Align::Right),
        ("% ceiling", Align::Right),
        ("x emulated", Align::Right),
        ("worker ns/pkt", Align::Right),
        ("vcpu ns/pkt", Align::Right),
        ("kicks/pkt", Align::Right),
        ("calls/pkt", Align::Right),
        ("chains/batch", Align::Right),
        ("p50 us", Align::Right),
        ("p99 us", Align::Right),
        ("p99.9 us", Align::Right),
        ("drops", Align::Right),
        ("lost", Align::Right),
    ]);
    for r in &doc.records {
        t.push_row(vec![
            if r.modeled_exit_cost_ns > 0 {
                format!("{}*", r.mode)
            } else {
                r.mode.clone()
            },
            r.workload.as_str().into(),
            r.size_bytes.to_string(),
            format!("{}{}", r.busy_poll_us, if r.guest_poll { "+g" } else { "" }),
            r.batch.to_string(),
            range(&r.throughput_mpps),
            fmt_num(r.throughput_gbps.median),
            r.pct_of_ceiling
                .as_ref()
                .map(|p| format!("{:.0}%", p.median_pct))
                .unwrap_or_else(|| "-".into()),
            vs_emulated(doc, r),
            fmt_num(r.cpu_ns_per_packet.worker.median),
            fmt_num(r.cpu_ns_per_packet.vcpu.median),
            fmt_num(r.kicks_per_packet.median),
            fmt_num(r.calls_per_packet.median),
            r.chains_per_batch
                .as_ref()
                .map(|s| format!("{:.1}", s.median))
                .unwrap_or_else(|| "-".into()),
            us(&r.rtt_p50_ns),
            us(&r.rtt_p99_ns),
            us(&r.rtt_p999_ns),
            r.dropped.values().sum::<u64>().to_string(),
            r.lost.to_string(),
        ]);
    }
    let mut out = t.render();
    out.push_str(
        "Mpps: frames/s (rr: transactions/s) in the measured window, median [min-max] over repeats.\n\
         % ceiling: tx/rx vs the in-run ring + per-packet copy of the same size (spsc_copy_N);\n\
         rr vs the in-run busy-poll wake round trip (ceiling / p50); tap modes vs the in-run\n\
         tap ceilings (tap_write_N: a write(2) per frame; tap_uring_N: io_uring batches).\n\
         Each ratio is taken per repeat, against the ceiling measured right before it ran; the\n\
         median is shown.\n\
         x emulated: tap-vhost throughput / emulated throughput, same row otherwise. ns/pkt: thread CPU time\n\
         per packet. kicks: guest eventfd writes (VM exits); calls: worker interrupts.\n\
         chains/batch: chains the worker moved per used-ring publish (how full its batches were).\n\
         poll us: worker busy-poll window; +g: the guest polls its rings too.\n",
    );
    if let Some(r) = doc.records.iter().find(|r| r.modeled_exit_cost_ns > 0) {
        out.push_str(&format!(
            "* MODELED: these rows include a modeled VM-exit cost of {} ns per kick and per \
             interrupt taken (--exit-cost-ns); it is not measured.\n",
            r.modeled_exit_cost_ns
        ));
    }
    for r in &doc.records {
        for e in &r.errors {
            out.push_str(&format!(
                "! {}/{}/{}: {e}\n",
                r.mode,
                r.workload.as_str(),
                r.size_bytes
            ));
        }
        if !r.queue_errors.is_empty() {
            out.push_str(&format!(
                "! {}/{}/{}: queue errors {:?}\n",
                r.mode,
                r.workload.as_str(),
                r.size_bytes,
                r.queue_errors
            ));
        }
    }
    out
}
