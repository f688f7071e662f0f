//! `direct-vf`: the vhost worker backed directly by an SR-IOV virtual function
//! (`VHOST_NET_SET_BACKEND` with a raw packet socket bound to the VF; libvirt's `hostdev` VF
//! pools): [`engine::worker`] with the packet backend ([`engine::backend::packet`]: bare
//! frames, the 12-byte header stripped on TX and written as zeros on RX), on a VF taken from a
//! pool ([`VfPool`]) built fresh in a namespace for each run. No tap and no host bridge: the
//! frames cross the VF (a veth pair) to its wire end, a port of the PF's embedded switch.
//!
//! - `tx`: frames leave the VF and arrive at the wire end (whose receive counter must count
//!   every frame the backend sent); the switch has no other port for them, so they end there.
//! - `rx`: an injector sends numbered frames into the wire end from a packet socket; they come
//!   out of the VF end into the backend's socket.
//! - `rr`: two VFs of the same pool, a second guest echoing on the far one; frames are
//!   switched VF to VF by the PF's bridge.
//!
//! The pool is `pf0` with as many VFs as the workload needs (one, or two for `rr`).

use std::fs::File;

use anyhow::{Context, Result};
use engine::backend::packet::packet_backend;
use engine::device::{Device, DeviceSpec};
use engine::worker::{self, WorkerConfig};
use guest_sim::traffic::Workload as TrafficWorkload;

