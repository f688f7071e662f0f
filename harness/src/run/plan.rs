//! What a run will measure, decided before anything is measured: the modes (resolved against
//! the host), the matrix of combinations, the combinations left out and why, and the ceilings
//! each round measures. `compare` and `report` can rebuild the same plan from a results file's
//! configuration without running anything.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use guest_sim::traffic::Workload as GuestWorkload;

use crate::ceilings::Ceiling;
use crate::cli::RunArgs;
use crate::modes::{self, Mode, Resolved};
use crate::pair::PairConfig;
use crate::pin::{vcpu_core, worker_core};
use crate::results::Workload;
use crate::topology::{Privileges, VfBackend, VfOptions};

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Combo {
    /// The data path.
    pub mode: &'static dyn Mode,
    /// The traffic.
    pub workload: Workload,
    /// Frame size, bytes.
    pub size: u32,
    /// Worker busy-poll window, µs.
    pub busy_poll_us: u64,
    /// Chains per backend submission.
    pub batch: u32,
    /// `direct-vf`'s VF backend, where the run sweeps it (`None`: the mode's default).
    pub vf_backend: Option<VfBackend>,
    /// The offered rate of the run (`--rate-pps`; `None`: as fast as possible), which an RX
    /// ceiling's injector offers too.
    pub rate_pps: Option<u64>,
    /// Entries per queue.
    pub queue_size: u16,
    /// Neither the worker nor the guest polls: both sides sleep on eventfds when idle.
    pub sleeps: bool,
}

impl Combo {
    /// `mode/workload/sizeB/busy-poll Nus/batch N`.
    pub fn label(&self) -> String {
        let backend = self
            .vf_backend
            .map(|b| format!("/{}", b.name()))
            .unwrap_or_default();
        format!(
            "{}{backend}/{}/{}B/busy-poll {}us/batch {}",
            self.mode.name(),
            self.workload.as_str(),
            self.size,
            self.busy_poll_us,
            self.batch
        )
    }

    /// The ceiling this combination is compared with, if it has one (an RX ceiling fed at
    /// the run's offered rate, as the combination is).
    pub fn ceiling(&self) -> Option<Ceiling> {
        if self.sleeps {
            if let Some(c) = self
                .mode
                .sleeping_ceiling(self.workload, self.size, self.queue_size)
            {
                return Some(c);
            }
        }
        match self
            .mode
            .ceiling_on(self.workload, self.size, self.vf_backend)
        {
            // A round trip in which nobody polls is two wake-ups from a blocking read: its
            // yardstick is the eventfd round trip with the far side blocked, not the spinning
            // one (against which every such row read 0-1%).
            Some(Ceiling::BusyPollWakeRtt) if self.sleeps => Some(Ceiling::BlockingWakeRtt),
            c => c.map(|c| c.at_rate(self.rate_pps)),
        }
    }
}

/// The guest's workload for one of the results' workloads.
pub fn guest_workload(w: Workload) -> GuestWorkload {
    match w {
        Workload::Tx => GuestWorkload::Tx,
        Workload::Rx => GuestWorkload::Rx,
        Workload::Rr => GuestWorkload::Rr,
    }
}

/// A run, planned.
#[derive(Debug)]
pub struct Plan {
    /// The options it was planned from.
    pub args: RunArgs,
    /// Which modes run, which were skipped and why, what `auto` chose.
    pub modes: Resolved,
    /// The combinations to run, in the order each round runs them.
    pub combos: Vec<Combo>,
    /// `"<combination>: <why>"` for each combination left out.
    pub left_out: Vec<String>,
    /// Rounds (every combination once per round).
    pub repeat: usize,
}

impl Plan {
    /// Plans `args` for a host with `host`'s privileges and `cores` usable cores.
    pub fn new(args: &RunArgs, host: &Privileges, cores: usize) -> Result<Plan> {
        let modes = modes::resolve(&args.modes, host)?;
        let repeat = usize::try_from(args.repeat).context("--repeat")?;
        let mut combos = Vec::new();
        let mut left_out = Vec::new();
        for &mode in &modes.run {
            for &workload in &args.workloads {
                for &size in &args.sizes {
                    for &busy_poll_us in &args.busy_poll_us {
                        for &batch in &args.batch {
                            for vf_backend in vf_backends(args, mode, host) {
                                let mut c = Combo {
                                    mode,
                                    workload,
                                    size,
                                    busy_poll_us,
                                    batch,
                                    vf_backend,
                                    rate_pps: args.rate_pps,
                                    queue_size: args.queue_size,
                                    sleeps: false,
                                };
                                c.sleeps = busy_poll_us == 0 && !guest_polls(args, &c);
                                match mode.oversubscribed(workload, guest_polls(args, &c), cores) {
                                    None => combos.push(c),
                                    Some(why) => left_out.push(format!("{}: {why}", c.label())),
                                }
                            }
                        }
                    }
                }
            }
        }
        if combos.is_empty() {
            bail!("nothing to run");
        }
        Ok(Plan {
            args: args.clone(),
            modes,
            combos,
            left_out,
            repeat,
        })
    }

