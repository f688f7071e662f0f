//! AF_XDP on a VF (a veth end): the privileged half of the set-up, done by the harness as
//! libvirt would. [`XdpRedirect::attach`] loads a five-instruction XDP program that redirects
//! each frame to the AF_XDP socket registered for its receive queue
//! (`bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS)`), and attaches it to the
//! interface as a BPF link, in native (driver) mode if the driver takes it, else in generic
//! (skb) mode, recording which. [`open_xsk`] opens the `AF_XDP` socket in the namespace and
//! hands it to the engine's [`Xsk`], which registers the UMEM, maps the rings and binds in
//! copy mode; [`XdpRedirect::register`] then puts the socket in the map.
//!
//! Nothing here outlives its namespace: the link fd detaches the program when closed, the map
//! and program go with their last fd, and deleting the namespace removes the interfaces (and
//! with them any attachment). The `bpf(2)` calls are in `xdp_sys`, each behind a safe function.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::Context;
use engine::backend::af_xdp::sys::{self as xsk_sys, Chunk, Xsk, XskConfig};

use super::sys;
use super::tap::check_ifname;
use super::xdp_sys::{self, Insn, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
use super::Netns;

/// How the program runs on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// On the skb, after the driver (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl XdpMode {
    /// `native` or `generic`.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// `bpf_redirect_map(&map, ctx->rx_queue_index, XDP_PASS)`, with the map's fd in the
/// `ld_imm64` (`BPF_PSEUDO_MAP_FD`): frames of a queue without a socket go up the stack.
fn redirect_program(map_fd: i32) -> [Insn; 6] {
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    const XDP_PASS: i32 = 2;
    const BPF_FUNC_REDIRECT_MAP: i32 = 51;
    let i = |code, dst: u8, src: u8, off, imm| Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    };
    [
        // r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
        i(0x61, 2, 1, 16, 0),
        // r1 = map (ld_imm64: two instructions)
        i(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        i(0, 0, 0, 0, 0),
        // r3 = XDP_PASS (the action when the slot is empty)
        i(0xb7, 3, 0, 0, XDP_PASS),
        // r0 = bpf_redirect_map(r1, r2, r3)
        i(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        // return r0
        i(0x95, 0, 0, 0, 0),
    ]
}

/// The redirect program attached to one interface, with its `XSKMAP`. Dropping it detaches
/// the program (the link closes) and frees the map.
#[derive(Debug)]
pub struct XdpRedirect {
    /// The interface it is attached to.
    pub ifname: String,
    /// Whether it runs in the driver or on the skb.
    pub mode: XdpMode,
    /// Why native mode was not taken, if it was not.
    pub native_error: Option<String>,
    link: OwnedFd,
    prog: OwnedFd,
    map: OwnedFd,
}

impl XdpRedirect {
    /// Loads the program with a map of `queues` slots and attaches it to `ifname` in `ns`:
    /// native mode first, generic if the driver refuses.
    pub fn attach(ns: &Netns, ifname: &str, queues: u32) -> anyhow::Result<XdpRedirect> {
        Self::attach_with(ns, ifname, queues, &[XdpMode::Native, XdpMode::Generic])
    }

    /// [`XdpRedirect::attach`] trying `modes` in order (the first that attaches is taken;
    /// `native_error` says why native was refused, if it was tried and refused).
    pub fn attach_with(
        ns: &Netns,
        ifname: &str,
        queues: u32,
        modes: &[XdpMode],
    ) -> anyhow::Result<XdpRedirect> {
        check_ifname(ifname)?;
        anyhow::ensure!(!modes.is_empty(), "no XDP mode to try");
        let map = xdp_sys::xskmap_create("vhb_xsks", queues).context("BPF_MAP_CREATE xskmap")?;
        let prog = xdp_sys::prog_load_xdp(
            "vhb_redirect",
            &redirect_program(std::os::fd::AsRawFd::as_raw_fd(&map)),
            "Dual MIT/GPL",
        )
        .context("BPF_PROG_LOAD xdp")?;
        let (link, mode, native_error) = ns
            .run_in(|| -> anyhow::Result<_> {
                let ctl = sys::control_socket().context("control socket")?;
                let ifindex = sys::if_index(&ctl, ifname).context("SIOCGIFINDEX")?;
                let mut errors = Vec::new();
                for &mode in modes {
                    let flags = match mode {
                        XdpMode::Native => XDP_FLAGS_DRV_MODE,
                        XdpMode::Generic => XDP_FLAGS_SKB_MODE,
                    };
                    match xdp_sys::xdp_link_create(&prog, ifindex, flags) {
                        Ok(l) => {
                            let native = errors
                                .iter()
                                .find(|(m, _)| *m == XdpMode::Native)
                                .map(|(_, e): &(XdpMode, String)| e.clone());
                            return Ok((l, mode, native));
                        }
                        Err(e) => errors.push((mode, e.to_string())),
                    }
                }
                anyhow::bail!("BPF_LINK_CREATE refused in every mode: {errors:?}")
            })?
            .with_context(|| format!("attaching XDP to {ifname} in {}", ns.name()))?;
        Ok(XdpRedirect {
            ifname: ifname.to_string(),
            mode,
            native_error,
            link,
            prog,
            map,
        })
    }

    /// Redirects receive queue `queue` to the socket `xsk` (bound to that queue).
    pub fn register(&self, queue: u32, xsk: &impl AsFd) -> anyhow::Result<()> {
        xdp_sys::xskmap_set(&self.map, queue, xsk)
            .with_context(|| format!("xsks_map[{queue}] on {}", self.ifname))
    }

    /// The link's, program's and map's fds (for tests that check they close).
    pub fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 3] {
        [self.link.as_fd(), self.prog.as_fd(), self.map.as_fd()]
    }
}

/// An AF_XDP socket in `ns` on `ifname`'s `queue`, in copy mode, with `ring_size`-entry rings
/// and a UMEM of `4 * ring_size` 2 KiB chunks: the engine's [`Xsk`] and all its chunks.
pub fn open_xsk(
    ns: &Netns,
    ifname: &str,
    queue: u32,
    ring_size: u32,
) -> anyhow::Result<(Xsk, Vec<Chunk>)> {
    check_ifname(ifname)?;
    ns.run_in(|| -> anyhow::Result<(Xsk, Vec<Chunk>)> {
        let ctl = sys::control_socket().context("control socket")?;
        let ifindex = sys::if_index(&ctl, ifname).context("SIOCGIFINDEX")?;
        let fd = xsk_sys::open_socket().context("socket(AF_XDP)")?;
        let cfg = XskConfig {
            ring_size,
            chunks: 4 * ring_size,
            ..XskConfig::new(ifindex, queue)
        };
        Xsk::new(fd, &cfg).with_context(|| format!("AF_XDP socket set-up {cfg:?}"))
    })?
    .with_context(|| format!("AF_XDP socket on {ifname} queue {queue} in {}", ns.name()))
}

/// An AF_XDP port on `ifname` queue 0: the socket opened, handed to `build` (which makes
/// its owner: the engine's backend, a ceiling's reader — and stocks the fill ring), and only
/// then the redirect program attached and the socket registered in its map, so no frame is
/// redirected to a socket with nothing on its fill ring (the kernel would drop it as
/// `rx_fill_empty`). Keep the [`XdpRedirect`] for as long as RX should reach the socket.
pub fn xdp_port<T: AsFd>(
    ns: &Netns,
    ifname: &str,
    ring_size: u32,
    build: impl FnOnce(Xsk, Vec<Chunk>) -> anyhow::Result<T>,
) -> anyhow::Result<(XdpRedirect, T)> {
    let (xsk, chunks) = open_xsk(ns, ifname, 0, ring_size)?;
    let port = build(xsk, chunks)?;
    let redirect = XdpRedirect::attach(ns, ifname, 1)?;
    redirect.register(0, &port)?;
    Ok((redirect, port))
}

/// A veth pair `a` — `b` in `ns`, both up (a VF end and its wire end, for tests and ceilings).
pub fn veth_pair(ns: &Netns, a: &str, b: &str) -> anyhow::Result<()> {
    check_ifname(a)?;
    check_ifname(b)?;
    ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    ns.ip(&["link", "set", "dev", a, "up"])?;
    ns.ip(&["link", "set", "dev", b, "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_redirect() {
        let p = redirect_program(7);
        assert_eq!(p.len(), 6);
        assert_eq!((p[0].code, p[0].regs, p[0].off), (0x61, 0x12, 16));
        assert_eq!((p[1].code, p[1].regs, p[1].imm), (0x18, 0x11, 7));
        assert_eq!(p[4].imm, 51);
        assert_eq!(p[5].code, 0x95);
    }
}

/// The id of the XDP program attached to `ifname` in `ns`, if one is (`ip -d link show`).
pub fn attached_prog_id(ns: &Netns, ifname: &str) -> anyhow::Result<Option<u32>> {
    check_ifname(ifname)?;
    let out = ns.ip(&["-d", "link", "show", "dev", ifname])?;
    Ok(out.split("prog/xdp").nth(1).and_then(|rest| {
        let rest = rest.split_once("id ")?.1;
        rest.split_whitespace().next()?.parse().ok()
    }))
}

/// Whether a BPF program with id `id` still exists.
pub fn prog_exists(id: u32) -> anyhow::Result<bool> {
    xdp_sys::prog_exists(id).context("BPF_PROG_GET_FD_BY_ID")
}

#[cfg(test)]
mod live {
    //! Live tests on a veth pair in a fresh namespace (root only; skipped with the reason
    //! otherwise): frames cross the AF_XDP backend exactly once each way with their bytes,
    //! driven by the worker and a guest; the UMEM's chunks are all accounted for after a run;
    //! the program, its link and the namespace are gone afterwards.

    use super::*;
    use std::collections::HashSet;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use engine::backend::af_xdp::AfXdp;
    use engine::worker;
    use guest_sim::traffic::Workload;
    use vring::frame;

    use crate::pair::{self, PairConfig, RunOutcome};
    use crate::topology::{packet_socket_with, probe, wait_readable, PacketOptions};

    const VF: &str = "vf0";
    const WIRE: &str = "wire0";

    fn can_run(test: &str) -> bool {
        let p = probe();
        if !p.can_run {
            crate::testing::skip(test, &p.summary());
        }
        p.can_run
    }

    fn cfg(workload: Workload) -> PairConfig {
        pair::moderate_test_config(workload)
    }

    /// A veth pair with an AF_XDP port on the VF end and the redirect program on it.
    fn port(ns: &Netns) -> (XdpRedirect, AfXdp) {
        veth_pair(ns, VF, WIRE).expect("veth pair");
        let (redirect, be) =
            xdp_port(ns, VF, 256, |x, c| Ok(AfXdp::new(x, c)?)).expect("AF_XDP port");
        eprintln!(
            "XDP on {VF}: {} mode (native refused: {:?})",
            redirect.mode.name(),
            redirect.native_error
        );
        (redirect, be)
    }

    fn stat(o: &RunOutcome, name: &str) -> u64 {
        o.worker
            .backend_stats
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn assert_umem_balanced(o: &RunOutcome) {
        let total = stat(o, "xdp_umem_total");
        let (free, in_flight, rx) = (
            stat(o, "xdp_umem_tx_free"),
            stat(o, "xdp_umem_tx_in_flight"),
            stat(o, "xdp_umem_rx_out") + stat(o, "xdp_umem_rx_parked"),
        );
        assert!(total > 0, "{:?}", o.worker.backend_stats);
        assert_eq!(
            free + in_flight + rx,
            total,
            "UMEM chunks leaked: {:?}",
            o.worker.backend_stats
        );
    }

    #[test]
    fn guest_frames_cross_the_vf_once_with_their_bytes() {
        if !can_run("guest_frames_cross_the_vf_once_with_their_bytes") {
            return;
        }
        let ns = Netns::create().expect("namespace");
        let (_redirect, backend) = port(&ns);
        let wire = packet_socket_with(
            &ns,
            WIRE,
            PacketOptions {
                vnet_hdr: false,
                nonblocking: true,
                ignore_outgoing: false,
            },
        )
        .expect("packet socket on the wire end");
        // Read the wire end while the guest sends, so its socket buffer never overflows.
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let (mut seqs, mut bad) = (Vec::new(), 0u64);
            let mut buf = vec![0u8; 2048];
            loop {
                let done = stop2.load(Ordering::Relaxed);
                while let Ok(n) = (&wire).read(&mut buf) {
                    match frame::seq(&buf[..n]) {
                        Some(s) if frame::verify(&buf[..n]) && n == 128 => seqs.push(s),
                        Some(_) => bad += 1,
                        None => {}
                    }
                }
                if done {
                    return (seqs, bad);
                }
                let _ = wait_readable(&wire, Duration::from_millis(20));
            }
        });
        let c = cfg(Workload::Tx);
        let o = pair::run(&c, move |spec, wcfg| {
            Ok(worker::spawn(spec, vec![Box::new(backend)], wcfg)?)
        })
        .expect("run");
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let (seqs, bad) = reader.join().expect("reader");
        eprintln!("backend: {:?}", o.worker.backend_stats);
        assert!(o.guest.error.is_none() && o.worker.fatal.is_none(), "{o:?}");
        assert!(o.guest.sent > 300, "sent {}", o.guest.sent);
        assert_eq!(o.dropped(), 0, "{:?}", o.drops_by_reason());
        assert_eq!(bad, 0, "frames with wrong bytes or length on the wire");
        let unique: HashSet<u64> = seqs.iter().copied().collect();
        assert_eq!(unique.len(), seqs.len(), "a frame arrived twice");
        assert_eq!(
            seqs.len() as u64,
            o.guest.sent,
            "the wire end got {} of {} frames",
            seqs.len(),
            o.guest.sent
        );
        assert_eq!(stat(&o, "xdp_kick_errors"), 0);
        assert_umem_balanced(&o);
    }

    #[test]
    fn injected_frames_reach_the_guest_once() {
        if !can_run("injected_frames_reach_the_guest_once") {
            return;
        }
        let ns = Netns::create().expect("namespace");
        let (_redirect, backend) = port(&ns);
        let wire = packet_socket_with(&ns, WIRE, PacketOptions::default()).expect("wire socket");
        let c = PairConfig {
            duration: Duration::from_millis(500),
            ..cfg(Workload::Rx)
        };
        let running = pair::start(&c, 0, move |spec, wcfg| {
            Ok(worker::spawn(spec, vec![Box::new(backend)], wcfg)?)
        })
        .expect("start");
        // 600 numbered frames at ~3000 per second, well inside the guest's run.
        const FRAMES: u64 = 600;
        let mut f = vec![0u8; c.frame_len];
        frame::fill(&mut f, 0, 0);
        let t0 = Instant::now();
        for seq in 0..FRAMES {
            while t0.elapsed() < Duration::from_micros(seq * 333) {
                std::thread::yield_now();
            }
            frame::stamp(&mut f, seq, 0);
            (&wire).write_all(&f).expect("inject");
        }
        let o = running.join().expect("run");
        assert!(o.guest.error.is_none() && o.worker.fatal.is_none(), "{o:?}");
        assert!(o.worker.queue_failures.is_empty(), "{o:?}");
        assert_eq!(o.guest.rx_corrupt, 0);
        assert_eq!(o.guest.rx_out_of_order, 0);
        assert_eq!(o.dropped(), 0, "{:?}", o.drops_by_reason());
        assert_eq!(
            o.guest.received, FRAMES,
            "guest received {} of {FRAMES}: {:?}",
            o.guest.received, o.worker.backend_stats
        );
        assert_eq!(stat(&o, "xdp_k_rx_dropped"), 0);
        assert_eq!(stat(&o, "xdp_rx_frames"), FRAMES);
        assert_umem_balanced(&o);
    }

    #[test]
    fn generic_mode_redirects_too() {
        if !can_run("generic_mode_redirects_too") {
            return;
        }
        let ns = Netns::create().expect("namespace");
        veth_pair(&ns, VF, WIRE).expect("veth pair");
        let (mut xsk, mut chunks) = open_xsk(&ns, VF, 0, 64).expect("socket");
        let redirect =
            XdpRedirect::attach_with(&ns, VF, 1, &[XdpMode::Generic]).expect("generic attach");
        assert_eq!(redirect.mode, XdpMode::Generic);
        redirect.register(0, &xsk).expect("register");
        for c in chunks.drain(..64) {
            xsk.fill_put(c).expect("fill");
        }
        xsk.fill_publish();
        let wire = packet_socket_with(&ns, WIRE, PacketOptions::default()).expect("wire socket");
        let mut f = vec![0u8; 64];
        frame::fill(&mut f, 9, 0);
        (&wire).write_all(&f).expect("inject");
        assert!(wait_readable(&xsk, Duration::from_secs(1)).expect("poll"));
        let (c, off, len) = xsk.rx_take().expect("a frame").expect("inside the UMEM");
        assert_eq!(xsk.chunk_bytes(&c, off, len), Some(&f[..]));
    }

    #[test]
    fn program_link_and_namespace_are_gone_afterwards() {
        if !can_run("program_link_and_namespace_are_gone_afterwards") {
            return;
        }
        let ns = Netns::create().expect("namespace");
        let name = ns.name().to_string();
        let (redirect, backend) = port(&ns);
        let id = attached_prog_id(&ns, VF)
            .expect("ip link")
            .expect("a program is attached");
        assert!(prog_exists(id).expect("lookup"));
        // One frame each way through the socket, so it has been used.
        let wire = packet_socket_with(&ns, WIRE, PacketOptions::default()).expect("wire socket");
        let mut f = vec![0u8; 64];
        frame::fill(&mut f, 1, 0);
        (&wire).write_all(&f).expect("inject");
        assert!(wait_readable(&backend.xsk(), Duration::from_secs(1)).expect("poll"));
        // Closing the link detaches the program; the map and program go with their fds.
        drop(redirect);
        assert_eq!(attached_prog_id(&ns, VF).expect("ip link"), None);
        drop(backend);
        drop(wire);
        drop(ns);
        assert!(!std::path::Path::new(crate::topology::NETNS_DIR)
            .join(&name)
            .exists());
        // Programs are freed after an RCU grace period.
        let deadline = Instant::now() + Duration::from_secs(5);
        while prog_exists(id).expect("lookup") {
            assert!(Instant::now() < deadline, "program {id} still exists");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
