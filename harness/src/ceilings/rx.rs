//! The RX ceilings: what a backend's kind of socket receives, behind the same topology, from
//! the same far-side source as an `rx` run, with no engine around it.
//!
//! The source is the `rx` workload's own injector ([`Injector`]: a packet socket on the wire
//! end sending numbered test frames in `sendmmsg(2)` batches, unpinned, as fast as the kernel
//! takes them, or at the run's `--rate-pps`). The receiver is one thread, `limit-rx`, pinned to
//! the worker's core, doing the backend's per-frame work: each frame goes into the next of 256
//! private 2 KiB buffers standing in for the guest's posted RX buffers (behind a 12-byte
//! virtio-net header: the one a tap or macvtap fd delivers, or a zero one written by the
//! receiver, as the packet and AF_XDP backends write it), and is checked to be a test frame
//! ([`vring::frame::seq`]). With nothing ready it sleeps in `poll(2)` on the fd, as the worker
//! sleeps in io_uring when idle.
//!
//! | ceiling | receives on | per frame | injected at |
//! |---|---|---|---|
//! | `xdp_rx_<size>` | AF_XDP socket in copy mode on the VF end of a one-VF pool, the XDP redirect program attached, rings of `direct-vf`'s size | reap the RX ring, copy the frame out of its UMEM chunk, put the chunk back on the fill ring; RX and fill indices published every 32 frames and before sleeping | the VF's wire end |
//! | `packet_read_<size>` | the raw packet socket the packet backend gets | one `read(2)` | the VF's wire end |
//! | `macvtap_read_<size>` | macvtap in passthrough mode on the VF end | one `read(2)` | the VF's wire end |
//! | `tap_read_<size>` | a tap on bridge `br0` with a veth uplink (the tap modes' topology) | one `read(2)` | the uplink's wire end |
//!
//! Each repeat opens its window a tenth of the duration after the first frame arrives (the
//! queues fill first) and closes it `duration` later. Its sample is the test frames received
//! in the window per second; what the injector sent during the same window is recorded beside
//! it (offered), so a ceiling that drops frames itself shows it. Frames left queued are read
//! and discarded between repeats.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use engine::backend::af_xdp::sys::{Chunk, Xsk};
use engine::backend::af_xdp::RX_PUBLISH;

use super::tap::check_size;
use super::{join, RxPort};
use crate::modes::direct_vf::XSK_RING;
use crate::modes::far::{Injector, Progress};
use crate::pin::{spawn_pinned, worker_core};
use crate::topology::{self, Netns, VfPool};

/// The PF of the VF ceilings' one-VF pool (inside their own namespace).
const LIMIT_PF: &str = "vhbrpf";
/// The tap of `tap_read` (inside its own namespace).
const LIMIT_TAP: &str = "vhbtap0";
/// The macvtap of `macvtap_read` (inside its own namespace).
const LIMIT_MACVTAP: &str = "vhbmvt0";
/// Bytes of virtio-net header in front of each frame in a buffer.
const HDR: usize = topology::TAP_VNET_HDR_LEN;
/// Buffers the frames rotate through (the guest's posted RX buffers; the default queue size).
const BUFFERS: usize = 256;
/// Bytes per buffer: a header and the largest frame.
const BUF_LEN: usize = 2048;
/// How long a repeat waits for its first frame.
const FIRST_FRAME_PATIENCE: Duration = Duration::from_secs(2);
/// Longest `poll(2)` sleep: how late an idle receiver notices the end of its window.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Frames between clock reads while frames keep coming.
const CLOCK_EVERY: u64 = 32;
/// Longest a drain between repeats may take (a source that never stops is an error).
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// One repeat: (delivered Mpps, offered Mpps).
pub(super) type Sample = (f64, f64);

