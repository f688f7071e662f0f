//! `vhostbench serve`: the engine as a vhost-user net backend on a Unix socket, for any
//! vhost-user frontend (QEMU's `-netdev vhost-user`, DPDK's virtio-user PMD, or `vhostbench
//! run --modes vhost-user`). One frontend at a time; one that disconnects may come back.
//!
//! Backends:
//! - `null`: no kernel I/O; TX frames are taken and counted (`--null sink`), RX frames are
//!   made up (`--null source`), or TX frames are sent back as RX (`--null reflect`);
//! - `tap`: a tap on bridge `br0` with a veth uplink, in a private namespace (the tap modes'
//!   topology): frames the guest sends end at the uplink's wire end.
//! - `vf`: a VF taken from a pool (`--pf`, `--vfs`) in a private namespace, reached the way
//!   `--vf-backend` says (the direct-vf mode's backends; default the fastest this host can
//!   open): frames the guest sends leave the VF and arrive at its wire end, a port of the
//!   PF's switch; frames sent into the wire end come out of the VF to the guest. The VF's
//!   socket is opened afresh for each device a frontend starts (a frontend that comes back
//!   gets a new one on the same VF); a macvtap is made once and shared.
//!
//! It runs until SIGINT/SIGTERM (or `--duration-ms`), then prints what it served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use engine::backend::null::{NullBackend, NullMode};
use engine::backend::tap::tap_backend;
use engine::backend::Backend;
use engine::vhost_user::{NetServer, Server};
use engine::worker::WorkerConfig;

use crate::modes::direct_vf::{self, Keep, Port, Source};
use crate::topology::{self, Netns, VfBackend, VfPool};

/// What the served device's worker moves frames to and from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServeBackend {
    /// No kernel I/O (see `--null`).
    Null,
    /// A tap on a bridge with an uplink, in a private namespace.
    Tap,
    /// A VF from a pool (see `--pf`, `--vfs`, `--vf-backend`), in a private namespace.
    Vf,
}

/// What the null backend does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NullRole {
    /// Takes TX frames and counts them.
    Sink,
    /// Produces RX frames of `--frame-len` bytes as fast as the guest takes them.
    Source,
    /// Sends TX frames back as RX.
    Reflect,
}

/// Options of `vhostbench serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// The vhost-user socket to listen on (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The device's backend.
    #[arg(long, value_enum, default_value_t = ServeBackend::Null)]
    pub backend: ServeBackend,
    /// With `--backend null`: what it does.
    #[arg(long = "null", value_enum, default_value_t = NullRole::Sink)]
    pub null_role: NullRole,
    /// With `--backend vf`: how the worker reaches the VF (default: AF_XDP where the host can
    /// open AF_XDP sockets, else the packet socket).
    #[arg(long, value_enum)]
    pub vf_backend: Option<VfBackend>,
    /// With `--backend vf`: the physical function whose pool the VF comes from.
    #[arg(long, default_value = "pf0")]
    pub pf: String,
    /// With `--backend vf`: the pool's VF count, fixed when it is made.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub vfs: u32,
    /// Frame length of `--null source` frames (Ethernet header included).
    #[arg(long, default_value_t = 64)]
    pub frame_len: usize,
    /// Chains per backend submission (`VHOST_NET_BATCH`, at most 64).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub batch: u64,
    /// Worker busy-poll window (µs); 0: notifications only.
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Core to pin the worker to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Stop after this long (ms); default: until SIGINT/SIGTERM.
    #[arg(long)]
    pub duration_ms: Option<u64>,
}

