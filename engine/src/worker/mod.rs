//! The vhost worker: one thread per device, named `vhost-<dev>`, modeled on Linux
//! `vhost_worker` (`drivers/vhost/vhost.c`). It serves a list of queue pairs
//! ([`NetQueuePair`], each with its own backend), round-robin, each handler run bounded by the
//! weights so no pair starves another.
//!
//! ```text
//! loop:
//!   reap kick completions from io_uring (no syscall if none)   → mark queues pending
//!   for each pair: handle_tx, handle_rx, finish_round (see `datapath`)
//!   more work or weight spent?  → go round again (requeue, don't sleep)
//!   busy-poll window (µs): spin on every pair's rings with kicks off
//!   re-enable kicks, fence, re-check the rings  → work? go round
//!   sleep in io_uring until a kick (or stop)
//! ```
//!
//! [`step::Stepper`] is the same loop with no thread, io_uring or clock: the caller steps it
//! one round at a time and hands it the kicks.

pub mod step;
pub mod uring;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vring::{Direction, GuestMemory};

use crate::backend::Backend;
use crate::datapath::{NetQueuePair, PairConfig, Ran};
use crate::device::{Device, DeviceError, DeviceReport, DeviceSpec};
use crate::metrics::{add, get, DeviceMetrics};
use crate::sys;
pub use step::{Stepped, Stepper};
use uring::EventRing;

/// `VHOST_NET_BATCH`: chains per backend submission, and RX frames per used-ring publish.
pub const VHOST_NET_BATCH: usize = 64;
/// `VHOST_NET_WEIGHT`: bytes one handler run may move before it requeues itself.
pub const VHOST_NET_WEIGHT: u64 = 0x80000;
/// `VHOST_NET_PKT_WEIGHT`: packets one handler run may move before it requeues itself.
pub const VHOST_NET_PKT_WEIGHT: u64 = 256;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Device name; the thread is `vhost-<name>`.
    pub name: String,
    /// Core to pin to, if any.
    pub core: Option<usize>,
    /// Chains per backend submission (1..=[`VHOST_NET_BATCH`]).
    pub batch: usize,
    /// Busy-poll window in µs (0: notifications only), like `busyloop_timeout`.
    pub busy_poll_us: u64,
    /// Packets per handler run before requeueing.
    pub pkt_weight: u64,
    /// Bytes per handler run before requeueing.
    pub byte_weight: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: "0".into(),
            core: None,
            batch: VHOST_NET_BATCH,
            busy_poll_us: 0,
            pkt_weight: VHOST_NET_PKT_WEIGHT,
            byte_weight: VHOST_NET_WEIGHT,
        }
    }
}

impl WorkerConfig {
    fn pair(&self) -> PairConfig {
        PairConfig {
            batch: self.batch,
            pkt_weight: self.pkt_weight,
            byte_weight: self.byte_weight,
        }
    }
}

/// A device's pairs, set up to be served.
struct Pairs {
    /// The device's guest memory.
    mem: Arc<GuestMemory>,
    /// Each pair, at the start of the worker's first round (both handlers due).
    slots: Vec<Slot>,
    /// Each pair's kick eventfds: TX, RX.
    kicks: Vec<[std::fs::File; 2]>,
}

/// The device side of every pair of `spec`, pair `n` on `backends[n]`.
fn pairs(
    spec: DeviceSpec,
    backends: Vec<Box<dyn Backend>>,
    cfg: &WorkerConfig,
) -> Result<Pairs, DeviceError> {
    spec.check_pairs(backends.len(), "one backend per queue pair")?;
    let mut slots = Vec::with_capacity(spec.pairs.len());
    let mut kicks = Vec::with_capacity(spec.pairs.len());
    for (i, (wiring, backend)) in spec.pairs.into_iter().zip(backends).enumerate() {
        let (q, k) = NetQueuePair::new(i, &spec.mem, spec.features, wiring, backend, cfg.pair())?;
        kicks.push(k);
        slots.push(Slot {
            q,
            tx: Ran::Requeue,
            rx: Ran::Requeue,
            rx_woken: false,
            poll: None,
            hint_tx: None,
            hint_rx_buf: None,
            hint_rx_used: None,
        });
    }
    Ok(Pairs {
        mem: spec.mem,
        slots,
        kicks,
    })
}

