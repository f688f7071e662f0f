//! The raw VF ceilings: `packet_write_<size>` (one `write(2)` per bare test frame on the kind
//! of socket the `direct-vf` backend gets: `AF_PACKET`/`SOCK_RAW` bound to a VF end,
//! non-blocking, `PACKET_IGNORE_OUTGOING`, no virtio-net header) and `packet_uring_<size>`
//! (the same frames in io_uring batches of 64 `WRITE`s on a registered file). The frames
//! leave the VF and cross to its wire end, whose receive counter must count every one; the
//! PF's switch has no other port, so they end there. One thread, `limit-tap`, pinned to the
//! worker's core, running the tap ceilings' loops ([`super::tap`]) on the socket.

use std::time::Duration;

use anyhow::{ensure, Context};

use super::tap::{check_size, measure_on, Target, WriteOnce};
use crate::topology::{self, Netns, VfPool};

/// The PF of the VF ceilings' pool (inside their own namespace).
const LIMIT_PF: &str = "vhbpf";

/// `repeat` samples (Mpps) of `once` writing `size`-byte frames to a packet socket on a VF of
/// a one-VF pool in a fresh namespace, each checked against the wire end's receive counter.
pub(super) fn measure(
    name: &str,
    size: usize,
    duration: Duration,
    repeat: usize,
    once: WriteOnce,
) -> anyhow::Result<Vec<f64>> {
    check_size(name, size)?;
    let p = topology::probe();
    ensure!(p.vfs, "limit {name} needs a VF pool: {}", p.summary());
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    let pool = VfPool::create(&ns, LIMIT_PF, 1).with_context(|| format!("{name}: VF pool"))?;
    let vf = pool.take()?;
    let target = Target {
        ns: &ns,
        file: vf
            .backend_socket()
            .with_context(|| format!("{name}: socket"))?,
        hdr_len: 0,
        counter: vf.wire().to_string(),
    };
    measure_on(name, &target, size, duration, repeat, once)
}
