//! The AF_XDP ceiling `xdp_tx_<size>`: the AF_XDP backend's TX work with no engine around it,
//! on the same kind of socket (copy mode, bound to queue 0 of the VF end of a one-VF pool in a
//! fresh namespace, rings of 1024, 2 KiB chunks), over the same path (the VF's wire end is a
//! port of the PF's switch, as in a `direct-vf` run) and the same batch (64): per batch, reap the
//! completion ring, copy each test frame (EtherType 0x88b5, sequence-stamped) into a free
//! UMEM chunk, write its TX descriptor, publish the batch with one Release store, kick with
//! one `sendto` (more only if the kernel pushes back). One thread, `limit-xdp`, pinned to the
//! worker's core. Frames are counted by the wire end's receive counter: every frame the
//! kernel consumed must show there, and the rate is what it received.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use engine::backend::af_xdp::sys::{Chunk, Xsk};

use super::join;
use crate::pin::{spawn_pinned, worker_core};
use crate::topology::{self, Netns, VfPool};

/// Frames per batch (`VHOST_NET_BATCH`).
const BATCH: usize = 64;
/// Entries per ring (the backend's default).
const RING: u32 = 1024;
/// The PF of the ceiling's one-VF pool (inside its own namespace).
const LIMIT_PF: &str = "vhbxpf";

/// `repeat` samples (Mpps) of `size`-byte frames sent for `duration` each.
pub(super) fn measure(
    name: &str,
    size: usize,
    duration: Duration,
    repeat: usize,
) -> anyhow::Result<Vec<f64>> {
    ensure!(
        (vring::frame::MIN_FRAME..=1514).contains(&size),
        "{name}: frame size {size} outside {}..=1514",
        vring::frame::MIN_FRAME
    );
    let p = topology::probe();
    ensure!(p.can_run, "limit {name} needs root: {}", p.summary());
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    let pool = VfPool::create(&ns, LIMIT_PF, 1).with_context(|| format!("{name}: VF pool"))?;
    let vf = pool.take()?;
    let wire = vf.wire().to_string();
    // One socket for every repeat: a closed socket's queue is released by deferred kernel
    // work, and a new one bound right away would find the queue busy. Each repeat ends with
    // every chunk back (checked), so each starts alike.
    let (mut xsk, mut chunks) = topology::open_xsk(&ns, vf.name(), 0, RING)?;
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let before = topology::link_stats(&ns, &wire)?;
        let h = spawn_pinned("limit-xdp".into(), worker_core(), move || {
            tx_once(xsk, chunks, size, duration)
        })
        .context("spawning limit-xdp")?;
        let (frames, secs);
        (xsk, chunks, frames, secs) = join(h, "limit-xdp")?;
        let after = topology::link_stats(&ns, &wire)?;
        // (Its `rx_dropped` counts the same frames again: the stack has no handler for the
        // test EtherType and drops each after the veth delivered it.)
        let received = after.rx_packets - before.rx_packets;
        ensure!(
            received == frames,
            "{name}: sent {frames} frames, the wire end received {received}"
        );
        ensure!(secs > 0.0, "{name}: zero elapsed time");
        samples.push(received as f64 / secs / 1e6);
    }
    Ok(samples)
}

/// What a repeat gives back: the socket and its chunks, frames the kernel consumed, seconds.
type Repeat = (Xsk, Vec<Chunk>, u64, f64);

/// Sends batches until `duration` has passed.
fn tx_once(
    mut xsk: Xsk,
    mut free: Vec<Chunk>,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Repeat> {
    let mut frame = vec![0u8; size];
    vring::frame::fill(&mut frame, 0, 0);
    let total = free.len();
    let mut bad = 0u64;
    let mut seq = 0u64;
    let t0 = Instant::now();
    let end = t0 + duration;
    loop {
        while let Some(c) = xsk.comp_take(&mut bad) {
            free.push(c);
        }
        xsk.comp_release();
        ensure!(bad == 0, "{bad} completions outside the UMEM");
        let n = BATCH
            .min(free.len())
            .min(xsk.tx_free(BATCH as u32) as usize);
        for _ in 0..n {
            let Some(mut c) = free.pop() else { break };
            vring::frame::stamp(&mut frame, seq, 0);
            xsk.chunk_mut(&mut c)[..size].copy_from_slice(&frame);
            if let Err(c) = xsk.tx_put(c, size as u32) {
                free.push(c);
                break;
            }
            seq += 1;
        }
        xsk.tx_publish();
        let mut tries = 0;
        while xsk.tx_outstanding() > 0 {
            match xsk.kick() {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) => {}
                Err(e) => bail!("sendto kick: {e}"),
            }
            tries += 1;
            ensure!(tries < 1000, "the kernel stopped taking TX descriptors");
        }
        if Instant::now() >= end {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // Every chunk comes back (copy mode completes each frame as it is sent).
    while let Some(c) = xsk.comp_take(&mut bad) {
        free.push(c);
    }
    xsk.comp_release();
    ensure!(
        free.len() == total,
        "{} of {total} chunks came back",
        free.len()
    );
    Ok((xsk, free, seq, secs))
}
