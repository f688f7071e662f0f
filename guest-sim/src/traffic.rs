//! Traffic a guest's virtio-net driver generates, on the driver side of the TX and RX queues.
//!
//! - `tx`: stream guest → host. TX completions are reaped on the next transmit, and
//!   interrupts are asked for only when the ring is full (Linux `start_xmit`), for the next
//!   completion (`virtqueue_enable_cb`; see `wait_used` for why not
//!   `virtqueue_enable_cb_delayed`).
//! - `rx`: host → guest. All RX buffers are posted up front; reaped ones are given back in
//!   batches once half the ring is free (Linux `virtnet_poll` → `try_fill_recv`), with one
//!   publish (and kick, if asked) per refill.
//! - `rr`: request/response, one transaction in flight (netperf `TCP_RR`-style): send a
//!   timestamped frame, wait for it to come back, record the round trip.
//!
//! Kicks are eventfd writes, made only when the device asked (event index or flags); each one
//! stands for a VM exit. Interrupts are waited for on the call eventfd, or polled.
//!
//! [`run`] gives the guest a vCPU thread of its own and a clock; [`lockstep::Lockstep`] runs
//! the same steps one at a time for a caller that steps the device in between, with no clock.

pub mod lockstep;

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use vring::frame;
use vring::layout::QueueAddrs;
use vring::net::VirtioNetHdr;
use vring::{GuestMemory, QueuePair};

use crate::clock;
use crate::driver::{Buf, DriverError, DriverQueue, FreeOrder};
use crate::mock::MockGuest;

const H: usize = VirtioNetHdr::SIZE;
/// Frames the `tx` workload posts per publish (DPDK's default burst is 32): it waits until that
/// many fit, and publishes no more at once.
pub const TX_BURST: usize = 32;

/// Which traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// Guest → host stream.
    Tx,
    /// Host → guest stream.
    Rx,
    /// Request/response round trips.
    Rr,
    /// The far end of `rr` across a real network: every frame received is sent back with its
    /// MAC addresses swapped (a second guest on the same bridge).
    Echo,
}

impl Workload {
    /// `tx`, `rx` or `rr`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Tx => "tx",
            Workload::Rx => "rx",
            Workload::Rr => "rr",
            Workload::Echo => "echo",
        }
    }
}

/// How the guest runs.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Which traffic.
    pub workload: Workload,
    /// Frame length in bytes (Ethernet header included, virtio-net header excluded).
    pub frame_len: usize,
    /// Offered rate in frames per second; `None`: as fast as possible.
    pub rate_pps: Option<u64>,
    /// How long to run before stopping on its own.
    pub duration: Duration,
    /// Part of `duration` excluded from the measurement at the start.
    pub warmup: Duration,
    /// Spin on the used rings instead of sleeping on the call eventfd.
    pub poll: bool,
    /// `RING_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// Post TX frames as indirect chains (header and frame in separate table entries).
    pub indirect: bool,
    /// `MRG_RXBUF` negotiated: small RX buffers a frame may span.
    pub mrg_rxbuf: bool,
    /// `VIRTIO_F_IN_ORDER` negotiated (the device may return a batch with one used element).
    pub in_order: bool,
    /// Which free descriptors the driver reuses first (without `in_order`): Linux's LIFO
    /// free list puts heads in no ring order.
    pub free_order: FreeOrder,
    /// Compare every byte of received frames with the test pattern.
    pub verify_bytes: bool,
    /// Modeled cost of a VM exit, ns: the vCPU spins this long after each kick (the MMIO/PIO
    /// exit of the notify) and after each interrupt it takes (injection + EOI). 0: none.
    /// Never mixed silently with measured numbers: results carry it as a modeled input.
    pub exit_cost_ns: u64,
    /// `rx`: count every frame received as delivered, test frame or not. For a far side that
    /// sends frames of its own (DPDK's `txonly`): they carry no sequence number, so order and
    /// loss are the far side's counters to check, not ours.
    pub count_foreign: bool,
}

