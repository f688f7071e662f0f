//! `vhostbench run --lockstep`: counts per packet that do not move with the host's load.
//!
//! For each combination of the run's matrix whose device needs no kernel I/O (`null`), one
//! device is built on a `guest_sim::testbed` and its two sides are stepped in turn on one
//! thread ([`schedule`]): guest-sim's own driver steps and the engine's own worker rounds, the
//! same packets every time, no clock in any decision. After a warm-up, a fixed number of
//! packets is measured: instructions per packet, the guest's and the device's apart — by the
//! CPU's counter ([`perf`]) where the host has one, else by running the same combination
//! under callgrind ([`callgrind`]) — and system calls, io_uring enters, kicks and calls per
//! packet, as the stepped code made them. Two runs of one build give the same counts, so a
//! change in them is a change in the code.
//!
//! Modes whose frames go through the kernel (a tap, a socket on a VF) cannot be stepped and
//! are left out, each with its reason ([`crate::modes::Mode::lockstep_backend`]).

pub mod callgrind;
pub mod perf;
pub mod schedule;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use engine::datapath::TEST_SLOWDOWN_ITERATIONS;
use engine::device::DeviceSpec;
use engine::net::device::{negotiate, DEFAULT_OFFER};
use engine::worker::Stepper;
use serde::{Deserialize, Serialize};

use crate::calibrate;
use crate::cli::RunArgs;
use crate::modes;
use crate::pair::PairConfig;
use crate::results::{
    self, CalibrationRecord, Counter, InstructionsPerPacket, LockstepRecord, Results, UtcTime,
    Workload,
};
use crate::run::plan::{guest_workload, Combo, Plan};
use crate::stats::fmt_num;
use crate::topology::{self, VfOptions};
use schedule::{Meter, Named, Schedule, Unmeasured, Window};

/// Round trips of the calibration every results file carries.
const CALIBRATION_ROUND_TRIPS: u64 = 200_000;

/// One combination as a lockstep run steps it; also what `run --lockstep` hands the copy of
/// itself it runs under callgrind (the hidden `lockstep-step` subcommand), as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Data path.
    pub mode: String,
    /// Traffic.
    pub workload: Workload,
    /// Frame size, bytes.
    pub size_bytes: u32,
    /// Chains per backend submission.
    pub batch: u32,
    /// Busy-poll window asked for, µs (> 0: the device polls; the window never runs out).
    pub busy_poll_us: u64,
    /// The guest polls its used rings.
    pub guest_poll: bool,
    /// Entries per queue.
    pub queue_size: u16,
    /// `RING_EVENT_IDX`.
    pub event_idx: bool,
    /// `IN_ORDER`.
    pub in_order: bool,
    /// `MRG_RXBUF`.
    pub mrg_rxbuf: bool,
    /// Indirect TX chains.
    pub indirect: bool,
    /// Guest memory, bytes.
    pub guest_mem_bytes: u64,
    /// Packets stepped before the window.
    pub warmup_packets: u64,
    /// Packets in the window.
    pub packets: u64,
}

impl Step {
    /// Combination `c` of `plan`, `packets` measured after a warm-up of four rings' worth
    /// (at least 1024): long enough for every descriptor and buffer to have been used once
    /// and the refill cycle to have settled.
    pub fn new(plan: &Plan, c: &Combo, packets: u64) -> Step {
        let a = &plan.args;
        Step {
            mode: c.mode.name().to_string(),
            workload: c.workload,
            size_bytes: c.size,
            batch: c.batch,
            busy_poll_us: c.busy_poll_us,
            guest_poll: plan.guest_polls(c),
            queue_size: a.queue_size,
            event_idx: a.event_idx,
            in_order: a.in_order,
            mrg_rxbuf: a.mrg_rxbuf,
            indirect: a.indirect,
            guest_mem_bytes: a.guest_mem_mb << 20,
            warmup_packets: (4 * u64::from(a.queue_size)).max(1024),
            packets,
        }
    }

    /// `mode/workload/sizeB/busy-poll Nus/batch N`, as its record is labelled.
    pub fn label(&self) -> String {
        results::lockstep_label(
            &self.mode,
            self.workload,
            self.size_bytes,
            self.busy_poll_us,
            self.batch,
        )
    }

