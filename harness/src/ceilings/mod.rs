//! The machine's ceilings: what the same work costs with no device around it, measured the way
//! the engine is measured. `vhostbench limits` prints them; `run` measures each combination's own
//! ceiling in the same invocation and puts the combination against it. A ceiling is a
//! [`Ceiling`]; its measuring code is in the private modules `ring`, `sleep`, `rtt`, `tap`,
//! `vf`, `xdp` and `rx`.
//!
//! Every limit but the frame ones runs a producer (or requester) pinned to [`vcpu_core`](crate::pin::vcpu_core()) and a
//! consumer (or responder) pinned to [`worker_core`](crate::pin::worker_core()), threads named `limit-*`; the frame limits
//! (tap, VF, macvtap, AF_XDP) run one thread, `limit-tap`, `limit-xdp` or `limit-rx`, on
//! [`worker_core`](crate::pin::worker_core()) (the RX ones with the `rx` workload's unpinned injector as their source):
//!
//! - `spsc_handoff` (Mpps): a shared-memory single-producer single-consumer ring of 256 `u64`
//!   slots; both sides keep local copies of the indices and publish once per batch of up to
//!   64, like the virtqueue. The most a split ring could move with zero work per packet.
//! - `spsc_copy_64`, `spsc_copy_1500` (Mpps): the same ring, each slot naming a buffer in a
//!   shared 256-buffer pool (a memfd mapping, the same [`vring::GuestMemory`] copy path the
//!   engine uses). The producer copies the packet in, the consumer copies it out into a
//!   private sink: guest-fills-buffer plus vhost-copies-out, one copy on each side.
//! - `sleep_ring_<size>_q<queue>` (Mpps): the copy ring with `queue` slots (and buffers) whose
//!   sides sleep instead of spinning: a side with nothing to do arms a "wake me" flag, fences,
//!   re-checks, and blocks in `read` on its eventfd; the other side writes that eventfd only
//!   when it sees the flag armed (virtio's notification suppression without the event-index
//!   arithmetic). The yardstick of a device and driver that sleep when idle (no busy polling).
//! - `busy_poll_wake_rtt` / `_p99` (ns): A sets a flag, B busy-polls, sees it and answers
//!   on a second cache line, A busy-polls for the answer. Median and p99 of per-sample round
//!   trips (hdrhistogram), up to 100 000 samples per repeat, capped by the duration.
//! - `blocking_wake_rtt` / `_p99` (ns): the same with B blocked in `read` on an eventfd and A
//!   blocked in `read` on a second one: the cost of waking a sleeping thread, twice.
//! - `tap_write_64`, `tap_write_1500` (Mpps): one `write(2)` per frame of a 12-byte zero
//!   virtio-net header plus a 64- or 1500-byte test frame ([`vring::frame`], EtherType 0x88b5,
//!   not addressed to the namespace) into a tap in a fresh network namespace, whose stack
//!   consumes (drops) it. One thread pinned to [`worker_core`](crate::pin::worker_core()): the worker's side of
//!   `tap-vhost`/`emulated` tx with nothing else to do.
//! - `tap_uring_64`, `tap_uring_1500` (Mpps): the same frames written with io_uring, batches of
//!   64 `WRITE` SQEs on a registered (fixed) file and one `submit_and_wait` per batch, every
//!   completion checked to equal the frame length.
//! - `packet_write_64`, `packet_write_1500`, `packet_uring_64`, `packet_uring_1500` (Mpps): the
//!   same two loops with bare frames (no header) on the socket `direct-vf`'s backend gets (a
//!   raw `AF_PACKET` socket bound to a VF end of a one-VF pool), counted by the wire end's
//!   receive counter.
//! - `xdp_tx_64`, `xdp_tx_1500` (Mpps): the AF_XDP backend's TX with no engine: an AF_XDP
//!   socket in copy mode on the VF end of a one-VF pool (the path a `direct-vf` run's frames
//!   take: the wire end is a port of the PF's switch), batches of 64 frames copied into UMEM chunks,
//!   published with one producer store and one `sendto` kick, chunks reclaimed from the
//!   completion ring; counted by the wire end's receive counter (`xdp` module).
//! - `macvtap_write_<size>`, `macvtap_uring_<size>` (Mpps): the tap loops (12-byte zero header
//!   in front of each frame) on macvtap in passthrough mode on the VF end of a one-VF pool
//!   (the macvtap backend's fd), counted by the wire end's receive counter; `macvtap_best_<size>`
//!   runs both back to back in each repeat and keeps the faster (the backend sends each batch
//!   the way that has been cheaper per frame), the TX ceiling of `direct-vf` on macvtap.
//!   `tap_best_<size>` and `packet_best_<size>` do the same on the tap and on the packet
//!   socket: the TX ceilings of `tap-vhost` and of `direct-vf` on the packet socket, whose
//!   backend picks between the two ways the same way.
//! - `xdp_rx_<size>`, `packet_read_<size>`, `macvtap_read_<size>`, `tap_read_<size>` (Mpps;
//!   `_r<pps>` appended when paced): RX with no engine. The `rx` workload's injector
//!   (`modes::far`: a packet socket on the wire end, `sendmmsg` batches of 32, as fast
//!   as the kernel takes them or at a run's `--rate-pps`) sends test frames into the same
//!   wire end as the mode's `rx` run (a VF's wire end; the tap topology's uplink wire end), and
//!   one thread pinned to the worker's core receives them on the backend's kind of socket
//!   doing its per-frame work: an AF_XDP socket in copy mode with the redirect program
//!   attached (reap the RX ring, copy out of the chunk, refill, publish every 32), the VF's
//!   raw packet socket, macvtap, or the tap, one `read(2)` per frame; each frame lands in the
//!   next of 256 private buffers (the guest's) and is checked to be a test frame; with nothing
//!   ready it sleeps in `poll(2)`. The rate is test frames per second in a window opened a
//!   tenth of the duration after the first frame; what the injector sent in the same window is
//!   recorded beside it ([`LimitResult::offered`]), so a ceiling whose own path drops shows it
//!   (`rx` module).
//!
//! - `dpdk_pair_g2h_<size>`, `dpdk_pair_h2g_<size>` (Mpps): DPDK 22.11's own two halves,
//!   `dpdk-testpmd` with its virtio-user PMD (`txonly` for g2h, `rxonly` for h2g) on
//!   [`vcpu_core`](crate::pin::vcpu_core()) and `dpdk-testpmd` with its vhost PMD (the other
//!   mode) on [`worker_core`](crate::pin::worker_core()), one vhost-user socket, ring 256,
//!   bursts of 32 ([`crate::peers::dpdk::pair`]). Both processes are started once and every
//!   repeat is one window of the receiver's `RX-packets`; the sender's `TX-packets` must all
//!   arrive. Not in [`Ceiling::standard`] (it needs `dpdk-testpmd`, which `.ci/run`
//!   installs): asked for by name (`vhostbench limits --only dpdk_pair_g2h_64`).
//!
//! The tap, VF, macvtap, XDP and DPDK ceilings need root ([`crate::topology::probe`]):
//! [`Ceiling::needs_privileges`] says which; measuring one without it fails with the reason.
//! Each creates and deletes its own namespace.
//!
//! Every loop verifies what it transfers (sequence numbers, stamps in the packet bytes,
//! eventfd counts, write lengths and the tap's receive counter; the RX ones, that each frame
//! received is a test frame); a mismatch is an error. The
//! RTT samples include one pair of [`guest_sim::clock::now_ns`] reads (~20–40 ns with the TSC
//! clocksource), the clock the guest's `rr` round trips are timed with.