/// What the guest saw.
#[derive(Debug)]
pub struct TrafficReport {
    /// Frames posted for transmission (all of them, warm-up included).
    pub sent: u64,
    /// Frames received (all of them).
    pub received: u64,
    /// Frames completed in the measured window (TX completions for `tx`, frames for `rx`,
    /// round trips for `rr`).
    pub window_packets: u64,
    /// Bytes of those frames.
    pub window_bytes: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Kicks (eventfd writes) made, all of them.
    pub kicks: u64,
    /// Times the guest slept on a call eventfd.
    pub interrupt_waits: u64,
    /// TX interrupt waits after which the guest's next publish had to kick: the device had
    /// gone to sleep too while the guest slept, so both sides paid a wake-up in turn (the
    /// sleep/wake cycle of issue 12). At most `interrupt_waits`.
    pub tx_waits_then_kick: u64,
    /// Received frames whose sequence number was not the next expected one.
    pub rx_out_of_order: u64,
    /// Received frames whose bytes were wrong.
    pub rx_corrupt: u64,
    /// Round-trip times, ns (`rr`).
    pub rtt_ns: Histogram<u64>,
    /// TX frames still unreturned by the device when the guest gave up waiting.
    pub tx_unreturned: u64,
    /// `echo`: frames received that could not be sent back (no free TX buffer).
    pub echo_dropped: u64,
    /// Frames received that were not test frames (the network's own traffic).
    pub rx_foreign: u64,
    /// A driver-side failure (for example a broken device) that ended the run early.
    pub error: Option<String>,
}

/// The guest's side of one queue pair: what one vCPU's driver instance drives (a multiqueue
/// guest runs one per pair, each on its own vCPU).
#[derive(Debug)]
pub struct GuestPair {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The pair's two queues, with the guest's ends of their eventfds (it writes `kick` and
    /// waits on `call`).
    pub pair: QueuePair,
    /// The buffers the driver posts.
    pub bufs: NicBuffers,
}

/// Buffers carved out of guest memory for one queue pair.
#[derive(Debug, Clone, Default)]
pub struct NicBuffers {
    /// TX buffers, one per descriptor: header + frame.
    pub tx: Vec<u64>,
    /// RX buffers, one per descriptor.
    pub rx: Vec<u64>,
    /// Length of each RX buffer.
    pub rx_len: u32,
    /// Space for indirect tables, one 32-byte table per TX buffer.
    pub tables: Vec<u64>,
}

impl NicBuffers {
    /// Carves buffers for the pair with queues `rx` and `tx` out of `guest`, sized for
    /// `frame_len` frames.
    pub fn carve(
        guest: &mut MockGuest,
        rx: QueueAddrs,
        tx: QueueAddrs,
        frame_len: usize,
        mrg_rxbuf: bool,
    ) -> Result<NicBuffers, DriverError> {
        let tx_len = (H + frame_len) as u64;
        // Mergeable: 2 KiB buffers (a frame may span several); otherwise each buffer holds a
        // whole frame.
        let rx_buf_len = if mrg_rxbuf {
            2048
        } else {
            (H + frame_len.max(1514)) as u32
        };
        let oom = || DriverError::Memory(vring::MemError::BadRegions("guest memory too small"));
        let mut alloc = |n: u16, len: u64| -> Result<Vec<u64>, DriverError> {
            (0..n).map(|_| guest.alloc(len).ok_or_else(oom)).collect()
        };
        let tx_bufs = alloc(tx.size, tx_len)?;
        let tables = alloc(tx.size, 32)?;
        let rx_bufs = alloc(rx.size, rx_buf_len as u64)?;
        Ok(NicBuffers {
            tx: tx_bufs,
            rx: rx_bufs,
            rx_len: rx_buf_len,
            tables,
        })
    }
}

/// Where a guest's driver runs: the clock its round trips are stamped with, and what becomes
/// of its kicks and of its waits for an interrupt. [`run`] gives each guest a vCPU thread of
/// its own ([`Thread`]); [`lockstep`] makes it one side of a schedule on the caller's thread.
trait Vcpu {
    /// Now, in ns, for `rr`'s stamps and round trips.
    fn now_ns(&mut self) -> u64;
    /// The guest has just written the kick eventfd of its TX (`tx`) or RX queue.
    fn kicked(&mut self, tx: bool);
    /// The guest asked for an interrupt on the TX (`tx`) or RX queue and found nothing to reap:
    /// it sleeps on `call`. True when the sleep is over (an interrupt came, or the wait timed
    /// out) and interrupts may go off again; false when it goes on past this step.
    fn sleep(&mut self, call: &File, tx: bool, exit_cost_ns: u64) -> bool;
}

/// A vCPU thread of the guest's own: the monotonic clock, and sleeps in `poll(2)`.
struct Thread;

impl Vcpu for Thread {
    #[inline]
    fn now_ns(&mut self) -> u64 {
        clock::now_ns()
    }

    #[inline]
    fn kicked(&mut self, _tx: bool) {}