    /// The device and guest settings, as a timed run of the same combination would have
    /// them, less what needs a clock (no rate, no modeled exit cost, no duration).
    fn pair_config(&self) -> PairConfig {
        PairConfig {
            workload: guest_workload(self.workload),
            frame_len: self.size_bytes as usize,
            queue_size: self.queue_size,
            guest_mem_bytes: self.guest_mem_bytes,
            event_idx: self.event_idx,
            indirect: self.indirect,
            mrg_rxbuf: self.mrg_rxbuf,
            in_order: self.in_order,
            batch: self.batch as usize,
            busy_poll_us: self.busy_poll_us,
            guest_poll: self.guest_poll,
            rate_pps: None,
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
            verify_bytes: false,
            exit_cost_ns: 0,
            vcpu_core: None,
            worker_core: None,
            vf: VfOptions::default(),
            socket: None,
            count_foreign: false,
        }
    }
}

/// Builds `step`'s device, steps it through the warm-up unmeasured, then through its window
/// measured by `meter`; checks what was delivered, and returns what the window counted.
pub fn measure<M: Meter>(step: &Step, meter: &mut M) -> Result<Window> {
    stepped(step, |s| {
        let start = s.counts();
        s.run_until(meter, start.packets + step.packets)
            .context("measured window")?;
        Ok(s.counts() - start)
    })
}

/// Builds `step`'s device and guest, steps them through the warm-up, hands the schedule to
/// `window`, then stops both sides and checks what was delivered.
pub fn stepped<T>(step: &Step, window: impl FnOnce(&mut Schedule) -> Result<T>) -> Result<T> {
    let mode = modes::by_name(&step.mode).ok_or_else(|| anyhow!("no mode {:?}", step.mode))?;
    let cfg = step.pair_config();
    let backend = mode
        .lockstep_backend(&cfg)
        .map_err(|why| anyhow!("{} cannot be stepped: {why}", step.mode))?;
    let features = negotiate(DEFAULT_OFFER, cfg.features()).context("feature negotiation")?;
    let tb = cfg.testbed()?;
    let nic = tb
        .guest
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the testbed built no queue pair"))?;
    let spec = DeviceSpec {
        mem: tb.mem,
        features,
        pairs: tb.device,
    };
    let device = Stepper::new(spec, vec![backend], &cfg.worker(0)).context("the device")?;
    let tcfg = cfg.traffic();
    let mut s = Schedule::new(&nic, &tcfg, device)?;
    s.run_until(&mut Unmeasured, step.warmup_packets)
        .context("warm-up")?;
    let out = window(&mut s)?;
    s.finish()?;
    Ok(out)
}

/// Options of the hidden `vhostbench lockstep-step`: one combination, stepped with each
/// side's measured part in a function of its own (for callgrind's toggles); prints what the
/// window counted as one line of JSON.
#[derive(Clone, Debug, clap::Args)]
pub struct StepArgs {
    /// The combination ([`Step`] as JSON).
    #[arg(long, value_name = "JSON")]
    pub step: String,
}

/// `vhostbench lockstep-step`.
pub fn step_command(args: &StepArgs) -> Result<()> {
    let step: Step = serde_json::from_str(&args.step).context("--step")?;
    let w = measure(&step, &mut Named)?;
    println!("{}", serde_json::to_string(&w)?);
    Ok(())
}

/// How instructions are counted in this run.
#[derive(Debug)]
enum Counting {
    /// In this process, by the CPU's counter.
    Perf,
    /// By this binary rerun under callgrind.
    Callgrind {
        /// The binary.
        exe: std::path::PathBuf,
        /// `valgrind --version`.
        version: String,
    },
}

impl Counting {
    /// `asked`, or by default the CPU's counter where it opens, else callgrind.
    fn choose(asked: Option<Counter>, exe: &Path) -> Result<Counting> {
        let callgrind = || -> Result<Counting> {
            Ok(Counting::Callgrind {
                exe: exe.to_path_buf(),
                version: callgrind::version()?,
            })
        };
        match asked {
            Some(Counter::Callgrind) => callgrind(),
            Some(Counter::PerfEvent) => {
                perf::PerfMeter::open().context("--lockstep-counter perf-event")?;
                Ok(Counting::Perf)
            }
            None => match perf::PerfMeter::open() {
                Ok(_) => Ok(Counting::Perf),
                Err(e) => {
                    println!(
                        "lockstep: no instruction counter in this CPU ({e}): callgrind counts"
                    );
                    callgrind().context("no CPU counter, and callgrind cannot run")
                }
            },
        }
    }

