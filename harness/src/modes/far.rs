//! The far side the kernel-backed modes share (the tap modes and `direct-vf`): the `rx`
//! injector, the draining of frames a device left unread, and the `rr` run with a second,
//! echoing guest whose problems and drops become the run's own.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use engine::device::{Device, DeviceSpec};
use engine::worker::WorkerConfig;
use guest_sim::traffic::Workload;
use vring::frame;

use crate::pair::{self, PairConfig, RunOutcome};
use crate::topology::{self, Netns};

/// Test frames waiting in `fd` (non-blocking) when the device stopped: read and counted, so
/// they are accounted rather than lost. Each read is one frame preceded by `hdr_len` bytes of
/// header (12 on a tap fd, 0 on a raw packet socket). Frames of the network itself, if any,
/// are not ours to count.
pub(crate) fn drain(fd: &File, hdr_len: usize) -> u64 {
    let mut buf = vec![0u8; 65_600];
    let mut n = 0;
    while let Ok(len) = (&*fd).read(&mut buf) {
        if len > hdr_len && frame::seq(&buf[hdr_len..len]).is_some() {
            n += 1;
        }
    }
    n
}

/// What an [`Injector`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Injected {
    /// Frames the kernel accepted (numbered `0..sent`).
    pub sent: u64,
    /// Sends refused with `ENOBUFS` (the interface's transmit dropped the frame) and retried
    /// with the same frame. The kernel counts each in the interface's `tx_dropped`, but no
    /// frame was lost: subtract them from that counter.
    pub pushed_back: u64,
}

impl Injected {
    /// `tx_dropped` of the interface the injector sent on, less the refusals it retried:
    /// frames the interface accepted and then dropped.
    pub fn dropped_after_send(&self, tx_dropped: u64) -> u64 {
        tx_dropped.saturating_sub(self.pushed_back)
    }
}

/// A running [`Injector`]'s count of frames sent so far, readable from another thread while it
/// runs (updated once per `sendmmsg(2)`): what a receiver measuring a window was offered.
#[derive(Clone, Debug)]
pub(crate) struct Progress(Arc<AtomicU64>);

impl Progress {
    /// Frames the kernel has accepted so far.
    pub fn sent(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Frames per `sendmmsg(2)` of an [`Injector`].
const INJECT_BATCH: usize = 32;

/// An offered rate: frame `n` is due `n / pps` seconds after the start.
#[derive(Clone, Copy, Debug)]
struct Pace {
    pps: u64,
    start: Instant,
}

impl Pace {
    fn new(pps: u64, start: Instant) -> Self {
        Pace {
            pps: pps.max(1),
            start,
        }
    }

    /// Frames due by `now` that have not been sent (`sent` have been).
    fn due(&self, sent: u64, now: Instant) -> u64 {
        let ns = now.saturating_duration_since(self.start).as_nanos();
        let due = (ns * u128::from(self.pps) / 1_000_000_000) as u64;
        due.saturating_sub(sent)
    }

    /// How long until frame `sent` is due, from `now`.
    fn until_next(&self, sent: u64, now: Instant) -> Duration {
        let at_ns = u128::from(sent) * 1_000_000_000 / u128::from(self.pps);
        let at = self.start + Duration::from_nanos(at_ns.min(u128::from(u64::MAX)) as u64);
        at.saturating_duration_since(now)
    }
}

/// Sends numbered test frames out of an interface from a packet socket until stopped, in
/// `sendmmsg(2)` batches of up to [`INJECT_BATCH`]: at `rate_pps` if given (the offered rate:
/// each batch holds the frames due, and the thread sleeps until the next is due), else as
/// fast as the kernel takes them.
pub(crate) struct Injector {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    pushed_back: Arc<AtomicU64>,
    thread: JoinHandle<Result<()>>,
}

impl Injector {
    /// Starts injecting into `ifname` in `ns`.
    pub fn start(
        ns: &Netns,
        ifname: &str,
        frame_len: usize,
        rate_pps: Option<u64>,
    ) -> Result<Self> {
        let sock = topology::packet_socket(ns, ifname, false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let pushed_back = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, back2) = (stop.clone(), sent.clone(), pushed_back.clone());
        let what = format!("injecting into {ifname}");
        let thread = std::thread::Builder::new()
            .name("inject".into())
            .spawn(move || {
                // Not pinned: on either core it would starve that core's thread (pinned to the
                // vCPU's core the guest cannot repost buffers). On two cores the three threads
                // share; `rx` numbers here measure that contention too (see README).
                let len = frame_len.max(frame::MIN_FRAME);
                let mut bufs: Vec<Vec<u8>> = (0..INJECT_BATCH)
                    .map(|_| {
                        let mut f = vec![0u8; len];
                        frame::fill(&mut f, 0, 0);
                        f
                    })
                    .collect();
                let pace = rate_pps.map(|pps| Pace::new(pps, Instant::now()));
                let mut seq = 0u64;
                let mut back = 0u64;
                while !stop2.load(Ordering::Relaxed) {
                    // The frames due now, a batch at most: a paced source sleeps until the
                    // next is due instead of spinning on a core the devices need.
                    let n = match &pace {
                        Some(p) => match p.due(seq, Instant::now()) {
                            0 => {
                                std::thread::sleep(p.until_next(seq, Instant::now()));
                                continue;
                            }
                            due => due.min(INJECT_BATCH as u64) as usize,
                        },
                        None => INJECT_BATCH,
                    };
                    for (i, f) in bufs.iter_mut().take(n).enumerate() {
                        frame::stamp(f, seq + i as u64, 0);
                    }
                    let batch: Vec<&[u8]> = bufs[..n].iter().map(Vec::as_slice).collect();
                    match topology::send_frames(&sock, &batch) {
                        Ok(k) => {
                            seq += k as u64;
                            sent2.store(seq, Ordering::Relaxed);
                        }
                        // The interface's queue is full: the kernel pushes back; the same
                        // frame is sent again.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            back += 1;
                            back2.store(back, Ordering::Relaxed);
                            std::thread::yield_now()
                        }
                        Err(e) => return Err(anyhow!(e).context(what)),
                    }
                }
                Ok(())
            })?;
        Ok(Injector {
            stop,
            sent,
            pushed_back,
            thread,
        })
    }

    /// A handle on how many frames it has sent so far.
    pub fn progress(&self) -> Progress {
        Progress(self.sent.clone())
    }

    /// Stops it and says what it did.
    pub fn stop(self) -> Result<Injected> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("injector panicked"))??;
        Ok(Injected {
            sent: self.sent.load(Ordering::Relaxed),
            pushed_back: self.pushed_back.load(Ordering::Relaxed),
        })
    }
}