mod ring;
mod rtt;
mod rx;
mod sleep;
mod tap;
mod vf;
mod xdp;

use std::fmt;
use std::str::FromStr;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::peers::dpdk::pair as dpdk_pair;
pub use crate::peers::dpdk::pair::PairDirection;
pub use crate::results::{LimitResult, UNIT_MPPS, UNIT_NS};

/// Frame sizes a tap takes: an Ethernet header and test-frame stamp up to MTU 1500 + header.
const TAP_SIZES: std::ops::RangeInclusive<u32> = 30..=1514;
/// Packet sizes of the copy ring: two 8-byte stamps up to 64 KiB.
const COPY_SIZES: std::ops::RangeInclusive<u32> = 16..=65_536;
/// Slots of the sleeping ring: powers of two in this range (a virtqueue's sizes, from 16).
const SLEEP_QUEUES: std::ops::RangeInclusive<u16> = 16..=32_768;
/// Most bytes the sleeping ring's buffer pool (`queue` buffers of `size`) may take.
const SLEEP_POOL_MAX: u64 = 1 << 30;

/// One ceiling of this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ceiling {
    /// A shared-memory SPSC ring of `u64` slots, batches of 64, no work per packet (Mpps).
    SpscHandoff,
    /// The same ring with one copy of a `size`-byte packet in and one out (Mpps).
    SpscCopy {
        /// Packet bytes.
        size: u32,
    },
    /// The copy ring with `queue` slots, each side sleeping on an eventfd when idle and woken
    /// only when it asked to be (Mpps).
    SleepRing {
        /// Packet bytes.
        size: u32,
        /// Ring slots (a power of two).
        queue: u16,
    },
    /// Round trip between two busy-polling threads (ns; also a `_p99` row).
    BusyPollWakeRtt,
    /// Round trip between two threads blocked on eventfds (ns; also a `_p99` row).
    BlockingWakeRtt,
    /// One `write(2)` per frame (12-byte header + `size`-byte frame) into a tap (Mpps).
    TapWrite {
        /// Frame bytes.
        size: u32,
    },
    /// The same frames in io_uring batches of 64 on a fixed file (Mpps).
    TapUring {
        /// Frame bytes.
        size: u32,
    },
    /// One `write(2)` per bare `size`-byte frame on a raw packet socket bound to a VF, counted
    /// at the VF's wire end (Mpps): `direct-vf`'s kernel I/O with no device around it.
    PacketWrite {
        /// Frame bytes.
        size: u32,
    },
    /// The same frames in io_uring batches of 64 on a fixed file (Mpps).
    PacketUring {
        /// Frame bytes.
        size: u32,
    },
    /// `size`-byte frames sent from an AF_XDP socket on a veth end, batches of 64 (Mpps).
    XdpTx {
        /// Frame bytes.
        size: u32,
    },
    /// One `write(2)` per frame (12-byte header + `size`-byte frame) into macvtap in
    /// passthrough mode on a VF, counted at the VF's wire end (Mpps).
    MacvtapWrite {
        /// Frame bytes.
        size: u32,
    },
    /// The same frames in io_uring batches of 64 on a fixed file (Mpps).
    MacvtapUring {
        /// Frame bytes.
        size: u32,
    },
    /// The better of [`Ceiling::MacvtapWrite`] and [`Ceiling::MacvtapUring`], measured back to
    /// back on the same macvtap in each repeat (Mpps): the backend picks the cheaper of the
    /// two ways as it runs.
    MacvtapBest {
        /// Frame bytes.
        size: u32,
    },
    /// The better of [`Ceiling::TapWrite`] and [`Ceiling::TapUring`], measured back to back on
    /// the same tap in each repeat (Mpps): tap-vhost's backend picks the cheaper way as it
    /// runs, so it is put against the better of the two.
    TapBest {
        /// Frame bytes.
        size: u32,
    },
    /// The better of [`Ceiling::PacketWrite`] and [`Ceiling::PacketUring`], back to back on the
    /// same socket in each repeat (Mpps), for the same reason.
    PacketBest {
        /// Frame bytes.
        size: u32,
    },
    /// Frames injected at the far side and received with no engine, on one thread doing the
    /// backend's per-frame work (Mpps): see [`RxPort`].
    Rx {
        /// The socket and topology it receives on.
        port: RxPort,
        /// Frame bytes.
        size: u32,
        /// The injector's offered rate (`run --rate-pps`); `None`: as fast as it can.
        rate_pps: Option<u64>,
    },
    /// `size`-byte frames from testpmd's virtio-user PMD to testpmd's vhost PMD (`g2h`) or
    /// back (`h2g`), one core each (Mpps): DPDK with nothing of ours in the path.
    DpdkPair {
        /// Which way.
        direction: PairDirection,
        /// Frame bytes.
        size: u32,
    },
}

