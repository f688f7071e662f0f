//! The round-trip ceilings: `busy_poll_wake_rtt` (A sets a flag, B busy-polls, sees it and
//! answers on a second cache line, A busy-polls for the answer) and `blocking_wake_rtt` (the
//! same with both sides blocked in `read` on eventfds: the cost of waking a sleeping thread,
//! twice). Median and p99 of per-sample round trips, timed with the clock the guest's `rr`
//! round trips use.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use engine::sys;
use guest_sim::clock;
use hdrhistogram::Histogram;

use super::{join, LimitResult, UNIT_NS};
use crate::padded::CachePadded;
use crate::pin::{spawn_pinned, vcpu_core, worker_core};

/// Round trips per repeat, at most (the duration caps it too).
const RTT_SAMPLES: u64 = 100_000;
/// Untimed round trips before each repeat.
const RTT_WARMUP: u64 = 1_000;

pub(super) fn limit(
    name: &str,
    repeat: usize,
    mut once: impl FnMut() -> anyhow::Result<Histogram<u64>>,
) -> anyhow::Result<Vec<LimitResult>> {
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let h = once()?;
        ensure!(!h.is_empty(), "{name}: no round trips completed");
        p50.push(h.value_at_quantile(0.5) as f64);
        p99.push(h.value_at_quantile(0.99) as f64);
    }
    Ok(vec![
        LimitResult::from_samples(name, UNIT_NS, p50)?,
        LimitResult::from_samples(&format!("{name}_p99"), UNIT_NS, p99)?,
    ])
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram")
}

/// Two flags on separate lines: A's request (a sequence number) and B's answer (the same).
struct Flags {
    request: CachePadded<AtomicU64>,
    answer: CachePadded<AtomicU64>,
}

/// Tells the busy-polling responder to exit.
const STOP: u64 = u64::MAX;

/// Writes [`STOP`] to the request line when dropped, so the responder exits whatever happens.
struct StopResponder(Arc<Flags>);

impl Drop for StopResponder {
    fn drop(&mut self) {
        self.0.request.store(STOP, Ordering::Release);
    }
}

pub(super) fn busy_once(duration: Duration) -> anyhow::Result<Histogram<u64>> {
    let flags = Arc::new(Flags {
        request: CachePadded(AtomicU64::new(0)),
        answer: CachePadded(AtomicU64::new(0)),
    });

    let f = Arc::clone(&flags);
    let responder = spawn_pinned("limit-pong".into(), worker_core(), move || {
        let mut last = 0u64;
        loop {
            // Acquire/Release carry only the value itself; no other data rides on it.
            let v = f.request.load(Ordering::Acquire);
            if v == last {
                std::hint::spin_loop();
                continue;
            }
            if v == STOP {
                return;
            }
            f.answer.store(v, Ordering::Release);
            last = v;
        }
    })
    .context("spawning limit-pong")?;

    let f = Arc::clone(&flags);
    let requester = spawn_pinned("limit-ping".into(), vcpu_core(), move || {
        let _stop = StopResponder(Arc::clone(&f));
        let mut hist = new_histogram()?;
        let deadline = Instant::now() + RTT_WARMUP_BUDGET + duration;
        for seq in 1..=RTT_WARMUP + RTT_SAMPLES {
            // The clock the guest's rr workload stamps its requests with, so both round trips
            // carry the same clock overhead.
            let t0 = clock::now_ns();
            f.request.store(seq, Ordering::Release);
            loop {
                let a = f.answer.load(Ordering::Acquire);
                if a == seq {
                    break;
                }
                if a != seq - 1 {
                    bail!("round trip {seq}: answer {a}");
                }
                std::hint::spin_loop();
            }
            if seq > RTT_WARMUP {
                hist.saturating_record(clock::now_ns().saturating_sub(t0).max(1));
            }
            if seq > RTT_WARMUP && seq % 64 == 0 && Instant::now() >= deadline {
                break;
            }
        }
        Ok(hist)
    })
    .context("spawning limit-ping")?;

    let hist = join(requester, "limit-ping");
    responder
        .join()
        .map_err(|_| anyhow!("limit-pong panicked"))?;
    hist
}

/// Extra time allowed for the warm-up round trips on top of the duration.
const RTT_WARMUP_BUDGET: Duration = Duration::from_millis(5);

/// An eventfd count that is not a plain wake-up (1): the peer exited.
const PEER_GONE: u64 = 1 << 32;

/// Blocking round trip pair: A writes `request` and blocks reading `answer`; B blocks reading
/// `request` and writes `answer`.
struct Wake {
    request: File,
    answer: File,
    stop: AtomicBool,
}

/// Wakes the peer with [`PEER_GONE`] when dropped; `to_request` picks which fd.
struct WakePeer(Arc<Wake>, bool);

impl Drop for WakePeer {
    fn drop(&mut self) {
        // Release: a peer that wakes and Acquire-loads `stop` sees it set.
        self.0.stop.store(true, Ordering::Release);
        let fd = if self.1 {
            &self.0.request
        } else {
            &self.0.answer
        };
        // Best effort: if even this fails, the peer is already gone.
        let _ = sys::add(fd, PEER_GONE);
    }
}

pub(super) fn blocking_once(duration: Duration) -> anyhow::Result<Histogram<u64>> {
    let wake = Arc::new(Wake {
        request: sys::eventfd().context("eventfd")?,
        answer: sys::eventfd().context("eventfd")?,
        stop: AtomicBool::new(false),
    });
    let warmup = RTT_WARMUP / 10;

    let w = Arc::clone(&wake);
    let responder = spawn_pinned("limit-pong".into(), worker_core(), move || {
        let _wake = WakePeer(Arc::clone(&w), false);
        loop {
            let n = sys::wait(&w.request).context("read request eventfd")?;
            if w.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            ensure!(n == 1, "request eventfd count {n}, expected 1");
            sys::signal(&w.answer).context("write answer eventfd")?;
        }
    })
    .context("spawning limit-pong")?;

    let w = Arc::clone(&wake);
    let requester = spawn_pinned("limit-ping".into(), vcpu_core(), move || {
        let _wake = WakePeer(Arc::clone(&w), true);
        let mut hist = new_histogram()?;
        let deadline = Instant::now() + RTT_WARMUP_BUDGET + duration;
        for i in 0..warmup + RTT_SAMPLES {
            let t0 = clock::now_ns();
            sys::signal(&w.request).context("write request eventfd")?;
            let n = sys::wait(&w.answer).context("read answer eventfd")?;
            let ns = clock::now_ns().saturating_sub(t0).max(1);
            ensure!(
                n == 1,
                "round trip {i}: answer eventfd count {n} (responder gone?)"
            );
            if i >= warmup {
                hist.saturating_record(ns.max(1));
            }
            if i >= warmup && Instant::now() >= deadline {
                break;
            }
        }
        Ok(hist)
    })
    .context("spawning limit-ping")?;

    let hist = join(requester, "limit-ping");
    let resp = join(responder, "limit-pong");
    let hist = hist?;
    resp?;
    Ok(hist)
}