    fn sleep(&mut self, call: &File, _tx: bool, exit_cost_ns: u64) -> bool {
        // Bounded, so a dead device cannot hang the guest; on time-out the caller looks at
        // the clock and the rings again.
        if wait_readable(call, 100) {
            let mut b = [0u8; 8];
            let _ = (&*call).read(&mut b);
            // Taking the interrupt costs the vCPU an exit (modeled, if asked for).
            modeled_exit(exit_cost_ns);
        }
        true
    }
}

struct Guest<'a, V: Vcpu> {
    nic: &'a GuestPair,
    cfg: &'a TrafficConfig,
    vcpu: V,
    tx: DriverQueue,
    rx: DriverQueue,
    /// Host offset of each TX buffer's per-frame fields (translated once); `None` where they
    /// cross from one memory region into the next (then written by guest-physical address).
    tx_stamp_off: Vec<Option<usize>>,
    /// RX buffer index by head.
    rx_slot: Vec<u32>,
    /// Host offset of each RX buffer (translated once); `None` for one that crosses from one
    /// memory region into the next (then read by guest-physical address).
    rx_off: Vec<Option<usize>>,
    next_seq: u64,
    rx_expect: u64,
    clock: Instant,
    frame_buf: Vec<u8>,
    /// Give RX buffers back to the device after reaping them (off while draining).
    repost: bool,
    /// Reaped RX buffers waiting for the next refill.
    rx_refill: Vec<u32>,
    /// The guest slept for a TX interrupt and has not published since.
    tx_waited: bool,
    r: TrafficReport,
}

/// Runs the workload until `cfg.duration` passes or `stop` is set, then drains so every frame
/// is accounted: waits (bounded) for the device to return every TX buffer, stops reposting RX
/// buffers and reaps until the device goes quiet, calls `quiesce` (which must stop the device),
/// and reaps what the device completed before it stopped.
pub fn run(
    nic: &GuestPair,
    cfg: &TrafficConfig,
    stop: &AtomicBool,
    quiesce: &mut dyn FnMut(),
) -> TrafficReport {
    let mut g = match Guest::new(nic, cfg, Thread) {
        Ok(g) => g,
        Err(e) => {
            let mut r = TrafficReport::new();
            r.error = Some(e.to_string());
            return r;
        }
    };
    if let Err(e) = g.main(stop) {
        g.r.error = Some(e.to_string());
    }
    quiesce();
    // The device is stopped: what it completed is final.
    g.repost = false;
    if let Err(e) = g.reap_tx().and_then(|_| g.reap_rx()) {
        g.r.error.get_or_insert(e.to_string());
    }
    g.r.tx_unreturned = g.tx.in_flight() as u64;
    g.r
}

impl TrafficReport {
    /// Nothing seen yet.
    fn new() -> TrafficReport {
        TrafficReport {
            sent: 0,
            received: 0,
            window_packets: 0,
            window_bytes: 0,
            window: Duration::ZERO,
            kicks: 0,
            interrupt_waits: 0,
            tx_waits_then_kick: 0,
            rx_out_of_order: 0,
            rx_corrupt: 0,
            rtt_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            tx_unreturned: 0,
            echo_dropped: 0,
            rx_foreign: 0,
            error: None,
        }
    }
}

impl<'a, V: Vcpu> Guest<'a, V> {
    /// The driver of `nic`'s two queues, nothing posted yet.
    fn new(nic: &'a GuestPair, cfg: &'a TrafficConfig, vcpu: V) -> Result<Self, DriverError> {
        let queue = |addrs| {
            DriverQueue::new(&nic.mem, addrs, cfg.event_idx).map(|q| {
                q.with_in_order(cfg.in_order)
                    .with_free_order(cfg.free_order)
            })
        };
        Ok(Guest {
            nic,
            cfg,
            vcpu,
            tx_stamp_off: Vec::new(),
            rx_slot: vec![u32::MAX; nic.pair.rx.addrs.size as usize],
            rx_off: Vec::new(),
            tx: queue(nic.pair.tx.addrs)?,
            rx: queue(nic.pair.rx.addrs)?,
            next_seq: 0,
            rx_expect: 0,
            clock: Instant::now(),
            frame_buf: vec![0u8; 65_536 + H],
            repost: true,
            rx_refill: Vec::with_capacity(nic.pair.rx.addrs.size as usize),
            tx_waited: false,
            r: TrafficReport::new(),
        })
    }

    /// What the driver does before the workload starts: buffers prepared, TX interrupts off
    /// (completions are reaped on the next transmit: no TX interrupts unless the ring is
    /// full; RX interrupts only when waiting), and every RX buffer posted unless the workload
    /// receives nothing.
    fn start(&mut self) -> Result<(), DriverError> {
        self.prepare_tx_buffers()?;
        self.prepare_rx_buffers()?;
        self.tx.disable_interrupts(&self.nic.mem)?;
        if self.cfg.workload != Workload::Tx {
            self.post_all_rx()?;
        }
        Ok(())
    }

