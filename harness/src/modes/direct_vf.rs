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
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use engine::backend::af_xdp::AfXdp;
use engine::backend::packet::packet_backend;
use engine::backend::tap::tap_backend;
use engine::backend::Backend;
use engine::device::{Device, DeviceSpec};
use engine::net::Features;
use engine::worker::{self, WorkerConfig};
use guest_sim::traffic::Workload as TrafficWorkload;
use vring::GuestMemory;

use super::far;
use super::Mode;
use crate::ceilings::{Ceiling, RxPort};
use crate::pair::{self, PairConfig, RunOutcome};
use crate::results::Workload;
use crate::topology::{self, Netns, Privileges, VfBackend, VfPool, XdpRedirect};

/// See the module documentation.
#[derive(Debug)]
pub struct DirectVf;

/// The VF backend when none is asked for: AF_XDP, which measured fastest in the in-run
/// comparison of the three (README, direct-vf), where the host can open AF_XDP sockets; the
/// packet socket, which every host with a VF pool can, where it cannot.
pub fn default_backend(host: &Privileges) -> VfBackend {
    if host.af_xdp {
        VfBackend::AfXdp
    } else {
        VfBackend::Packet
    }
}

/// The backend a run uses when its configuration names none (a caller that did not plan it).
const FALLBACK_BACKEND: VfBackend = VfBackend::Packet;

/// What the worker's backend is built from on one VF.
pub(crate) enum Source {
    /// A fd that carries one frame per read and write (packet socket, macvtap).
    Fd(File),
    /// An AF_XDP socket with its UMEM chunks.
    Xsk(Box<AfXdp>),
}

/// What stays with the run while the device uses the VF, for accounting at the end.
pub(crate) enum Keep {
    /// A second handle of the fd: frames left in it, and its drops.
    Fd(File),
    /// The XDP program that redirects the VF's frames to the socket: RX stops without it.
    Xdp(XdpRedirect),
}

/// One VF as the worker reaches it.
pub(crate) struct Port {
    kind: VfBackend,
    src: Source,
    keep: Keep,
}

impl Port {
    /// Opens VF `vf` (its VF end's name) the way `kind` reaches it (`n`: the VF's number in
    /// the run, for names).
    pub(crate) fn open(ns: &Netns, vf: &str, kind: VfBackend, n: usize) -> Result<Port> {
        let fd = match kind {
            VfBackend::Packet => topology::vf_backend_socket(ns, vf)?,
            VfBackend::Macvtap => topology::open_macvtap(ns, vf, &format!("mvt{n}"))?.file,
            VfBackend::AfXdp => {
                let (redirect, be) = topology::xdp_port(ns, vf, XSK_RING, |x, c| {
                    AfXdp::new(x, c).context("AF_XDP backend")
                })?;
                return Ok(Port {
                    kind,
                    src: Source::Xsk(Box::new(be)),
                    keep: Keep::Xdp(redirect),
                });
            }
        };
        let keep = Keep::Fd(fd.try_clone().context("dup VF fd")?);
        Ok(Port {
            kind,
            src: Source::Fd(fd),
            keep,
        })
    }

    /// Splits into what the device takes and what the run keeps.
    pub(crate) fn split(self) -> ((VfBackend, Source), Keep) {
        ((self.kind, self.src), self.keep)
    }
}

/// The worker's backend on a VF port, of its kind.
pub(crate) fn backend(
    (kind, src): (VfBackend, Source),
    mem: &Arc<GuestMemory>,
    batch: usize,
    features: Features,
) -> Result<Box<dyn Backend>> {
    Ok(match (kind, src) {
        (VfBackend::Packet, Source::Fd(fd)) => {
            Box::new(packet_backend(fd, mem.clone(), batch).context("packet backend")?)
        }
        (VfBackend::Macvtap, Source::Fd(fd)) => {
            Box::new(tap_backend(fd, mem.clone(), batch, features).context("macvtap backend")?)
        }
        (VfBackend::AfXdp, Source::Xsk(be)) => be,
        (kind, _) => bail!(
            "{} backend built from the wrong kind of VF port",
            kind.name()
        ),
    })
}

