//! One queue pair's TX and RX work, modeled on Linux `handle_tx` / `handle_rx`
//! (`drivers/vhost/net.c`):
//!
//! ```text
//! handle_tx: pop ≤ batch chains → backend.send → used, publish once per batch
//!            until the ring is empty or the weight (256 pkts / 512 KiB) is spent
//! handle_rx: peek frame → gather buffers → backend writes into them → used, num_buffers
//! finish_round: return the TX batch still held, one fence, interrupt decisions
//! ```

use std::fs::File;
use std::sync::atomic::{fence, Ordering};

use vring::net::{bit, Features};
use vring::{Direction, GuestMemory, QueuePair};

use crate::backend::{Backend, TxResult};
use crate::device::{error_chain, DeviceError, DeviceReport};
use crate::metrics::{add, DeviceMetrics, DropReason, QueueMetrics};
use crate::net::rx::{Gather, RxWriter};
use crate::net::tx::TxBatch;
use crate::sys;
use crate::virtq::{DeviceQueue, QueueError};

/// How a pair's handlers run.
#[derive(Clone, Copy, Debug)]
pub struct PairConfig {
    /// Chains per backend submission, and RX frames per used-ring publish
    /// (1..=[`crate::worker::VHOST_NET_BATCH`]).
    pub batch: usize,
    /// Packets per handler run before requeueing.
    pub pkt_weight: u64,
    /// Bytes per handler run before requeueing.
    pub byte_weight: u64,
}

/// How a handler run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Weight spent with work left: run again before sleeping.
    Requeue,
    /// TX: ring empty. RX: no buffers for the next frame.
    NeedGuest,
    /// RX: the backend has no frame.
    NeedBackend,
    /// The queue is broken (or the backend failed): never run it again.
    Dead,
}

/// TX counts not yet added to the shared counters.
#[derive(Debug, Default)]
struct TxTally {
    /// Frames sent and dropped, as the backend counts them.
    frames: TxResult,
    chains: u64,
    batches: u64,
}

/// One queue pair's device side: its two queues, its interrupt eventfds, its backend, and the
/// batch state of its handlers.
pub struct NetQueuePair {
    /// Which pair of the device.
    index: usize,
    pub(crate) txq: DeviceQueue,
    pub(crate) rxq: DeviceQueue,
    tx_call: File,
    rx_call: File,
    pub(crate) backend: Box<dyn Backend>,
    cfg: PairConfig,
    tx: TxBatch,
    /// `tx` holds a sent batch not yet returned to the guest (see [`NetQueuePair::finish_round`]).
    tx_pending: bool,
    /// TX used entries were published and the interrupt decision is still to be made.
    tx_notify: bool,
    /// The same for RX, published at the end of a handler run.
    rx_notify: bool,
    /// TX counts of the round, added to the shared counters by `finish_round`: after the
    /// round's RX delivery, not between a request and its response.
    tx_tally: TxTally,
    pub(crate) rxw: RxWriter,
}