/// Starts the worker thread for `spec`, pair `n` of the device on `backends[n]` (one backend
/// per pair, as each vhost-net queue pair has its own tap queue or socket).
pub fn spawn(
    spec: DeviceSpec,
    backends: Vec<Box<dyn Backend>>,
    cfg: WorkerConfig,
) -> Result<Device, DeviceError> {
    let stop_fd = sys::eventfd()?;
    let mut reads = vec![stop_fd.try_clone()?];
    let mut polls = Vec::new();
    let mut poll_owner = Vec::new();
    let Pairs {
        mem,
        mut slots,
        kicks,
    } = pairs(spec, backends, &cfg)?;
    // Ring index `1 + 2i` is pair i's TX kick, `2 + 2i` its RX kick.
    reads.extend(kicks.into_iter().flatten());
    for (i, s) in slots.iter_mut().enumerate() {
        if let Some(fd) = s.q.backend.rx_fd() {
            polls.push(std::fs::File::from(fd.try_clone_to_owned()?));
            poll_owner.push(i);
            s.poll = Some(polls.len() - 1);
        }
    }
    let n_reads = reads.len();
    for s in &mut slots {
        s.poll = s.poll.map(|j| n_reads + j);
    }
    let ring = EventRing::with_polls(reads, polls)?;
    let metrics = Arc::new(DeviceMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = Loop {
        slots,
        n_reads,
        poll_owner,
        ring,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
        report: DeviceReport::default(),
        mem,
    };
    let thread = std::thread::Builder::new()
        .name(format!("vhost-{}", cfg.name))
        .spawn(move || {
            if let Some(core) = w.cfg.core {
                sys::pin_to(core);
            }
            w.run();
            w.report.cpu_ns = sys::thread_cpu_ns();
            w.metrics
                .worker_cpu_ns
                .store(w.report.cpu_ns, Ordering::Relaxed);
            stopped(&mut w.slots, &mut w.report);
            std::mem::take(&mut w.report)
        })?;
    Ok(Device::from_parts(thread, stop, stop_fd, metrics))
}

/// What the device reports about its pairs once it has stopped serving them: the backends'
/// counters and where each queue stopped.
fn stopped(slots: &mut [Slot], report: &mut DeviceReport) {
    for s in slots {
        let stats = s.q.backend.stats();
        report.add_backend_stats(stats);
        // Every TX chain taken was returned at the end of its round; RX buffers popped
        // ahead and not written go back to the ring, so a frontend that resumes at
        // these bases posts them again instead of losing them.
        s.q.rxw.release(&mut s.q.rxq);
        report
            .stopped_at
            .extend([s.q.rxq.state().next_avail, s.q.txq.state().next_avail]);
    }
}

/// Ring index of the stop eventfd; kicks follow it, two per pair.
const STOP: usize = 0;

/// How a busy-poll window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polled {
    /// The window passed with nothing to do: go to sleep.
    Idle,
    /// The event ring has a completion (a kick, a backend's RX fd, stop), or stop was set.
    Completion,
    /// A queue has work, seen on the rings themselves (the event ring had nothing).
    Work,
}

/// One pair and where its handlers stand.
struct Slot {
    q: NetQueuePair,
    tx: Ran,
    rx: Ran,
    /// The backend's RX fd became readable.
    rx_woken: bool,
    /// Ring index of the backend's RX fd poll, if it has one.
    poll: Option<usize>,
    /// Busy-poll prefetch targets (guest-memory offsets), set at the start of each window.
    hint_tx: Option<usize>,
    hint_rx_buf: Option<usize>,
    hint_rx_used: Option<usize>,
}

impl Slot {
    fn requeued(&self) -> bool {
        self.tx == Ran::Requeue || self.rx == Ran::Requeue
    }

    /// A kick arrived on queue `dir`: a handler waiting on the guest there is due again.
    #[inline]
    fn kicked(&mut self, dir: Direction, m: &DeviceMetrics) {
        let (ran, kicks) = match dir {
            Direction::Tx => (&mut self.tx, &m.tx.kicks),
            Direction::Rx => (&mut self.rx, &m.rx.kicks),
        };
        add(kicks, 1);
        if *ran == Ran::NeedGuest {
            *ran = Ran::Requeue;
        }
    }

    /// One round of this pair: the handlers that are due, then the round's end. True if a
    /// handler has work left (requeued).
    #[inline]
    fn round(&mut self, mem: &GuestMemory, m: &DeviceMetrics, r: &mut DeviceReport) -> bool {
        if self.tx == Ran::Requeue {
            self.tx = self.q.handle_tx(mem, m, r);
            // Frames sent may be frames to receive (a reflecting backend).
            if self.rx == Ran::NeedBackend {
                self.rx = Ran::Requeue;
            }
        }
        if self.rx == Ran::Requeue {
            self.rx = self.q.handle_rx(mem, m, r);
        }
        self.q.finish_round(mem, m);
        self.requeued()
    }

