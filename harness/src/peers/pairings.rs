//! `run --peer dpdk`: the four pairings of a virtio driver and a vhost-user backend, each a
//! real, independent implementation on one side at least — driver {guest-sim, DPDK's
//! virtio-user PMD} × backend {the engine, DPDK's vhost PMD} — moving `size`-byte frames one
//! way (`g2h`: the driver sends, the backend takes; `h2g`: the backend sends, the driver
//! takes), one core each (the driver on the vCPU's core, the backend on the worker's),
//! interleaved: each repeat runs every pairing once, set up afresh.
//!
//! - guest-sim → engine: `vhost-user` mode, the engine served in-process (null backend);
//! - guest-sim → DPDK vhost: `vhost-user` mode on testpmd's vhost PMD (`rxonly` / `txonly`);
//!   testpmd's port counters must match what the guest completed;
//! - DPDK virtio-user → engine: testpmd `txonly` / `rxonly` on the engine's `serve` server;
//!   the engine's counters must match testpmd's;
//! - DPDK virtio-user → DPDK vhost: [`super::dpdk::pair`], DPDK with nothing of ours.
//!
//! DPDK's PMDs poll, so our side polls too: the worker busy-polls (`busy_poll_us`) and
//! guest-sim polls its rings. Every window's rate is the receiver's count over the window.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use engine::backend::null::{NullBackend, NullMode};
use engine::backend::Backend;
use engine::vhost_user::{NetServer, Server};
use engine::worker::WorkerConfig;
use guest_sim::traffic::Workload;
use serde::{Deserialize, Serialize};

use super::dpdk::pair::{self as dpdk_pair, PairDirection};
use super::dpdk::{self, ForwardMode, Hugepages, SocketPath, Testpmd, TestpmdConfig, Vdev};
use crate::modes::vhost_user::VhostUser;
use crate::modes::Mode;
use crate::pair::PairConfig;
use crate::pin::{vcpu_core, worker_core};

/// The driver side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// guest-sim through its vhost-user frontend.
    GuestSim,
    /// DPDK's virtio-user PMD in testpmd.
    DpdkVirtioUser,
}

/// The backend side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend_ {
    /// The engine's vhost-user server (null backend).
    Engine,
    /// DPDK's vhost PMD in testpmd.
    DpdkVhost,
}

impl Driver {
    /// Its name in tables and results.
    pub fn name(self) -> &'static str {
        match self {
            Driver::GuestSim => "guest-sim",
            Driver::DpdkVirtioUser => "dpdk-virtio-user",
        }
    }
}

impl Backend_ {
    /// Its name in tables and results.
    pub fn name(self) -> &'static str {
        match self {
            Backend_::Engine => "engine",
            Backend_::DpdkVhost => "dpdk-vhost",
        }
    }
}

/// The four pairings, in table order.
pub const PAIRINGS: [(Driver, Backend_); 4] = [
    (Driver::GuestSim, Backend_::Engine),
    (Driver::GuestSim, Backend_::DpdkVhost),
    (Driver::DpdkVirtioUser, Backend_::Engine),
    (Driver::DpdkVirtioUser, Backend_::DpdkVhost),
];

/// One pairing's measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// `g2h` or `h2g`.
    pub direction: String,
    /// Frame bytes.
    pub size_bytes: u32,
    /// The driver (`guest-sim`, `dpdk-virtio-user`).
    pub driver: Driver,
    /// The backend (`engine`, `dpdk-vhost`).
    pub backend: Backend_,
    /// Mpps per repeat, in order.
    pub mpps: Vec<f64>,
    /// Frames the sender sent and the receiver received over each whole repeat (warm-up and
    /// drain included): equal when nothing was lost.
    pub sent: Vec<u64>,
    /// See `sent`.
    pub received: Vec<u64>,
}

/// What one pairing run measures.
struct One {
    mpps: f64,
    sent: u64,
    received: u64,
}