use super::far;
use super::Mode;
use crate::ceilings::Ceiling;
use crate::pair::{self, PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::{self, Netns, Privileges, VfPool};

/// The PF of a run's pool.
pub const PF: &str = "pf0";

/// See the module documentation.
#[derive(Debug)]
pub struct DirectVf;

/// Starts the vhost worker with the packet backend on `sock` (a VF's backend socket).
fn start(sock: File, spec: DeviceSpec, wcfg: WorkerConfig) -> Result<Device> {
    let be = packet_backend(sock, spec.mem.clone(), wcfg.batch).context("packet backend")?;
    Ok(worker::spawn(spec, vec![Box::new(be)], wcfg)?)
}

/// VFs a workload needs: one per guest device.
fn vfs_for(workload: TrafficWorkload) -> usize {
    match workload {
        TrafficWorkload::Rr => 2,
        TrafficWorkload::Tx | TrafficWorkload::Rx | TrafficWorkload::Echo => 1,
    }
}

/// Frames a socket's receive queue could not take, and frames left in it unread.
fn socket_drops(o: &mut RunOutcome, keep: &File, full: &str, left: &str) -> Result<()> {
    far::add_drops(o, left, far::drain(keep, 0));
    let full_n = topology::packet_socket_drops(keep).context("PACKET_STATISTICS")?;
    far::add_drops(o, full, full_n);
    Ok(())
}

impl Mode for DirectVf {
    fn name(&self) -> &'static str {
        "direct-vf"
    }

    /// Root (namespaces, veth) and io_uring; no tun device.
    fn unavailable(&self, host: &Privileges) -> Option<String> {
        (!host.vfs).then(|| host.summary())
    }

    /// TX writes bare frames to a packet socket on the VF: its ceiling is that socket written
    /// one frame per `write(2)` with nothing around it; RX is compared with the same ceiling
    /// (what the injector's kind of socket pushes through a VF).
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        match workload {
            Workload::Rr => Some(Ceiling::BusyPollWakeRtt),
            Workload::Tx | Workload::Rx => Ceiling::packet_write(size),
        }
    }

    /// `rr` runs two guests and two devices, as the tap modes do.
    fn oversubscribed(&self, workload: Workload, polling: bool, cores: usize) -> Option<String> {
        super::tap::oversubscribed(workload, polling, cores)
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        let ns = Netns::create().context("network namespace")?;
        let pool = VfPool::create(&ns, PF, vfs_for(cfg.workload))?;
        let vf0 = pool.take()?;
        let sock0 = vf0.backend_socket()?;
        let keep0 = sock0.try_clone().context("dup VF socket")?;
        let mut out = match cfg.workload {
            TrafficWorkload::Tx | TrafficWorkload::Echo => {
                let before = topology::link_stats(&ns, vf0.wire())?;
                let o = pair::run(cfg, |spec, w| start(sock0, spec, w))?;
                let after = topology::link_stats(&ns, vf0.wire())?;
                // Every frame the backend sent reached the wire (veth counts a frame at the
                // far end when it hands it over; a refused send is the backend's own drop).
                let wire = after.rx_packets - before.rx_packets;
                let sent = engine::metrics::get(&o.metrics.tx.packets);
                let mut o = o;
                if wire != sent {
                    o.notes.push(format!(
                        "the backend sent {sent} frames, the wire end {} received {wire}",
                        vf0.wire()
                    ));
                }
                o
            }
            TrafficWorkload::Rx => {
                let (mut o, injected) =
                    far::run_injected(&ns, vf0.wire(), cfg, |spec, w| start(sock0, spec, w))?;
                // The injector sends out of the wire end: its retried refusals are in the wire
                // end's tx_dropped, and anything beyond them was dropped on the way to the VF.
                let tx_dropped = topology::link_stats(&ns, vf0.wire())?.tx_dropped;
                far::add_drops(
                    &mut o,
                    "wire_queue_full",
                    injected.dropped_after_send(tx_dropped),
                );
                o
            }
            TrafficWorkload::Rr => {
                let vf1 = pool.take()?;
                let sock1 = vf1.backend_socket()?;
                let keep1 = sock1.try_clone().context("dup VF socket")?;
                let mut o = far::run_with_echo(
                    cfg,
                    |spec, w| start(sock0, spec, w),
                    |spec, w| start(sock1, spec, w),
                )?;
                // The switch forwards out of a wire end into its VF; what the VF's backlog
                // could not take is that wire end's tx_dropped (nobody is told).
                for (wire, reason) in [
                    (vf0.wire(), "wire_queue_full"),
                    (vf1.wire(), "far_wire_queue_full"),
                ] {
                    let tx_dropped = topology::link_stats(&ns, wire)?.tx_dropped;
                    far::add_drops(&mut o, reason, tx_dropped);
                }
                socket_drops(&mut o, &keep1, "far_vf_socket_full", "left_in_far_vf")?;
                o
            }
        };
        socket_drops(&mut out, &keep0, "vf_socket_full", "left_in_vf")?;
        drop((vf0, keep0));
        drop(pool);
        drop(ns);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! direct-vf end to end, on a VF pool in a private namespace. They need root; without it
    //! they skip, saying why.
    use std::time::Duration;

    use super::*;

    fn can_run(test: &str) -> bool {
        let p = topology::probe();
        if !p.vfs {
            eprintln!("skipping {test}: {}", p.summary());
        }
        p.vfs
    }

    /// Moderate, rate-limited traffic: no loss is acceptable at this rate.
    fn cfg(workload: TrafficWorkload) -> PairConfig {
        PairConfig {
            frame_len: 128,
            rate_pps: Some(3000),
            duration: Duration::from_millis(300),
            ..pair::test_config(workload)
        }
    }

    fn exactly_once(o: &RunOutcome, w: TrafficWorkload, at_least: u64) {
        assert!(o.notes.is_empty(), "{w:?}: {:?}", o.notes);
        assert!(o.guest.error.is_none(), "{w:?}: {:?}", o.guest.error);
        assert!(
            o.worker.queue_failures.is_empty() && o.worker.fatal.is_none(),
            "{w:?}: {:?}",
            o.worker
        );
        assert!(o.sent(w) > at_least, "{w:?}: sent {}", o.sent(w));
        assert_eq!(o.dropped(), 0, "{w:?}: {:?}", o.drops_by_reason());
        assert_eq!(
            o.lost(w),
            0,
            "{w:?}: sent {} got {}",
            o.sent(w),
            o.received(w)
        );
        assert_eq!(o.sent(w), o.received(w), "{w:?}");
        assert_eq!(o.guest.rx_corrupt, 0, "{w:?}");
        assert_eq!(o.guest.rx_out_of_order, 0, "{w:?}");
    }

    #[test]
    fn guest_frames_cross_the_vf_to_the_wire_exactly_once() {
        if !can_run("guest_frames_cross_the_vf_to_the_wire_exactly_once") {
            return;
        }
        let w = TrafficWorkload::Tx;
        // `run` checks the wire end's counter against the backend's and notes a mismatch.
        let o = DirectVf.run(&cfg(w)).expect("run");
        exactly_once(&o, w, 300);
    }

    #[test]
    fn injected_frames_cross_the_vf_into_the_guest_exactly_once() {
        if !can_run("injected_frames_cross_the_vf_into_the_guest_exactly_once") {
            return;
        }
        let w = TrafficWorkload::Rx;
        let o = DirectVf.run(&cfg(w)).expect("run");
        exactly_once(&o, w, 300);
        assert_eq!(o.injected, Some(o.guest.received));
    }

    #[test]
    fn two_guests_exchange_frames_vf_to_vf_through_the_pf_switch() {
        if !can_run("two_guests_exchange_frames_vf_to_vf_through_the_pf_switch") {
            return;
        }
        let w = TrafficWorkload::Rr;
        let mut c = cfg(w);
        c.rate_pps = Some(1000);
        let o = DirectVf.run(&c).expect("run");
        exactly_once(&o, w, 100);
        assert_eq!(o.guest.rtt_ns.len(), o.guest.received);
    }

    #[test]
    fn ceilings_and_availability() {
        let d = DirectVf;
        assert_eq!(
            d.ceiling(Workload::Tx, 64),
            Some(Ceiling::PacketWrite { size: 64 })
        );
        assert_eq!(
            d.ceiling(Workload::Rx, 1500),
            Some(Ceiling::PacketWrite { size: 1500 })
        );
        assert_eq!(d.ceiling(Workload::Rr, 64), Some(Ceiling::BusyPollWakeRtt));
        assert_eq!(d.ceiling(Workload::Tx, 9000), None);
        assert!(d.oversubscribed(Workload::Rr, true, 2).is_some());
        assert!(d.oversubscribed(Workload::Tx, true, 2).is_none());
        let no = Privileges {
            reasons: vec!["not root".into()],
            ..Privileges::default()
        };
        assert_eq!(d.unavailable(&no).as_deref(), Some("not root"));
    }
}