/// Runs `vhostbench serve`.
pub fn main(args: ServeArgs) -> Result<()> {
    let ns;
    let vf_ns: Arc<Netns>;
    let pool: VfPool<'_>;
    let _vf;
    let factory: engine::vhost_user::BackendFactory = match args.backend {
        ServeBackend::Null => {
            let mode = match args.null_role {
                NullRole::Sink => NullMode::Sink,
                NullRole::Source => NullMode::Source {
                    frame_len: args.frame_len,
                },
                NullRole::Reflect => NullMode::Reflect { capacity: 1024 },
            };
            println!("serve: null backend ({:?})", args.null_role);
            Box::new(move |_, _, pairs| {
                Ok((0..pairs)
                    .map(|_| Box::new(NullBackend::new(mode, false)) as Box<dyn Backend>)
                    .collect())
            })
        }
        ServeBackend::Tap => {
            let p = topology::probe();
            anyhow::ensure!(p.can_run, "--backend tap: {}", p.summary());
            ns = Netns::create().context("network namespace")?;
            let tap = topology::open_tap(&ns, "tap0", 0)?;
            topology::bridge_with_uplink(&ns, "br0", &["tap0"])?;
            println!(
                "serve: tap backend: tap0 on br0 with uplink {} in namespace {}",
                topology::UPLINK_WIRE,
                ns.name()
            );
            tap_factory(tap.file, args.batch as usize)
        }
        ServeBackend::Vf => {
            let p = topology::probe();
            anyhow::ensure!(p.can_run, "--backend vf: {}", p.summary());
            let kind = args
                .vf_backend
                .unwrap_or_else(|| direct_vf::default_backend(&p));
            vf_ns = Arc::new(Netns::create().context("network namespace")?);
            pool = VfPool::create(&vf_ns, &args.pf, args.vfs as usize)?;
            let vf = pool.take()?;
            println!(
                "serve: VF backend ({}): {} of pool {} ({} VFs), wire end {}, in namespace {}",
                kind.name(),
                vf.name(),
                pool.pf(),
                pool.size(),
                vf.wire(),
                vf_ns.name()
            );
            let f = vf_factory(
                vf_ns.clone(),
                vf.name().to_owned(),
                kind,
                args.batch as usize,
            )?;
            _vf = vf;
            f
        }
    };
    let cfg = WorkerConfig {
        name: "vu".into(),
        core: args.core,
        batch: args.batch as usize,
        busy_poll_us: args.busy_poll_us,
        ..WorkerConfig::default()
    };
    let server = Server::start(&args.socket, NetServer::new(1, factory, cfg))
        .with_context(|| format!("listening on {}", args.socket.display()))?;
    println!("serve: listening on {}", args.socket.display());
    let until = args
        .duration_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut last = engine::vhost_user::Served::default();
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let now = server.state().served();
            if now != last {
                let secs = last_print.elapsed().as_secs_f64();
                println!(
                    "serve: tx {} rx {} drops {} ({:.3} Mpps tx, {:.3} Mpps rx)",
                    now.tx_packets,
                    now.rx_packets,
                    now.drops,
                    (now.tx_packets - last.tx_packets) as f64 / secs / 1e6,
                    (now.rx_packets - last.rx_packets) as f64 / secs / 1e6,
                );
            }
            last = now;
            last_print = Instant::now();
        }
    }
    let s = server.state();
    let total = s.served();
    println!(
        "serve: tx {} rx {} drops {} in total",
        total.tx_packets, total.rx_packets, total.drops
    );
    println!(
        "serve: {} connections, {} device starts, {} requests refused{}",
        s.stats.connections,
        s.stats.starts,
        s.stats.refused,
        s.stats
            .last_refusal
            .as_ref()
            .map(|r| format!(" (last: {r})"))
            .unwrap_or_default()
    );
    drop(s);
    server.shutdown().context("stopping the server")?;
    Ok(())
}

/// The backend factory of `--backend tap`: each device a frontend starts gets its own handle
/// of the tap.
pub(crate) fn tap_factory(tap: std::fs::File, batch: usize) -> engine::vhost_user::BackendFactory {
    Box::new(move |mem: &Arc<_>, features, pairs| {
        if pairs != 1 {
            return Err(std::io::Error::other(
                "the tap backend serves one queue pair",
            ));
        }
        let be = tap_backend(tap.try_clone()?, mem.clone(), batch, features)?;
        Ok(vec![Box::new(be) as Box<dyn Backend>])
    })
}

/// The backend factory of `--backend vf`: on each device start, the VF end `vf` in `ns`
/// reached as `kind` says. A packet or AF_XDP socket is opened for each device (the XDP
/// program of the last one detached first: one socket is registered at a time); a macvtap is
/// made once, each device getting its own handle of it.
pub(crate) fn vf_factory(
    ns: Arc<Netns>,
    vf: String,
    kind: VfBackend,
    batch: usize,
) -> Result<engine::vhost_user::BackendFactory> {
    let macvtap = match kind {
        VfBackend::Macvtap => match Port::open(&ns, &vf, kind, 0)?.split() {
            ((_, Source::Fd(fd)), _) => Some(fd),
            _ => anyhow::bail!("a macvtap port without a file"),
        },
        VfBackend::Packet | VfBackend::AfXdp => None,
    };
    // What the running device's port keeps alive (the XDP redirect program).
    let mut held: Option<Keep> = None;
    Ok(Box::new(move |mem: &Arc<_>, features, pairs| {
        if pairs != 1 {
            return Err(std::io::Error::other(
                "the VF backend serves one queue pair",
            ));
        }
        let port = match &macvtap {
            Some(fd) => (kind, Source::Fd(fd.try_clone()?)),
            None => {
                // The last device's port first: its XDP program is detached before another is
                // attached to the same VF.
                drop(held.take());
                let (port, keep) = open_when_free(&ns, &vf, kind)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?
                    .split();
                held.replace(keep);
                port
            }
        };
        let be = direct_vf::backend(port, mem, batch, features)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        Ok(vec![be])
    }))
}