/// Where an RX ceiling ([`Ceiling::Rx`]) receives: the same socket, behind the same topology,
/// as the backend whose RX it bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxPort {
    /// `xdp_rx_<size>`: an AF_XDP socket (copy mode, the XDP redirect program attached) on the
    /// VF end of a one-VF pool, frames injected at the wire end.
    Xdp,
    /// `packet_read_<size>`: the raw packet socket on the VF end, one `read(2)` per frame.
    Packet,
    /// `macvtap_read_<size>`: macvtap in passthrough mode on the VF end, one `read(2)` per
    /// frame (12-byte header in front).
    Macvtap,
    /// `tap_read_<size>`: a tap on bridge `br0` with a veth uplink, frames injected at the
    /// uplink's wire end, one `read(2)` per frame (12-byte header in front).
    Tap,
}

impl RxPort {
    /// Every RX port, in the order `limits` reports them.
    pub const ALL: [RxPort; 4] = [RxPort::Xdp, RxPort::Packet, RxPort::Macvtap, RxPort::Tap];

    /// The ceiling's name before its size (`tap_read`).
    pub fn stem(self) -> &'static str {
        match self {
            RxPort::Xdp => "xdp_rx",
            RxPort::Packet => "packet_read",
            RxPort::Macvtap => "macvtap_read",
            RxPort::Tap => "tap_read",
        }
    }
}

/// `make(size)` if an Ethernet interface takes frames of `size` bytes (30..=1514): the
/// ceilings that write frames to a tap, a packet socket or an AF_XDP socket.
fn framed(size: u32, make: fn(u32) -> Ceiling) -> Option<Ceiling> {
    TAP_SIZES.contains(&size).then(|| make(size))
}

impl Ceiling {
    /// [`Ceiling::SpscCopy`] of `size`, if the ring takes that size (16..=65536).
    pub fn spsc_copy(size: u32) -> Option<Ceiling> {
        COPY_SIZES
            .contains(&size)
            .then_some(Ceiling::SpscCopy { size })
    }

    /// [`Ceiling::SleepRing`] of `size` and `queue`, if the ring takes them (`size` 16..=65536,
    /// `queue` a power of two in 16..=32768, at most 1 GiB of buffers).
    pub fn sleep_ring(size: u32, queue: u16) -> Option<Ceiling> {
        let pool = u64::from(size.next_multiple_of(64)) * u64::from(queue);
        (COPY_SIZES.contains(&size)
            && SLEEP_QUEUES.contains(&queue)
            && queue.is_power_of_two()
            && pool <= SLEEP_POOL_MAX)
            .then_some(Ceiling::SleepRing { size, queue })
    }