/// Runs every pairing `repeat` times each (interleaved), `direction`, `size`-byte frames,
/// `window` measured per run after `warmup`, our worker busy-polling `busy_poll_us`.
pub fn measure(
    direction: PairDirection,
    size: u32,
    window: Duration,
    warmup: Duration,
    repeat: usize,
    busy_poll_us: u64,
    base: &PairConfig,
) -> Result<Vec<PeerRecord>> {
    let dpdk = dpdk::probe()?;
    let mut out: Vec<PeerRecord> = PAIRINGS
        .iter()
        .map(|&(driver, backend)| PeerRecord {
            direction: direction.name().into(),
            size_bytes: size,
            driver,
            backend,
            mpps: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
        })
        .collect();
    for _ in 0..repeat {
        for rec in out.iter_mut() {
            let r = match (rec.driver, rec.backend) {
                (Driver::GuestSim, b) => guest_sim(
                    &dpdk,
                    b,
                    direction,
                    size,
                    window,
                    warmup,
                    busy_poll_us,
                    base,
                ),
                (Driver::DpdkVirtioUser, Backend_::Engine) => {
                    virtio_user_engine(&dpdk, direction, size, window, warmup, busy_poll_us, base)
                }
                (Driver::DpdkVirtioUser, Backend_::DpdkVhost) => {
                    dpdk_only(direction, size, window, warmup)
                }
            }
            .with_context(|| {
                format!(
                    "{} {} -> {}, {size} B",
                    direction.name(),
                    rec.driver.name(),
                    rec.backend.name()
                )
            })?;
            rec.mpps.push(r.mpps);
            rec.sent.push(r.sent);
            rec.received.push(r.received);
        }
    }
    Ok(out)
}

fn dpdk_only(
    direction: PairDirection,
    size: u32,
    window: Duration,
    warmup: Duration,
) -> Result<One> {
    let mut c = dpdk_pair::PairConfig::new(direction, size);
    c.warmup = warmup;
    let r = dpdk_pair::run(&c, window, 1)?;
    let (sent, received) = (r.sender.tx_packets, r.receiver.rx_packets);
    Ok(One {
        mpps: r.mpps().first().copied().unwrap_or(0.0),
        sent,
        received,
    })
}

/// guest-sim as the driver, through the `vhost-user` mode, in front of the engine or of
/// testpmd's vhost PMD.
#[allow(clippy::too_many_arguments)]
fn guest_sim(
    dpdk: &dpdk::DpdkInstall,
    backend: Backend_,
    direction: PairDirection,
    size: u32,
    window: Duration,
    warmup: Duration,
    busy_poll_us: u64,
    base: &PairConfig,
) -> Result<One> {
    let g2h = direction == PairDirection::G2h;
    let mut cfg = base.clone();
    cfg.workload = if g2h { Workload::Tx } else { Workload::Rx };
    cfg.frame_len = size as usize;
    cfg.duration = warmup + window;
    cfg.warmup = warmup;
    cfg.busy_poll_us = busy_poll_us;
    cfg.guest_poll = true;
    cfg.vcpu_core = Some(vcpu_core());
    cfg.worker_core = Some(worker_core());
    match backend {
        Backend_::Engine => {
            cfg.socket = None;
            let o = VhostUser.run(&cfg)?;
            check_outcome(&o)?;
            let (sent, received) = if g2h {
                (o.guest.sent, engine::metrics::get(&o.metrics.tx.packets))
            } else {
                (
                    engine::metrics::get(&o.metrics.rx.packets) + o.dropped(),
                    o.guest.received,
                )
            };
            Ok(One {
                mpps: window_mpps(&o),
                sent,
                received,
            })
        }
        Backend_::DpdkVhost => {
            let _pages = Hugepages::reserve(dpdk::PAGES_PER_TESTPMD)?;
            let sock = SocketPath::new()?;
            let mut tc = TestpmdConfig::new(
                Vdev::Vhost {
                    iface: sock.path().to_path_buf(),
                    client: false,
                },
                if g2h {
                    ForwardMode::RxOnly
                } else {
                    ForwardMode::TxOnly
                },
            );
            tc.frame_size = size;
            let mut host = Testpmd::spawn(&dpdk.testpmd, &tc).context("testpmd vhost")?;
            if g2h {
                host.start()?;
            }
            cfg.socket = Some(sock.path().to_path_buf());
            cfg.count_foreign = !g2h;
            // h2g: testpmd's txonly starts once the guest has set up its queues (its link
            // comes up then), from a thread, while the run goes on here.
            let (o, started) = std::thread::scope(|s| {
                let h = s.spawn(|| -> Result<()> {
                    if !g2h {
                        host.wait_link_up(Duration::from_secs(10))?;
                        host.start()?;
                    }
                    Ok(())
                });
                let o = VhostUser.run(&cfg);
                (o, h.join())
            });
            let o = o?;
            started.map_err(|_| anyhow::anyhow!("the testpmd starter panicked"))??;
            check_outcome(&o)?;
            host.stop()?;
            let st = host.port_stats()?;
            host.quit()?;
            let (sent, received) = if g2h {
                (o.guest.sent - o.guest.tx_unreturned, st.rx_packets)
            } else {
                (st.tx_packets, o.guest.received)
            };
            Ok(One {
                mpps: window_mpps(&o),
                sent,
                received,
            })
        }
    }
}

