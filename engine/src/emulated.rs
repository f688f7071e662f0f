//! The `emulated` mode: the VMM's own userspace virtio-net on a tap (QEMU `-net tap` with
//! ioeventfd and irqfd), modeled on QEMU's `hw/net/virtio-net.c` and `net/tap.c`.
//!
//! One event-loop thread (QEMU's main loop) waits in `epoll_wait` on the kick eventfds and the
//! tap fd of every queue pair (QEMU's multiqueue virtio-net: one tap queue per pair) and a stop
//! eventfd. It uses the same virtqueue code as the vhost worker, so the comparison
//! isolates the data-path design, not the ring implementation:
//!
//! - TX (`virtio_net_flush_tx`): with kicks suppressed, pop up to `tx_burst` (256) chains; each
//!   frame is one `writev(2)` on the tap straight from guest memory; each is pushed to the used
//!   ring and published on its own (`virtqueue_push`), then `virtio_notify` decides on an
//!   interrupt. A full burst reschedules itself (the TX bottom half) instead of sleeping.
//! - RX (`tap_send` → `virtio_net_receive`): while the guest has buffers, `read(2)` one frame
//!   from the tap into the loop's own buffer, then copy it into the guest's buffers
//!   (`iov_from_buf`), publish and notify per frame. With no guest buffers the tap is left
//!   unread and RX kicks are turned on (`virtio_net_can_receive` false) until the guest posts.
//!
//! No io_uring and no busy polling: that is the point of the comparison.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::event::epoll;
use vring::net::{bit, VirtioNetHdr};
use vring::{Direction, GuestMemory};

use crate::backend::tap::apply_offloads;
use crate::datapath::queue_failed;
use crate::device::{Device, DeviceError, DeviceReport, DeviceSpec};
use crate::metrics::{add, DeviceMetrics, DropReason, QueueMetrics};
use crate::net::header::pop_tx;
use crate::net::rx::{RxOutcome, RxWriter};
use crate::sys::{self, IoVecs};
use crate::virtq::{Chain, DeviceQueue, QueueError};

/// QEMU's default `tx_burst` (`TX_BURST`).
pub const TX_BURST: usize = 256;
/// Frames one RX pass reads before letting the loop run other work (QEMU's `tap_send` stops
/// after 50).
const RX_BUDGET: usize = 50;
/// Largest frame a tap hands over: 64 KiB of GSO frame plus headers.
const BOUNCE_LEN: usize = VirtioNetHdr::SIZE + 65_550;

/// Why a receive pass stopped.
enum RxStop {
    /// The tap has nothing more.
    TapEmpty,
    /// The pass read its budget; more may be waiting.
    Budget,
    /// The guest has too few buffers: stop reading the tap until it posts.
    NeedBuffers,
}

/// How the emulated device runs.
#[derive(Clone, Debug)]
pub struct EmulatedConfig {
    /// Device name; the thread is `emul-<name>`.
    pub name: String,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Frames per TX flush before rescheduling.
    pub tx_burst: usize,
}

impl Default for EmulatedConfig {
    fn default() -> Self {
        EmulatedConfig {
            name: "0".into(),
            core: None,
            tx_burst: TX_BURST,
        }
    }
}

/// epoll key of the stop eventfd; pair `n`'s fds are `3n` (TX kick), `3n + 1` (RX kick) and
/// `3n + 2` (its tap).
const STOP: u64 = u64::MAX;

