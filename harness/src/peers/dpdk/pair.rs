//! The DPDK ↔ DPDK yardstick: testpmd's virtio-user PMD (the guest's driver) and testpmd's
//! vhost PMD (a vhost-user back end) on one vhost-user socket, one forwarding core each, one
//! queue pair. What DPDK's own two halves move, with nothing of ours in the path, so a
//! vhost-user back end or a guest driver of ours can be put beside it.
//!
//! - `g2h` (guest to host): virtio-user `txonly` → vhost `rxonly`;
//! - `h2g` (host to guest): vhost `txonly` → virtio-user `rxonly`.
//!
//! One run: reserve hugepages for both ([`PAGES_PER_TESTPMD`] each), start the vhost side
//! (it listens), then the virtio-user side (it connects), wait for both links, start the
//! receiver, then the sender, let it settle for `warmup`, then measure `windows` windows:
//! each the receiver's `RX-packets` read before and after (stamped at the middle of each
//! read's round trip), so start-up is not included. Then the sender stops, the receiver
//! drains until its `RX-packets` equals the sender's `TX-packets` (bounded), stops, and both
//! quit, the driver first. Every frame the sender's port took must have arrived: a mismatch is
//! an error. Frames `txonly` made but found no room for in the ring are its `TX-dropped`
//! (testpmd does not retry them), reported beside the rate: the sender offers more than the
//! receiver takes, so the rate is the receiver's.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::testpmd::{ForwardStats, PortStats, Testpmd, TestpmdConfig, Vdev};
use super::{ForwardMode, Hugepages, SocketPath, PAGES_PER_TESTPMD};
use crate::pin::{vcpu_core, worker_core};

/// Frame sizes testpmd's `txonly` makes (Ethernet + IPv4 + UDP headers, up to MTU 1500).
pub const SIZES: std::ops::RangeInclusive<u32> = 42..=1514;
/// Both links up, from the second testpmd's first prompt.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// The receiver catching up with the stopped sender.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Which way frames go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PairDirection {
    /// Guest to host: virtio-user `txonly` → vhost `rxonly`.
    G2h,
    /// Host to guest: vhost `txonly` → virtio-user `rxonly`.
    H2g,
}

impl PairDirection {
    /// `g2h` or `h2g`.
    pub fn name(self) -> &'static str {
        match self {
            PairDirection::G2h => "g2h",
            PairDirection::H2g => "h2g",
        }
    }

    /// The direction named `s`.
    pub fn from_name(s: &str) -> Option<PairDirection> {
        match s {
            "g2h" => Some(PairDirection::G2h),
            "h2g" => Some(PairDirection::H2g),
            _ => None,
        }
    }
}

/// One pair's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairConfig {
    /// Which side sends.
    pub direction: PairDirection,
    /// Frame bytes ([`SIZES`]).
    pub frame_size: u32,
    /// Virtqueue size and the ports' descriptors.
    pub ring: u16,
    /// Packets per burst.
    pub burst: u32,
    /// The virtio-user side's forwarding core (the guest's).
    pub guest_core: usize,
    /// The vhost side's forwarding core (the worker's).
    pub host_core: usize,
    /// Forwarding before the first window.
    pub warmup: Duration,
}

impl PairConfig {
    /// `direction` with `frame_size`-byte frames, ring 256, bursts of 32, virtio-user on
    /// [`vcpu_core`], vhost on [`worker_core`], half a second of warm-up.
    pub fn new(direction: PairDirection, frame_size: u32) -> PairConfig {
        PairConfig {
            direction,
            frame_size,
            ring: 256,
            burst: 32,
            guest_core: vcpu_core(),
            host_core: worker_core(),
            warmup: Duration::from_millis(500),
        }
    }
}

/// One measured window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairWindow {
    /// Its length (between the middles of the two reads).
    pub secs: f64,
    /// Frames the receiver's port received in it.
    pub received: u64,
    /// Frames the sender's port took in it (read just after the receiver's).
    pub sent: u64,
    /// `received` per second, in millions.
    pub mpps: f64,
}

/// What a pair run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PairRun {
    /// Its settings.
    pub config: PairConfig,
    /// The DPDK it ran (`DPDK 22.11.11`).
    pub version: String,
    /// The windows, in order.
    pub windows: Vec<PairWindow>,
    /// The sender's port counters after it stopped.
    pub sender: PortStats,
    /// The receiver's port counters after it drained and stopped.
    pub receiver: PortStats,
    /// The sender's forwarding counters (`TX-dropped`: made, but no room in the ring).
    pub sender_forward: ForwardStats,
}

impl PairRun {
    /// Each window's rate (Mpps).
    pub fn mpps(&self) -> Vec<f64> {
        self.windows.iter().map(|w| w.mpps).collect()
    }
}

