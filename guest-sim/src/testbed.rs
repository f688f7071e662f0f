//! One device wired the way a VMM wires a guest driver to a vhost device: guest memory with a
//! queue pair's rings laid out in it (per pair: RX queue `2n`, TX queue `2n + 1`), an eventfd
//! per kick and per call with one handle for each side, and the driver's buffers carved out.
//! The device's half ([`Testbed::device`]) is what a vhost device is handed; the guest's half
//! ([`Testbed::guest`]) is what each vCPU's driver instance drives ([`crate::traffic::run`]).
//!
//! The harness builds every run on it, and the engine's own tests start its worker and its
//! emulated loop on it.

use std::fs::File;
use std::io;
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};
use vring::layout::QueueAddrs;
use vring::{GuestMemory, QueuePair, Virtqueue};

use crate::driver::DriverError;
use crate::mock::MockGuest;
use crate::traffic::{GuestPair, NicBuffers};

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct TestbedConfig {
    /// Guest memory, bytes, at guest-physical 0.
    pub guest_mem_bytes: u64,
    /// `None`: one memory region. `Some(n)`: the rings in a region of their own, then regions
    /// of `n` bytes back to back, one memfd each and mapped apart (`MockGuest::split`), with
    /// the driver's buffers carved across their boundaries: what a frontend with several
    /// memory backends hands a device. At most `vring::memory::MAX_REGIONS` regions.
    pub region_len: Option<u64>,
    /// Entries per queue.
    pub queue_size: u16,
    /// Queue pairs.
    pub pairs: usize,
    /// Frame length the buffers are sized for (Ethernet header included).
    pub frame_len: usize,
    /// Mergeable RX buffers (2 KiB each) rather than whole-frame ones.
    pub mrg_rxbuf: bool,
}