/// Starts the emulated device's event loop, pair `n` on `taps[n]` (non-blocking,
/// `IFF_VNET_HDR`, 12-byte header). Like QEMU, the device sets each tap's offloads from the
/// negotiated features (`TUNSETOFFLOAD`).
pub fn spawn(
    spec: DeviceSpec,
    taps: Vec<File>,
    cfg: EmulatedConfig,
) -> Result<Device, DeviceError> {
    spec.check_pairs(taps.len(), "one tap per queue pair")?;
    let stop_fd = sys::eventfd()?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io::Error::from)?;
    let watch = |fd: std::os::fd::BorrowedFd<'_>, k: u64| {
        epoll::add(&ep, fd, epoll::EventData::new_u64(k), epoll::EventFlags::IN)
            .map_err(io::Error::from)
    };
    watch(stop_fd.as_fd(), STOP)?;
    let mut pairs = Vec::with_capacity(taps.len());
    for (i, (w, tap)) in spec.pairs.into_iter().zip(taps).enumerate() {
        apply_offloads(&tap, spec.features)?;
        let k = 3 * i as u64;
        watch(w.tx.kick.as_fd(), k)?;
        watch(w.rx.kick.as_fd(), k + 1)?;
        watch(tap.as_fd(), k + 2)?;
        pairs.push(EmuPair {
            index: i,
            txq: DeviceQueue::new(&spec.mem, w.tx.addrs, spec.features)?,
            rxq: DeviceQueue::new(&spec.mem, w.rx.addrs, spec.features)?,
            tx_kick: w.tx.kick,
            rx_kick: w.rx.kick,
            tx_call: w.tx.call,
            rx_call: w.rx.call,
            tap,
            bounce: vec![0u8; BOUNCE_LEN],
            held: None,
            tap_watched: true,
            tx_more: true,
            rx_more: true,
            tx_dead: false,
            rx_dead: false,
        });
    }
    let metrics = Arc::new(DeviceMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mrg = spec.features.has(bit::MRG_RXBUF);
    let mut l = EmuLoop {
        pairs,
        sh: Shared {
            mem: spec.mem,
            metrics: metrics.clone(),
            chain: Chain::with_capacity(8),
            rxw: RxWriter::new(mrg),
            iov: IoVecs::with_capacity(8),
            tx_burst: cfg.tx_burst.max(1),
            report: DeviceReport::default(),
        },
        stop_read: stop_fd.try_clone()?,
        ep,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("emul-{}", cfg.name))
        .spawn(move || {
            if let Some(c) = cfg.core {
                sys::pin_to(c);
            }
            l.run();
            l.sh.report.cpu_ns = sys::thread_cpu_ns();
            l.sh.metrics
                .worker_cpu_ns
                .store(l.sh.report.cpu_ns, Ordering::Relaxed);
            std::mem::take(&mut l.sh.report)
        })?;
    Ok(Device::from_parts(thread, stop, stop_fd, metrics))
}

struct EmuLoop {
    pairs: Vec<EmuPair>,
    sh: Shared,
    stop_read: File,
    ep: std::os::fd::OwnedFd,
    stop: Arc<AtomicBool>,
}

/// What every pair's handlers use: the loop's scratch space, counters and report.
struct Shared {
    mem: Arc<GuestMemory>,
    metrics: Arc<DeviceMetrics>,
    chain: Chain,
    rxw: RxWriter,
    iov: IoVecs,
    tx_burst: usize,
    report: DeviceReport,
}

/// One queue pair of the emulated device and its tap queue.
struct EmuPair {
    index: usize,
    txq: DeviceQueue,
    rxq: DeviceQueue,
    tx_kick: File,
    rx_kick: File,
    tx_call: File,
    rx_call: File,
    tap: File,
    /// QEMU's receive buffer: a frame is read here, then copied into the guest's buffers.
    bounce: Vec<u8>,
    /// Length of a frame in `bounce` still waiting for guest buffers.
    held: Option<usize>,
    /// The tap is in the epoll set with `EPOLLIN`.
    tap_watched: bool,
    /// Work scheduled without an event: a TX burst that ran out, RX the guest has room for
    /// again.
    tx_more: bool,
    rx_more: bool,
    tx_dead: bool,
    rx_dead: bool,
}