/// Port stats read at the middle of the command's round trip.
fn stamped(t: &mut Testpmd) -> anyhow::Result<(PortStats, Instant)> {
    let before = Instant::now();
    let s = t.port_stats()?;
    let after = Instant::now();
    Ok((s, before + (after - before) / 2))
}

/// Runs the pair and measures `windows` windows of `window` each. Needs root and
/// `dpdk-testpmd` ([`super::probe`] says what is missing).
pub fn run(config: &PairConfig, window: Duration, windows: usize) -> anyhow::Result<PairRun> {
    ensure!(
        SIZES.contains(&config.frame_size),
        "frame size {} outside testpmd txonly's {}..={}",
        config.frame_size,
        SIZES.start(),
        SIZES.end()
    );
    ensure!(windows > 0, "no window to measure");
    let dpdk = super::probe()?;
    let _pages = Hugepages::reserve(2 * PAGES_PER_TESTPMD)?;
    let sock = SocketPath::new()?;
    let g2h = config.direction == PairDirection::G2h;
    let mode = |sends: bool| {
        if sends {
            ForwardMode::TxOnly
        } else {
            ForwardMode::RxOnly
        }
    };
    let shape = |mut c: TestpmdConfig, fwd_core, main_core| {
        c.fwd_core = fwd_core;
        c.main_core = main_core;
        c.frame_size = config.frame_size;
        c.burst = config.burst;
        c.ring = config.ring;
        c
    };
    let host_cfg = shape(
        TestpmdConfig::new(
            Vdev::Vhost {
                iface: sock.path().to_path_buf(),
                client: false,
            },
            mode(!g2h),
        ),
        config.host_core,
        config.guest_core,
    );
    let guest_cfg = shape(
        TestpmdConfig::new(
            Vdev::VirtioUser {
                path: sock.path().to_path_buf(),
                queue_size: config.ring,
                server: false,
            },
            mode(g2h),
        ),
        config.guest_core,
        config.host_core,
    );
    // Declared host first: on an early return the driver (guest) is dropped, so killed,
    // first.
    let mut host = Testpmd::spawn(&dpdk.testpmd, &host_cfg).context("the vhost side")?;
    let mut guest = Testpmd::spawn(&dpdk.testpmd, &guest_cfg).context("the virtio-user side")?;
    guest.wait_link_up(LINK_TIMEOUT)?;
    host.wait_link_up(LINK_TIMEOUT)?;

    let (sender, receiver) = if g2h {
        (&mut guest, &mut host)
    } else {
        (&mut host, &mut guest)
    };
    receiver.start()?;
    sender.start()?;
    thread::sleep(config.warmup);
    let mut measured = Vec::with_capacity(windows);
    for _ in 0..windows {
        let (r0, t0) = stamped(receiver)?;
        let s0 = sender.port_stats()?;
        thread::sleep(window);
        let (r1, t1) = stamped(receiver)?;
        let s1 = sender.port_stats()?;
        let secs = (t1 - t0).as_secs_f64();
        ensure!(secs > 0.0, "zero-length window");
        let received = r1.rx_packets - r0.rx_packets;
        measured.push(PairWindow {
            secs,
            received,
            sent: s1.tx_packets - s0.tx_packets,
            mpps: received as f64 / secs / 1e6,
        });
    }
    let sender_forward = sender.stop()?;
    let sent = sender.port_stats()?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let r = receiver.port_stats()?;
        if r.rx_packets >= sent.tx_packets {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the receiver has {} of the {} frames the sender's port took, {:.0} s after the \
                 sender stopped",
                r.rx_packets,
                sent.tx_packets,
                DRAIN_TIMEOUT.as_secs_f64()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    receiver.stop()?;
    let received = receiver.port_stats()?;
    // The driver goes first, so the back end sees an orderly disconnect.
    guest.quit().context("the virtio-user side")?;
    host.quit().context("the vhost side")?;
    ensure!(
        received.rx_packets == sent.tx_packets,
        "the sender's port took {} frames, the receiver's received {}",
        sent.tx_packets,
        received.rx_packets
    );
    ensure!(
        received.rx_packets > 0,
        "no frame moved ({} {})",
        config.direction.name(),
        config.frame_size
    );
    Ok(PairRun {
        config: config.clone(),
        version: dpdk.version,
        windows: measured,
        sender: sent,
        receiver: received,
        sender_forward,
    })
}

/// The ceiling `dpdk_pair_<direction>_<size>`: one pair run with `repeat` windows of
/// `duration`; one sample (Mpps) per window.
pub fn measure(
    direction: PairDirection,
    size: u32,
    duration: Duration,
    repeat: usize,
) -> anyhow::Result<Vec<f64>> {
    let run = run(&PairConfig::new(direction, size), duration, repeat)?;
    Ok(run.mpps())
}
