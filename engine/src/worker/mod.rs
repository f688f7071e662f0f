//! The vhost worker: one thread per device, named `vhost-<dev>`, modeled on Linux
//! `vhost_worker` + `handle_tx`/`handle_rx` (`drivers/vhost/net.c`).
//!
//! ```text
//! loop:
//!   reap kick completions from io_uring (no syscall if none)   → mark queues pending
//!   handle_tx: pop ≤ batch chains → backend.send → used, publish once, call if asked
//!              until the ring is empty or the weight (256 pkts / 512 KiB) is spent
//!   handle_rx: peek frame → gather buffers → backend writes into them → used, num_buffers
//!   more work or weight spent?  → go round again (requeue, don't sleep)
//!   busy-poll window (µs): spin on the rings with kicks off
//!   re-enable kicks, fence, re-check the rings  → work? go round
//!   sleep in io_uring until a kick (or stop)
//! ```

pub mod uring;

use std::fs::File;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vring::layout::QueueAddrs;
use vring::net::{bit, Features};
use vring::GuestMemory;

use crate::backend::{Backend, BackendError, TxResult};
use crate::metrics::{add, get, DeviceMetrics, DropReason, QueueMetrics};
use crate::net::rx::{Gather, RxWriter};
use crate::net::tx::TxBatch;
use crate::sys;
use crate::virtq::{DeviceQueue, QueueError};
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

/// What the driver set up, handed to the worker (`VHOST_SET_MEM_TABLE`, `_SET_VRING_ADDR`,
/// `_SET_VRING_KICK`/`_CALL`, `SET_FEATURES`).
#[derive(Debug)]
pub struct DeviceSpec {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// Negotiated features.
    pub features: Features,
    /// Transmit queue (virtio-net queue 1).
    pub tx: QueueAddrs,
    /// Receive queue (virtio-net queue 0).
    pub rx: QueueAddrs,
    /// Kick eventfd of the TX queue (the guest writes it).
    pub tx_kick: File,
    /// Kick eventfd of the RX queue.
    pub rx_kick: File,
    /// Call eventfd of the TX queue (the worker writes it).
    pub tx_call: File,
    /// Call eventfd of the RX queue.
    pub rx_call: File,
}

