//! The cross-core cache-line round trip: the machine's unit of inter-core communication.
//!
//! Two threads, pinned to [`vcpu_core`] and [`worker_core`], bounce one counter in one cache
//! line: A writes an odd value, B waits for it and writes the next even value, A waits for that.
//! Every round trip moves the line to the other core and back, which is the floor under every
//! kick, call and index publication the engine does. It varies several-fold between VM
//! placements, so every result records it and runs are compared as ratios to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::padded::CachePadded;
use crate::pin::{spawn_pinned, vcpu_core, worker_core};
use crate::stats::Summary;

/// Round trips per timed batch; one per-batch figure is one sample.
const BATCH: u64 = 1000;
/// Wall-clock budget for the timed batches; the call stays well under 0.5 s even when the
/// partner thread is descheduled and every round trip waits for the scheduler.
const BUDGET: Duration = Duration::from_millis(300);
/// Tells the partner to exit. Odd, so a waiting partner sees it as "A wrote".
const STOP: u64 = u64::MAX;

/// Result of [`pingpong_rtt_ns`]: per-batch nanoseconds per round trip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Median over batches of the mean round-trip time within a batch, ns.
    pub pingpong_rtt_ns: f64,
    /// Fastest batch, ns per round trip.
    pub pingpong_rtt_min_ns: f64,
    /// Slowest batch, ns per round trip.
    pub pingpong_rtt_max_ns: f64,
    /// Number of timed batches (fewer than requested if the time budget ran out).
    pub batches: usize,
}

/// Measures about `samples` cross-core round trips (in batches of 1000, after one untimed
/// warm-up batch) and summarises the per-batch ns per round trip. Stops early, with the
/// batches measured so far, after a 300 ms budget.
pub fn pingpong_rtt_ns(samples: u64) -> anyhow::Result<Calibration> {
    let batches = (samples / BATCH).max(1);
    let line = Arc::new(CachePadded(AtomicU64::new(0)));

    let b_line = Arc::clone(&line);
    let pong = spawn_pinned("calib-pong".into(), worker_core(), move || {
        let mut last = 0u64;
        loop {
            // Acquire/Release are free on x86 and make the protocol correct anywhere: the
            // value is the only datum, so the orderings close no race beyond the value itself.
            let v = b_line.load(Ordering::Acquire);
            if v == last || v & 1 == 0 {
                std::hint::spin_loop();
                continue;
            }
            if v == STOP {
                break;
            }
            b_line.store(v + 1, Ordering::Release);
            last = v;
        }
    })
    .context("spawning calib-pong")?;

    let a_line = Arc::clone(&line);
    let ping = spawn_pinned("calib-ping".into(), vcpu_core(), move || {
        // Whatever happens here, release the partner.
        let _stop = StopOnDrop(&a_line);
        let mut next = 1u64;
        let mut round_trip = |n: u64| {
            for _ in 0..n {
                a_line.store(next, Ordering::Release);
                while a_line.load(Ordering::Acquire) != next + 1 {
                    std::hint::spin_loop();
                }
                next += 2;
            }
        };
        round_trip(BATCH); // warm-up: partner start-up, line placement
        let deadline = Instant::now() + BUDGET;
        let mut per_batch = Vec::with_capacity(batches as usize);
        for _ in 0..batches {
            let t0 = Instant::now();
            round_trip(BATCH);
            let t1 = Instant::now();
            per_batch.push((t1 - t0).as_nanos() as f64 / BATCH as f64);
            if t1 >= deadline {
                break;
            }
        }
        per_batch
    })
    .context("spawning calib-ping")?;

    let per_batch = ping.join().map_err(|_| anyhow!("calib-ping panicked"))?;
    pong.join().map_err(|_| anyhow!("calib-pong panicked"))?;
    let s = Summary::from_values(&per_batch).ok_or_else(|| anyhow!("no calibration batches"))?;
    Ok(Calibration {
        pingpong_rtt_ns: s.median,
        pingpong_rtt_min_ns: s.min,
        pingpong_rtt_max_ns: s.max,
        batches: per_batch.len(),
    })
}

/// Writes [`STOP`] when dropped, so the partner exits even if the measuring thread panics.
struct StopOnDrop<'a>(&'a AtomicU64);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_is_positive_and_quick() {
        let t0 = Instant::now();
        let c = pingpong_rtt_ns(200_000).expect("calibration");
        // Generous bound: the test runner may run other tests on the same two cores.
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(c.batches >= 1);
        for v in [
            c.pingpong_rtt_ns,
            c.pingpong_rtt_min_ns,
            c.pingpong_rtt_max_ns,
        ] {
            assert!(v.is_finite() && v > 0.0, "{c:?}");
        }
        assert!(c.pingpong_rtt_min_ns <= c.pingpong_rtt_ns);
        assert!(c.pingpong_rtt_ns <= c.pingpong_rtt_max_ns);
    }
}