    /// [`Ceiling::TapWrite`] of `size`, if a tap takes that size (30..=1514).
    pub fn tap_write(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::TapWrite { size })
    }

    /// [`Ceiling::TapUring`] of `size`, if a tap takes that size (30..=1514).
    pub fn tap_uring(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::TapUring { size })
    }

    /// [`Ceiling::PacketWrite`] of `size`, if a VF takes that size (30..=1514).
    pub fn packet_write(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::PacketWrite { size })
    }

    /// [`Ceiling::PacketUring`] of `size`, if a VF takes that size (30..=1514).
    pub fn packet_uring(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::PacketUring { size })
    }

    /// [`Ceiling::XdpTx`] of `size`, if a veth takes that size (30..=1514).
    pub fn xdp_tx(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::XdpTx { size })
    }

    /// [`Ceiling::MacvtapWrite`] of `size`, if a VF takes that size (30..=1514).
    pub fn macvtap_write(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::MacvtapWrite { size })
    }

    /// [`Ceiling::MacvtapUring`] of `size`, if a VF takes that size (30..=1514).
    pub fn macvtap_uring(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::MacvtapUring { size })
    }

    /// [`Ceiling::MacvtapBest`] of `size`, if a VF takes that size (30..=1514).
    pub fn macvtap_best(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::MacvtapBest { size })
    }

    /// [`Ceiling::TapBest`] of `size`, if a tap takes that size (30..=1514).
    pub fn tap_best(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::TapBest { size })
    }

    /// [`Ceiling::PacketBest`] of `size`, if a VF takes that size (30..=1514).
    pub fn packet_best(size: u32) -> Option<Ceiling> {
        framed(size, |size| Ceiling::PacketBest { size })
    }

    /// [`Ceiling::Rx`] on `port` of `size`, injected as fast as the injector can, if an
    /// Ethernet interface takes that size (30..=1514); [`Ceiling::at_rate`] paces it.
    pub fn rx(port: RxPort, size: u32) -> Option<Ceiling> {
        TAP_SIZES.contains(&size).then_some(Ceiling::Rx {
            port,
            size,
            rate_pps: None,
        })
    }

    /// The same ceiling with its injector offering `rate_pps` (an RX ceiling measured for a
    /// run with `--rate-pps`); the others are unchanged.
    pub fn at_rate(self, rate_pps: Option<u64>) -> Ceiling {
        match self {
            Ceiling::Rx { port, size, .. } => Ceiling::Rx {
                port,
                size,
                rate_pps,
            },
            other => other,
        }
    }

    /// [`Ceiling::DpdkPair`] of `direction` and `size`, if testpmd's `txonly` makes that size
    /// (42..=1514).
    pub fn dpdk_pair(direction: PairDirection, size: u32) -> Option<Ceiling> {
        dpdk_pair::SIZES
            .contains(&size)
            .then_some(Ceiling::DpdkPair { direction, size })
    }

    /// The DPDK yardsticks at `size`, g2h then h2g (asked for by name; not in
    /// [`Ceiling::standard`]).
    pub fn dpdk(size: u32) -> Vec<Ceiling> {
        [PairDirection::G2h, PairDirection::H2g]
            .into_iter()
            .filter_map(|d| Ceiling::dpdk_pair(d, size))
            .collect()
    }

    /// What `vhostbench limits` measures by default, in the order it reports them.
    pub fn standard() -> Vec<Ceiling> {
        let rx = RxPort::ALL.into_iter().flat_map(|port| {
            [64, 1500].map(|size| Ceiling::Rx {
                port,
                size,
                rate_pps: None,
            })
        });
        vec![
            Ceiling::SpscHandoff,
            Ceiling::SpscCopy { size: 64 },
            Ceiling::SpscCopy { size: 1500 },
            Ceiling::SleepRing {
                size: 64,
                queue: 256,
            },
            Ceiling::SleepRing {
                size: 64,
                queue: 1024,
            },
            Ceiling::BusyPollWakeRtt,
            Ceiling::BlockingWakeRtt,
            Ceiling::TapWrite { size: 64 },
            Ceiling::TapWrite { size: 1500 },
            Ceiling::TapUring { size: 64 },
            Ceiling::TapUring { size: 1500 },
            Ceiling::PacketWrite { size: 64 },
            Ceiling::PacketWrite { size: 1500 },
            Ceiling::PacketUring { size: 64 },
            Ceiling::PacketUring { size: 1500 },
            Ceiling::XdpTx { size: 64 },
            Ceiling::XdpTx { size: 1500 },
            Ceiling::MacvtapWrite { size: 64 },
            Ceiling::MacvtapWrite { size: 1500 },
            Ceiling::MacvtapUring { size: 64 },
            Ceiling::MacvtapUring { size: 1500 },
        ]
        .into_iter()
        .chain(rx)
        .collect()
    }

    /// Its name in tables and results files (`spsc_copy_64`, `busy_poll_wake_rtt`).
    pub fn name(&self) -> String {
        match self {
            Ceiling::SpscHandoff => "spsc_handoff".into(),
            Ceiling::SpscCopy { size } => format!("spsc_copy_{size}"),
            Ceiling::SleepRing { size, queue } => format!("sleep_ring_{size}_q{queue}"),
            Ceiling::BusyPollWakeRtt => "busy_poll_wake_rtt".into(),
            Ceiling::BlockingWakeRtt => "blocking_wake_rtt".into(),
            Ceiling::TapWrite { size } => format!("tap_write_{size}"),
            Ceiling::TapUring { size } => format!("tap_uring_{size}"),
            Ceiling::PacketWrite { size } => format!("packet_write_{size}"),
            Ceiling::PacketUring { size } => format!("packet_uring_{size}"),
            Ceiling::XdpTx { size } => format!("xdp_tx_{size}"),
            Ceiling::MacvtapWrite { size } => format!("macvtap_write_{size}"),
            Ceiling::MacvtapUring { size } => format!("macvtap_uring_{size}"),
            Ceiling::MacvtapBest { size } => format!("macvtap_best_{size}"),
            Ceiling::TapBest { size } => format!("tap_best_{size}"),
            Ceiling::PacketBest { size } => format!("packet_best_{size}"),
            Ceiling::Rx {
                port,
                size,
                rate_pps,
            } => match rate_pps {
                None => format!("{}_{size}", port.stem()),
                Some(pps) => format!("{}_{size}_r{pps}", port.stem()),
            },
            Ceiling::DpdkPair { direction, size } => {
                format!("dpdk_pair_{}_{size}", direction.name())
            }
        }
    }

    /// The rows a measurement gives: a round trip's median and its 99th percentile
    /// (`<name>_p99`), a throughput's one row.
    pub fn rows(&self) -> Vec<String> {
        if self.is_rtt() {
            vec![self.name(), format!("{}_p99", self.name())]
        } else {
            vec![self.name()]
        }
    }

    fn is_rtt(&self) -> bool {
        matches!(self, Ceiling::BusyPollWakeRtt | Ceiling::BlockingWakeRtt)
    }

    /// [`UNIT_MPPS`] or [`UNIT_NS`].
    pub fn unit(&self) -> &'static str {
        if self.is_rtt() {
            UNIT_NS
        } else {
            UNIT_MPPS
        }
    }

    /// The packet or frame size it is measured with, if it has one.
    pub fn size(&self) -> Option<u32> {
        match *self {
            Ceiling::SpscCopy { size }
            | Ceiling::SleepRing { size, .. }
            | Ceiling::TapWrite { size }
            | Ceiling::TapUring { size }
            | Ceiling::PacketWrite { size }
            | Ceiling::PacketUring { size }
            | Ceiling::XdpTx { size }
            | Ceiling::MacvtapWrite { size }
            | Ceiling::MacvtapUring { size }
            | Ceiling::MacvtapBest { size }
            | Ceiling::TapBest { size }
            | Ceiling::PacketBest { size }
            | Ceiling::Rx { size, .. }
            | Ceiling::DpdkPair { size, .. } => Some(size),
            Ceiling::SpscHandoff | Ceiling::BusyPollWakeRtt | Ceiling::BlockingWakeRtt => None,
        }
    }

    /// Whether it needs privileges (root: a tap, a VF pool, macvtap, an AF_XDP socket and its
    /// program, or the hugepage pool testpmd runs on).
    pub fn needs_privileges(&self) -> bool {
        self.needs_tap() || self.needs_dpdk()
    }

    /// Whether it needs what [`crate::topology::probe`] checks (a tap, veth, a namespace).
    pub fn needs_tap(&self) -> bool {
        matches!(
            self,
            Ceiling::TapWrite { .. }
                | Ceiling::TapUring { .. }
                | Ceiling::PacketWrite { .. }
                | Ceiling::PacketUring { .. }
                | Ceiling::XdpTx { .. }
                | Ceiling::MacvtapWrite { .. }
                | Ceiling::MacvtapUring { .. }
                | Ceiling::MacvtapBest { .. }
                | Ceiling::TapBest { .. }
                | Ceiling::PacketBest { .. }
                | Ceiling::Rx { .. }
        )
    }

    /// Whether it runs `dpdk-testpmd` ([`crate::peers::dpdk::probe`] says whether it can).
    pub fn needs_dpdk(&self) -> bool {
        matches!(self, Ceiling::DpdkPair { .. })
    }

    /// Measures it `repeat` times for `duration` each: one [`LimitResult`] per row
    /// ([`Ceiling::rows`]), one sample per repeat.
    pub fn measure(&self, duration: Duration, repeat: usize) -> anyhow::Result<Vec<LimitResult>> {
        use vf::VfPort::{Macvtap, Packet};
        let name = self.name();
        let per_repeat = |f: &mut dyn FnMut() -> anyhow::Result<f64>| {
            (0..repeat)
                .map(|_| f())
                .collect::<anyhow::Result<Vec<f64>>>()
        };
        let one = |samples| Ok(vec![LimitResult::from_samples(&name, UNIT_MPPS, samples)?]);
        match *self {
            Ceiling::SpscHandoff => one(per_repeat(&mut || ring::handoff_once(duration))?),
            Ceiling::SpscCopy { size } => {
                let size = Self::checked(&name, size, COPY_SIZES)?;
                one(per_repeat(&mut || ring::copy_once(size, duration))?)
            }
            Ceiling::SleepRing { size, queue } => {
                anyhow::ensure!(
                    Ceiling::sleep_ring(size, queue).is_some(),
                    "{name}: size {size} or queue {queue} out of range (size {}..={}, queue a \
                     power of two in {}..={}, at most {SLEEP_POOL_MAX} bytes of buffers)",
                    COPY_SIZES.start(),
                    COPY_SIZES.end(),
                    SLEEP_QUEUES.start(),
                    SLEEP_QUEUES.end()
                );
                let (size, queue) = (size as usize, u32::from(queue));
                one(per_repeat(&mut || sleep::once(size, queue, duration))?)
            }
            Ceiling::BusyPollWakeRtt => rtt::limit(&name, repeat, || rtt::busy_once(duration)),
            Ceiling::BlockingWakeRtt => rtt::limit(&name, repeat, || rtt::blocking_once(duration)),
            Ceiling::TapWrite { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                one(tap::measure(
                    &name,
                    size,
                    duration,
                    repeat,
                    &[tap::write_once],
                )?)
            }
            Ceiling::TapUring { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                one(tap::measure(
                    &name,
                    size,
                    duration,
                    repeat,
                    &[tap::uring_once],
                )?)
            }
            Ceiling::PacketWrite { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::write_once as tap::WriteOnce];
                one(vf::measure(&name, Packet, size, duration, repeat, &loops)?)
            }
            Ceiling::PacketUring { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::uring_once as tap::WriteOnce];
                one(vf::measure(&name, Packet, size, duration, repeat, &loops)?)
            }
            Ceiling::PacketBest { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::write_once as tap::WriteOnce, tap::uring_once];
                one(vf::measure(&name, Packet, size, duration, repeat, &loops)?)
            }
            Ceiling::TapBest { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::write_once as tap::WriteOnce, tap::uring_once];
                one(tap::measure(&name, size, duration, repeat, &loops)?)
            }
            Ceiling::MacvtapWrite { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::write_once as tap::WriteOnce];
                one(vf::measure(&name, Macvtap, size, duration, repeat, &loops)?)
            }
            Ceiling::MacvtapUring { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::uring_once as tap::WriteOnce];
                one(vf::measure(&name, Macvtap, size, duration, repeat, &loops)?)
            }
            Ceiling::MacvtapBest { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let loops = [tap::write_once as tap::WriteOnce, tap::uring_once];
                one(vf::measure(&name, Macvtap, size, duration, repeat, &loops)?)
            }
            Ceiling::Rx {
                port,
                size,
                rate_pps,
            } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                let (delivered, offered) =
                    rx::measure(&name, port, size, rate_pps, duration, repeat)?
                        .into_iter()
                        .unzip();
                Ok(vec![LimitResult::from_samples(
                    &name, UNIT_MPPS, delivered,
                )?
                .with_offered(offered)?])
            }
            Ceiling::XdpTx { size } => {
                let size = Self::checked(&name, size, TAP_SIZES)?;
                one(xdp::measure(&name, size, duration, repeat)?)
            }
            Ceiling::DpdkPair { direction, size } => {
                Self::checked(&name, size, dpdk_pair::SIZES)?;
                one(dpdk_pair::measure(direction, size, duration, repeat)?)
            }
        }
    }

    /// One measurement of its first row (a round trip's median): the yardstick `run` takes
    /// right before each repeat of a combination.
    pub fn sample(&self, duration: Duration) -> anyhow::Result<f64> {
        let rows = self.measure(duration, 1)?;
        rows.first()
            .and_then(|r| r.samples.first().copied())
            .ok_or_else(|| anyhow!("{}: no sample", self.name()))
    }

    fn checked(
        name: &str,
        size: u32,
        sizes: std::ops::RangeInclusive<u32>,
    ) -> anyhow::Result<usize> {
        anyhow::ensure!(
            sizes.contains(&size),
            "{name}: size {size} outside {}..={}",
            sizes.start(),
            sizes.end()
        );
        Ok(size as usize)
    }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Ceiling {
    type Err = String;

    /// A ceiling by name, or by one of its rows' names (`busy_poll_wake_rtt_p99`).
    fn from_str(s: &str) -> Result<Self, String> {
        let sized = |prefix: &str, make: fn(u32) -> Option<Ceiling>| -> Option<Ceiling> {
            s.strip_prefix(prefix)?.parse().ok().and_then(make)
        };
        let found = match s.strip_suffix("_p99").unwrap_or(s) {
            "spsc_handoff" if s == "spsc_handoff" => Some(Ceiling::SpscHandoff),
            "busy_poll_wake_rtt" => Some(Ceiling::BusyPollWakeRtt),
            "blocking_wake_rtt" => Some(Ceiling::BlockingWakeRtt),
            _ => sized("spsc_copy_", Ceiling::spsc_copy)
                .or_else(|| {
                    let (size, queue) = s.strip_prefix("sleep_ring_")?.split_once("_q")?;
                    Ceiling::sleep_ring(size.parse().ok()?, queue.parse().ok()?)
                })
                .or_else(|| sized("tap_write_", Ceiling::tap_write))
                .or_else(|| sized("tap_uring_", Ceiling::tap_uring))
                .or_else(|| sized("packet_write_", Ceiling::packet_write))
                .or_else(|| sized("packet_uring_", Ceiling::packet_uring))
                .or_else(|| sized("xdp_tx_", Ceiling::xdp_tx))
                .or_else(|| sized("macvtap_write_", Ceiling::macvtap_write))
                .or_else(|| sized("macvtap_uring_", Ceiling::macvtap_uring))
                .or_else(|| sized("macvtap_best_", Ceiling::macvtap_best))
                .or_else(|| sized("tap_best_", Ceiling::tap_best))
                .or_else(|| sized("packet_best_", Ceiling::packet_best))
                .or_else(|| RxPort::ALL.into_iter().find_map(|port| parse_rx(s, port)))
                .or_else(|| {
                    let (dir, size) = s.strip_prefix("dpdk_pair_")?.split_once('_')?;
                    Ceiling::dpdk_pair(PairDirection::from_name(dir)?, size.parse().ok()?)
                }),
        };
        found.ok_or_else(|| {
            format!(
                "unknown ceiling {s:?} (known: spsc_handoff, spsc_copy_<16..65536>, \
                 sleep_ring_<16..65536>_q<power of two 16..32768>, busy_poll_wake_rtt[_p99], \
                 blocking_wake_rtt[_p99], tap_write_<30..1514>, tap_uring_<30..1514>, \
                 packet_write_<30..1514>, packet_uring_<30..1514>, xdp_tx_<30..1514>, \
                 macvtap_write_<30..1514>, macvtap_uring_<30..1514>, macvtap_best_<30..1514>, \
                 tap_best_<30..1514>, packet_best_<30..1514>, \
                 xdp_rx_<30..1514>, packet_read_<30..1514>, macvtap_read_<30..1514>, \
                 tap_read_<30..1514>; an RX ceiling paced at N pps ends in _r<N>, \
                 dpdk_pair_g2h_<42..1514>, dpdk_pair_h2g_<42..1514>)"
            )
        })
    }
}

