//! One device, both sides: guest memory with an RX and a TX queue, the four eventfds, the
//! engine's worker on a backend, and the guest's view of the NIC — what a VMM sets up between a
//! guest driver and a vhost device. Then one timed run of a workload over it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use engine::backend::null::{NullBackend, NullMode};
use engine::device::{Device, DeviceReport, DeviceSpec};
use engine::metrics::{get, DeviceMetrics};
use engine::net::device::{negotiate, DEFAULT_OFFER};
use engine::sys;
use engine::worker::{self, WorkerConfig};
use guest_sim::testbed::{Testbed, TestbedConfig};
use guest_sim::traffic::{self, TrafficConfig, TrafficReport, Workload};
use guest_sim::FreeOrder;
use vring::net::{bit, Features};

use crate::host::{process_rss, Rss};
use crate::topology::VfOptions;

/// Everything one run of one device needs.
#[derive(Clone, Debug)]
pub struct PairConfig {
    /// Which traffic.
    pub workload: Workload,
    /// Frame length, bytes.
    pub frame_len: usize,
    /// Entries per queue.
    pub queue_size: u16,
    /// Guest memory, bytes.
    pub guest_mem_bytes: u64,
    /// `RING_EVENT_IDX`.
    pub event_idx: bool,
    /// Indirect TX chains.
    pub indirect: bool,
    /// `MRG_RXBUF`.
    pub mrg_rxbuf: bool,
    /// `VIRTIO_F_IN_ORDER`.
    pub in_order: bool,
    /// Chains per backend submission.
    pub batch: usize,
    /// Worker busy-poll window, µs.
    pub busy_poll_us: u64,
    /// The guest polls its used rings instead of sleeping on interrupts.
    pub guest_poll: bool,
    /// Offered rate, frames/s.
    pub rate_pps: Option<u64>,
    /// Run length.
    pub duration: Duration,
    /// Excluded from the measurement at the start.
    pub warmup: Duration,
    /// Compare every byte on both ends.
    pub verify_bytes: bool,
    /// Modeled VM-exit cost per kick and per interrupt taken, ns (0: none).
    pub exit_cost_ns: u64,
    /// Core for the guest's vCPU thread.
    pub vcpu_core: Option<usize>,
    /// Core for the worker.
    pub worker_core: Option<usize>,
    /// Where `direct-vf` takes its VFs from and how it reaches them.
    pub vf: VfOptions,
    /// `vhost-user`: the backend's socket (`None`: the engine, served in-process).
    pub socket: Option<std::path::PathBuf>,
    /// `rx`: every frame received counts, test frame or not (a far side that sends its own).
    pub count_foreign: bool,
}

impl PairConfig {
    /// The feature set the guest acknowledges for this config.
    pub fn features(&self) -> Features {
        Features::of(&[bit::VERSION_1])
            .with(bit::RING_EVENT_IDX, self.event_idx)
            .with(bit::RING_INDIRECT_DESC, self.indirect)
            .with(bit::MRG_RXBUF, self.mrg_rxbuf)
            .with(bit::IN_ORDER, self.in_order)
    }

    /// How the guest's vCPU runs the workload.
    pub fn traffic(&self) -> TrafficConfig {
        TrafficConfig {
            workload: self.workload,
            frame_len: self.frame_len,
            rate_pps: self.rate_pps,
            duration: self.duration,
            warmup: self.warmup,
            poll: self.guest_poll,
            event_idx: self.event_idx,
            indirect: self.indirect,
            mrg_rxbuf: self.mrg_rxbuf,
            in_order: self.in_order,
            free_order: FreeOrder::Fifo,
            verify_bytes: self.verify_bytes,
            exit_cost_ns: self.exit_cost_ns,
            count_foreign: self.count_foreign,
        }
    }

    /// How the worker of device number `n` runs.
    pub fn worker(&self, n: usize) -> WorkerConfig {
        WorkerConfig {
            name: n.to_string(),
            core: self.worker_core,
            batch: self.batch,
            busy_poll_us: self.busy_poll_us,
            ..WorkerConfig::default()
        }
    }