/// Drains an eventfd that epoll reported readable.
fn drain(fd: &File) -> u64 {
    let mut b = [0u8; 8];
    match (&*fd).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

impl EmuLoop {
    fn run(&mut self) {
        self.event_loop();
        // A frame read from a tap but never delivered is accounted, not lost.
        for p in &mut self.pairs {
            if p.held.take().is_some() {
                self.sh.metrics.drop_packets(DropReason::Stopped, 1);
            }
        }
    }

    fn event_loop(&mut self) {
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; 8];
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let busy = self.pairs.iter().any(|p| p.tx_more || p.rx_more);
            let timeout = if busy { Some(&zero) } else { None };
            let n = match epoll::wait(&self.ep, &mut events[..], timeout) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => {
                    self.sh.report.fatal = Some(format!("epoll_wait: {e}"));
                    return;
                }
            };
            if timeout.is_none() {
                add(&self.sh.metrics.wakeups, 1);
            }
            for ev in &events[..n] {
                let k = ev.data.u64();
                if k == STOP {
                    drain(&self.stop_read);
                    return;
                }
                let Some(p) = self.pairs.get_mut((k / 3) as usize) else {
                    continue;
                };
                let m = &self.sh.metrics;
                match k % 3 {
                    0 => {
                        add(&m.tx.kicks, drain(&p.tx_kick).min(1));
                        p.tx_more = true;
                    }
                    1 => {
                        add(&m.rx.kicks, drain(&p.rx_kick).min(1));
                        p.rx_more = !p.rx_dead;
                    }
                    _ => p.rx_more = true,
                }
            }
            for p in &mut self.pairs {
                p.run_once(&mut self.sh, &self.ep);
            }
            if self.sh.report.fatal.is_some() {
                return;
            }
        }
    }
}

impl EmuPair {
    /// One turn of this pair in the event loop: a TX flush and an RX pass where due.
    fn run_once(&mut self, sh: &mut Shared, ep: &std::os::fd::OwnedFd) {
        if self.tx_more && !self.tx_dead {
            match self.flush_tx(sh) {
                Ok(more) => self.tx_more = more,
                Err(()) => {
                    self.tx_dead = true;
                    self.tx_more = false;
                }
            }
        } else {
            self.tx_more = false;
        }
        if self.rx_more && !self.rx_dead {
            self.rx_more = false;
            match self.receive(sh) {
                Ok(RxStop::TapEmpty) => self.watch_tap(ep, true),
                // QEMU's tap_send reads a bounded number per wake-up, then lets TX run.
                Ok(RxStop::Budget) => self.rx_more = true,
                // virtio_net_can_receive false: stop reading the tap (tap_read_poll off)
                // until the guest posts buffers, or epoll would report it readable forever.
                Ok(RxStop::NeedBuffers) => self.watch_tap(ep, false),
                Err(()) => {
                    self.rx_dead = true;
                    self.watch_tap(ep, false);
                }
            }
        } else {
            self.rx_more = false;
        }
    }

    fn watch_tap(&mut self, ep: &std::os::fd::OwnedFd, on: bool) {
        if self.tap_watched == on {
            return;
        }
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        let key = epoll::EventData::new_u64(3 * self.index as u64 + 2);
        if epoll::modify(ep, &self.tap, key, flags).is_ok() {
            self.tap_watched = on;
        }
    }

    fn failed(&mut self, dir: Direction, e: QueueError, sh: &mut Shared) {
        let (q, call) = match dir {
            Direction::Tx => (&self.txq, &self.tx_call),
            Direction::Rx => (&self.rxq, &self.rx_call),
        };
        queue_failed(self.index, dir, q, call, e, &sh.metrics, &mut sh.report);
    }