    /// Going to sleep: asks for kicks where a handler waits on the guest, then re-checks
    /// those queues and the backend. True if work turned up meanwhile (requeued).
    #[inline]
    fn rearm(&mut self, mem: &GuestMemory, m: &DeviceMetrics, r: &mut DeviceReport) -> bool {
        if self.tx == Ran::NeedGuest && self.q.rearm(mem, Direction::Tx, m, r) {
            self.tx = Ran::Requeue;
        }
        if self.rx == Ran::NeedGuest && self.q.rearm(mem, Direction::Rx, m, r) {
            self.rx = Ran::Requeue;
        }
        if self.rx == Ran::NeedBackend && self.q.backend.rx_peek().is_some() {
            self.rx = Ran::Requeue;
        }
        self.requeued()
    }

    /// Before a busy-poll window: true if the backend already has a frame for RX that waits
    /// on it (then there is no window: RX is due).
    #[inline]
    fn backend_ready(&mut self) -> bool {
        if self.rx == Ran::NeedBackend && self.q.backend.rx_peek().is_some() {
            self.rx = Ran::Requeue;
            return true;
        }
        false
    }

    /// The start of a busy-poll window: where to keep asking for lines while it spins, and
    /// the next RX buffer popped ahead.
    fn poll_start(&mut self, mem: &GuestMemory, m: &DeviceMetrics, r: &mut DeviceReport) {
        // While waiting for the guest's next frame, keep asking for the line it will most
        // likely be in: the guest writes the frame before it publishes `avail.idx`, so the
        // frame's line comes over alongside the index instead of one transfer after it.
        self.hint_tx = match self.tx {
            Ran::NeedGuest => self.q.txq.peek_next_buffer(mem),
            _ => None,
        };
        // And the other way round: while waiting for a frame to hand the guest, take the
        // lines the delivery will write (the next RX buffer's first two, the next used
        // element's) for writing now, so its stores do not wait for the guest's copies to
        // be invalidated one after another, with `used.idx` queued behind them. The buffer
        // itself is popped (walked and checked) now, while there is nothing else to do,
        // rather than after the frame turns up (`RxWriter::prepare`).
        (self.hint_rx_buf, self.hint_rx_used) = match self.rx {
            Ran::NeedBackend => match self.q.rxw.prepare(&mut self.q.rxq, mem) {
                Ok(buf) => (buf, Some(self.q.rxq.next_used_offset())),
                Err(e) => {
                    self.q.queue_failed(Direction::Rx, e, m, r);
                    self.rx = Ran::Dead;
                    (None, None)
                }
            },
            _ => (None, None),
        };
    }

    /// One spin of a busy-poll window: asks for the lines noted at its start.
    #[inline]
    fn poll_prefetch(&self, mem: &GuestMemory) {
        if let Some(off) = self.hint_tx {
            mem.prefetch(off);
        }
        if let Some(off) = self.hint_rx_buf {
            mem.prefetch_write(off);
            mem.prefetch_write(off + 64);
        }
        if let Some(off) = self.hint_rx_used {
            mem.prefetch_write(off);
        }
    }

    /// One spin of a busy-poll window: looks at the rings the handlers wait on. True if one
    /// has work (that handler is due).
    #[inline]
    fn poll_rings(&mut self, mem: &GuestMemory, m: &DeviceMetrics, r: &mut DeviceReport) -> bool {
        if self.tx == Ran::NeedGuest {
            match self.q.txq.pending(mem) {
                Ok(0) => {}
                Ok(_) => {
                    self.tx = Ran::Requeue;
                    return true;
                }
                Err(e) => {
                    self.q.queue_failed(Direction::Tx, e, m, r);
                    self.tx = Ran::Dead;
                }
            }
        }
        // RX waits for *new* buffers (those already seen may be too few for the frame).
        if self.rx == Ran::NeedGuest {
            match self.q.rxq.has_new_avail(mem) {
                Ok(false) => {}
                Ok(true) => {
                    self.rx = Ran::Requeue;
                    return true;
                }
                Err(e) => {
                    self.q.queue_failed(Direction::Rx, e, m, r);
                    self.rx = Ran::Dead;
                }
            }
        }
        false
    }
}

struct Loop {
    slots: Vec<Slot>,
    /// Ring indices below this are eventfd reads (stop, then the kicks); from it on, polls.
    n_reads: usize,
    /// The pair of each poll (ring index `n_reads + j` is `poll_owner[j]`'s RX fd).
    poll_owner: Vec<usize>,
    ring: EventRing,
    cfg: WorkerConfig,
    metrics: Arc<DeviceMetrics>,
    stop: Arc<AtomicBool>,
    report: DeviceReport,
    /// Last, so it is dropped last: the backends (which may have guest memory registered with
    /// their io_uring) and the ring go first.
    mem: Arc<GuestMemory>,
}