/// `<stem>_<size>` or `<stem>_<size>_r<pps>` ([`Ceiling::Rx`] on `port`), if `s` is one.
fn parse_rx(s: &str, port: RxPort) -> Option<Ceiling> {
    let rest = s.strip_prefix(port.stem())?.strip_prefix('_')?;
    let (size, rate_pps) = match rest.split_once("_r") {
        Some((size, pps)) => (size, Some(pps.parse::<u64>().ok().filter(|&p| p > 0)?)),
        None => (rest, None),
    };
    Ceiling::rx(port, size.parse().ok()?).map(|c| c.at_rate(rate_pps))
}

pub(crate) fn join<T>(h: JoinHandle<anyhow::Result<T>>, name: &str) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow!("{name} panicked"))?
        .with_context(|| format!("{name} failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology;

    #[test]
    fn every_ceiling_measures_something() {
        let can_tap = topology::probe().can_run;
        for c in Ceiling::standard() {
            if c.needs_privileges() && !can_tap {
                crate::testing::skip(
                    &format!("every_ceiling_measures_something ({c})"),
                    &topology::probe().summary(),
                );
                continue;
            }
            let rows = c.measure(Duration::from_millis(20), 1).expect("measure");
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            assert_eq!(names, c.rows());
            for r in &rows {
                assert_eq!(r.unit, c.unit(), "{r:?}");
                assert_eq!(r.samples.len(), 1);
                for v in [r.min, r.median, r.max] {
                    assert!(v.is_finite() && v > 0.0, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn names_parse_back() {
        for c in Ceiling::standard().into_iter().chain([
            Ceiling::SpscCopy { size: 9000 },
            Ceiling::TapUring { size: 30 },
            Ceiling::PacketUring { size: 1514 },
            Ceiling::SleepRing {
                size: 1500,
                queue: 16,
            },
            Ceiling::SleepRing {
                size: 64,
                queue: 32768,
            },
            Ceiling::MacvtapBest { size: 64 },
            Ceiling::TapBest { size: 64 },
            Ceiling::PacketBest { size: 1500 },
            Ceiling::MacvtapUring { size: 30 },
            Ceiling::Rx {
                port: RxPort::Tap,
                size: 1514,
                rate_pps: Some(100_000),
            },
            Ceiling::Rx {
                port: RxPort::Xdp,
                size: 30,
                rate_pps: Some(1),
            },
            Ceiling::DpdkPair {
                direction: PairDirection::G2h,
                size: 64,
            },
            Ceiling::DpdkPair {
                direction: PairDirection::H2g,
                size: 1514,
            },
        ]) {
            for row in c.rows() {
                assert_eq!(row.parse::<Ceiling>(), Ok(c), "{row}");
            }
        }
        // Every RX port, by the names the run's table and results files use.
        for (port, name) in [
            (RxPort::Xdp, "xdp_rx_64"),
            (RxPort::Packet, "packet_read_64"),
            (RxPort::Macvtap, "macvtap_read_64"),
            (RxPort::Tap, "tap_read_64"),
        ] {
            let c = Ceiling::rx(port, 64).expect("a size a VF takes");
            assert_eq!(c.name(), name);
            assert_eq!(
                c.at_rate(Some(2000)).name(),
                format!("{name}_r2000"),
                "{port:?}"
            );
            assert_eq!(c.at_rate(Some(2000)).at_rate(None), c);
            assert!(c.needs_privileges() && c.unit() == UNIT_MPPS);
        }
        // Pacing is for RX ceilings only.
        let w = Ceiling::TapWrite { size: 64 };
        assert_eq!(w.at_rate(Some(5)), w);
        for bad in [
            "nope",
            "spsc_copy_8",
            "spsc_copy_x",
            "tap_write_9000",
            "spsc_handoff_p99",
            "tap_uring_",
            "packet_write_1515",
            "packet_uring_29",
            "sleep_ring_64",
            "sleep_ring_64_q",
            "sleep_ring_64_q1000",
            "sleep_ring_64_q8",
            "sleep_ring_8_q256",
            "sleep_ring_64_q65536",
            "sleep_ring_65536_q32768",
            "sleep_ring_64_q256_p99",
            "macvtap_best_9000",
            "macvtap_write_",
            "tap_read_29",
            "tap_read_64_r0",
            "tap_read_64_r",
            "tap_read_64_rx",
            "xdp_rx_64_p99",
            "packet_read64",
            "macvtap_read_1515_r100",
            "dpdk_pair_g2h_41",
            "dpdk_pair_h2g_1515",
            "dpdk_pair_x2y_64",
            "dpdk_pair_g2h",
            "dpdk_pair_g2h_64_p99",
        ] {
            let e = bad.parse::<Ceiling>().expect_err(bad);
            assert!(e.contains("known:"), "{e}");
        }
    }

    #[test]
    fn sizes_out_of_range_have_no_ceiling_and_do_not_measure() {
        assert_eq!(Ceiling::spsc_copy(8), None);
        assert_eq!(Ceiling::tap_write(9000), None);
        assert_eq!(Ceiling::tap_uring(29), None);
        assert_eq!(Ceiling::sleep_ring(64, 1000), None);
        assert_eq!(Ceiling::sleep_ring(65_536, 32_768), None);
        let d = Duration::from_millis(5);
        assert!(Ceiling::SleepRing { size: 64, queue: 8 }
            .measure(d, 1)
            .is_err());
        assert!(Ceiling::SpscCopy { size: 8 }.measure(d, 1).is_err());
        assert!(Ceiling::TapWrite { size: 8 }.measure(d, 1).is_err());
        assert!(Ceiling::TapUring { size: 9000 }.measure(d, 1).is_err());
        assert_eq!(Ceiling::packet_write(1515), None);
        assert_eq!(Ceiling::dpdk_pair(PairDirection::G2h, 41), None);
        assert_eq!(Ceiling::dpdk(64).len(), 2);
        assert!(Ceiling::DpdkPair {
            direction: PairDirection::H2g,
            size: 2000
        }
        .measure(d, 1)
        .is_err());
        assert!(Ceiling::PacketWrite { size: 29 }.measure(d, 1).is_err());
        assert_eq!(Ceiling::macvtap_best(29), None);
        assert_eq!(Ceiling::rx(RxPort::Tap, 1515), None);
        assert!(Ceiling::MacvtapWrite { size: 9000 }.measure(d, 1).is_err());
        let rx = Ceiling::Rx {
            port: RxPort::Packet,
            size: 20,
            rate_pps: None,
        };
        assert!(rx.measure(d, 1).is_err());
        let r = Ceiling::SpscCopy { size: 64 }
            .measure(d, 2)
            .expect("measure");
        assert_eq!((r.len(), r[0].samples.len()), (1, 2));
        assert!(Ceiling::SpscCopy { size: 64 }.sample(d).expect("sample") > 0.0);
    }

    /// The RX ceilings and macvtap's better-of TX (not in the standard set) each receive or
    /// send something, say what was offered (RX), and delete the namespace they made.
    #[test]
    fn rx_and_macvtap_ceilings_measure_and_clean_up() {
        let p = topology::probe();
        if !p.vfs || !p.af_xdp {
            eprintln!(
                "skipping rx_and_macvtap_ceilings_measure_and_clean_up: {}",
                p.summary()
            );
            return;
        }
        let d = Duration::from_millis(100);
        let paced = Ceiling::Rx {
            port: RxPort::Packet,
            size: 64,
            rate_pps: Some(20_000),
        };
        let best = Ceiling::MacvtapBest { size: 64 };
        let _ = topology::created_on_this_thread();
        for c in RxPort::ALL
            .into_iter()
            .filter_map(|port| Ceiling::rx(port, 64))
            .chain([paced, best])
        {
            let r = c.measure(d, 1).unwrap_or_else(|e| panic!("{c}: {e:#}"));
            assert_eq!(r.len(), 1);
            let l = &r[0];
            assert_eq!((l.name.as_str(), l.samples.len()), (c.name().as_str(), 1));
            assert!(l.min > 0.0, "{l:?}");
            match c {
                Ceiling::Rx { .. } => {
                    assert_eq!(l.offered.len(), 1, "{l:?}");
                    assert!(l.offered[0] > 0.0, "{l:?}");
                }
                _ => assert!(l.offered.is_empty(), "{l:?}"),
            }
            let made = topology::created_on_this_thread();
            assert_eq!(made.len(), 1, "{c}: {made:?}");
            for ns in made {
                assert!(
                    !std::path::Path::new(topology::NETNS_DIR).join(&ns).exists(),
                    "{c}: {ns} left behind"
                );
            }
        }
        // Paced at 20 000 pps, it receives about that (not the flood rate).
        let r = paced.measure(d, 1).expect("paced");
        assert!(r[0].median < 0.03, "{:?}", r[0]);
    }

    #[test]
    fn privileged_ceilings_measure_or_give_the_reason() {
        let d = Duration::from_millis(5);
        let p = topology::probe();
        for c in Ceiling::standard()
            .into_iter()
            .filter(Ceiling::needs_privileges)
        {
            match c.measure(d, 2) {
                Ok(r) => {
                    assert!(p.can_run);
                    assert_eq!(r.len(), 1);
                    assert_eq!(r[0].name, c.name());
                    assert_eq!(r[0].samples.len(), 2);
                    assert!(r[0].min > 0.0, "{r:?}");
                }
                Err(e) => {
                    assert!(!p.can_run, "{c}: {e:#}");
                    assert!(format!("{e:#}").contains(&p.summary()), "{e:#}");
                }
            }
        }
    }
}