    fn main(&mut self, stop: &AtomicBool) -> Result<(), DriverError> {
        self.start()?;
        let end = self.clock + self.cfg.duration;
        let measure_from = self.clock + self.cfg.warmup;
        let mut measuring = false;
        let (mut base_pkts, mut base_bytes) = (0u64, 0u64);
        let mut window_start = self.clock;
        let mut iter: u32 = 0;
        let mut waits = self.r.interrupt_waits;
        loop {
            iter = iter.wrapping_add(1);
            // The clock is read every 32 steps, and after every step that slept: a starved or
            // idle vCPU that waits on each step would otherwise overrun its window by up to
            // 32 waits.
            let slept = self.r.interrupt_waits != waits;
            waits = self.r.interrupt_waits;
            if slept || iter.is_multiple_of(32) {
                let now = Instant::now();
                if !measuring && now >= measure_from {
                    measuring = true;
                    (base_pkts, base_bytes) = self.progress();
                    window_start = now;
                }
                if now >= end || stop.load(Ordering::Relaxed) {
                    let (p, b) = self.progress();
                    if measuring {
                        self.r.window_packets = p - base_pkts;
                        self.r.window_bytes = b - base_bytes;
                        self.r.window = now - window_start;
                    }
                    break;
                }
            }
            match self.cfg.workload {
                Workload::Tx => self.step_tx()?,
                Workload::Rx => self.step_rx()?,
                Workload::Rr => self.step_rr()?,
                Workload::Echo => self.step_echo()?,
            }
        }
        self.drain()
    }

    /// Packets and bytes completed so far, in the workload's unit.
    fn progress(&self) -> (u64, u64) {
        let fl = self.cfg.frame_len as u64;
        match self.cfg.workload {
            Workload::Tx => {
                let done = self.r.sent - self.tx.in_flight() as u64;
                (done, done * fl)
            }
            Workload::Rx | Workload::Rr | Workload::Echo => (self.r.received, self.r.received * fl),
        }
    }

    fn prepare_rx_buffers(&mut self) -> Result<(), DriverError> {
        for &b in &self.nic.bufs.rx {
            let len = self.nic.bufs.rx_len as u64;
            // A buffer across a region boundary is still a buffer; it is only not one span.
            self.nic
                .mem
                .segments(b, len)
                .try_for_each(|s| s.map(drop))?;
            self.rx_off
                .push(self.nic.mem.translate(b, len).ok().map(|s| s.off));
        }
        Ok(())
    }

    fn prepare_tx_buffers(&mut self) -> Result<(), DriverError> {
        let mut f = vec![0u8; H + self.cfg.frame_len];
        f[..H].copy_from_slice(&VirtioNetHdr::default().to_bytes());
        frame::fill(&mut f[H..], 0, 0);
        for &b in &self.nic.bufs.tx {
            self.nic.mem.write_gpa(b, &f)?;
            let at = b + (H + frame::SEQ_OFFSET) as u64;
            self.tx_stamp_off
                .push(self.nic.mem.translate(at, 16).ok().map(|s| s.off));
        }
        Ok(())
    }

    fn kick(&mut self, tx: bool) -> Result<(), DriverError> {
        let (q, fd) = if tx {
            (&mut self.tx, &self.nic.pair.tx.kick)
        } else {
            (&mut self.rx, &self.nic.pair.rx.kick)
        };
        let kicked = q.publish(&self.nic.mem)?;
        if tx && std::mem::take(&mut self.tx_waited) && kicked {
            self.r.tx_waits_then_kick += 1;
        }
        if kicked {
            self.r.kicks += 1;
            let _ = (&*fd).write_all(&1u64.to_ne_bytes());
            self.vcpu.kicked(tx);
            modeled_exit(self.cfg.exit_cost_ns);
        }
        Ok(())
    }

    /// Posts one TX frame if a buffer is free. Returns whether it did.
    ///
    /// TX buffer `i` belongs to descriptor `i` (DPDK's in-order TX ring keeps its mbufs the
    /// same way): the buffer to fill is the one of the descriptor the chain will get, and a
    /// returned descriptor frees its buffer with no bookkeeping of our own.
    fn post_tx(&mut self, ts_ns: u64) -> Result<bool, DriverError> {
        let Some(slot) = self.tx.next_free_head() else {
            return Ok(false);
        };
        self.stamp_tx(slot as usize, self.next_seq, ts_ns)?;
        self.add_tx(slot as usize)?;
        Ok(true)
    }