/// One `rx` run: an [`Injector`] sends into `ifname` while the device started by
/// `start_device` serves the guest. The outcome's `injected` is what the injector sent; the
/// [`Injected`] is returned too, for the caller's accounting of the interface's drops.
pub(crate) fn run_injected(
    ns: &Netns,
    ifname: &str,
    cfg: &PairConfig,
    start_device: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Device>,
) -> Result<(RunOutcome, Injected)> {
    // The injector starts with the guest and stops when the guest stops generating.
    let inj = Injector::start(ns, ifname, cfg.frame_len, cfg.rate_pps)?;
    let running = match pair::start(cfg, 0, start_device) {
        Ok(r) => r,
        Err(e) => {
            let _ = inj.stop();
            return Err(e);
        }
    };
    std::thread::sleep(cfg.duration);
    // Join the guest and its device before reporting an injector failure, so nothing is left
    // running when the namespace goes.
    let injected = inj.stop();
    let mut o = running.join()?;
    let injected = injected?;
    o.injected = Some(injected.sent);
    Ok((o, injected))
}

/// One `rr` run: a second guest (device 1, [`Workload::Echo`]) on the device `start_far`
/// starts echoing every frame back, then the measured guest runs on `start_near`. The far
/// guest's errors become notes of the outcome, its drops the outcome's drops (`echo_*`).
pub(crate) fn run_with_echo(
    cfg: &PairConfig,
    start_near: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Device>,
    start_far: impl FnOnce(DeviceSpec, WorkerConfig) -> Result<Device>,
) -> Result<RunOutcome> {
    let echo_cfg = PairConfig {
        workload: Workload::Echo,
        duration: cfg.duration + Duration::from_secs(5),
        ..cfg.clone()
    };
    let echo = pair::start(&echo_cfg, 1, start_far)?;
    let res = pair::run(cfg, start_near);
    echo.stop();
    let e = echo.join()?;
    let mut o = res?;
    // The far guest's problems are this run's problems.
    for (what, err) in [
        ("echo guest", &e.guest.error),
        ("echo device", &e.worker.fatal),
    ] {
        if let Some(err) = err {
            o.notes.push(format!("{what}: {err}"));
        }
    }
    for f in &e.worker.queue_failures {
        o.notes.push(format!("echo device: {f}"));
    }
    if e.guest.echo_dropped > 0 {
        o.extra_drops
            .push(("echo_no_tx_buffer".into(), e.guest.echo_dropped));
    }
    // The far side's own drops are this run's too.
    for (reason, n) in e.drops_by_reason() {
        o.extra_drops.push((format!("echo_{reason}"), n));
    }
    Ok(o)
}

/// Adds `(reason, n)` to the outcome's drops if `n` is not zero.
pub(crate) fn add_drops(o: &mut RunOutcome, reason: &str, n: u64) {
    if n > 0 {
        o.extra_drops.push((reason.into(), n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_offers_frames_at_its_rate() {
        let t0 = Instant::now();
        let p = Pace::new(1000, t0);
        assert_eq!(p.due(0, t0), 0);
        assert_eq!(p.due(0, t0 + Duration::from_millis(10)), 10);
        assert_eq!(p.due(4, t0 + Duration::from_millis(10)), 6);
        assert_eq!(p.due(20, t0 + Duration::from_millis(10)), 0);
        // Frame 20 is due at 20 ms.
        assert_eq!(
            p.until_next(20, t0 + Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        assert_eq!(
            p.until_next(5, t0 + Duration::from_millis(10)),
            Duration::ZERO
        );
    }
}