    /// Whether the guest polls its used rings in `c`.
    pub fn guest_polls(&self, c: &Combo) -> bool {
        guest_polls(&self.args, c)
    }

    /// How long each repeat runs, and the part of it left out at the start (`--warmup-ms`, or
    /// a tenth of the duration, at least 20 ms).
    pub fn timing(&self) -> (Duration, Duration) {
        let duration = Duration::from_millis(self.args.duration_ms);
        let warmup = match self.args.warmup_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (duration / 10).max(Duration::from_millis(20)),
        };
        (duration, warmup)
    }

    /// Checks every combination's configuration before anything is measured: its guest
    /// memory, queues and buffers are laid out as the run will lay them out (and let go). All
    /// the combinations that cannot run are named in one error.
    pub fn validate(&self) -> Result<()> {
        let mut bad = Vec::new();
        let mut seen = Vec::new();
        for c in &self.combos {
            let cfg = self.pair_config(c);
            let key = (
                cfg.frame_len,
                cfg.queue_size,
                cfg.guest_mem_bytes,
                cfg.mrg_rxbuf,
            );
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            if let Err(e) = crate::pair::check(&cfg) {
                bad.push(format!("{}B frames: {e:#}", c.size));
            }
        }
        if !bad.is_empty() {
            bail!(
                "{} (--guest-mem-mb {}, --queue-size {})",
                bad.join("; "),
                self.args.guest_mem_mb,
                self.args.queue_size
            );
        }
        Ok(())
    }

    /// Everything one run of `c` needs.
    pub fn pair_config(&self, c: &Combo) -> PairConfig {
        let args = &self.args;
        let (duration, warmup) = self.timing();
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
            guest_poll: self.guest_polls(c),
            rate_pps: args.rate_pps,
            duration: duration + warmup,
            warmup,
            verify_bytes: false,
            exit_cost_ns: args.exit_cost_ns,
            vcpu_core: Some(vcpu_core()),
            worker_core: Some(worker_core()),
            vf: VfOptions {
                pf: args.pf.clone(),
                vfs: args.vfs,
                backend: c.vf_backend,
            },
            socket: args.socket.clone(),
            count_foreign: false,
        }
    }

    /// The ceilings measured at the start of every round: each combination's own, and the
    /// ring-and-copy ceiling of every frame size (the in-run limit of the machine itself), each
    /// once, in the order first needed (by size, then the round trips last).
    pub fn round_ceilings(&self) -> Vec<Ceiling> {
        let mut sizes: Vec<u32> = self.combos.iter().map(|c| c.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut out: Vec<Ceiling> = Vec::new();
        let mut push = |c: Ceiling| {
            if !out.contains(&c) {
                out.push(c);
            }
        };
        for s in sizes {
            if let Some(c) = Ceiling::spsc_copy(s) {
                push(c);
            }
            for c in self.combos.iter().filter(|c| c.size == s) {
                match c.ceiling() {
                    Some(l) if l.size().is_some() => push(l),
                    _ => {}
                }
            }
        }
        for c in &self.combos {
            match c.ceiling() {
                Some(l) if l.size().is_none() => push(l),
                _ => {}
            }
        }
        out
    }
}

/// The VF backends a mode's combinations sweep: for a mode that takes one
/// ([`Mode::takes_vf_backend`]) those asked for, or its default on this host; one `None`
/// (nothing to choose) for the others.
fn vf_backends(args: &RunArgs, mode: &dyn Mode, host: &Privileges) -> Vec<Option<VfBackend>> {
    if !mode.takes_vf_backend() {
        vec![None]
    } else if args.vf_backend.is_empty() {
        vec![mode.default_vf_backend(host)]
    } else {
        args.vf_backend.iter().copied().map(Some).collect()
    }
}