fn window_mpps(o: &crate::pair::RunOutcome) -> f64 {
    let secs = o.guest.window.as_secs_f64();
    if secs > 0.0 {
        o.guest.window_packets as f64 / secs / 1e6
    } else {
        0.0
    }
}

fn check_outcome(o: &crate::pair::RunOutcome) -> Result<()> {
    ensure!(o.worker.fatal.is_none(), "{:?}", o.worker.fatal);
    ensure!(o.guest.error.is_none(), "{:?}", o.guest.error);
    ensure!(
        o.worker.queue_failures.is_empty(),
        "{:?}",
        o.worker.queue_failures
    );
    Ok(())
}

/// testpmd's virtio-user PMD in front of the engine's server (null sink or source), asking
/// for `IN_ORDER` and `MRG_RXBUF` as the run's configuration does (its `in_order` and
/// `mrg_rxbuf` devargs), as guest-sim does in front of either backend.
#[allow(clippy::too_many_arguments)]
fn virtio_user_engine(
    dpdk: &dpdk::DpdkInstall,
    direction: PairDirection,
    size: u32,
    window: Duration,
    warmup: Duration,
    busy_poll_us: u64,
    base: &PairConfig,
) -> Result<One> {
    let g2h = direction == PairDirection::G2h;
    let _pages = Hugepages::reserve(dpdk::PAGES_PER_TESTPMD)?;
    let sock = SocketPath::new()?;
    let mode = if g2h {
        NullMode::Sink
    } else {
        NullMode::Source {
            frame_len: size as usize,
        }
    };
    let factory: engine::vhost_user::BackendFactory = Box::new(move |_, _, pairs| {
        Ok((0..pairs)
            .map(|_| Box::new(NullBackend::new(mode, false)) as Box<dyn Backend>)
            .collect())
    });
    let wcfg = WorkerConfig {
        name: "vu".into(),
        core: Some(worker_core()),
        busy_poll_us,
        ..WorkerConfig::default()
    };
    let server = Server::start(sock.path(), NetServer::new(1, factory, wcfg))?;
    let mut tc = TestpmdConfig::new(
        Vdev::VirtioUser {
            path: sock.path().to_path_buf(),
            queue_size: 256,
            server: false,
        },
        if g2h {
            ForwardMode::TxOnly
        } else {
            ForwardMode::RxOnly
        },
    );
    tc.frame_size = size;
    tc.vdev_extra = vec![
        format!("in_order={}", u8::from(base.in_order)),
        format!("mrg_rxbuf={}", u8::from(base.mrg_rxbuf)),
    ];
    let mut guest = Testpmd::spawn(&dpdk.testpmd, &tc).context("testpmd virtio-user")?;
    guest.wait_link_up(Duration::from_secs(10))?;
    guest.start()?;
    std::thread::sleep(warmup);
    let count = |guest: &mut Testpmd| -> Result<u64> {
        Ok(if g2h {
            server.state().served().tx_packets
        } else {
            guest.port_stats()?.rx_packets
        })
    };
    let (c0, t0) = (count(&mut guest)?, Instant::now());
    std::thread::sleep(window);
    let (c1, t1) = (count(&mut guest)?, Instant::now());
    // The sender stops first; then the receiver drains what is in flight: every frame the
    // sender put out must reach the receiver.
    if g2h {
        guest.stop()?;
    } else {
        server.state().stop_serving();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (sent, received) = loop {
        let served = server.state().served();
        let pair = if g2h {
            (guest.port_stats()?.tx_packets, served.tx_packets)
        } else {
            (served.rx_packets, guest.port_stats()?.rx_packets)
        };
        if pair.0 == pair.1 || Instant::now() >= deadline {
            break pair;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !g2h {
        guest.stop()?;
    }
    guest.quit()?;
    server.shutdown()?;
    Ok(One {
        mpps: (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e6,
        sent,
        received,
    })
}