impl Loop {
    fn run(&mut self) {
        // Cloned once, not per round: an `Arc` clone is a locked add, a full barrier on x86
        // that waits for every earlier store (guest memory included) to reach the other core.
        let (mem, m) = (self.mem.clone(), self.metrics.clone());
        let mut stopping = false;
        // False right after busy polling found work on the rings themselves: the ring had no
        // completion when it was last checked, a moment before, so this round skips reaping
        // it (what completes meanwhile is reaped next round).
        let mut reap = true;
        loop {
            let reaped = if std::mem::replace(&mut reap, true) {
                let (slots, n_reads, owner) = (&mut self.slots, self.n_reads, &self.poll_owner);
                self.ring.reap(|i, _| {
                    if i == STOP {
                        stopping = true;
                    } else if i < n_reads {
                        let dir = match (i - 1) % 2 {
                            0 => Direction::Tx,
                            _ => Direction::Rx,
                        };
                        slots[(i - 1) / 2].kicked(dir, &m);
                    } else if let Some(&p) = owner.get(i - n_reads) {
                        slots[p].rx_woken = true;
                    }
                })
            } else {
                Ok(0)
            };
            if let Err(e) = reaped {
                self.report.fatal = Some(format!("io_uring: {e}"));
                return;
            }
            for s in &mut self.slots {
                if std::mem::take(&mut s.rx_woken) {
                    s.q.backend.rx_wake();
                    if s.rx == Ran::NeedBackend {
                        s.rx = Ran::Requeue;
                    }
                }
            }
            if stopping || self.stop.load(Ordering::Acquire) {
                return;
            }
            let mut requeue = false;
            for s in &mut self.slots {
                requeue |= s.round(&mem, &m, &mut self.report);
            }
            if self.report.fatal.is_some() {
                return;
            }
            if requeue {
                continue;
            }
            // Waiting on a backend for RX: have io_uring watch its fd (a tap).
            for s in &self.slots {
                if let (Ran::NeedBackend, Some(p)) = (s.rx, s.poll) {
                    if let Err(e) = self.ring.arm_poll(p) {
                        self.report.fatal = Some(format!("io_uring poll: {e}"));
                        return;
                    }
                }
            }
            if self.cfg.busy_poll_us > 0 {
                match self.busy_poll(&mem, &m) {
                    Polled::Idle => {}
                    Polled::Completion => continue,
                    Polled::Work => {
                        reap = false;
                        continue;
                    }
                }
            }
            // Going to sleep: ask for kicks where we wait on the guest, then re-check.
            let mut requeue = false;
            for s in &mut self.slots {
                requeue |= s.rearm(&mem, &m, &mut self.report);
            }
            if requeue {
                continue;
            }
            // The live CPU-time counter costs a syscall (the thread clock has no vDSO path):
            // refresh it every 64 sleeps, not on each.
            if get(&self.metrics.wakeups).is_multiple_of(64) {
                self.metrics
                    .worker_cpu_ns
                    .store(sys::thread_cpu_ns(), Ordering::Relaxed);
            }
            add(&self.metrics.uring_submits, 1);
            if let Err(e) = self.ring.wait() {
                self.report.fatal = Some(format!("io_uring wait: {e}"));
                return;
            }
            add(&self.metrics.wakeups, 1);
        }
    }

    /// Spins on every pair's rings with kicks off for up to `busy_poll_us`.
    fn busy_poll(&mut self, mem: &GuestMemory, m: &DeviceMetrics) -> Polled {
        // Queued re-arms and the RX polls must reach the kernel for `has_completions` to see
        // them while spinning.
        if let Err(e) = self.ring.flush() {
            self.report.fatal = Some(format!("io_uring submit: {e}"));
            return Polled::Completion;
        }
        for s in &mut self.slots {
            if s.backend_ready() {
                return Polled::Work;
            }
        }
        let deadline = Instant::now() + Duration::from_micros(self.cfg.busy_poll_us);
        for s in &mut self.slots {
            s.poll_start(mem, m, &mut self.report);
        }
        let mut spins: u64 = 0;
        let found = 'spin: loop {
            spins += 1;
            for s in &self.slots {
                s.poll_prefetch(mem);
            }
            if self.ring.has_completions() || self.stop.load(Ordering::Relaxed) {
                break Polled::Completion;
            }
            for s in &mut self.slots {
                if s.poll_rings(mem, m, &mut self.report) {
                    break 'spin Polled::Work;
                }
            }
            // No `rx_peek` while spinning: a backend's RX readiness changes only through this
            // worker's own sends (handled before it polls) or through its RX fd, whose poll
            // completes on the ring (`has_completions` above). The spin stays short, so a
            // frame from the guest is seen sooner.
            if spins.is_multiple_of(64) && Instant::now() >= deadline {
                break Polled::Idle;
            }
            std::hint::spin_loop();
        };
        add(&self.metrics.busy_poll_spins, spins);
        if found != Polled::Idle {
            add(&self.metrics.busy_poll_hits, 1);
        }
        found
    }
}