    /// Writes the per-frame fields (sequence number, timestamp) into TX buffer `slot`: two
    /// unaligned 8-byte stores into a buffer translated at set-up.
    #[inline]
    fn stamp_tx(&self, slot: usize, seq: u64, ts_ns: u64) -> Result<(), DriverError> {
        let mem = &self.nic.mem;
        match self.tx_stamp_off[slot] {
            Some(off) => Ok(mem.write_u64_pair(off, seq, ts_ns)?),
            None => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&seq.to_le_bytes());
                b[8..].copy_from_slice(&ts_ns.to_le_bytes());
                let at = self.nic.bufs.tx[slot] + (H + frame::SEQ_OFFSET) as u64;
                Ok(mem.write_gpa(at, &b)?)
            }
        }
    }

    /// Posts TX buffer `slot`, already stamped, as the next chain (whose head is `slot`).
    #[inline]
    fn add_tx(&mut self, slot: usize) -> Result<(), DriverError> {
        let gpa = self.nic.bufs.tx[slot];
        let len = (H + self.cfg.frame_len) as u32;
        // One descriptor per frame either way (an indirect chain takes one table slot).
        let head = if self.cfg.indirect {
            let bufs = [
                Buf::read(gpa, H as u32),
                Buf::read(gpa + H as u64, len - H as u32),
            ];
            self.tx
                .add_indirect(&self.nic.mem, self.nic.bufs.tables[slot], &bufs)?
        } else {
            self.tx.add_one(&self.nic.mem, Buf::read(gpa, len))?
        };
        debug_assert_eq!(head as usize, slot);
        self.next_seq += 1;
        self.r.sent += 1;
        Ok(())
    }

    /// Posts up to `n` frames as one burst, the way an application hands a burst to its
    /// driver (DPDK `txonly`: build the packets, then `tx_burst`): first every frame of the
    /// burst is written, then every descriptor posted. Writing them back to back lets the
    /// stores to lines the device read on the last lap wait for those lines together; one
    /// frame at a time, each waited behind the driver's own stores in between. Returns how
    /// many were posted.
    fn post_tx_burst(&mut self, n: usize) -> Result<usize, DriverError> {
        let first = self.next_seq;
        let mut k = 0;
        for slot in self.tx.next_free_heads(n) {
            self.stamp_tx(slot as usize, first + k as u64, 0)?;
            k += 1;
        }
        let mut posted = 0;
        while posted < k {
            let Some(slot) = self.tx.next_free_head() else {
                break;
            };
            self.add_tx(slot as usize)?;
            posted += 1;
        }
        Ok(posted)
    }

    fn reap_tx(&mut self) -> Result<u32, DriverError> {
        // The descriptors' buffers are free again with them.
        self.tx.reap(&self.nic.mem, |_| {})
    }

    /// Frames allowed now under the rate limit.
    fn allowance(&self) -> u64 {
        match self.cfg.rate_pps {
            None => u64::MAX,
            Some(pps) => {
                let due = (self.clock.elapsed().as_nanos() * pps as u128 / 1_000_000_000) as u64;
                due.saturating_sub(self.r.sent)
            }
        }
    }

    fn step_tx(&mut self) -> Result<(), DriverError> {
        self.reap_tx()?;
        let allowed = self.allowance();
        let burst = (TX_BURST as u64).min(self.nic.pair.tx.addrs.size as u64);
        let free = self.tx.num_free();
        if allowed >= burst && (free as u64) < burst {
            // Like a DPDK guest's tx_burst: wait until a whole burst fits rather than publish
            // (and fence) for a few frames at a time.
            if free == 0 {
                self.wait_used(true)?;
            } else {
                std::hint::spin_loop();
            }
            return Ok(());
        }
        // One burst per publish, as a DPDK application's `tx_burst` calls go (and as Linux
        // kicks at the end of each `xmit_more` batch): the device sees the first frames while
        // the next ones are written. Publishing everything that fits at once, after a wake-up
        // the device got nothing until a whole ring was written; it drained the ring before
        // the next one came, slept, and each ring cost a kick and the device's wake-up.
        let budget = allowed.min(burst) as usize;
        let posted = self.post_tx_burst(budget)?;
        if posted > 0 {
            self.kick(true)?;
        } else if self.tx.num_free() == 0 {
            // Ring full: wait for completions (netif_stop_queue; see `wait_used`).
            self.wait_used(true)?;
        } else {
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn post_rx_slot(&mut self, slot: u32) -> Result<(), DriverError> {
        let gpa = self.nic.bufs.rx[slot as usize];
        let head = self
            .rx
            .add_one(&self.nic.mem, Buf::write(gpa, self.nic.bufs.rx_len))?;
        self.rx_slot[head as usize] = slot;
        Ok(())
    }

    /// Queues a reaped RX buffer for the next refill.
    fn recycle_rx(&mut self, slot: u32) {
        if self.repost {
            self.rx_refill.push(slot);
        }
    }

    /// Gives the queued RX buffers back once at least half the ring is waiting (Linux refills
    /// when more than half its receive ring is free), then publishes and kicks if asked.
    fn refill_rx(&mut self) -> Result<(), DriverError> {
        if !self.repost || self.rx_refill.len() < (self.nic.pair.rx.addrs.size as usize).div_ceil(2)
        {
            return Ok(());
        }
        let mut slots = std::mem::take(&mut self.rx_refill);
        for &slot in &slots {
            self.post_rx_slot(slot)?;
        }
        slots.clear();
        self.rx_refill = slots;
        self.kick(false)
    }

    fn post_all_rx(&mut self) -> Result<(), DriverError> {
        for slot in 0..self.nic.bufs.rx.len() as u32 {
            self.post_rx_slot(slot)?;
        }
        self.kick(false)
    }

    /// Asks for the first lines of the received buffers the device has published (up to a
    /// batch), all at once: each was just written on the device's core, and reading them one
    /// frame at a time would take their misses one after another, as a DPDK driver's
    /// prefetches avoid. Returns how many were asked for.
    fn prefetch_rx(&self) -> u16 {
        let whole = self.cfg.verify_bytes || self.cfg.workload == Workload::Echo;
        let mut n = 0;
        for head in self.rx.used_heads_hint(&self.nic.mem, 64) {
            n += 1;
            let slot = self.rx_slot.get(head as usize).copied().unwrap_or(u32::MAX);
            if let Some(&Some(off)) = self.rx_off.get(slot as usize) {
                self.nic.mem.prefetch(off);
                if whole {
                    self.nic.mem.prefetch(off + 64);
                }
            }
        }
        n
    }

    /// Reaps received frames (reassembling merged ones), reposts their buffers. Returns the
    /// number of whole frames and the timestamp of the last one.
    fn reap_rx(&mut self) -> Result<(u32, u64), DriverError> {
        let mut frames = 0;
        let mut last_ts = 0;
        // Buffers the device has published and whose lines were asked for.
        let mut hinted = 0u16;
        let whole = self.cfg.verify_bytes || self.cfg.workload == Workload::Echo;
        loop {
            if hinted == 0 {
                if !self.rx.has_used(&self.nic.mem)? {
                    break;
                }
                hinted = self.prefetch_rx();
            }
            let Some(u) = self.rx.pop_used(&self.nic.mem)? else {
                break;
            };
            hinted = hinted.saturating_sub(1);
            let slot = std::mem::replace(&mut self.rx_slot[u.id as usize], u32::MAX);
            let len = (u.len as usize).min(self.nic.bufs.rx_len as usize);
            let mut fb = std::mem::take(&mut self.frame_buf);
            // Header and the frame's start in one copy, from the buffer's host offset (mapped
            // once, as a driver keeps its buffers' addresses). The header is read whole even
            // if the device wrote less. The frame is read whole only when its bytes are
            // checked or echoed; otherwise, as a stack reads a frame's headers, up to the test
            // fields (the first line of the buffer, not every line of it).
            let mut at = match whole {
                true => len.max(H),
                false => len.clamp(H, H + frame::MIN_FRAME),
            }
            .min(fb.len());
            let read = match self.rx_off[slot as usize] {
                Some(off) => self.nic.mem.read_at(off, &mut fb[..at]),
                None => self
                    .nic
                    .mem
                    .read_gpa(self.nic.bufs.rx[slot as usize], &mut fb[..at]),
            };
            if let Err(e) = read {
                self.frame_buf = fb;
                return Err(e.into());
            }
            let nb = fb
                .first_chunk::<H>()
                .map_or(1, |h| VirtioNetHdr::from_bytes(h).num_buffers.max(1));
            self.recycle_rx(slot);
            for _ in 1..nb {
                let Some(u2) = self.rx.pop_used(&self.nic.mem)? else {
                    self.frame_buf = fb;
                    return Err(DriverError::BadUsedId(u32::MAX));
                };
                let s2 = std::mem::replace(&mut self.rx_slot[u2.id as usize], u32::MAX);
                let g2 = self.nic.bufs.rx[s2 as usize];
                if whole {
                    let l2 = (u2.len as usize)
                        .min(self.nic.bufs.rx_len as usize)
                        .min(fb.len() - at);
                    self.nic.mem.read_gpa(g2, &mut fb[at..at + l2])?;
                    at += l2;
                }
                self.recycle_rx(s2);
            }
            let f = &fb[H..at];
            let Some((seq, ts)) = frame::stamps(f) else {
                // Not one of ours: traffic of the network itself (a real tap or bridge can
                // carry some). Counted apart; it is neither delivered nor lost.
                self.r.rx_foreign += 1;
                self.frame_buf = fb;
                if self.cfg.count_foreign {
                    self.r.received += 1;
                    frames += 1;
                }
                continue;
            };
            if self.cfg.verify_bytes && (f.len() != self.cfg.frame_len || !frame::verify(f)) {
                self.r.rx_corrupt += 1;
            }
            if seq != self.rx_expect {
                self.r.rx_out_of_order += 1;
            }
            self.rx_expect = seq.wrapping_add(1);
            last_ts = ts;
            if self.cfg.workload == Workload::Echo {
                self.echo(&fb[H..at])?;
            }
            self.frame_buf = fb;
            self.r.received += 1;
            frames += 1;
        }
        if frames > 0 {
            self.refill_rx()?;
        }
        Ok((frames, last_ts))
    }

    /// Sends `f` back with source and destination MAC swapped.
    fn echo(&mut self, f: &[u8]) -> Result<(), DriverError> {
        if self.tx.num_free() == 0 {
            self.reap_tx()?;
        }
        let Some(slot) = self.tx.next_free_head() else {
            self.r.echo_dropped += 1;
            return Ok(());
        };
        if f.len() + H > H + self.cfg.frame_len || f.len() < 12 {
            self.r.echo_dropped += 1;
            return Ok(());
        }
        let gpa = self.nic.bufs.tx[slot as usize];
        let mut hdr_mac = [0u8; H + 12];
        hdr_mac[H..H + 6].copy_from_slice(&f[6..12]);
        hdr_mac[H + 6..H + 12].copy_from_slice(&f[0..6]);
        self.nic.mem.write_gpa(gpa, &hdr_mac)?;
        self.nic.mem.write_gpa(gpa + (H + 12) as u64, &f[12..])?;
        let head = self
            .tx
            .add_one(&self.nic.mem, Buf::read(gpa, (H + f.len()) as u32))?;
        debug_assert_eq!(head, slot);
        self.r.sent += 1;
        Ok(())
    }

    fn step_echo(&mut self) -> Result<(), DriverError> {
        self.reap_tx()?;
        let (n, _) = self.reap_rx()?;
        if n > 0 {
            self.kick(true)?;
        } else {
            self.wait_used(false)?;
        }
        Ok(())
    }

    fn step_rx(&mut self) -> Result<(), DriverError> {
        let (n, _) = self.reap_rx()?;
        if n == 0 {
            self.wait_used(false)?;
        }
        Ok(())
    }

    fn step_rr(&mut self) -> Result<(), DriverError> {
        let Some(t0) = self.rr_request()? else {
            return Ok(());
        };
        // Give up on a response after 1 s. The clock is read every 256 polls only: a clock
        // read costs about as much as a poll, and reading it on each would delay noticing the
        // response by that much.
        let give_up = t0 + 1_000_000_000;
        let mut polls: u32 = 0;
        let lines = self.rr_response_lines();
        loop {
            if self.rr_response(lines)? {
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) && self.vcpu.now_ns() > give_up {
                // The response was lost: it shows up as sent − received.
                return Ok(());
            }
            self.wait_used(false)?;
        }
    }

    /// `rr`'s request: reaps TX, then stamps, posts and kicks one frame. Its stamp, or `None`
    /// when none went out (the rate allows none yet, or the TX ring is full and the guest
    /// waited).
    #[inline]
    fn rr_request(&mut self) -> Result<Option<u64>, DriverError> {
        self.reap_tx()?;
        if self.allowance() == 0 {
            std::hint::spin_loop();
            return Ok(None);
        }
        // The post stores to two lines the polling device keeps reading: the frame's stamp
        // (it prefetches the next frame) and `avail.idx`. Ask for both for writing now, while
        // the clock is read, so their ownership requests are in flight together rather than
        // each store waiting for its own in turn (x86 makes stores visible in order, so the
        // index's store would wait behind the stamp's).
        if let Some(&Some(off)) = self
            .tx
            .next_free_head()
            .and_then(|h| self.tx_stamp_off.get(h as usize))
        {
            self.nic.mem.prefetch_write(off);
        }
        self.nic.mem.prefetch_write(self.tx.avail_idx_offset());
        let t0 = self.vcpu.now_ns();
        if !self.post_tx(t0)? {
            self.wait_used(true)?;
            return Ok(None);
        }
        self.kick(true)?;
        Ok(Some(t0))
    }

    /// Where `rr`'s response will land: the next RX buffer in ring order (in-order devices
    /// fill them that way), if it is one span, and the next used element. The device writes
    /// both before it publishes `used.idx`. Their lines are asked for as soon as the index
    /// moves, all at once, not while polling: a copy taken early would have to be invalidated
    /// before each of the device's stores, and its `used.idx` store waits behind those.
    #[inline]
    fn rr_response_lines(&self) -> (Option<usize>, usize) {
        let next_rx = self
            .rx
            .next_used_head()
            .and_then(|h| self.rx_slot.get(h as usize))
            .and_then(|&s| self.rx_off.get(s as usize))
            .copied()
            .flatten();
        (next_rx, self.rx.next_used_offset())
    }

    /// `rr`'s response, if it is there: reaped, its round trip recorded. True if it was.
    #[inline]
    fn rr_response(
        &mut self,
        (next_rx, used_line): (Option<usize>, usize),
    ) -> Result<bool, DriverError> {
        if self.rx.has_used(&self.nic.mem)? {
            self.nic.mem.prefetch(used_line);
            if let Some(off) = next_rx {
                self.nic.mem.prefetch(off);
                self.nic.mem.prefetch(off + 64);
            }
            let (n, ts) = self.reap_rx()?;
            if n > 0 {
                let rtt = self.vcpu.now_ns().saturating_sub(ts).max(1);
                let _ = self.r.rtt_ns.record(rtt);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits for used entries on a queue: spins when polling, else arms the interrupt and
    /// sleeps on the call eventfd. Bounded so a dead device cannot hang the guest.
    fn wait_used(&mut self, tx: bool) -> Result<(), DriverError> {
        if self.cfg.poll {
            std::hint::spin_loop();
            return Ok(());
        }
        let (q, call) = if tx {
            (&mut self.tx, &self.nic.pair.tx.call)
        } else {
            (&mut self.rx, &self.nic.pair.rx.call)
        };
        // Both directions ask for the next used buffer (`virtqueue_enable_cb`). TX waits only
        // when the ring is full; Linux's start_xmit would then ask for three quarters of it
        // (`virtqueue_enable_cb_delayed`), which suits a vCPU that keeps running and takes the
        // interrupt at once. This guest sleeps, and its wake-up takes longer than the device
        // needs for the last quarter: the device would run dry and sleep before the guest is
        // back, and every ring would cost both a wake-up of the guest and, after its refill,
        // one of the device. Woken at the device's first batch, the guest's wake-up overlaps
        // the rest of the ring.
        let ready = q.enable_interrupts(&self.nic.mem)?;
        if !ready {
            self.r.interrupt_waits += 1;
            self.tx_waited |= tx;
            if !self.vcpu.sleep(call, tx, self.cfg.exit_cost_ns) {
                // Still asleep, interrupts on, after this step (`lockstep`).
                return Ok(());
            }
        }
        // Interrupts stay on only while the guest sleeps.
        q.disable_interrupts(&self.nic.mem)?;
        Ok(())
    }

    /// After the run: wait (≤ 1 s) for the device to return every TX buffer; stop reposting RX
    /// buffers and reap until the device has been quiet for 20 ms (it can fill at most the
    /// buffers already posted).
    fn drain(&mut self) -> Result<(), DriverError> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.tx.in_flight() > 0 && Instant::now() < deadline {
            if self.reap_tx()? == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        if self.cfg.workload != Workload::Tx {
            self.repost = false;
            let mut quiet_since = Instant::now();
            while quiet_since.elapsed() < Duration::from_millis(20) && Instant::now() < deadline {
                if self.reap_rx()?.0 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                } else {
                    quiet_since = Instant::now();
                }
            }
        }
        Ok(())
    }
}

/// Burns `ns` of vCPU time, standing in for a VM exit the simulation does not have.
fn modeled_exit(ns: u64) {
    if ns == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_nanos(ns);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Waits up to `ms` milliseconds for `fd` to become readable (a pending interrupt).
fn wait_readable(fd: &File, ms: i64) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let t = Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    matches!(poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}