/// `repeat` samples of `size`-byte frames injected for `duration` each (at `rate_pps` if given)
/// and received on `port`, in a fresh namespace.
pub(super) fn measure(
    name: &str,
    port: RxPort,
    size: usize,
    rate_pps: Option<u64>,
    duration: Duration,
    repeat: usize,
) -> anyhow::Result<Vec<Sample>> {
    check_size(name, size)?;
    let p = topology::probe();
    let ready = match port {
        RxPort::Tap => p.can_run,
        RxPort::Packet | RxPort::Macvtap => p.vfs,
        RxPort::Xdp => p.vfs && p.af_xdp,
    };
    ensure!(ready, "limit {name} needs root: {}", p.summary());
    let run = Run {
        name,
        size,
        rate_pps,
        duration,
        repeat,
    };
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    if port == RxPort::Tap {
        let tap = topology::open_tap(&ns, LIMIT_TAP, 0).with_context(|| format!("{name}: tap"))?;
        topology::bridge_with_uplink(&ns, "br0", &[LIMIT_TAP])
            .with_context(|| format!("{name}: bridge"))?;
        let fd = FdPort {
            file: tap.file,
            header_in_stream: true,
        };
        return run.repeats(&ns, topology::UPLINK_WIRE, fd);
    }
    let pool = VfPool::create(&ns, LIMIT_PF, 1).with_context(|| format!("{name}: VF pool"))?;
    let vf = pool.take()?;
    match port {
        RxPort::Packet => {
            let fd = FdPort {
                file: vf
                    .backend_socket()
                    .with_context(|| format!("{name}: socket"))?,
                header_in_stream: false,
            };
            run.repeats(&ns, vf.wire(), fd)
        }
        RxPort::Macvtap => {
            let fd = FdPort {
                file: topology::open_macvtap(&ns, vf.name(), LIMIT_MACVTAP)
                    .with_context(|| format!("{name}: macvtap"))?
                    .file,
                header_in_stream: true,
            };
            run.repeats(&ns, vf.wire(), fd)
        }
        RxPort::Xdp => {
            // The program stays attached (and the socket registered in its map) while the
            // socket receives: without it nothing reaches the socket.
            let (redirect, port) = topology::xdp_port(&ns, vf.name(), XSK_RING, XskPort::new)
                .with_context(|| format!("{name}: AF_XDP port"))?;
            let samples = run.repeats(&ns, vf.wire(), port);
            drop(redirect);
            samples
        }
        RxPort::Tap => bail!("{name}: a tap is not on a VF"),
    }
}

/// What every repeat of one measurement shares.
struct Run<'a> {
    name: &'a str,
    size: usize,
    rate_pps: Option<u64>,
    duration: Duration,
    repeat: usize,
}

impl Run<'_> {
    /// The repeats, each injecting into `wire` in `ns` while `port` receives on a pinned
    /// thread; the port is handed back after each and drained before the next.
    fn repeats<P: Port>(&self, ns: &Netns, wire: &str, mut port: P) -> anyhow::Result<Vec<Sample>> {
        let name = self.name;
        let mut samples = Vec::with_capacity(self.repeat);
        for _ in 0..self.repeat {
            let inj = Injector::start(ns, wire, self.size, self.rate_pps)
                .with_context(|| format!("{name}: injector"))?;
            let (w, p) = self.one(port, inj)?;
            port = p;
            let w = w.with_context(|| format!("{name}: receiving"))?;
            ensure!(
                w.frames > 0 && w.secs > 0.0,
                "{name}: no test frame received in the window ({} other frames)",
                w.foreign
            );
            samples.push((
                w.frames as f64 / w.secs / 1e6,
                w.offered as f64 / w.secs / 1e6,
            ));
            port.drain().with_context(|| format!("{name}: draining"))?;
        }
        Ok(samples)
    }

    /// One repeat: `port` receives on a pinned thread while `inj` sends. The receiver keeps
    /// reading past its window until the injector has stopped: frames queued towards a
    /// macvtap stay charged to the injector's socket until read, so an injector whose frames
    /// nobody reads any more can block in `sendmmsg` for good. The window (or why there is
    /// none), and the port back.
    fn one<P: Port>(
        &self,
        mut port: P,
        inj: Injector,
    ) -> anyhow::Result<(anyhow::Result<Window>, P)> {
        let name = self.name;
        let progress = inj.progress();
        let duration = self.duration;
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let done2 = done.clone();
        let h = spawn_pinned("limit-rx".into(), worker_core(), move || {
            let mut sink = Sink::new();
            // The receiver's own error goes to the caller as the window's; reading on until
            // the injector has stopped happens either way.
            let _ = tx.send(receive(&mut port, &mut sink, &progress, duration));
            while !done2.load(Ordering::Relaxed) {
                if !sink.take(&mut port)? {
                    port.wait(IDLE_POLL).context("poll")?;
                }
            }
            Ok(port)
        });
        let h = match h {
            Ok(h) => h,
            Err(e) => {
                let _ = inj.stop();
                return Err(anyhow!(e).context("spawning limit-rx"));
            }
        };
        // No window if the thread ended without one (its error is in the join below).
        let window = rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("limit-rx ended early")));
        let injected = inj.stop();
        done.store(true, Ordering::Relaxed);
        let port = join(h, "limit-rx")?;
        injected.with_context(|| format!("{name}: injector"))?;
        Ok((window, port))
    }
}