/// Opens the VF's port, waiting up to a second while its queue is still bound: the last
/// device's AF_XDP socket is closed when that device stops, but the kernel lets go of it only
/// once the worker's io_uring, which polled it, has been torn down, asynchronously (`bind`
/// fails with `EBUSY` until then).
fn open_when_free(ns: &Netns, vf: &str, kind: VfBackend) -> Result<Port> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match Port::open(ns, vf, kind, 0) {
            Err(e) if Instant::now() < deadline && is_busy(&e) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY))
    })
}

#[cfg(test)]
mod tests {
    //! `serve --backend vf` with guest-sim as the frontend: frames cross the socket, the VF and
    //! reach the wire end exactly once, and a frontend that comes back gets a working backend
    //! again. They need root and a VF pool; without them they skip, saying why.

    use super::*;
    use crate::modes::vhost_user::VhostUser;
    use crate::modes::Mode;
    use crate::pair;
    use guest_sim::traffic::Workload;

    #[test]
    fn a_served_tap_takes_every_frame_across_its_bridge_for_each_frontend() {
        let p = topology::probe();
        if !p.can_run {
            crate::testing::skip(
                "a_served_tap_takes_every_frame_across_its_bridge_for_each_frontend",
                &p.summary(),
            );
            return;
        }
        let ns = Netns::create().expect("namespace");
        let tap = topology::open_tap(&ns, "tap0", 0).expect("tap");
        topology::bridge_with_uplink(&ns, "br0", &["tap0"]).expect("bridge");
        let path = std::env::temp_dir().join(format!("vhb-serve-{}-tap.sock", std::process::id()));
        let server = Server::start(
            &path,
            NetServer::new(1, tap_factory(tap.file, 64), WorkerConfig::default()),
        )
        .expect("server");
        let mut cfg = pair::moderate_test_config(Workload::Tx);
        cfg.socket = Some(path.clone());
        for round in 0..2 {
            let before = topology::link_stats(&ns, topology::UPLINK_WIRE).expect("stats");
            let o = VhostUser.run(&cfg).expect("run");
            let after = topology::link_stats(&ns, topology::UPLINK_WIRE).expect("stats");
            assert!(o.guest.error.is_none(), "{:?}", o.guest.error);
            let sent = o.guest.sent - o.guest.tx_unreturned;
            assert!(sent > 100, "round {round}: sent {sent}");
            // The bridge floods the guest's frames (to a MAC it has not learned) out of its
            // uplink: the wire end counts each once.
            assert_eq!(after.rx_packets - before.rx_packets, sent, "round {round}");
        }
        let st = server.state().stats.clone();
        assert_eq!((st.starts, st.refused), (2, 0), "{st:?}");
        server.shutdown().expect("shutdown");
    }

    #[test]
    fn a_served_vf_takes_every_frame_to_the_wire_for_each_frontend() {
        let p = topology::probe();
        if !p.vfs {
            crate::testing::skip(
                "a_served_vf_takes_every_frame_to_the_wire_for_each_frontend",
                &p.summary(),
            );
            return;
        }
        let mut kinds = vec![VfBackend::Packet, VfBackend::Macvtap];
        if p.af_xdp {
            kinds.push(VfBackend::AfXdp);
        } else {
            crate::testing::skip(
                "a_served_vf_takes_every_frame_to_the_wire_for_each_frontend (af-xdp)",
                "this host cannot open AF_XDP sockets",
            );
        }
        for kind in kinds {
            let ns = Arc::new(Netns::create().expect("namespace"));
            let pool = VfPool::create(&ns, "pfs", 1).expect("pool");
            let vf = pool.take().expect("vf");
            let factory = vf_factory(ns.clone(), vf.name().into(), kind, 64).expect("factory");
            let path = std::env::temp_dir().join(format!(
                "vhb-serve-{}-{}.sock",
                std::process::id(),
                kind.name()
            ));
            let server = Server::start(&path, NetServer::new(1, factory, WorkerConfig::default()))
                .expect("server");
            let mut cfg = pair::moderate_test_config(Workload::Tx);
            cfg.socket = Some(path.clone());
            for round in 0..2 {
                let before = topology::link_stats(&ns, vf.wire()).expect("stats");
                let o = VhostUser.run(&cfg).unwrap_or_else(|e| {
                    panic!("{kind:?}: {e:#}; server: {:?}", server.state().stats)
                });
                let after = topology::link_stats(&ns, vf.wire()).expect("stats");
                assert!(o.guest.error.is_none(), "{kind:?}: {:?}", o.guest.error);
                let sent = o.guest.sent - o.guest.tx_unreturned;
                assert!(sent > 100, "{kind:?} round {round}: sent {sent}");
                // The wire end counts what the VF sent it; the guest's frames and nothing else
                // (the namespace sends nothing of its own).
                assert_eq!(
                    after.rx_packets - before.rx_packets,
                    sent,
                    "{kind:?} round {round}"
                );
            }
            let st = server.state().stats.clone();
            assert_eq!((st.starts, st.refused), (2, 0), "{kind:?}: {st:?}");
            server.shutdown().expect("shutdown");
        }
    }
}