    /// The guest memory, queues and eventfds of one device with one queue pair.
    pub fn testbed(&self) -> Result<Testbed> {
        Testbed::new(&TestbedConfig {
            guest_mem_bytes: self.guest_mem_bytes,
            region_len: None,
            queue_size: self.queue_size,
            pairs: 1,
            frame_len: self.frame_len,
            mrg_rxbuf: self.mrg_rxbuf,
        })
        .context("guest memory and queues")
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct RunOutcome {
    /// The guest's side.
    pub guest: TrafficReport,
    /// The worker's side.
    pub worker: DeviceReport,
    /// The device counters at the end.
    pub metrics: Arc<DeviceMetrics>,
    /// vCPU thread CPU time, ns.
    pub vcpu_cpu_ns: u64,
    /// Wall time of the whole run, drain included.
    pub wall: Duration,
    /// Process memory before the device was built.
    pub rss_before: Option<Rss>,
    /// Process memory while the device ran (sampled just before it was stopped).
    pub rss_running: Option<Rss>,
    /// Frames a source outside the device put in (the `rx` injector of the tap modes).
    pub injected: Option<u64>,
    /// Drops counted outside the device (the kernel's tap queue, frames left unread), by reason.
    pub extra_drops: Vec<(String, u64)>,
    /// Problems found around the device (for example in the far guest of a two-guest run).
    pub notes: Vec<String>,
    /// Which backend the device ran on, where a mode can choose (`direct-vf`'s VF backend).
    pub backend: Option<&'static str>,
}

impl RunOutcome {
    /// Resident memory the running device added beyond the guest memory it touched, bytes.
    pub fn engine_overhead_bytes(&self) -> Option<u64> {
        let (b, r) = (self.rss_before?, self.rss_running?);
        let total = r.total.saturating_sub(b.total);
        Some(total.saturating_sub(r.shmem.saturating_sub(b.shmem)))
    }

    /// Frames dropped, all reasons, in the device and around it.
    pub fn dropped(&self) -> u64 {
        self.metrics.total_drops() + self.extra_drops.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// Drops by reason, device and surroundings together.
    pub fn drops_by_reason(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .metrics
            .drops_by_reason()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        v.extend(self.extra_drops.iter().cloned());
        v
    }

    /// Frames that reached the far end: for `tx` what the backend took, otherwise what the
    /// guest received.
    pub fn received(&self, w: Workload) -> u64 {
        match w {
            Workload::Tx => get(&self.metrics.tx.packets),
            Workload::Rx | Workload::Rr | Workload::Echo => self.guest.received,
        }
    }

    /// Frames sent from the near end: for `rx` what the backend produced and delivered or
    /// dropped, otherwise what the guest posted.
    pub fn sent(&self, w: Workload) -> u64 {
        match w {
            Workload::Rx => match self.injected {
                Some(n) => n,
                None => get(&self.metrics.rx.packets) + self.dropped(),
            },
            Workload::Tx | Workload::Rr | Workload::Echo => self.guest.sent,
        }
    }

    /// Frames neither delivered nor counted as dropped.
    pub fn lost(&self, w: Workload) -> u64 {
        self.sent(w)
            .saturating_sub(self.received(w) + self.dropped())
    }
}

/// Checks that a run of `cfg` can lay out its guest: memory, queues and buffers as
/// [`start`] makes them (made, then let go).
pub fn check(cfg: &PairConfig) -> Result<()> {
    Testbed::new(&TestbedConfig {
        guest_mem_bytes: cfg.guest_mem_bytes,
        region_len: None,
        queue_size: cfg.queue_size,
        pairs: 1,
        frame_len: cfg.frame_len,
        mrg_rxbuf: cfg.mrg_rxbuf,
    })
    .map(drop)
    .context("guest memory and queues")
}

/// The null backend for a workload: sink for tx, source for rx, reflector for rr.
pub fn null_backend(cfg: &PairConfig) -> NullBackend {
    let mode = match cfg.workload {
        Workload::Tx => NullMode::Sink,
        Workload::Rx => NullMode::Source {
            frame_len: cfg.frame_len,
        },
        Workload::Rr | Workload::Echo => NullMode::Reflect {
            capacity: cfg.queue_size as usize,
        },
    };
    NullBackend::new(mode, cfg.verify_bytes)
}

/// Builds the device with the null backend and runs the workload once.
pub fn run_null(cfg: &PairConfig) -> Result<RunOutcome> {
    let backend = null_backend(cfg);
    run(cfg, move |spec, wcfg| {
        Ok(worker::spawn(spec, vec![Box::new(backend)], wcfg)?)
    })
}

/// [`run`] with any [`Served`] device.
pub fn run_served(
    cfg: &PairConfig,
    start_device: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Box<dyn Served>>,
) -> Result<RunOutcome> {
    start_served(cfg, 0, start_device)?.join()
}

/// Builds the device with `start_device` (which gets the device's half of the wiring and the
/// worker settings) and runs the workload once.
pub fn run(
    cfg: &PairConfig,
    start_device: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Device>,
) -> Result<RunOutcome> {
    start(cfg, 0, start_device)?.join()
}

/// What serves a device's queues while a vCPU drives them: the engine's own [`Device`] in
/// this process, or a vhost-user backend reached through a frontend connection
/// ([`crate::modes::vhost_user`]).
pub trait Served: Send {
    /// The device's counters (a backend outside the process fills them when it stops).
    fn metrics(&self) -> Arc<DeviceMetrics>;
    /// Stops serving: the device stops taking new buffers, and says how it ended.
    fn stop(self: Box<Self>) -> DeviceReport;
}

impl Served for Device {
    fn metrics(&self) -> Arc<DeviceMetrics> {
        Device::metrics(self).clone()
    }

    fn stop(self: Box<Self>) -> DeviceReport {
        Device::stop(*self)
    }
}

/// A device and its vCPU, running.
pub struct Running {
    vcpu: std::thread::JoinHandle<(TrafficReport, u64)>,
    stop: Arc<AtomicBool>,
    slot: Arc<Mutex<Option<Box<dyn Served>>>>,
    report: Arc<Mutex<Option<DeviceReport>>>,
    rss: Arc<Mutex<Option<Rss>>>,
    rss_before: Option<Rss>,
    metrics: Arc<DeviceMetrics>,
    started: Instant,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// Builds device number `n` (threads `vcpu-<n>` and the device's own) and starts its vCPU.
pub fn start(
    cfg: &PairConfig,
    n: usize,
    start_device: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Device>,
) -> Result<Running> {
    start_served(cfg, n, |spec, w| {
        Ok(Box::new(start_device(spec, w)?) as Box<dyn Served>)
    })
}

/// [`start`] with any [`Served`] device.
pub fn start_served(
    cfg: &PairConfig,
    n: usize,
    start_device: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Box<dyn Served>>,
) -> Result<Running> {
    let rss_before = process_rss();
    let features = negotiate(DEFAULT_OFFER, cfg.features()).context("feature negotiation")?;
    // One queue pair per device: one vCPU drives it.
    let tb = cfg.testbed()?;
    let spec = DeviceSpec {
        mem: tb.mem,
        features,
        pairs: tb.device,
    };
    let Some(nic) = tb.guest.into_iter().next() else {
        return Err(anyhow!("the testbed built no queue pair"));
    };
    let tcfg = cfg.traffic();
    let wcfg = cfg.worker(n);
    // The guest sets up its rings before the device starts using them (DRIVER_OK).
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let vcpu_core = cfg.vcpu_core;
    let stop2 = stop.clone();
    let slot: Arc<Mutex<Option<Box<dyn Served>>>> = Arc::new(Mutex::new(None));
    let report: Arc<Mutex<Option<DeviceReport>>> = Arc::new(Mutex::new(None));
    let rss: Arc<Mutex<Option<Rss>>> = Arc::new(Mutex::new(None));
    let (slot2, report2, rss2) = (slot.clone(), report.clone(), rss.clone());
    let vcpu = std::thread::Builder::new()
        .name(format!("vcpu-{n}"))
        .spawn(move || {
            if let Some(c) = vcpu_core {
                sys::pin_to(c);
            }
            // Wait for the device to exist before generating traffic.
            let go = ready_rx.recv().is_ok();
            let t0 = sys::thread_cpu_ns();
            let mut quiesce = || {
                if let Ok(mut r) = rss2.lock() {
                    *r = process_rss();
                }
                let w = slot2.lock().ok().and_then(|mut s| s.take());
                if let (Some(w), Ok(mut r)) = (w, report2.lock()) {
                    *r = Some(w.stop());
                }
            };
            if !go {
                stop2.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let r = traffic::run(&nic, &tcfg, &stop2, &mut quiesce);
            (r, sys::thread_cpu_ns() - t0)
        })
        .context("spawn vcpu thread")?;
    let worker = match start_device(spec, wcfg) {
        Ok(w) => w,
        Err(e) => {
            drop(ready_tx);
            let _ = vcpu.join();
            return Err(e.context("starting the device"));
        }
    };
    let metrics = worker.metrics();
    // The vCPU stops the device itself once it has drained (see `traffic::run`), so the last
    // reap sees everything the device completed.
    *slot.lock().map_err(|_| anyhow!("worker slot poisoned"))? = Some(worker);
    let _ = ready_tx.send(());
    Ok(Running {
        vcpu,
        stop,
        slot,
        report,
        rss,
        rss_before,
        metrics,
        started,
    })
}

impl Running {
    /// Asks the vCPU to stop early (it then drains and stops the device).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the vCPU to finish (its duration, or [`Running::stop`]) and collects.
    pub fn join(self) -> Result<RunOutcome> {
        let (guest, vcpu_cpu_ns) = self
            .vcpu
            .join()
            .map_err(|_| anyhow!("vcpu thread panicked"))?;
        let taken = self
            .report
            .lock()
            .map_err(|_| anyhow!("report slot poisoned"))?
            .take();
        let worker = match taken {
            Some(r) => r,
            // The vCPU ended before it could stop the device.
            None => match self
                .slot
                .lock()
                .map_err(|_| anyhow!("worker slot poisoned"))?
                .take()
            {
                Some(w) => w.stop(),
                None => DeviceReport::default(),
            },
        };
        let rss_running = *self.rss.lock().map_err(|_| anyhow!("rss slot poisoned"))?;
        Ok(RunOutcome {
            guest,
            worker,
            metrics: self.metrics,
            vcpu_cpu_ns,
            wall: self.started.elapsed(),
            rss_before: self.rss_before,
            rss_running,
            injected: None,
            extra_drops: Vec::new(),
            notes: Vec::new(),
            backend: None,
        })
    }
}

/// A small, fast, fully checked configuration for tests.
#[cfg(test)]
pub(crate) fn test_config(workload: Workload) -> PairConfig {
    PairConfig {
        workload,
        frame_len: 64,
        queue_size: 256,
        guest_mem_bytes: 16 << 20,
        event_idx: true,
        indirect: false,
        mrg_rxbuf: true,
        in_order: true,
        batch: 64,
        busy_poll_us: 0,
        guest_poll: false,
        rate_pps: None,
        duration: Duration::from_millis(150),
        warmup: Duration::from_millis(20),
        verify_bytes: true,
        exit_cost_ns: 0,
        vcpu_core: None,
        worker_core: None,
        vf: VfOptions::default(),
        socket: None,
        count_foreign: false,
    }
}

/// Moderate, rate-limited traffic for tests over kernel topologies (taps, VFs, AF_XDP): no
/// loss is acceptable at this rate.
#[cfg(test)]
pub(crate) fn moderate_test_config(workload: Workload) -> PairConfig {
    PairConfig {
        frame_len: 128,
        rate_pps: Some(3000),
        duration: Duration::from_millis(300),
        ..test_config(workload)
    }
}

#[cfg(test)]
mod tests {
    //! End to end: guest-sim ↔ engine worker ↔ null backend. Every packet sent arrives exactly
    //! once with the right bytes.
    use super::*;
    use engine::layout::{Descriptor, VIRTQ_DESC_F_NEXT};
    use engine::virtq::ErrorKind;
    use guest_sim::traffic::NicBuffers;
    use guest_sim::MockGuest;
    use vring::Direction;

    fn cfg(workload: Workload) -> PairConfig {
        test_config(workload)
    }

    fn check_exact(c: &PairConfig) -> RunOutcome {
        let o = run_null(c).expect("run");
        let w = c.workload;
        assert!(o.guest.error.is_none(), "{:?}", o.guest.error);
        assert!(o.worker.queue_failures.is_empty(), "{:?}", o.worker);
        assert!(o.worker.fatal.is_none(), "{:?}", o.worker.fatal);
        assert!(
            o.sent(w) > 100,
            "too little traffic for a test: {}",
            o.sent(w)
        );
        assert_eq!(o.dropped(), 0, "{:?}", o.metrics.drops_by_reason());
        assert_eq!(
            o.lost(w),
            0,
            "sent {} received {}",
            o.sent(w),
            o.received(w)
        );
        assert_eq!(o.sent(w), o.received(w));
        assert_eq!(o.guest.rx_corrupt, 0);
        assert_eq!(o.guest.rx_out_of_order, 0);
        assert_eq!(o.guest.tx_unreturned, 0);
        if w == Workload::Tx {
            let stats: std::collections::HashMap<_, _> =
                o.worker.backend_stats.iter().cloned().collect();
            assert_eq!(stats["tx_in_order"], o.guest.sent);
            assert_eq!(stats["tx_out_of_order"], 0);
        }
        if w == Workload::Rr {
            assert_eq!(o.guest.rtt_ns.len(), o.guest.received);
        }
        o
    }

    #[test]
    fn every_workload_delivers_exactly_once() {
        for w in [Workload::Tx, Workload::Rx, Workload::Rr] {
            for event_idx in [true, false] {
                let mut c = cfg(w);
                c.event_idx = event_idx;
                check_exact(&c);
            }
        }
    }

    #[test]
    fn indirect_chains_and_large_frames() {
        for w in [Workload::Tx, Workload::Rr] {
            let mut c = cfg(w);
            c.indirect = true;
            c.frame_len = 1500;
            check_exact(&c);
        }
    }

    #[test]
    fn mergeable_and_whole_rx_buffers() {
        for mrg in [true, false] {
            for len in [64, 1500, 9000] {
                let mut c = cfg(Workload::Rx);
                c.mrg_rxbuf = mrg;
                c.frame_len = len;
                let o = check_exact(&c);
                if mrg && len > 2048 {
                    // 9000-byte frames span 5 buffers of 2 KiB.
                    assert!(get(&o.metrics.rx.chains) >= 5 * get(&o.metrics.rx.packets));
                }
            }
        }
    }

    #[test]
    fn busy_polling_and_guest_polling_deliver_exactly_once() {
        // Batch 1 too: every batch is full, and the worker holds the last one (returning it
        // after the RX work) only when nothing is queued behind it.
        for batch in [1, 64] {
            for w in [Workload::Tx, Workload::Rx, Workload::Rr] {
                let mut c = cfg(w);
                c.busy_poll_us = 50;
                c.guest_poll = true;
                c.batch = batch;
                check_exact(&c);
            }
        }
    }

    #[test]
    fn rate_limited_runs_offer_the_rate() {
        let mut c = cfg(Workload::Tx);
        c.rate_pps = Some(20_000);
        c.duration = Duration::from_millis(300);
        let o = check_exact(&c);
        // 300 ms at 20 kpps is 6000 frames; allow scheduling slack, not a performance check.
        assert!(
            (4000..=6100).contains(&o.guest.sent),
            "sent {}",
            o.guest.sent
        );
    }

    /// Frames that can never fit the guest's buffers are dropped and counted, and the worker
    /// still comes back to its loop (weights) and stops on time.
    #[test]
    fn frames_too_large_for_every_buffer_are_counted_and_the_worker_stops() {
        let mut c = cfg(Workload::Rx);
        c.mrg_rxbuf = false;
        let started = Instant::now();
        let o = run(&c, |spec, w| {
            let source = NullBackend::new(NullMode::Source { frame_len: 4000 }, false);
            Ok(worker::spawn(spec, vec![Box::new(source)], w)?)
        })
        .expect("run");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(o.guest.received, 0);
        let drops: std::collections::HashMap<_, _> = o.drops_by_reason().into_iter().collect();
        assert!(
            drops.get("rx_too_large").copied().unwrap_or(0) > 100,
            "{drops:?}"
        );
        assert!(get(&o.metrics.rx.weight_exhausted) > 0);
    }

    /// A guest that corrupts its TX ring mid-run: the TX queue stops with an error in the
    /// report, nothing panics or hangs, and the run ends on time.
    #[test]
    fn broken_guest_queue_stops_that_queue_cleanly() {
        let c = cfg(Workload::Tx);
        let features = negotiate(DEFAULT_OFFER, c.features()).expect("features");
        let guest = MockGuest::new(1 << 20, &[16, 16]).expect("guest");
        // A descriptor loop at head 0, made available.
        guest
            .write_desc(
                1,
                0,
                Descriptor {
                    addr: 0x8000,
                    len: 64,
                    flags: VIRTQ_DESC_F_NEXT,
                    next: 0,
                },
            )
            .expect("desc");
        guest.write_avail_slot(1, 0, 0).expect("slot");
        guest.set_avail_idx(1, 1).expect("idx");
        let queues = guest.queues.clone();
        let tb =
            Testbed::from_guest(guest.mem, &queues, vec![NicBuffers::default()]).expect("wire");
        let spec = DeviceSpec {
            mem: tb.mem,
            features,
            pairs: tb.device,
        };
        let w = worker::spawn(
            spec,
            vec![Box::new(NullBackend::new(NullMode::Sink, true))],
            WorkerConfig::default(),
        )
        .expect("worker");
        let g = &tb.guest[0].pair;
        sys::signal(&g.tx.kick).expect("kick");
        // The worker tells the guest (an interrupt) when the queue breaks.
        let t0 = Instant::now();
        assert_eq!(sys::wait(&g.tx.call).expect("call"), 1);
        assert!(t0.elapsed() < Duration::from_secs(5));
        let m = w.metrics().clone();
        let report = w.stop();
        let f = report.failure(Direction::Tx).expect("tx failure");
        assert_eq!((f.pair, f.kind), (0, ErrorKind::ChainLoop), "{report:?}");
        assert!(f.message.contains("loop"), "{f}");
        assert!(report.failure(Direction::Rx).is_none());
        assert_eq!(m.queue_errors_by_kind(), vec![("chain_loop", 1)]);
    }
}