/// What one repeat's window saw.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Test frames received.
    frames: u64,
    /// Frames the injector sent.
    offered: u64,
    /// Frames that were not test frames (not counted).
    foreign: u64,
    /// Its length.
    secs: f64,
}

/// A receiving end, read the way the backend of its kind reads it.
trait Port: Send + 'static {
    /// Takes the next ready frame into `buf` behind a [`HDR`]-byte virtio-net header; the
    /// bytes written (header included), or `None` when nothing is ready (after handing back
    /// what was consumed, as the backend does before it sleeps).
    fn take(&mut self, buf: &mut [u8]) -> anyhow::Result<Option<usize>>;

    /// Sleeps in `poll(2)` until a frame may be ready, or `timeout`.
    fn wait(&self, timeout: Duration) -> io::Result<bool>;

    /// Reads and discards what is queued, until nothing more arrives for [`IDLE_POLL`].
    fn drain(&mut self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; BUF_LEN];
        let until = Instant::now() + DRAIN_PATIENCE;
        loop {
            while self.take(&mut buf)?.is_some() {
                ensure!(Instant::now() < until, "frames kept coming");
            }
            if !self.wait(IDLE_POLL)? {
                return Ok(());
            }
        }
    }
}

/// A fd that gives one frame per `read(2)`: non-blocking, `EAGAIN` when empty.
struct FdPort {
    file: File,
    /// Whether each read starts with the header (a tap or macvtap fd); else the frame is read
    /// after the header's room and a zero header written in front (the packet backend).
    header_in_stream: bool,
}

