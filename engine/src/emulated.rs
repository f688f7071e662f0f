//! The `emulated` mode: the VMM's own userspace virtio-net on a tap (QEMU `-net tap` with
//! ioeventfd and irqfd), modeled on QEMU's `hw/net/virtio-net.c` and `net/tap.c`.
//!
//! One event-loop thread (QEMU's main loop) waits in `epoll_wait` on the kick eventfds, the tap
//! fd and a stop eventfd. It uses the same virtqueue code as the vhost worker, so the comparison
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
use vring::GuestMemory;

use crate::metrics::{add, DeviceMetrics, DropReason};
use crate::net::header::pop_tx;
use crate::net::rx::{RxOutcome, RxWriter};
use crate::sys::{self, IoVecs};
use crate::virtq::{Chain, DeviceQueue, QueueError};
use crate::worker::{DeviceSpec, Worker, WorkerError, WorkerReport};

/// QEMU's default `tx_burst` (`TX_BURST`).
pub const TX_BURST: usize = 256;
/// Frames one RX pass reads before letting the loop run other work (QEMU's `tap_send` stops
/// after 50).
const RX_BUDGET: usize = 50;

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

const TX_KICK: u64 = 0;
const RX_KICK: u64 = 1;
const STOP: u64 = 2;
const TAP: u64 = 3;

