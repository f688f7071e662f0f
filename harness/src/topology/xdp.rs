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
        check_ifname(ifname)?;
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
                match xdp_sys::xdp_link_create(&prog, ifindex, XDP_FLAGS_DRV_MODE) {
                    Ok(l) => Ok((l, XdpMode::Native, None)),
                    Err(native) => {
                        let l = xdp_sys::xdp_link_create(&prog, ifindex, XDP_FLAGS_SKB_MODE)
                            .with_context(|| {
                                format!("BPF_LINK_CREATE (native failed too: {native})")
                            })?;
                        Ok((l, XdpMode::Generic, Some(native.to_string())))
                    }
                }
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

/// An AF_XDP port on `ifname` queue 0: the redirect program attached and the socket
/// registered in its map. Keep the [`XdpRedirect`] for as long as RX should reach the socket.
pub fn xdp_port(
    ns: &Netns,
    ifname: &str,
    ring_size: u32,
) -> anyhow::Result<(XdpRedirect, Xsk, Vec<Chunk>)> {
    let (xsk, chunks) = open_xsk(ns, ifname, 0, ring_size)?;
    let redirect = XdpRedirect::attach(ns, ifname, 1)?;
    redirect.register(0, &xsk)?;
    Ok((redirect, xsk, chunks))
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

#[cfg(test)]
mod live {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    use crate::topology::{packet_socket_with, probe, wait_readable, PacketOptions};

    #[test]
    fn feasibility() {
        if !probe().can_run {
            eprintln!("skipping: {}", probe().summary());
            return;
        }
        let ns = Netns::create().expect("ns");
        veth_pair(&ns, "vf0", "wire0").expect("veth");
        let (redirect, mut xsk, mut chunks) = xdp_port(&ns, "vf0", 64).expect("port");
        eprintln!("mode {:?} {:?}", redirect.mode, redirect.native_error);
        let wire = packet_socket_with(
            &ns,
            "wire0",
            PacketOptions {
                vnet_hdr: false,
                nonblocking: true,
            },
        )
        .expect("pkt");
        // TX
        let mut c = chunks.pop().expect("chunk");
        let mut f = vec![0u8; 64];
        vring::frame::fill(&mut f, 5, 0);
        xsk.chunk_mut(&mut c)[..64].copy_from_slice(&f);
        xsk.tx_put(c, 64).expect("put");
        xsk.tx_publish();
        eprintln!("kick {:?}", xsk.kick());
        let mut buf = [0u8; 2048];
        assert!(wait_readable(&wire, Duration::from_secs(1)).expect("poll"));
        let n = (&wire).read(&mut buf).expect("read");
        assert_eq!(&buf[..n], &f[..]);
        // RX
        for c in chunks.drain(..64) {
            xsk.fill_put(c).expect("fill");
        }
        xsk.fill_publish();
        (&wire).write_all(&f).expect("inject");
        assert!(wait_readable(&xsk, Duration::from_secs(1)).expect("poll"));
        let d = xsk.rx_take().expect("rx").expect("ok");
        eprintln!("rx off {} len {}", d.1, d.2);
        assert_eq!(xsk.chunk_bytes(&d.0, d.1, d.2).expect("b"), &f[..]);
    }
}