impl std::fmt::Debug for NetQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetQueuePair")
            .field("index", &self.index)
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl NetQueuePair {
    /// The device side of pair `index`: validates both queues' rings against `mem`. The
    /// pair's kick eventfds are returned for whoever waits on them (the worker's io_uring).
    pub fn new(
        index: usize,
        mem: &GuestMemory,
        features: Features,
        wiring: QueuePair,
        backend: Box<dyn Backend>,
        cfg: PairConfig,
    ) -> Result<(NetQueuePair, [File; 2]), DeviceError> {
        if cfg.batch == 0 || cfg.batch > crate::worker::VHOST_NET_BATCH {
            return Err(DeviceError::Config("batch must be in 1..=64"));
        }
        let queue = |q: &vring::Virtqueue| match q.base {
            0 => DeviceQueue::new(mem, q.addrs, features),
            // A ring a previous device used: start where it stopped (`SET_VRING_BASE`).
            base => DeviceQueue::start(
                mem,
                crate::virtq::QueueState {
                    addrs: q.addrs,
                    next_avail: base,
                },
                features,
            ),
        };
        let txq = queue(&wiring.tx)?;
        let rxq = queue(&wiring.rx)?;
        let pair = NetQueuePair {
            index,
            txq,
            rxq,
            tx_call: wiring.tx.call,
            rx_call: wiring.rx.call,
            backend,
            cfg,
            tx: TxBatch::new(cfg.batch),
            tx_pending: false,
            tx_notify: false,
            rx_notify: false,
            tx_tally: TxTally::default(),
            rxw: RxWriter::with_batch(features.has(bit::MRG_RXBUF), cfg.batch),
        };
        Ok((pair, [wiring.tx.kick, wiring.rx.kick]))
    }

    /// Which pair of the device this is.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Re-enables kicks on a queue and re-checks it; true if buffers arrived meanwhile.
    pub(crate) fn rearm(
        &mut self,
        mem: &GuestMemory,
        dir: Direction,
        m: &DeviceMetrics,
        r: &mut DeviceReport,
    ) -> bool {
        let q = match dir {
            Direction::Tx => &mut self.txq,
            Direction::Rx => &mut self.rxq,
        };
        match q.enable_notifications(mem) {
            Ok(more) => {
                if more {
                    q.disable_notifications(mem);
                }
                more
            }
            Err(e) => {
                self.queue_failed(dir, e, m, r);
                false
            }
        }
    }

    /// Breaks queue `dir` of this pair (see [`queue_failed`]).
    pub(crate) fn queue_failed(
        &mut self,
        dir: Direction,
        e: QueueError,
        m: &DeviceMetrics,
        r: &mut DeviceReport,
    ) {
        let (q, call) = match dir {
            Direction::Tx => (&self.txq, &self.tx_call),
            Direction::Rx => (&self.rxq, &self.rx_call),
        };
        queue_failed(self.index, dir, q, call, e, m, r);
    }

    fn signal_if_asked(q: &mut DeviceQueue, mem: &GuestMemory, call: &File, m: &QueueMetrics) {
        // SeqCst fence: the store-load race `needs_notification` describes (our `used.idx`
        // store against our read of the guest's `used_event`).
        fence(Ordering::SeqCst);
        Self::signal_if_asked_fenced(q, mem, call, m);
    }

    /// [`NetQueuePair::signal_if_asked`] for a caller that has fenced after its last publish.
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

    pub(crate) fn handle_tx(
        &mut self,
        mem: &GuestMemory,
        m: &DeviceMetrics,
        r: &mut DeviceReport,
    ) -> Ran {
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
                    r.fatal = Some(error_chain(&e));
                }
                t.chains += n as u64;
                t.batches += 1;
                super::slowdown::per_packets(n as u64);
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
                        self.queue_failed(Direction::Tx, e, m, r);
                        return Ran::Dead;
                    }
                };
            let more = more_pending
                && r.fatal.is_none()
                && pkts < self.cfg.pkt_weight
                && bytes < self.cfg.byte_weight;
            if n > 0 {
                if more {
                    self.complete_tx(mem);
                    // A guest waiting on a full ring is woken now, while this run still has
                    // work, not after it.
                    if self.txq.needs_notification_early(mem) {
                        let _ = sys::signal(&self.tx_call);
                        add(&m.tx.calls, 1);
                    }
                } else {
                    // The run's last batch is returned after this round's RX work (see
                    // `finish_round`): its used-ring stores would otherwise sit in the store
                    // buffer ahead of the RX delivery's, and a request's response would reach
                    // the guest only after them.
                    self.tx_pending = true;
                }
            }
            if let Some(e) = failed {
                // The malformed chain itself: popped, never sent, and not returnable.
                m.drop_packets(DropReason::QueueBroken, 1);
                self.queue_failed(Direction::Tx, e, m, r);
                return Ran::Dead;
            }
            if r.fatal.is_some() {
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
    fn complete_tx(&mut self, mem: &GuestMemory) {
        // Only a used-ring write can fail here, and the ring was validated at set-up; should it
        // fail anyway the queue is broken and counted by `fail`.
        let _ = self.tx.complete(&mut self.txq, mem);
        self.tx_notify = true;
    }

    /// End of a round: adds the round's TX counts, returns a TX batch still held, then decides
    /// whether the guest wants an interrupt on each queue published to in the round's last
    /// step. One full fence serves both decisions, and it is paid after the RX delivery, not
    /// between it and the guest.
    pub(crate) fn finish_round(&mut self, mem: &GuestMemory, m: &DeviceMetrics) {
        let t = std::mem::take(&mut self.tx_tally);
        if t.batches > 0 {
            add(&m.tx.packets, t.frames.sent);
            add(&m.tx.bytes, t.frames.bytes);
            for why in DropReason::ALL {
                m.drop_packets(why, t.frames.dropped[why as usize]);
            }
            add(&m.tx.chains, t.chains);
            add(&m.tx.batches, t.batches);
        }
        if std::mem::take(&mut self.tx_pending) {
            self.complete_tx(mem);
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
        if rx {
            Self::signal_if_asked_fenced(&mut self.rxq, mem, &self.rx_call, &m.rx);
        }
        if tx {
            Self::signal_if_asked_fenced(&mut self.txq, mem, &self.tx_call, &m.tx);
        }
    }

    pub(crate) fn handle_rx(
        &mut self,
        mem: &GuestMemory,
        m: &DeviceMetrics,
        r: &mut DeviceReport,
    ) -> Ran {
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
                    self.queue_failed(Direction::Rx, e, m, r);
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
                    r.fatal = Some(error_chain(&e));
                    break Ran::Dead;
                }
            };
            match self.rxw.commit(&mut self.rxq, mem, n) {
                Ok(nb) => add(&m.rx.chains, nb as u64),
                Err(e) => {
                    m.drop_packets(DropReason::QueueBroken, 1);
                    self.queue_failed(Direction::Rx, e, m, r);
                    break Ran::Dead;
                }
            }
            super::slowdown::per_packets(1);
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

/// Breaks queue `dir` of pair `pair`: records the error in the report and counts it by kind
/// (once per queue), and tells the guest (an interrupt on `call`), so a real driver would
/// notice the broken device and reset it. A queue that already broke answers every later call
/// with `Broken`: the error reported is the one that broke it, with its own kind.
pub(crate) fn queue_failed(
    pair: usize,
    dir: Direction,
    q: &DeviceQueue,
    call: &File,
    e: QueueError,
    m: &DeviceMetrics,
    r: &mut DeviceReport,
) {
    let e = match e {
        QueueError::Broken => q.broken().cloned().unwrap_or(QueueError::Broken),
        e => e,
    };
    if r.queue_failed(pair, dir, &e) {
        add(&m.queue_errors[e.kind() as usize], 1);
    }
    let _ = sys::signal(call);
}

#[cfg(test)]
mod tests {
    //! When the guest is interrupted on a TX stream: after the batch that crosses what it asked
    //! for, while the handler run goes on, not at the run's end.
    use std::sync::Arc;

    use super::*;
    use crate::backend::null::{NullBackend, NullMode};
    use crate::metrics::get;
    use guest_sim::testbed::{Testbed, TestbedConfig};
    use guest_sim::{Buf, DriverQueue};
    use vring::net::VirtioNetHdr;

    const QUEUE: u16 = 1024;

    /// A device pair on a fresh testbed and the guest's TX queue with a full ring posted.
    fn full_tx_ring(event_idx: bool) -> (Arc<GuestMemory>, NetQueuePair, DriverQueue) {
        let tb = Testbed::new(&TestbedConfig {
            guest_mem_bytes: 8 << 20,
            region_len: None,
            queue_size: QUEUE,
            pairs: 1,
            frame_len: 64,
            mrg_rxbuf: true,
        })
        .expect("testbed");
        let (mem, g) = (tb.mem, &tb.guest[0]);
        let mut txq = DriverQueue::new(&mem, g.pair.tx.addrs, event_idx)
            .expect("driver queue")
            .with_in_order(true);
        txq.disable_interrupts(&mem).expect("no interrupts");
        let len = (VirtioNetHdr::SIZE + 64) as u32;
        let features = Features::of(&[bit::VERSION_1])
            .with(bit::RING_EVENT_IDX, event_idx)
            .with(bit::IN_ORDER, true);
        let wiring = tb.device.into_iter().next().expect("one pair");
        let backend = Box::new(NullBackend::new(NullMode::Sink, false));
        let cfg = PairConfig {
            batch: crate::worker::VHOST_NET_BATCH,
            pkt_weight: crate::worker::VHOST_NET_PKT_WEIGHT,
            byte_weight: crate::worker::VHOST_NET_WEIGHT,
        };
        let (mut q, _kicks) =
            NetQueuePair::new(0, &mem, features, wiring, backend, cfg).expect("pair");
        // One frame first: the device's first interrupt decision always notifies (it has no
        // earlier one to go by); after it, only what the guest asks for counts.
        txq.add_one(&mem, Buf::read(g.bufs.tx[0], len))
            .expect("post");
        txq.publish(&mem).expect("publish");
        let (m, mut r) = (DeviceMetrics::default(), DeviceReport::default());
        assert_eq!(q.handle_tx(&mem, &m, &mut r), Ran::NeedGuest);
        q.finish_round(&mem, &m);
        assert_eq!(txq.reap(&mem, |_| {}).expect("reap"), 1);
        // Then a full ring.
        for slot in 0..QUEUE {
            let head = txq.next_free_head().expect("free");
            assert_eq!(head, (slot + 1) % QUEUE);
            txq.add_one(&mem, Buf::read(g.bufs.tx[head as usize], len))
                .expect("post");
        }
        txq.publish(&mem).expect("publish");
        assert_eq!(txq.num_free(), 0);
        (mem, q, txq)
    }

    #[test]
    fn a_guest_asleep_on_a_full_ring_is_interrupted_after_the_first_batch() {
        for event_idx in [true, false] {
            let (mem, mut q, mut txq) = full_tx_ring(event_idx);
            // The guest sleeps until the next completion (`virtqueue_enable_cb`).
            assert!(!txq.enable_interrupts(&mem).expect("enable"));
            let (m, mut r) = (DeviceMetrics::default(), DeviceReport::default());
            // One handler run: the packet weight (256), four batches of 64.
            assert_eq!(q.handle_tx(&mem, &m, &mut r), Ran::Requeue);
            assert_eq!(get(&m.tx.packets), 0, "counted at the round's end");
            assert_eq!(
                get(&m.tx.calls),
                1,
                "event_idx {event_idx}: woken during the run"
            );
            assert_eq!(
                q.txq.stats.publishes,
                1 + 3,
                "the run's last batch is still held"
            );
            q.finish_round(&mem, &m);
            assert_eq!(get(&m.tx.packets), 256);
            // With event indices the run's end owes nothing more; without them the guest's
            // cleared flag asks again (it is still asleep), once.
            let calls = get(&m.tx.calls);
            if event_idx {
                assert_eq!(calls, 1);
            } else {
                assert_eq!(calls, 2);
            }
            // The next run's batches do not interrupt a guest still asleep again and again.
            assert_eq!(q.handle_tx(&mem, &m, &mut r), Ran::Requeue);
            q.finish_round(&mem, &m);
            assert_eq!(get(&m.tx.calls), if event_idx { 1 } else { 3 });
        }
    }

    #[test]
    fn a_delayed_request_is_answered_by_the_batch_that_crosses_it() {
        let (mem, mut q, mut txq) = full_tx_ring(true);
        // Three quarters of the ring (Linux `virtqueue_enable_cb_delayed`): the interrupt is
        // due once 769 are used, in the fourth run's first batch, not at the ring's end.
        assert!(!txq.enable_interrupts_delayed(&mem).expect("enable"));
        let (m, mut r) = (DeviceMetrics::default(), DeviceReport::default());
        for run in 0..3 {
            assert_eq!(q.handle_tx(&mem, &m, &mut r), Ran::Requeue);
            q.finish_round(&mem, &m);
            assert_eq!(get(&m.tx.calls), 0, "run {run}");
        }
        assert_eq!(q.handle_tx(&mem, &m, &mut r), Ran::NeedGuest);
        assert_eq!(get(&m.tx.calls), 1);
        assert_eq!(q.txq.stats.publishes, 1 + 12 + 3);
        q.finish_round(&mem, &m);
        assert_eq!(get(&m.tx.calls), 1);
        assert_eq!(get(&m.tx.packets), QUEUE as u64);
    }
}