    fn counter(&self) -> Counter {
        match self {
            Counting::Perf => Counter::PerfEvent,
            Counting::Callgrind { .. } => Counter::Callgrind,
        }
    }

    /// Steps `step`: what the window counted, and the guest's and the device's instructions.
    fn measure(&self, step: &Step) -> Result<(Window, u64, u64)> {
        match self {
            Counting::Perf => {
                let mut meter = perf::PerfMeter::open().context("perf_event_open")?;
                let w = measure(step, &mut meter)?;
                let (guest, device) = meter.counts().context("reading the counters")?;
                Ok((w, guest, device))
            }
            Counting::Callgrind { exe, .. } => callgrind::measure(exe, step),
        }
    }
}

/// The record of `step`, from its window and its two sides' instructions.
fn record(step: &Step, w: &Window, guest: u64, device: u64, c: &Counting) -> LockstepRecord {
    let per = |n: u64| n as f64 / w.packets as f64;
    LockstepRecord {
        mode: step.mode.clone(),
        workload: step.workload,
        size_bytes: step.size_bytes,
        batch: step.batch,
        busy_poll_us: step.busy_poll_us,
        guest_poll: step.guest_poll,
        queue_size: step.queue_size,
        event_idx: step.event_idx,
        in_order: step.in_order,
        mrg_rxbuf: step.mrg_rxbuf,
        indirect: step.indirect,
        packets: w.packets,
        warmup_packets: step.warmup_packets,
        instructions_per_packet: InstructionsPerPacket {
            total: per(guest + device),
            guest: per(guest),
            device: per(device),
        },
        syscalls_per_packet: per(w.syscalls()),
        io_uring_enters_per_packet: per(w.io_uring_enters),
        kicks_per_packet: per(w.kicks),
        calls_per_packet: per(w.calls),
        counter: c.counter(),
        counter_version: match c {
            Counting::Perf => None,
            Counting::Callgrind { version, .. } => Some(version.clone()),
        },
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
        test_slowdown_iterations: TEST_SLOWDOWN_ITERATIONS,
    }
}

/// The steppable combinations of `plan`, and a line for each one left out.
fn steps(plan: &Plan, packets: u64) -> (Vec<Step>, Vec<String>) {
    let (mut steps, mut left_out) = (Vec::new(), Vec::new());
    for c in &plan.combos {
        let step = Step::new(plan, c, packets);
        match c.mode.lockstep_backend(&step.pair_config()) {
            Ok(_) => {
                if !steps.contains(&step) {
                    steps.push(step);
                }
            }
            Err(why) => {
                let line = format!("{}: {why}", c.mode.name());
                if !left_out.contains(&line) {
                    left_out.push(line);
                }
            }
        }
    }
    (steps, left_out)
}