impl Port for FdPort {
    fn take(&mut self, buf: &mut [u8]) -> anyhow::Result<Option<usize>> {
        let at = if self.header_in_stream { 0 } else { HDR };
        let room = buf.get_mut(at..).context("buffer smaller than a header")?;
        loop {
            match (&self.file).read(room) {
                Ok(n) => {
                    if let Some(h) = buf.get_mut(..at) {
                        h.fill(0);
                    }
                    return Ok(Some(at + n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("read"),
            }
        }
    }

    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        topology::wait_readable(&self.file, timeout)
    }
}

/// An AF_XDP socket whose fill ring holds one ring's worth of chunks, reaped as the AF_XDP
/// backend's RX reaps it.
impl AsFd for XskPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

struct XskPort {
    xsk: Xsk,
    /// Chunks taken from the RX ring that found the fill ring full, put back at the next
    /// publish. The kernel publishes a batch's RX entries before the fill entries it consumed
    /// for them (`xsk_flush`: RX producer, then fill consumer), so with every chunk on the
    /// ring a frame can be seen before its fill slot is free.
    spare: Vec<Chunk>,
}

impl XskPort {
    /// Stocks the fill ring from `chunks` (the UMEM's; the rest are not needed for RX).
    fn new(mut xsk: Xsk, chunks: Vec<Chunk>) -> anyhow::Result<Self> {
        let ring = xsk.ring_size() as usize;
        ensure!(
            chunks.len() >= ring,
            "{} chunks for a fill ring of {ring}",
            chunks.len()
        );
        for c in chunks.into_iter().take(ring) {
            if xsk.fill_put(c).is_err() {
                bail!("fill ring smaller than its size");
            }
        }
        xsk.fill_publish();
        Ok(XskPort {
            xsk,
            spare: Vec::with_capacity(ring),
        })
    }

    /// Puts `chunk` back on the fill ring, or aside if the kernel has not freed its slot yet.
    fn refill(&mut self, chunk: Chunk) {
        if let Err(c) = self.xsk.fill_put(chunk) {
            self.spare.push(c);
        }
    }

    /// Publishes the consumed RX slots and the chunks put back on the fill ring (the spare
    /// ones too, as far as the ring has room now).
    fn publish(&mut self) {
        while let Some(c) = self.spare.pop() {
            if let Err(c) = self.xsk.fill_put(c) {
                self.spare.push(c);
                break;
            }
        }
        self.xsk.rx_release();
        self.xsk.fill_publish();
    }
}

impl Port for XskPort {
    fn take(&mut self, buf: &mut [u8]) -> anyhow::Result<Option<usize>> {
        let (chunk, off, len) = match self.xsk.rx_take() {
            Some(Ok(t)) => t,
            Some(Err(d)) => bail!("RX descriptor outside the UMEM: {d:?}"),
            None => {
                // Nothing more seen: hand back what was consumed before looking again.
                self.publish();
                if self.xsk.rx_peek().is_none() {
                    return Ok(None);
                }
                return self.take(buf);
            }
        };
        let frame = self
            .xsk
            .chunk_bytes(&chunk, off, len)
            .context("RX descriptor outside its chunk")?;
        buf.get_mut(HDR..HDR + len)
            .context("frame larger than a buffer")?
            .copy_from_slice(frame);
        buf[..HDR].fill(0);
        self.refill(chunk);
        if self.xsk.rx_unreleased() >= RX_PUBLISH {
            self.publish();
        }
        Ok(Some(HDR + len))
    }

    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        topology::wait_readable(&self.xsk.as_fd(), timeout)
    }
}

/// The buffers frames are received into, in turn, and the count of test frames among them.
struct Sink {
    bufs: Vec<Box<[u8]>>,
    next: usize,
    frames: u64,
    foreign: u64,
}

impl Sink {
    fn new() -> Self {
        Sink {
            bufs: (0..BUFFERS)
                .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
                .collect(),
            next: 0,
            frames: 0,
            foreign: 0,
        }
    }

    /// Receives one frame from `port` into the next buffer; whether one was ready.
    fn take(&mut self, port: &mut impl Port) -> anyhow::Result<bool> {
        let buf = &mut self.bufs[self.next];
        let Some(n) = port.take(buf)? else {
            return Ok(false);
        };
        match buf.get(HDR..n).and_then(vring::frame::seq) {
            Some(_) => self.frames += 1,
            None => self.foreign += 1,
        }
        self.next = (self.next + 1) % BUFFERS;
        Ok(true)
    }
}

/// One repeat's receiving into `sink` (new): frames until a tenth of `duration` after the
/// first, then a window of `duration`.
fn receive(
    port: &mut impl Port,
    sink: &mut Sink,
    progress: &Progress,
    duration: Duration,
) -> anyhow::Result<Window> {
    let patience = Instant::now() + FIRST_FRAME_PATIENCE;
    let warmup = duration / 10;
    let mut first: Option<Instant> = None;
    // Opened at, test frames and frames offered by then.
    let mut open: Option<(Instant, u64, u64)> = None;
    loop {
        let got = sink.take(port)?;
        if got && !sink.frames.is_multiple_of(CLOCK_EVERY) {
            continue;
        }
        let now = Instant::now();
        match (first, open) {
            (None, _) if sink.frames > 0 => first = Some(now),
            (None, _) => ensure!(
                now < patience,
                "no test frame arrived in {FIRST_FRAME_PATIENCE:?} ({} other frames)",
                sink.foreign
            ),
            (Some(f), None) if now >= f + warmup => {
                open = Some((now, sink.frames, progress.sent()));
            }
            (Some(_), None) => {}
            (Some(_), Some((t0, frames0, offered0))) if now >= t0 + duration => {
                return Ok(Window {
                    frames: sink.frames - frames0,
                    offered: progress.sent().saturating_sub(offered0),
                    foreign: sink.foreign,
                    secs: (now - t0).as_secs_f64(),
                });
            }
            (Some(_), Some(_)) => {}
        }
        if !got {
            port.wait(IDLE_POLL).context("poll")?;
        }
    }
}
