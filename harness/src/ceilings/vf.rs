//! The raw VF TX ceilings, on the two fds a `direct-vf` backend writes frames to one at a time:
//!
//! - `packet_write_<size>` (one `write(2)` per bare test frame on the kind of socket the
//!   packet backend gets: `AF_PACKET`/`SOCK_RAW` bound to a VF end, non-blocking,
//!   `PACKET_IGNORE_OUTGOING`, no virtio-net header) and `packet_uring_<size>` (the same
//!   frames in io_uring batches of 64 `WRITE`s on a registered file);
//! - `macvtap_write_<size>` and `macvtap_uring_<size>`: the same two loops on macvtap in
//!   passthrough mode on the VF (the macvtap backend's fd: `/dev/tapN`, non-blocking, a
//!   12-byte zero virtio-net header in front of each frame), and `macvtap_best_<size>`, the
//!   better of the two measured back to back in each repeat (the backend itself sends each
//!   batch the way that has been cheaper per frame).
//!
//! The frames leave the VF and cross to its wire end, whose receive counter must count every
//! one; the PF's switch has no other port, so they end there. One thread, `limit-tap`, pinned
//! to the worker's core, running the tap ceilings' loops ([`super::tap`]) on the fd.

use std::time::Duration;

use anyhow::{ensure, Context};

use super::tap::{check_size, measure_best, Target, WriteOnce};
use crate::topology::{self, Netns, VfPool};

/// The PF of the VF ceilings' pool (inside their own namespace).
const LIMIT_PF: &str = "vhbpf";
/// The macvtap of the macvtap ceilings (inside their own namespace).
const LIMIT_MACVTAP: &str = "vhbmvt0";

/// Which fd on the VF the writes go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VfPort {
    /// The raw packet socket bound to the VF end ([`topology::Vf::backend_socket`]).
    Packet,
    /// Macvtap in passthrough mode on the VF end ([`topology::open_macvtap`]).
    Macvtap,
}

/// `repeat` samples (Mpps) of `size`-byte frames written to `port` on a VF of a one-VF pool in
/// a fresh namespace, each checked against the wire end's receive counter. Each repeat runs
/// every loop of `loops` for `duration`, one after the other, and keeps the best.
pub(super) fn measure(
    name: &str,
    port: VfPort,
    size: usize,
    duration: Duration,
    repeat: usize,
    loops: &[WriteOnce],
) -> anyhow::Result<Vec<f64>> {
    check_size(name, size)?;
    ensure!(!loops.is_empty(), "{name}: no write loop");
    let p = topology::probe();
    ensure!(p.vfs, "limit {name} needs a VF pool: {}", p.summary());
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    let pool = VfPool::create(&ns, LIMIT_PF, 1).with_context(|| format!("{name}: VF pool"))?;
    let vf = pool.take()?;
    let (file, hdr_len) = match port {
        VfPort::Packet => (
            vf.backend_socket()
                .with_context(|| format!("{name}: socket"))?,
            0,
        ),
        VfPort::Macvtap => (
            topology::open_macvtap(&ns, vf.name(), LIMIT_MACVTAP)
                .with_context(|| format!("{name}: macvtap"))?
                .file,
            topology::TAP_VNET_HDR_LEN,
        ),
    };
    let target = Target {
        ns: &ns,
        file,
        hdr_len,
        counter: vf.wire().to_string(),
    };
    measure_best(name, &target, size, duration, repeat, loops)
}