/// `vhostbench run --lockstep`: plans the matrix, steps each combination that can be, prints
/// the table and writes the results file (its `lockstep` list; no timed records).
pub fn main(args: RunArgs, outs: &[results::Destination]) -> Result<()> {
    let started = UtcTime::now();
    let plan = Plan::new(&args, &topology::probe(), crate::pin::cores().len())?;
    for note in &plan.modes.notes {
        crate::say!("{note}");
    }
    for s in &plan.modes.skipped {
        crate::say!("skipped {s}");
    }
    let (steps, left_out) = steps(&plan, args.lockstep_packets);
    for l in &left_out {
        crate::say!("lockstep: left out {l}");
    }
    if steps.is_empty() {
        bail!("nothing to step: only modes with no kernel I/O can be (--modes null)");
    }
    for (given, what) in [
        (args.rate_pps.is_some(), "--rate-pps"),
        (args.exit_cost_ns > 0, "--exit-cost-ns"),
    ] {
        if given {
            crate::say!("lockstep: {what} is not used: a schedule has no clock");
        }
    }
    if TEST_SLOWDOWN_ITERATIONS != 0 {
        crate::say!(
            "lockstep: THIS BUILD IS SLOWED DOWN ON PURPOSE: the engine does {TEST_SLOWDOWN_ITERATIONS} \
             extra loop iterations per packet (feature test-slowdown)"
        );
    }
    let exe = std::env::current_exe().context("finding this binary")?;
    let counting = Counting::choose(args.lockstep_counter, &exe)?;
    let mut records = Vec::new();
    for step in &steps {
        let (w, guest, device) = counting
            .measure(step)
            .with_context(|| format!("stepping {}", step.label()))?;
        let r = record(step, &w, guest, device, &counting);
        r.check()?;
        crate::say!(
            "lockstep {}: {} packets, {} instructions/packet (guest {}, device {})",
            step.label(),
            w.packets,
            fmt_num(r.instructions_per_packet.total),
            fmt_num(r.instructions_per_packet.guest),
            fmt_num(r.instructions_per_packet.device)
        );
        records.push(r);
    }
    let cal = calibrate::pingpong_rtt_ns(CALIBRATION_ROUND_TRIPS).context("calibration")?;
    let calibration =
        CalibrationRecord::from_calibrations(&[cal]).ok_or_else(|| anyhow!("no calibration"))?;
    let config = serde_json::json!({
        "command": "run --lockstep",
        "args": &args,
        "modes_run": plan.modes.run.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "modes_skipped": &plan.modes.skipped,
        "lockstep_left_out": left_out,
    });
    let mut doc = Results::new(&started, calibration, Vec::new(), config);
    doc.lockstep = records;
    match args.format {
        Some(f) => {
            crate::out::say_text(&crate::run::render::lockstep(&doc.lockstep));
            crate::out::write_stdout_text(&crate::export::export(&doc, f));
        }
        None => crate::out::say_text(&crate::run::render::lockstep(&doc.lockstep)),
    }
    for d in outs {
        d.write(&doc)?;
        if *d != results::Destination::Stdout {
            crate::say!("wrote {}", d.describe());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small combination: a 64-entry ring, so a window of 4096 packets is many laps.
    fn step(workload: Workload, busy_poll_us: u64) -> Step {
        Step {
            mode: "null".into(),
            workload,
            size_bytes: 64,
            batch: 64,
            busy_poll_us,
            guest_poll: busy_poll_us > 0,
            queue_size: 64,
            event_idx: true,
            in_order: true,
            mrg_rxbuf: true,
            indirect: false,
            guest_mem_bytes: 4 << 20,
            warmup_packets: 256,
            packets: 4096,
        }
    }

    /// Every combination's shape: both sides polling or both sleeping, with and without
    /// event indices, in order or not, indirect TX, whole-frame RX buffers, small batches.
    fn variants() -> Vec<Step> {
        let mut out = Vec::new();
        for w in [Workload::Tx, Workload::Rx, Workload::Rr] {
            for poll in [0, 50] {
                out.push(step(w, poll));
                out.push(Step {
                    event_idx: false,
                    in_order: false,
                    ..step(w, poll)
                });
                out.push(Step {
                    indirect: true,
                    mrg_rxbuf: false,
                    size_bytes: 1500,
                    batch: 7,
                    ..step(w, poll)
                });
            }
        }
        out
    }

    /// The window holds the packets asked for, every frame arrives once and in order (the
    /// checks of `Schedule::finish`), and the notifications add up: each kick is taken by one
    /// read of the device, each interrupt taken follows at least one call, and the system
    /// calls are exactly those eventfd writes and reads.
    #[test]
    fn every_packet_is_delivered_and_every_notification_counted() {
        for s in variants() {
            let w = measure(&s, &mut Unmeasured).unwrap_or_else(|e| panic!("{s:?}: {e:#}"));
            let l = s.label();
            assert!(
                w.packets >= s.packets && w.packets < s.packets + 256,
                "{l}: {w:?}"
            );
            // One read takes every kick written before it (and `Schedule::finish` checks
            // that every kick was taken); an interrupt is taken only after a call.
            assert!(w.kick_reads <= w.kicks, "{l}: {w:?}");
            assert!(w.call_reads <= w.calls, "{l}: {w:?}");
            assert_eq!(w.io_uring_enters, 0, "{l}: no io_uring in a schedule");
            assert_eq!(
                w.syscalls(),
                w.kicks + w.calls + w.kick_reads + w.call_reads,
                "{l}"
            );
            if s.busy_poll_us > 0 {
                // A polling device never asks for a kick, a polling guest never sleeps.
                assert_eq!((w.kicks, w.call_reads), (0, 0), "{l}: {w:?}");
            } else {
                // Both sleep: each turn hands over with a kick and an interrupt.
                assert!(w.kick_reads > 0 && w.call_reads > 0, "{l}: {w:?}");
                assert_eq!(w.kick_reads, w.turns, "{l}: {w:?}");
                if s.workload == Workload::Rr {
                    let each = (w.packets, w.packets, w.packets);
                    assert_eq!((w.kicks, w.calls, w.call_reads), each, "{l}: {w:?}");
                }
            }
        }
    }

    /// The same combination stepped twice counts the same, turn for turn.
    #[test]
    fn two_schedules_of_one_combination_count_the_same() {
        for s in variants() {
            let a = measure(&s, &mut Unmeasured).expect("first");
            let b = measure(&s, &mut Unmeasured).expect("second");
            assert_eq!(a, b, "{}", s.label());
        }
    }

    /// Read and write system calls of this thread, as the kernel counts them
    /// (`/proc/thread-self/io`: `syscr + syscw`).
    fn kernel_read_writes() -> u64 {
        let text = std::fs::read_to_string("/proc/thread-self/io").expect("read io");
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "syscr" | "syscw").then(|| v.trim().parse::<u64>().ok())?
            })
            .sum()
    }

    /// What the window says the stepped code did is what the kernel saw this thread do.
    #[test]
    fn the_kernel_counts_the_same_system_calls() {
        if std::fs::metadata("/proc/thread-self/io").is_err() {
            eprintln!("skipped: no /proc/thread-self/io (task I/O accounting) here");
            return;
        }
        for s in [
            step(Workload::Tx, 0),
            step(Workload::Rx, 0),
            step(Workload::Rr, 0),
            Step {
                event_idx: false,
                ..step(Workload::Rr, 0)
            },
        ] {
            let (counted, kernel) = stepped(&s, |sched| {
                // What one reading of the counters costs, as the next reading sees it.
                let probe = {
                    let a = kernel_read_writes();
                    kernel_read_writes() - a
                };
                let (k0, c0) = (kernel_read_writes(), sched.counts());
                sched.run_until(&mut Unmeasured, c0.packets + s.packets)?;
                let (k1, c1) = (kernel_read_writes(), sched.counts());
                Ok(((c1 - c0).syscalls(), k1 - k0 - probe))
            })
            .expect("stepped");
            assert!(counted > 0, "{}", s.label());
            assert_eq!(counted, kernel, "{}", s.label());
        }
    }

    /// A kernel-backed mode is left out with its reason; the matrix's null combinations are
    /// stepped once each.
    #[test]
    fn modes_that_need_the_kernel_are_left_out() {
        let host = crate::topology::Privileges {
            can_run: true,
            reasons: vec![],
            taps: true,
            io_uring: true,
            vfs: true,
            af_xdp: true,
        };
        let args = RunArgs {
            lockstep: true,
            busy_poll_us: vec![0, 50],
            ..RunArgs::default()
        };
        let plan = Plan::new(&args, &host, 4).expect("plan");
        let (steps, left_out) = steps(&plan, 1000);
        assert_eq!(steps.len(), 3 * 2 * 2, "{steps:?}");
        assert!(steps.iter().all(|s| s.mode == "null" && s.packets == 1000));
        let names: Vec<&str> = left_out
            .iter()
            .filter_map(|l| l.split_once(':').map(|(m, _)| m))
            .collect();
        assert_eq!(
            names,
            ["emulated", "tap-vhost", "direct-vf"],
            "{left_out:?}"
        );
        assert!(
            left_out.iter().all(|l| l.contains("kernel")),
            "{left_out:?}"
        );
    }
}