/// Testbed set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Guest memory, rings or buffers could not be laid out.
    #[error("guest memory")]
    Memory(#[from] DriverError),
    /// An eventfd could not be made.
    #[error("eventfd")]
    Eventfd(#[from] io::Error),
    /// A device needs at least one pair, and queues come in pairs.
    #[error("a device needs a whole, non-zero number of queue pairs")]
    NoPairs,
}

/// Both halves of one device's wiring.
#[derive(Debug)]
pub struct Testbed {
    /// Guest memory, shared by both sides.
    pub mem: Arc<GuestMemory>,
    /// The device's half: hand it to the device (`DeviceSpec::pairs`).
    pub device: Vec<QueuePair>,
    /// The guest's half, one per pair, with its buffers.
    pub guest: Vec<GuestPair>,
}

impl Testbed {
    /// Builds guest memory with `cfg.pairs` queue pairs and their buffers, and wires them.
    pub fn new(cfg: &TestbedConfig) -> Result<Testbed, TestbedError> {
        if cfg.pairs == 0 {
            return Err(TestbedError::NoPairs);
        }
        let sizes = vec![cfg.queue_size; 2 * cfg.pairs];
        let g = match cfg.region_len {
            None => MockGuest::new(cfg.guest_mem_bytes, &sizes),
            Some(n) => MockGuest::split(cfg.guest_mem_bytes, n, &sizes),
        };
        let mut g = g.map_err(DriverError::from)?;
        let queues = g.queues.clone();
        let bufs = queues
            .chunks_exact(2)
            .map(|q| NicBuffers::carve(&mut g, q[0], q[1], cfg.frame_len, cfg.mrg_rxbuf))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_guest(g.mem, &queues, bufs)
    }

    /// Wires queues already laid out in `mem` (in virtio-net order: RX 0, TX 0, RX 1, …),
    /// with `bufs[n]` the buffers of pair `n` (a test that plays a hostile guest passes
    /// empty ones and writes the rings itself).
    pub fn from_guest(
        mem: GuestMemory,
        queues: &[QueueAddrs],
        bufs: Vec<NicBuffers>,
    ) -> Result<Testbed, TestbedError> {
        let mem = Arc::new(mem);
        let (device, guest) = wire(queues)?;
        if guest.len() != bufs.len() {
            return Err(TestbedError::NoPairs);
        }
        let guest = guest
            .into_iter()
            .zip(bufs)
            .map(|(pair, bufs)| GuestPair {
                mem: mem.clone(),
                pair,
                bufs,
            })
            .collect();
        Ok(Testbed { mem, device, guest })
    }
}

/// The wiring of `queues` (virtio-net order): for each queue a kick and a call eventfd, with
/// one handle in the device's pairs and one in the guest's.
pub fn wire(queues: &[QueueAddrs]) -> Result<(Vec<QueuePair>, Vec<QueuePair>), TestbedError> {
    let mut guest_side = Vec::with_capacity(queues.len());
    let device = QueuePair::from_queues(queues, |addrs| -> io::Result<Virtqueue> {
        let (kick_dev, kick) = eventfd_pair()?;
        let (call_dev, call) = eventfd_pair()?;
        guest_side.push(Virtqueue {
            addrs,
            kick,
            call,
            base: 0,
        });
        Ok(Virtqueue {
            base: 0,
            addrs,
            kick: kick_dev,
            call: call_dev,
        })
    })
    .ok_or(TestbedError::NoPairs)??;
    if device.is_empty() {
        return Err(TestbedError::NoPairs);
    }
    let mut it = guest_side.into_iter();
    let mut guest = Vec::with_capacity(device.len());
    while let (Some(rx), Some(tx)) = (it.next(), it.next()) {
        guest.push(QueuePair { rx, tx });
    }
    Ok((device, guest))
}

/// An eventfd and a second handle to it: one for the device, one for the guest.
fn eventfd_pair() -> io::Result<(File, File)> {
    let a = File::from(eventfd(0, EventfdFlags::CLOEXEC)?);
    let b = a.try_clone()?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn cfg(pairs: usize) -> TestbedConfig {
        TestbedConfig {
            guest_mem_bytes: 4 << 20,
            region_len: None,
            queue_size: 64,
            pairs,
            frame_len: 64,
            mrg_rxbuf: true,
        }
    }

    #[test]
    fn every_pair_is_wired_both_ways() {
        let tb = Testbed::new(&cfg(3)).expect("testbed");
        assert_eq!((tb.device.len(), tb.guest.len()), (3, 3));
        for (d, g) in tb.device.iter().zip(&tb.guest) {
            assert_eq!(d.rx.addrs, g.pair.rx.addrs);
            assert_eq!(d.tx.addrs, g.pair.tx.addrs);
            assert_eq!(g.bufs.tx.len(), 64);
            // The guest's kick reaches the device's handle, the device's call the guest's.
            (&g.pair.tx.kick)
                .write_all(&1u64.to_ne_bytes())
                .expect("kick");
            let mut b = [0u8; 8];
            (&d.tx.kick).read_exact(&mut b).expect("read kick");
            assert_eq!(u64::from_ne_bytes(b), 1);
            (&d.rx.call).write_all(&2u64.to_ne_bytes()).expect("call");
            (&g.pair.rx.call).read_exact(&mut b).expect("read call");
            assert_eq!(u64::from_ne_bytes(b), 2);
        }
        // Pairs do not share rings.
        assert_ne!(tb.device[0].tx.addrs, tb.device[1].tx.addrs);
    }

    #[test]
    fn no_pairs_and_odd_queue_counts_are_refused() {
        assert!(matches!(Testbed::new(&cfg(0)), Err(TestbedError::NoPairs)));
        let g = MockGuest::new(1 << 20, &[16, 16, 16]).expect("guest");
        assert!(matches!(wire(&g.queues), Err(TestbedError::NoPairs)));
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let mut c = cfg(1);
        c.guest_mem_bytes = 64 << 10;
        c.frame_len = 9000;
        assert!(matches!(Testbed::new(&c), Err(TestbedError::Memory(_))));
    }
}