/// Worker setup or run failures.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A queue's rings are unusable from the start.
    #[error("queue setup")]
    Queue(#[from] QueueError),
    /// io_uring or thread setup failed.
    #[error("worker setup")]
    Io(#[from] std::io::Error),
    /// Bad configuration.
    #[error("bad worker config: {0}")]
    Config(&'static str),
}

/// What a stopped worker reports.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// The error that broke the TX queue, if any.
    pub tx_error: Option<String>,
    /// The error that broke the RX queue, if any.
    pub rx_error: Option<String>,
    /// A backend failure that stopped the worker early, if any.
    pub fatal: Option<String>,
    /// The worker thread's CPU time, ns.
    pub cpu_ns: u64,
    /// The backend's own counters (for example the null sink's order checks).
    pub backend_stats: Vec<(&'static str, u64)>,
}

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    thread: Option<JoinHandle<WorkerReport>>,
    stop: Arc<AtomicBool>,
    stop_fd: File,
    metrics: Arc<DeviceMetrics>,
}

impl Worker {
    /// Starts the worker thread for `spec` with `backend`.
    pub fn spawn(
        spec: DeviceSpec,
        backend: Box<dyn Backend>,
        cfg: WorkerConfig,
    ) -> Result<Worker, WorkerError> {
        if cfg.batch == 0 || cfg.batch > VHOST_NET_BATCH {
            return Err(WorkerError::Config("batch must be in 1..=64"));
        }
        let txq = DeviceQueue::new(&spec.mem, spec.tx, spec.features)?;
        let rxq = DeviceQueue::new(&spec.mem, spec.rx, spec.features)?;
        let stop_fd = sys::eventfd()?;
        let polls = match backend.rx_fd() {
            Some(fd) => vec![File::from(fd.try_clone_to_owned()?)],
            None => Vec::new(),
        };
        let has_rx_poll = !polls.is_empty();
        let ring = EventRing::with_polls(
            vec![spec.tx_kick, spec.rx_kick, stop_fd.try_clone()?],
            polls,
        )?;
        let metrics = Arc::new(DeviceMetrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mrg = spec.features.has(bit::MRG_RXBUF);
        let mut w = Loop {
            mem: spec.mem,
            txq,
            rxq,
            tx_call: spec.tx_call,
            rx_call: spec.rx_call,
            ring,
            has_rx_poll,
            backend,
            cfg: cfg.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            tx: TxBatch::new(cfg.batch),
            tx_pending: false,
            tx_notify: false,
            rx_notify: false,
            tx_tally: TxTally::default(),
            rxw: RxWriter::new(mrg),
            report: WorkerReport::default(),
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
                w.report.backend_stats = w.backend.stats();
                std::mem::take(&mut w.report)
            })?;
        Ok(Worker {
            thread: Some(thread),
            stop,
            stop_fd,
            metrics,
        })
    }

    /// Wraps a device thread started elsewhere (the emulated device's event loop) so it is
    /// stopped and reported like a worker: `stop` is set and `stop_fd` signalled on stop.
    pub(crate) fn from_parts(
        thread: JoinHandle<WorkerReport>,
        stop: Arc<AtomicBool>,
        stop_fd: File,
        metrics: Arc<DeviceMetrics>,
    ) -> Worker {
        Worker {
            thread: Some(thread),
            stop,
            stop_fd,
            metrics,
        }
    }

    /// The device's live counters.
    pub fn metrics(&self) -> &Arc<DeviceMetrics> {
        &self.metrics
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) -> WorkerReport {
        self.shutdown()
    }

    fn shutdown(&mut self) -> WorkerReport {
        self.stop.store(true, Ordering::Release);
        let _ = sys::signal(&self.stop_fd);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => WorkerReport {
                fatal: Some("worker thread panicked".into()),
                ..Default::default()
            },
            None => WorkerReport::default(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

const TX_KICK: usize = 0;
const RX_KICK: usize = 1;
const STOP: usize = 2;
/// The backend's RX fd, polled for readability on demand.
const RX_POLL: usize = 3;

/// TX counts not yet added to the shared counters.
#[derive(Debug, Default)]
struct TxTally {
    /// Frames sent and dropped, as the backend counts them.
    frames: TxResult,
    chains: u64,
    batches: u64,
}

/// How a busy-poll window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Polled {
    /// The window passed with nothing to do: go to sleep.
    Idle,
    /// The event ring has a completion (a kick, the backend's RX fd, stop), or stop was set.
    Completion,
    /// A queue has work, seen on the rings themselves (the event ring had nothing).
    Work,
}

/// How a handler run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    /// Weight spent with work left: run again before sleeping.
    Requeue,
    /// TX: ring empty. RX: no buffers for the next frame.
    NeedGuest,
    /// RX: the backend has no frame.
    NeedBackend,
    /// The queue is broken (or the backend failed): never run it again.
    Dead,
}

struct Loop {
    txq: DeviceQueue,
    rxq: DeviceQueue,
    tx_call: File,
    rx_call: File,
    ring: EventRing,
    /// The backend has an RX fd registered with the ring at [`RX_POLL`].
    has_rx_poll: bool,
    backend: Box<dyn Backend>,
    cfg: WorkerConfig,
    metrics: Arc<DeviceMetrics>,
    stop: Arc<AtomicBool>,
    tx: TxBatch,
    /// `tx` holds a sent batch not yet returned to the guest (see [`Loop::finish_round`]).
    tx_pending: bool,
    /// TX used entries were published and the interrupt decision is still to be made.
    tx_notify: bool,
    /// The same for RX, published at the end of a handler run.
    rx_notify: bool,
    /// TX counts of the round, added to the shared counters by `finish_round`: after the
    /// round's RX delivery, not between a request and its response.
    tx_tally: TxTally,
    rxw: RxWriter,
    report: WorkerReport,
    /// Last, so it is dropped last: the backend (which may have guest memory registered with
    /// its io_uring) and the ring go first.
    mem: Arc<GuestMemory>,
}

impl Loop {
    fn run(&mut self) {
        // Cloned once, not per round: an `Arc` clone is a locked add, a full barrier on x86
        // that waits for every earlier store (guest memory included) to reach the other core.
        let (mem, m) = (self.mem.clone(), self.metrics.clone());
        let mut tx = Ran::Requeue;
        let mut rx = Ran::Requeue;
        let mut stopping = false;
        let mut rx_woken = false;
        // False right after busy polling found work on the rings themselves: the ring had no
        // completion when it was last checked, a moment before, so this round skips reaping
        // it (what completes meanwhile is reaped next round).
        let mut reap = true;
        loop {
            let reaped = if std::mem::replace(&mut reap, true) {
                self.ring.reap(|i, _| match i {
                    TX_KICK => {
                        add(&m.tx.kicks, 1);
                        if tx == Ran::NeedGuest {
                            tx = Ran::Requeue;
                        }
                    }
                    RX_KICK => {
                        add(&m.rx.kicks, 1);
                        if rx == Ran::NeedGuest {
                            rx = Ran::Requeue;
                        }
                    }
                    STOP => stopping = true,
                    RX_POLL => rx_woken = true,
                    _ => {}
                })
            } else {
                Ok(0)
            };
            if let Err(e) = reaped {
                self.report.fatal = Some(format!("io_uring: {e}"));
                return;
            }
            if rx_woken {
                rx_woken = false;
                self.backend.rx_wake();
                if rx == Ran::NeedBackend {
                    rx = Ran::Requeue;
                }
            }
            if stopping || self.stop.load(Ordering::Acquire) {
                return;
            }
            if tx == Ran::Requeue {
                tx = self.handle_tx(&mem, &m);
                // Frames sent may be frames to receive (a reflecting backend).
                if rx == Ran::NeedBackend {
                    rx = Ran::Requeue;
                }
            }
            if rx == Ran::Requeue {
                rx = self.handle_rx(&mem, &m);
            }
            self.finish_round();
            if self.report.fatal.is_some() {
                return;
            }
            if tx == Ran::Requeue || rx == Ran::Requeue {
                continue;
            }
            // Waiting on the backend for RX: have io_uring watch its fd (a tap).
            if rx == Ran::NeedBackend && self.has_rx_poll {
                if let Err(e) = self.ring.arm_poll(RX_POLL) {
                    self.report.fatal = Some(format!("io_uring poll: {e}"));
                    return;
                }
            }
            if self.cfg.busy_poll_us > 0 {
                match self.busy_poll(&mut tx, &mut rx) {
                    Polled::Idle => {}
                    Polled::Completion => continue,
                    Polled::Work => {
                        reap = false;
                        continue;
                    }
                }
            }
            // Going to sleep: ask for kicks where we wait on the guest, then re-check.
            if tx == Ran::NeedGuest && self.rearm(true) {
                tx = Ran::Requeue;
            }
            if rx == Ran::NeedGuest && self.rearm(false) {
                rx = Ran::Requeue;
            }
            if rx == Ran::NeedBackend && self.backend.rx_peek().is_some() {
                rx = Ran::Requeue;
            }
            if tx == Ran::Requeue || rx == Ran::Requeue {
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

    /// Re-enables kicks on a queue and re-checks it; true if buffers arrived meanwhile.
    fn rearm(&mut self, tx: bool) -> bool {
        let q = if tx { &mut self.txq } else { &mut self.rxq };
        match q.enable_notifications(&self.mem) {
            Ok(more) => {
                if more {
                    q.disable_notifications(&self.mem);
                }
                more
            }
            Err(e) => {
                self.queue_failed(tx, e);
                false
            }
        }
    }

    /// Spins on the rings with kicks off for up to `busy_poll_us`.
    fn busy_poll(&mut self, tx: &mut Ran, rx: &mut Ran) -> Polled {
        // Queued re-arms and the RX poll must reach the kernel for `has_completions` to see
        // them while spinning.
        if let Err(e) = self.ring.flush() {
            self.report.fatal = Some(format!("io_uring submit: {e}"));
            return Polled::Completion;
        }
        if *rx == Ran::NeedBackend && self.backend.rx_peek().is_some() {
            *rx = Ran::Requeue;
            return Polled::Work;
        }
        let deadline = Instant::now() + Duration::from_micros(self.cfg.busy_poll_us);
        // While waiting for the guest's next frame, keep asking for the line it will most
        // likely be in: the guest writes the frame before it publishes `avail.idx`, so the
        // frame's line comes over alongside the index instead of one transfer after it.
        let next_tx = match *tx {
            Ran::NeedGuest => self.txq.peek_next_buffer(&self.mem),
            _ => None,
        };
        // And the other way round: while waiting for a frame to hand the guest, take the lines
        // the delivery will write (the next RX buffer's first two, the next used element's)
        // for writing now, so its stores do not wait for the guest's copies to be invalidated
        // one after another, with `used.idx` queued behind them. The buffer itself is popped
        // (walked and checked) now, while there is nothing else to do, rather than after the
        // frame turns up (`RxWriter::prepare`).
        let (rx_buf, rx_used) = match *rx {
            Ran::NeedBackend => match self.rxw.prepare(&mut self.rxq, &self.mem) {
                Ok(buf) => (buf, Some(self.rxq.next_used_offset())),
                Err(e) => {
                    self.queue_failed(false, e);
                    *rx = Ran::Dead;
                    (None, None)
                }
            },
            _ => (None, None),
        };
        let mut spins: u64 = 0;
        let found = loop {
            spins += 1;
            if let Some(off) = next_tx {
                self.mem.prefetch(off);
            }
            if let Some(off) = rx_buf {
                self.mem.prefetch_write(off);
                self.mem.prefetch_write(off + 64);
            }
            if let Some(off) = rx_used {
                self.mem.prefetch_write(off);
            }
            if self.ring.has_completions() || self.stop.load(Ordering::Relaxed) {
                break Polled::Completion;
            }
            if *tx == Ran::NeedGuest {
                match self.txq.pending(&self.mem) {
                    Ok(0) => {}
                    Ok(_) => {
                        *tx = Ran::Requeue;
                        break Polled::Work;
                    }
                    Err(e) => {
                        self.queue_failed(true, e);
                        *tx = Ran::Dead;
                    }
                }
            }
            // RX waits for *new* buffers (those already seen may be too few for the frame).
            if *rx == Ran::NeedGuest && self.rxq.has_new_avail(&self.mem) {
                *rx = Ran::Requeue;
                break Polled::Work;
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

    fn queue_failed(&mut self, tx: bool, e: QueueError) {
        add(&self.metrics.queue_errors[e.kind() as usize], 1);
        let slot = if tx {
            &mut self.report.tx_error
        } else {
            &mut self.report.rx_error
        };
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
        // Tell the guest, so a real driver would notice the broken device and reset it.
        let call = if tx { &self.tx_call } else { &self.rx_call };
        let _ = sys::signal(call);
    }

    fn signal_if_asked(q: &mut DeviceQueue, mem: &GuestMemory, call: &File, m: &QueueMetrics) {
        // SeqCst fence: the store-load race `needs_notification` describes (our `used.idx`
        // store against our read of the guest's `used_event`).
        fence(Ordering::SeqCst);
        Self::signal_if_asked_fenced(q, mem, call, m);
    }

    /// [`Loop::signal_if_asked`] for a caller that has fenced after its last publish.
    fn signal_if_asked_fenced(
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        call: &File,
        m: &QueueMetrics,
    ) {
        if q.needs_notification_fenced(mem) {
            let _ = sys::signal(call);
            add(&m.calls, 1);
        } else {
            add(&m.calls_suppressed, 1);
        }
    }

    fn handle_tx(&mut self, mem: &GuestMemory, m: &DeviceMetrics) -> Ran {
        // The lines the run's TX completion will store to (`used.idx` and the next used
        // element): the guest reads them to reap, so they are shared by then, and the
        // completion's stores (and the round's closing fence behind them) would wait for them.
        mem.prefetch_write(self.txq.used_idx_offset());
        mem.prefetch_write(self.txq.next_used_offset());
        self.txq.disable_notifications(mem);
        let (mut pkts, mut bytes) = (0u64, 0u64);
        loop {
            let failed = self.tx.pop(&mut self.txq, mem, self.cfg.batch);
            let n = self.tx.len();
            if n > 0 {
                let t = &mut self.tx_tally;
                #[cfg(debug_assertions)]
                let before = t.frames.frames();
                // Every frame is counted by the backend, failure or not.
                let sent = self.backend.send(mem, self.tx.chains(), &mut t.frames);
                #[cfg(debug_assertions)]
                debug_assert_eq!(t.frames.frames() - before, n as u64, "frames not counted");
                if let Err(e) = sent {
                    self.report.fatal = Some(backend_error(e));
                }
                t.chains += n as u64;
                t.batches += 1;
                pkts += n as u64;
                bytes += self.tx.bytes();
            }
            // A full batch with nothing behind it is the run's last one, like a short batch.
            let more_pending = n == self.cfg.batch
                && failed.is_none()
                && match self.txq.pending(mem) {
                    Ok(p) => p > 0,
                    Err(e) => {
                        self.tx_pending = true;
                        self.queue_failed(true, e);
                        return Ran::Dead;
                    }
                };
            let more = more_pending
                && self.report.fatal.is_none()
                && pkts < self.cfg.pkt_weight
                && bytes < self.cfg.byte_weight;
            if n > 0 {
                if more {
                    self.complete_tx();
                } else {
                    // The run's last batch is returned after this round's RX work (see `run`):
                    // its used-ring stores would otherwise sit in the store buffer ahead of the
                    // RX delivery's, and a request's response would reach the guest only after
                    // them.
                    self.tx_pending = true;
                }
            }
            if let Some(e) = failed {
                // The malformed chain itself: popped, never sent, and not returnable.
                m.drop_packets(DropReason::QueueBroken, 1);
                self.queue_failed(true, e);
                return Ran::Dead;
            }
            if self.report.fatal.is_some() {
                return Ran::Dead;
            }
            if !more_pending {
                return Ran::NeedGuest;
            }
            if pkts >= self.cfg.pkt_weight || bytes >= self.cfg.byte_weight {
                add(&m.tx.weight_exhausted, 1);
                return Ran::Requeue;
            }
        }
    }

    /// Returns the TX batch in `self.tx` to the guest and notes that the interrupt decision is
    /// due.
    fn complete_tx(&mut self) {
        // Only a used-ring write can fail here, and the ring was validated at set-up; should it
        // fail anyway the queue is broken and counted by `fail`.
        let _ = self.tx.complete(&mut self.txq, &self.mem);
        self.tx_notify = true;
    }

    /// End of a round: adds the round's TX counts, returns a TX batch still held, then decides
    /// whether the guest wants an interrupt on each queue published to in the round's last
    /// step. One full fence serves both decisions, and it is paid after the RX delivery, not
    /// between it and the guest.
    fn finish_round(&mut self) {
        let t = std::mem::take(&mut self.tx_tally);
        if t.batches > 0 {
            let m = &self.metrics;
            add(&m.tx.packets, t.frames.sent);
            add(&m.tx.bytes, t.frames.bytes);
            for why in DropReason::ALL {
                m.drop_packets(why, t.frames.dropped[why as usize]);
            }
            add(&m.tx.chains, t.chains);
            add(&m.tx.batches, t.batches);
        }
        if std::mem::take(&mut self.tx_pending) {
            self.complete_tx();
        }
        let rx = std::mem::take(&mut self.rx_notify);
        let tx = std::mem::take(&mut self.tx_notify);
        if !(rx || tx) {
            return;
        }
        // SeqCst fence: the store-load race of `DeviceQueue::needs_notification` — each of our
        // `used.idx` stores (RX and TX) against our read of that queue's `used_event` — closed
        // for both queues at once.
        fence(Ordering::SeqCst);
        let m = &self.metrics;
        if rx {
            Self::signal_if_asked_fenced(&mut self.rxq, &self.mem, &self.rx_call, &m.rx);
        }
        if tx {
            Self::signal_if_asked_fenced(&mut self.txq, &self.mem, &self.tx_call, &m.tx);
        }
    }

    fn handle_rx(&mut self, mem: &GuestMemory, m: &DeviceMetrics) -> Ran {
        // A polling guest keeps reading `used.idx`, so the line is shared when this run's
        // publishing store comes, and the store would wait for it to be taken back: a
        // cross-core round trip, between the copied frame and the guest seeing it. Ask for the
        // line now, while the frames are gathered and copied.
        mem.prefetch_write(self.rxq.used_idx_offset());
        self.rxq.disable_notifications(mem);
        let (mut pkts, mut bytes, mut unpublished) = (0u64, 0u64, 0usize);
        let ran = loop {
            let Some(len) = self.backend.rx_peek() else {
                break Ran::NeedBackend;
            };
            match self.rxw.gather(&mut self.rxq, mem, len) {
                Err(e) => {
                    self.queue_failed(false, e);
                    break Ran::Dead;
                }
                Ok(Gather::NoBuffers) => break Ran::NeedGuest,
                Ok(Gather::TooLarge) => {
                    if self.backend.rx_discard() {
                        m.drop_packets(DropReason::RxTooLarge, 1);
                    }
                    // A discard is work too: it counts against the weight (Linux's `continue`
                    // lands on `vhost_exceeds_weight(++recv_pkts)`), or frames that never fit
                    // would keep this loop from ever returning.
                    pkts += 1;
                    if pkts >= self.cfg.pkt_weight {
                        add(&m.rx.weight_exhausted, 1);
                        break Ran::Requeue;
                    }
                    continue;
                }
                Ok(Gather::Ready) => {}
            }
            let n = match self.backend.rx_recv(mem, self.rxw.iov()) {
                Ok(0) => {
                    self.rxw.abort(&mut self.rxq);
                    break Ran::NeedBackend;
                }
                Ok(n) => n,
                Err(e) => {
                    self.rxw.abort(&mut self.rxq);
                    m.drop_packets(DropReason::BackendError, 1);
                    self.report.fatal = Some(backend_error(e));
                    break Ran::Dead;
                }
            };
            match self.rxw.commit(&mut self.rxq, mem, n) {
                Ok(nb) => add(&m.rx.chains, nb as u64),
                Err(e) => {
                    m.drop_packets(DropReason::QueueBroken, 1);
                    self.queue_failed(false, e);
                    break Ran::Dead;
                }
            }
            pkts += 1;
            bytes += n.saturating_sub(vring::net::VirtioNetHdr::SIZE) as u64;
            unpublished += 1;
            if unpublished == self.cfg.batch {
                self.publish_rx(mem, m);
                Self::signal_if_asked(&mut self.rxq, mem, &self.rx_call, &m.rx);
                unpublished = 0;
            }
            if pkts >= self.cfg.pkt_weight || bytes >= self.cfg.byte_weight {
                add(&m.rx.weight_exhausted, 1);
                break Ran::Requeue;
            }
        };
        if unpublished > 0 {
            // The run's last publish: its interrupt decision waits for `finish_round`, which
            // fences once for it and the TX queue's.
            self.publish_rx(mem, m);
            self.rx_notify = true;
        }
        add(&m.rx.packets, pkts);
        add(&m.rx.bytes, bytes);
        ran
    }

    fn publish_rx(&mut self, mem: &GuestMemory, m: &DeviceMetrics) {
        let _ = self.rxq.publish_used(mem);
        add(&m.rx.batches, 1);
    }
}

fn backend_error(e: BackendError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