    fn notify(q: &mut DeviceQueue, mem: &GuestMemory, call: &File, m: &QueueMetrics) {
        if q.needs_notification(mem) {
            let _ = sys::signal(call);
            add(&m.calls, 1);
        } else {
            add(&m.calls_suppressed, 1);
        }
    }
    /// One `virtio_net_flush_tx`. `Ok(true)`: the burst ran out with work left.
    fn flush_tx(&mut self, sh: &mut Shared) -> Result<bool, ()> {
        let mem = sh.mem.clone();
        let m = sh.metrics.clone();
        self.txq.disable_notifications(&mem);
        let mut n = 0;
        loop {
            while n < sh.tx_burst {
                let f = match pop_tx(&mut self.txq, &mem, &mut sh.chain) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        // The malformed chain itself: popped, never sent, and not returnable.
                        m.drop_packets(DropReason::QueueBroken, 1);
                        self.failed(Direction::Tx, e, sh);
                        return Err(());
                    }
                };
                // One syscall per frame, straight from guest memory (tap_receive_iov).
                match sys::writev_guest(
                    self.tap.as_fd(),
                    &mem,
                    sh.chain.readable().iter().copied(),
                    &mut sh.iov,
                ) {
                    Ok(w) if w == sh.chain.readable_len() as usize => {
                        add(&m.tx.packets, 1);
                        add(&m.tx.bytes, f.len as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        m.drop_packets(DropReason::BackendFull, 1)
                    }
                    _ => m.drop_packets(DropReason::BackendError, 1),
                }
                // virtqueue_push: fill and flush one element; then virtio_notify.
                let _ = self.txq.add_used(&mem, sh.chain.head(), 0);
                let _ = self.txq.publish_used(&mem);
                Self::notify(&mut self.txq, &mem, &self.tx_call, &m.tx);
                add(&m.tx.chains, 1);
                n += 1;
            }
            add(&m.tx.batches, 1);
            if n >= sh.tx_burst {
                add(&m.tx.weight_exhausted, 1);
                return Ok(true);
            }
            match self.txq.enable_notifications(&mem) {
                Ok(true) => {
                    self.txq.disable_notifications(&mem);
                    continue;
                }
                Ok(false) => return Ok(false),
                Err(e) => {
                    self.failed(Direction::Tx, e, sh);
                    return Err(());
                }
            }
        }
    }

    /// `tap_send`: read frames while the guest has room, copy each into its buffers. A frame
    /// that finds too few buffers is held (QEMU queues it) until the guest posts more.
    fn receive(&mut self, sh: &mut Shared) -> Result<RxStop, ()> {
        let mem = sh.mem.clone();
        let m = sh.metrics.clone();
        for _ in 0..RX_BUDGET {
            let n = match self.held.take() {
                Some(n) => n,
                None => {
                    // virtio_net_can_receive: no buffers → leave the tap unread, ask for kicks.
                    match self.rxq.pending(&mem) {
                        Ok(0) => match self.rearm_rx(sh) {
                            Ok(true) => continue,
                            Ok(false) => return Ok(RxStop::NeedBuffers),
                            Err(()) => return Err(()),
                        },
                        Ok(_) => {}
                        Err(e) => {
                            self.failed(Direction::Rx, e, sh);
                            return Err(());
                        }
                    }
                    self.rxq.disable_notifications(&mem);
                    match (&self.tap).read(&mut self.bounce) {
                        Ok(n) if n >= VirtioNetHdr::SIZE => n,
                        Ok(_) => {
                            m.drop_packets(DropReason::BackendError, 1);
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(RxStop::TapEmpty)
                        }
                        Err(e) => {
                            sh.report.fatal = Some(format!("tap read: {e}"));
                            return Err(());
                        }
                    }
                }
            };
            let mut raw = [0u8; VirtioNetHdr::SIZE];
            raw.copy_from_slice(&self.bounce[..VirtioNetHdr::SIZE]);
            let hdr = VirtioNetHdr::from_bytes(&raw);
            let frame = &self.bounce[VirtioNetHdr::SIZE..n];
            match sh.rxw.deliver(&mut self.rxq, &mem, &hdr, frame) {
                Ok(RxOutcome::Delivered { buffers }) => {
                    add(&m.rx.packets, 1);
                    add(&m.rx.bytes, (n - VirtioNetHdr::SIZE) as u64);
                    add(&m.rx.chains, buffers as u64);
                    let _ = self.rxq.publish_used(&mem);
                    Self::notify(&mut self.rxq, &mem, &self.rx_call, &m.rx);
                    add(&m.rx.batches, 1);
                }
                Ok(RxOutcome::NoBuffers) => {
                    self.held = Some(n);
                    match self.rearm_rx(sh) {
                        Ok(true) => continue,
                        Ok(false) => return Ok(RxStop::NeedBuffers),
                        Err(()) => return Err(()),
                    }
                }
                Ok(RxOutcome::TooLarge) => m.drop_packets(DropReason::RxTooLarge, 1),
                Err(e) => {
                    m.drop_packets(DropReason::QueueBroken, 1);
                    self.failed(Direction::Rx, e, sh);
                    return Err(());
                }
            }
        }
        Ok(RxStop::Budget)
    }

    /// Asks for RX kicks and re-checks; true if buffers arrived meanwhile.
    fn rearm_rx(&mut self, sh: &mut Shared) -> Result<bool, ()> {
        match self.rxq.enable_notifications(&sh.mem) {
            Ok(true) => {
                self.rxq.disable_notifications(&sh.mem);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.failed(Direction::Rx, e, sh);
                Err(())
            }
        }
    }
}