/// AF_XDP ring entries (the UMEM has four rings' worth of chunks); the `xdp_rx` ceiling's
/// socket has the same.
pub(crate) const XSK_RING: u32 = 2048;

/// Starts the vhost worker on a VF with the backend of its kind.
fn start(port: (VfBackend, Source), spec: DeviceSpec, wcfg: WorkerConfig) -> Result<Device> {
    let be = backend(port, &spec.mem, wcfg.batch, spec.features)?;
    Ok(worker::spawn(spec, vec![be], wcfg)?)
}

/// The RX ceiling's port of a VF backend: the same socket.
fn rx_port(kind: VfBackend) -> RxPort {
    match kind {
        VfBackend::Packet => RxPort::Packet,
        VfBackend::Macvtap => RxPort::Macvtap,
        VfBackend::AfXdp => RxPort::Xdp,
    }
}

/// VFs a workload needs: one per guest device.
fn vfs_for(workload: TrafficWorkload) -> usize {
    match workload {
        TrafficWorkload::Rr => 2,
        TrafficWorkload::Tx | TrafficWorkload::Rx | TrafficWorkload::Echo => 1,
    }
}

/// Frames the VF's port could not take towards the guest, and frames left in it unread, as
/// drops named `<full>` and `<left>`: a packet socket's receive-queue drops, a macvtap's (its
/// interface's `tx_dropped`: frames it could not queue to the fd), or an AF_XDP socket's
/// (the kernel's RX drops and RX-ring-full count, from the backend's counters).
fn port_drops(
    o: &mut RunOutcome,
    ns: &Netns,
    keep: &Keep,
    kind: VfBackend,
    n: usize,
    (full, left): (&str, &str),
) -> Result<()> {
    let stat = |name: &str| {
        o.worker
            .backend_stats
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, v)| *v)
    };
    match (kind, keep) {
        (VfBackend::Packet, Keep::Fd(fd)) => {
            let full_n = topology::packet_socket_drops(fd).context("PACKET_STATISTICS")?;
            far::add_drops(o, left, far::drain(fd, 0));
            far::add_drops(o, full, full_n);
        }
        (VfBackend::Macvtap, Keep::Fd(fd)) => {
            let full_n = topology::link_stats(ns, &format!("mvt{n}"))?.tx_dropped;
            far::add_drops(o, left, far::drain(fd, topology::TAP_VNET_HDR_LEN));
            far::add_drops(o, full, full_n);
        }
        (VfBackend::AfXdp, Keep::Xdp(_)) => {
            let full_n = stat("xdp_k_rx_dropped") + stat("xdp_k_rx_ring_full");
            far::add_drops(o, full, full_n);
        }
        (kind, _) => bail!("{} port kept the wrong kind of handle", kind.name()),
    }
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

    /// [`Mode::ceiling_on`] of the backend a run uses when it names none.
    fn ceiling(&self, workload: Workload, size: u32) -> Option<Ceiling> {
        self.ceiling_on(workload, size, None)
    }

    /// Each backend against its own kind of socket with nothing around it. TX: the AF_XDP
    /// socket's batched TX; the packet socket and macvtap each written either way (`write(2)`
    /// or io_uring), whichever was faster in that repeat (their backend picks the cheaper of
    /// the two as it runs). RX: the same socket receiving what
    /// the rx workload's injector sends into the wire end, with no engine (`xdp_rx_N`,
    /// `packet_read_N`, `macvtap_read_N`).
    fn ceiling_on(&self, workload: Workload, size: u32, vf: Option<VfBackend>) -> Option<Ceiling> {
        let kind = vf.unwrap_or(FALLBACK_BACKEND);
        match (workload, kind) {
            (Workload::Rr, _) => Some(Ceiling::BusyPollWakeRtt),
            (Workload::Tx, VfBackend::Packet) => Ceiling::packet_best(size),
            (Workload::Tx, VfBackend::AfXdp) => Ceiling::xdp_tx(size),
            (Workload::Tx, VfBackend::Macvtap) => Ceiling::macvtap_best(size),
            (Workload::Rx, kind) => Ceiling::rx(rx_port(kind), size),
        }
    }

    fn takes_vf_backend(&self) -> bool {
        true
    }

    fn default_vf_backend(&self, host: &Privileges) -> Option<VfBackend> {
        Some(default_backend(host))
    }

    /// `rr` runs two guests and two devices, as the tap modes do.
    fn oversubscribed(&self, workload: Workload, polling: bool, cores: usize) -> Option<String> {
        super::tap::oversubscribed(workload, polling, cores)
    }

    fn lockstep_backend(&self, _cfg: &PairConfig) -> Result<Box<dyn Backend>, String> {
        Err("its backend is a socket on a VF: every frame goes through the kernel".into())
    }

    fn run(&self, cfg: &PairConfig) -> Result<RunOutcome> {
        let kind = cfg.vf.backend.unwrap_or(FALLBACK_BACKEND);
        let ns = Netns::create().context("network namespace")?;
        // The pool's size is fixed when it is made (`--vfs`); a run that needs more VFs than
        // it has fails on `take`, naming the pool and its size.
        let size = cfg.vf.vfs.map_or(vfs_for(cfg.workload), |n| n as usize);
        let pool = VfPool::create(&ns, &cfg.vf.pf, size)?;
        let vf0 = pool.take()?;
        let (port0, keep0) = Port::open(&ns, vf0.name(), kind, 0)?.split();
        let mut out = match cfg.workload {
            TrafficWorkload::Tx | TrafficWorkload::Echo => {
                let before = topology::link_stats(&ns, vf0.wire())?;
                let o = pair::run(cfg, |spec, w| start(port0, spec, w))?;
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
                    far::run_injected(&ns, vf0.wire(), cfg, |spec, w| start(port0, spec, w))?;
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
                let (port1, keep1) = Port::open(&ns, vf1.name(), kind, 1)?.split();
                let mut o = far::run_with_echo(
                    cfg,
                    |spec, w| start(port0, spec, w),
                    |spec, w| start(port1, spec, w),
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
                port_drops(
                    &mut o,
                    &ns,
                    &keep1,
                    kind,
                    1,
                    ("far_vf_full", "left_in_far_vf"),
                )?;
                o
            }
        };
        port_drops(&mut out, &ns, &keep0, kind, 0, ("vf_full", "left_in_vf"))?;
        out.backend = Some(match &keep0 {
            // Where the redirect program ran (in the driver, or on the skb) is part of which
            // backend ran.
            Keep::Xdp(r) => match r.mode {
                topology::XdpMode::Native => "af-xdp (native XDP)",
                topology::XdpMode::Generic => "af-xdp (generic XDP)",
            },
            Keep::Fd(_) => kind.name(),
        });
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

    use super::*;

    fn can_run(test: &str) -> bool {
        let p = topology::probe();
        if !p.vfs {
            crate::testing::skip(test, &p.summary());
        }
        p.vfs
    }

    fn cfg(workload: TrafficWorkload) -> PairConfig {
        pair::moderate_test_config(workload)
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
        assert_eq!(
            o.dropped(),
            0,
            "{w:?}: {:?}; backend: {:?}",
            o.drops_by_reason(),
            o.worker.backend_stats
        );
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

    /// tx, rx and rr on `backend`, each exactly once; the backends each run named.
    fn every_workload_on(backend: VfBackend) -> Vec<&'static str> {
        [
            TrafficWorkload::Tx,
            TrafficWorkload::Rx,
            TrafficWorkload::Rr,
        ]
        .into_iter()
        .map(|w| {
            let mut c = cfg(w);
            c.vf.backend = Some(backend);
            if w == TrafficWorkload::Rr {
                c.rate_pps = Some(1000);
            }
            let o = DirectVf.run(&c).expect("run");
            exactly_once(&o, w, 100);
            o.backend.unwrap_or("none")
        })
        .collect()
    }

    /// The same three workloads through macvtap in passthrough mode on the VF.
    #[test]
    fn the_macvtap_backend_delivers_exactly_once() {
        if !can_run("the_macvtap_backend_delivers_exactly_once") {
            return;
        }
        assert_eq!(every_workload_on(VfBackend::Macvtap), ["macvtap"; 3]);
    }

    /// A pool's size is fixed: a run that needs more VFs than `--vfs` gives fails naming the
    /// pool and its size; a named PF is used as the pool's name.
    #[test]
    fn the_pool_size_and_name_are_the_runs() {
        if !can_run("the_pool_size_and_name_are_the_runs") {
            return;
        }
        let mut c = cfg(TrafficWorkload::Rr);
        c.vf.vfs = Some(1);
        c.vf.pf = "pfx".into();
        let e = DirectVf.run(&c).expect_err("rr needs two VFs");
        let msg = format!("{e:#}");
        assert!(msg.contains("pfx") && msg.contains('1'), "{msg}");
        let mut c = cfg(TrafficWorkload::Tx);
        c.vf.vfs = Some(3);
        c.vf.pf = "pfy".into();
        let o = DirectVf.run(&c).expect("run");
        exactly_once(&o, TrafficWorkload::Tx, 300);
        assert_eq!(o.backend, Some("packet"));
    }

    /// The same three workloads through an AF_XDP socket on the VF (the redirect program in
    /// the driver where veth allows it).
    #[test]
    fn the_af_xdp_backend_delivers_exactly_once() {
        if !can_run("the_af_xdp_backend_delivers_exactly_once") {
            return;
        }
        for b in every_workload_on(VfBackend::AfXdp) {
            assert!(b.starts_with("af-xdp"), "{b}");
        }
    }

    #[test]
    fn ceilings_and_availability() {
        let d = DirectVf;
        assert_eq!(
            d.ceiling(Workload::Tx, 64),
            Some(Ceiling::PacketBest { size: 64 })
        );
        assert_eq!(d.ceiling(Workload::Rr, 64), Some(Ceiling::BusyPollWakeRtt));
        assert_eq!(d.ceiling(Workload::Tx, 9000), None);
        assert_eq!(d.ceiling(Workload::Rx, 9000), None);
        // Each backend against its own socket, rx as well as tx.
        let on = |w, b| d.ceiling_on(w, 1500, Some(b)).map(|c| c.name());
        let names = [
            (Workload::Tx, VfBackend::Packet, "packet_best_1500"),
            (Workload::Tx, VfBackend::AfXdp, "xdp_tx_1500"),
            (Workload::Tx, VfBackend::Macvtap, "macvtap_best_1500"),
            (Workload::Rx, VfBackend::Packet, "packet_read_1500"),
            (Workload::Rx, VfBackend::AfXdp, "xdp_rx_1500"),
            (Workload::Rx, VfBackend::Macvtap, "macvtap_read_1500"),
        ];
        for (w, b, name) in names {
            assert_eq!(on(w, b).as_deref(), Some(name), "{w:?} {b:?}");
        }
        assert_eq!(d.ceiling(Workload::Rx, 64), Ceiling::rx(RxPort::Packet, 64));
        assert!(d.oversubscribed(Workload::Rr, true, 2).is_some());
        assert!(d.oversubscribed(Workload::Tx, true, 2).is_none());
        let no = Privileges {
            reasons: vec!["not root".into()],
            ..Privileges::default()
        };
        assert_eq!(d.unavailable(&no).as_deref(), Some("not root"));
    }
}