/// Whether the guest polls its used rings: forced by `--guest-poll`, otherwise exactly when the
/// worker busy-polls (the low-latency set-up on both sides).
fn guest_polls(args: &RunArgs, c: &Combo) -> bool {
    args.guest_poll || c.busy_poll_us > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::Selector;

    fn host() -> Privileges {
        Privileges {
            can_run: true,
            reasons: vec![],
            taps: true,
            io_uring: true,
            vfs: true,
            af_xdp: true,
        }
    }

    #[test]
    fn the_matrix_and_what_it_leaves_out() {
        let args = RunArgs {
            busy_poll_us: vec![0, 20],
            ..RunArgs::default()
        };
        let p = Plan::new(&args, &host(), 2).expect("plan");
        let names: Vec<&str> = p.modes.run.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["null", "emulated", "tap-vhost", "direct-vf"]);
        assert!(p.modes.skipped.is_empty());
        // rr with polling across a bridge or the PF's switch needs four cores: left out for
        // both tap modes and direct-vf.
        assert_eq!(p.left_out.len(), 3 * 2, "{:?}", p.left_out);
        assert!(p.left_out.iter().all(|s| s.contains("/rr/")));
        assert_eq!(p.combos.len(), 4 * 3 * 2 * 2 - 6);
        // With four cores nothing is left out.
        assert!(Plan::new(&args, &host(), 4)
            .expect("plan")
            .left_out
            .is_empty());
    }

    #[test]
    fn each_round_measures_each_ceiling_once() {
        let mut args = RunArgs::default();
        let p = Plan::new(&args, &host(), 2).expect("plan");
        let names: Vec<String> = p.round_ceilings().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "spsc_copy_64",
                "sleep_ring_64_q256",
                "tap_write_64",
                "tap_read_64",
                "tap_best_64",
                "xdp_tx_64",
                "xdp_rx_64",
                "spsc_copy_1500",
                "sleep_ring_1500_q256",
                "tap_write_1500",
                "tap_read_1500",
                "tap_best_1500",
                "xdp_tx_1500",
                "xdp_rx_1500",
                // Nobody polls by default: rr's yardstick is the blocking wake round trip.
                "blocking_wake_rtt",
            ]
        );
        let polled = RunArgs {
            busy_poll_us: vec![20],
            ..RunArgs::default()
        };
        let p = Plan::new(&polled, &host(), 4).expect("plan");
        let names: Vec<String> = p.round_ceilings().iter().map(|c| c.name()).collect();
        assert!(
            names.contains(&"busy_poll_wake_rtt".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"blocking_wake_rtt".to_string()),
            "{names:?}"
        );
        // Each VF backend swept brings its own ceilings, rx as well as tx; a paced run's RX
        // ceilings are paced alike.
        let swept = RunArgs {
            modes: vec![Selector::One(&crate::modes::direct_vf::DirectVf)],
            workloads: vec![Workload::Tx, Workload::Rx],
            sizes: vec![64],
            vf_backend: vec![VfBackend::Packet, VfBackend::Macvtap, VfBackend::AfXdp],
            rate_pps: Some(50_000),
            ..RunArgs::default()
        };
        let p = Plan::new(&swept, &host(), 2).expect("plan");
        let names: Vec<String> = p.round_ceilings().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "spsc_copy_64",
                "packet_best_64",
                "macvtap_best_64",
                "xdp_tx_64",
                "packet_read_64_r50000",
                "macvtap_read_64_r50000",
                "xdp_rx_64_r50000",
            ]
        );
        // A size a tap cannot take has no tap ceiling.
        args.sizes = vec![9000];
        let p = Plan::new(&args, &host(), 2).expect("plan");
        let names: Vec<String> = p.round_ceilings().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "spsc_copy_9000",
                "sleep_ring_9000_q256",
                "blocking_wake_rtt"
            ]
        );
    }

    #[test]
    fn only_direct_vf_sweeps_the_vf_backends() {
        let args = RunArgs {
            workloads: vec![Workload::Tx],
            sizes: vec![64],
            vf_backend: vec![VfBackend::Packet, VfBackend::AfXdp],
            ..RunArgs::default()
        };
        let p = Plan::new(&args, &host(), 2).expect("plan");
        let got: Vec<(String, Option<VfBackend>)> = p
            .combos
            .iter()
            .map(|c| (c.mode.name().to_string(), c.vf_backend))
            .collect();
        let vf = |b| ("direct-vf".to_string(), Some(b));
        assert!(got.contains(&vf(VfBackend::Packet)) && got.contains(&vf(VfBackend::AfXdp)));
        assert_eq!(got.iter().filter(|(m, _)| m == "direct-vf").count(), 2);
        assert!(got.iter().all(|(m, b)| m == "direct-vf" || b.is_none()));
        let c = p
            .combos
            .iter()
            .find(|c| c.vf_backend.is_some())
            .expect("vf combo");
        assert_eq!(p.pair_config(c).vf.backend, c.vf_backend);
        assert!(
            c.label().starts_with("direct-vf/packet/tx/"),
            "{}",
            c.label()
        );
    }

    #[test]
    fn guest_polls_with_the_worker_or_when_asked() {
        let args = RunArgs::default();
        let p = Plan::new(&args, &host(), 2).expect("plan");
        let mut c = p.combos[0];
        assert!(!p.guest_polls(&c));
        c.busy_poll_us = 20;
        assert!(p.guest_polls(&c) && p.pair_config(&c).guest_poll);
    }
}