/// Starts the emulated device's event loop on `tap` (non-blocking, `IFF_VNET_HDR`, 12-byte
/// header).
pub fn spawn(spec: DeviceSpec, tap: File, cfg: EmulatedConfig) -> Result<Worker, WorkerError> {
    let txq = DeviceQueue::new(&spec.mem, spec.tx, spec.features)?;
    let rxq = DeviceQueue::new(&spec.mem, spec.rx, spec.features)?;
    let stop_fd = sys::eventfd()?;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io::Error::from)?;
    let watch = |fd: std::os::fd::BorrowedFd<'_>, k: u64| {
        epoll::add(&ep, fd, epoll::EventData::new_u64(k), epoll::EventFlags::IN)
            .map_err(io::Error::from)
    };
    watch(spec.tx_kick.as_fd(), TX_KICK)?;
    watch(spec.rx_kick.as_fd(), RX_KICK)?;
    watch(stop_fd.as_fd(), STOP)?;
    watch(tap.as_fd(), TAP)?;
    let metrics = Arc::new(DeviceMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mrg = spec.features.has(bit::MRG_RXBUF);
    let mut l = EmuLoop {
        mem: spec.mem,
        txq,
        rxq,
        tx_kick: spec.tx_kick,
        rx_kick: spec.rx_kick,
        tx_call: spec.tx_call,
        rx_call: spec.rx_call,
        stop_read: stop_fd.try_clone()?,
        tap,
        ep,
        metrics: metrics.clone(),
        stop: stop.clone(),
        chain: Chain::with_capacity(8),
        rxw: RxWriter::new(mrg),
        iov: IoVecs::with_capacity(8),
        bounce: vec![0u8; VirtioNetHdr::SIZE + 65_550],
        tx_burst: cfg.tx_burst.max(1),
        held: None,
        tap_watched: true,
        report: WorkerReport::default(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("emul-{}", cfg.name))
        .spawn(move || {
            if let Some(c) = cfg.core {
                sys::pin_to(c);
            }
            l.run();
            l.report.cpu_ns = sys::thread_cpu_ns();
            l.metrics
                .worker_cpu_ns
                .store(l.report.cpu_ns, Ordering::Relaxed);
            std::mem::take(&mut l.report)
        })?;
    Ok(Worker::from_parts(thread, stop, stop_fd, metrics))
}

struct EmuLoop {
    mem: Arc<GuestMemory>,
    txq: DeviceQueue,
    rxq: DeviceQueue,
    tx_kick: File,
    rx_kick: File,
    tx_call: File,
    rx_call: File,
    stop_read: File,
    tap: File,
    ep: std::os::fd::OwnedFd,
    metrics: Arc<DeviceMetrics>,
    stop: Arc<AtomicBool>,
    chain: Chain,
    rxw: RxWriter,
    iov: IoVecs,
    bounce: Vec<u8>,
    tx_burst: usize,
    /// Length of a frame in `bounce` still waiting for guest buffers.
    held: Option<usize>,
    /// The tap is in the epoll set with `EPOLLIN`.
    tap_watched: bool,
    report: WorkerReport,
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
        // A frame read from the tap but never delivered is accounted, not lost.
        if self.held.take().is_some() {
            self.metrics.drop_packets(DropReason::Stopped, 1);
        }
    }

    fn watch_tap(&mut self, on: bool) {
        if self.tap_watched == on {
            return;
        }
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        if epoll::modify(&self.ep, &self.tap, epoll::EventData::new_u64(TAP), flags).is_ok() {
            self.tap_watched = on;
        }
    }

    fn event_loop(&mut self) {
        let mut tx_dead = false;
        let mut rx_dead = false;
        // Work that is scheduled without an event: a TX burst that ran out, RX the guest has
        // room for again.
        let mut tx_more = true;
        let mut rx_more = true;
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
            let timeout = if tx_more || rx_more {
                Some(&zero)
            } else {
                None
            };
            let n = match epoll::wait(&self.ep, &mut events[..], timeout) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => {
                    self.report.fatal = Some(format!("epoll_wait: {e}"));
                    return;
                }
            };
            if timeout.is_none() {
                add(&self.metrics.wakeups, 1);
            }
            for ev in &events[..n] {
                match ev.data.u64() {
                    TX_KICK => {
                        add(&self.metrics.tx.kicks, drain(&self.tx_kick).min(1));
                        tx_more = true;
                    }
                    RX_KICK => {
                        add(&self.metrics.rx.kicks, drain(&self.rx_kick).min(1));
                        rx_more = !rx_dead;
                    }
                    STOP => {
                        drain(&self.stop_read);
                        return;
                    }
                    _ => rx_more = true,
                }
            }
            if tx_more && !tx_dead {
                match self.flush_tx() {
                    Ok(more) => tx_more = more,
                    Err(()) => {
                        tx_dead = true;
                        tx_more = false;
                    }
                }
            } else {
                tx_more = false;
            }
            if rx_more && !rx_dead {
                rx_more = false;
                match self.receive() {
                    Ok(RxStop::TapEmpty) => self.watch_tap(true),
                    // QEMU's tap_send reads a bounded number per wake-up, then lets TX run.
                    Ok(RxStop::Budget) => rx_more = true,
                    // virtio_net_can_receive false: stop reading the tap (tap_read_poll off)
                    // until the guest posts buffers, or epoll would report it readable forever.
                    Ok(RxStop::NeedBuffers) => self.watch_tap(false),
                    Err(()) => {
                        rx_dead = true;
                        self.watch_tap(false);
                    }
                }
            } else {
                rx_more = false;
            }
            if self.report.fatal.is_some() {
                return;
            }
        }
    }

    fn failed(&mut self, tx: bool, e: QueueError) {
        add(&self.metrics.queue_errors[e.kind() as usize], 1);
        let slot = if tx {
            &mut self.report.tx_error
        } else {
            &mut self.report.rx_error
        };
        slot.get_or_insert(e.to_string());
        let _ = sys::signal(if tx { &self.tx_call } else { &self.rx_call });
    }

    fn notify(
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        call: &File,
        m: &crate::metrics::QueueMetrics,
    ) {
        if q.needs_notification(mem) {
            let _ = sys::signal(call);
            add(&m.calls, 1);
        } else {
            add(&m.calls_suppressed, 1);
        }
    }

    /// One `virtio_net_flush_tx`. `Ok(true)`: the burst ran out with work left.
    fn flush_tx(&mut self) -> Result<bool, ()> {
        let mem = self.mem.clone();
        let m = self.metrics.clone();
        self.txq.disable_notifications(&mem);
        let mut n = 0;
        loop {
            while n < self.tx_burst {
                let f = match pop_tx(&mut self.txq, &mem, &mut self.chain) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.failed(true, e);
                        return Err(());
                    }
                };
                // One syscall per frame, straight from guest memory (tap_receive_iov).
                match sys::writev_guest(
                    self.tap.as_fd(),
                    &mem,
                    self.chain.readable(),
                    &mut self.iov,
                ) {
                    Ok(w) if w == self.chain.readable_len() as usize => {
                        add(&m.tx.packets, 1);
                        add(&m.tx.bytes, f.len as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        m.drop_packets(DropReason::BackendFull, 1)
                    }
                    _ => m.drop_packets(DropReason::BackendError, 1),
                }
                // virtqueue_push: fill and flush one element; then virtio_notify.
                let _ = self.txq.add_used(&mem, self.chain.head(), 0);
                let _ = self.txq.publish_used(&mem);
                Self::notify(&mut self.txq, &mem, &self.tx_call, &m.tx);
                add(&m.tx.chains, 1);
                n += 1;
            }
            add(&m.tx.batches, 1);
            if n >= self.tx_burst {
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
                    self.failed(true, e);
                    return Err(());
                }
            }
        }
    }

    /// `tap_send`: read frames while the guest has room, copy each into its buffers. A frame
    /// that finds too few buffers is held (QEMU queues it) until the guest posts more.
    fn receive(&mut self) -> Result<RxStop, ()> {
        let mem = self.mem.clone();
        let m = self.metrics.clone();
        for _ in 0..RX_BUDGET {
            let n = match self.held.take() {
                Some(n) => n,
                None => {
                    // virtio_net_can_receive: no buffers → leave the tap unread, ask for kicks.
                    match self.rxq.pending(&mem) {
                        Ok(0) => match self.rearm_rx() {
                            Ok(true) => continue,
                            Ok(false) => return Ok(RxStop::NeedBuffers),
                            Err(()) => return Err(()),
                        },
                        Ok(_) => {}
                        Err(e) => {
                            self.failed(false, e);
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
                            self.report.fatal = Some(format!("tap read: {e}"));
                            return Err(());
                        }
                    }
                }
            };
            let mut raw = [0u8; VirtioNetHdr::SIZE];
            raw.copy_from_slice(&self.bounce[..VirtioNetHdr::SIZE]);
            let hdr = VirtioNetHdr::from_bytes(&raw);
            let frame = &self.bounce[VirtioNetHdr::SIZE..n];
            match self.rxw.deliver(&mut self.rxq, &mem, &hdr, frame) {
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
                    match self.rearm_rx() {
                        Ok(true) => continue,
                        Ok(false) => return Ok(RxStop::NeedBuffers),
                        Err(()) => return Err(()),
                    }
                }
                Ok(RxOutcome::TooLarge) => m.drop_packets(DropReason::RxTooLarge, 1),
                Err(e) => {
                    m.drop_packets(DropReason::QueueBroken, 1);
                    self.failed(false, e);
                    return Err(());
                }
            }
        }
        Ok(RxStop::Budget)
    }

    /// Asks for RX kicks and re-checks; true if buffers arrived meanwhile.
    fn rearm_rx(&mut self) -> Result<bool, ()> {
        match self.rxq.enable_notifications(&self.mem) {
            Ok(true) => {
                self.rxq.disable_notifications(&self.mem);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.failed(false, e);
                Err(())
            }
        }
    }
}
