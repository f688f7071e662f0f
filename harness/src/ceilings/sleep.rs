//! The sleeping ring ceiling, `sleep_ring_<size>_q<queue>`: the copy ring of `spsc_copy`
//! ([`super::ring`]) with `queue` slots, whose sides sleep instead of spinning. A side that finds
//! nothing to do (the producer a full ring, the consumer an empty one) arms its "wake me" flag,
//! fences, re-checks the ring, and blocks in `read` on its eventfd; the other side, after each
//! publish, fences, and writes that eventfd only if it finds the flag armed. That is virtio's
//! notification suppression (`avail_event` / `used_event` at "the next one") without the
//! event-index arithmetic: the most a device and a driver that both sleep when idle could move,
//! with one 64-byte copy on each side, on this machine.

use std::fs::File;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context};
use engine::sys;

use super::ring::{self, Side, Wait};
use crate::padded::CachePadded;

/// One side's "wake me" flag and the eventfd it sleeps on.
struct Sleeper {
    /// Set by the side before it sleeps; taken (swapped back to false) by whichever party
    /// then owes it the eventfd write: the peer that sees it armed, or the side itself when
    /// its re-check finds work.
    armed: CachePadded<AtomicBool>,
    fd: File,
}

impl Sleeper {
    fn new() -> anyhow::Result<Self> {
        Ok(Sleeper {
            armed: CachePadded(AtomicBool::new(false)),
            fd: sys::eventfd().context("eventfd")?,
        })
    }
}

/// The sleeping policy of the ring: each side sleeps on its own eventfd when idle and is woken
/// only when it asked to be.
pub(super) struct Sleep {
    producer: Sleeper,
    consumer: Sleeper,
}

impl Sleep {
    pub(super) fn new() -> anyhow::Result<Self> {
        Ok(Sleep {
            producer: Sleeper::new()?,
            consumer: Sleeper::new()?,
        })
    }

    fn of(&self, side: Side) -> &Sleeper {
        match side {
            Side::Producer => &self.producer,
            Side::Consumer => &self.consumer,
        }
    }
}

impl Wait for Sleep {
    fn idle(&self, side: Side, ready: &mut dyn FnMut() -> bool) -> anyhow::Result<bool> {
        let me = self.of(side);
        // Relaxed: ordered before the re-check below by the fence.
        me.armed.store(true, Ordering::Relaxed);
        // SeqCst fence: closes the lost-wake-up race. The peer stores its index, fences, then
        // reads our flag; we store the flag, fence, then re-read its index. Without a full fence
        // on both sides each could read the other's old value: the peer skips the write and we
        // sleep with work waiting (or, at the end, forever).
        fence(Ordering::SeqCst);
        if ready() {
            if !me.armed.swap(false, Ordering::Relaxed) {
                // The peer saw the flag and took it: its write is on its way. Take it now, or
                // the next sleep would return at once.
                sys::wait(&me.fd).context("read eventfd")?;
            }
            return Ok(false);
        }
        let n = sys::wait(&me.fd).context("read eventfd")?;
        // One write per armed sleep; a second only from a peer that has left (see `leave`).
        ensure!(
            n == 1 || ready(),
            "{side:?} woken with eventfd count {n} and nothing to do"
        );
        Ok(true)
    }

    #[inline]
    fn published(&self, side: Side) -> anyhow::Result<()> {
        let peer = self.of(side.peer());
        // SeqCst fence: our index store (just made, Release) against our read of the peer's
        // flag; the other half of the race described in `idle`.
        fence(Ordering::SeqCst);
        // A plain load first: the flag's line stays shared while the peer is awake.
        if peer.armed.load(Ordering::Relaxed) && peer.armed.swap(false, Ordering::Relaxed) {
            sys::signal(&peer.fd).context("write eventfd")?;
        }
        Ok(())
    }

    fn leave(&self, side: Side) {
        // The exit flag is set: wake the peer whether it is armed or not. A write to a peer
        // that is not asleep only makes its next sleep return at once, to find the flag.
        // Best effort: if even this fails, the peer is already gone.
        let _ = sys::signal(&self.of(side.peer()).fd);
    }
}

/// `sleep_ring_<size>_q<queue>` once: Mpps.
pub(super) fn once(size: usize, queue: u32, duration: Duration) -> anyhow::Result<f64> {
    Ok(ring::copy_run(size, queue, Sleep::new()?, duration)?.mpps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side that keeps the other waiting makes it sleep, and every wake-up arrives: the run
    /// ends with every packet through, exactly once and in order.
    #[test]
    fn both_sides_sleep_and_no_wake_up_is_lost() {
        let d = Duration::from_millis(100);
        // The first pause comes early, so even a starved test thread reaches one.
        let slow = |pos: u64| {
            if pos % 512 == 64 {
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        let slow_producer = ring::run_ring(
            16,
            Sleep::new().expect("eventfds"),
            d,
            move |pos| {
                slow(pos);
                Ok(pos)
            },
            |pos, v| {
                ensure!(v == pos, "sequence mismatch: expected {pos}, got {v}");
                Ok(())
            },
        )
        .expect("slow producer");
        assert!(slow_producer.consumer_sleeps > 0, "{slow_producer:?}");
        assert!(slow_producer.packets > 64, "{slow_producer:?}");

        let slow_consumer =
            ring::run_ring(16, Sleep::new().expect("eventfds"), d, Ok, move |pos, v| {
                ensure!(v == pos, "sequence mismatch: expected {pos}, got {v}");
                slow(pos);
                Ok(())
            })
            .expect("slow consumer");
        assert!(slow_consumer.producer_sleeps > 0, "{slow_consumer:?}");
        assert!(slow_consumer.packets > 64, "{slow_consumer:?}");
    }

    #[test]
    fn copy_ring_sleeps_and_verifies() {
        let run = ring::copy_run(
            64,
            256,
            Sleep::new().expect("eventfds"),
            Duration::from_millis(30),
        )
        .expect("sleeping copy ring");
        assert!(run.mpps > 0.0 && run.packets > 0, "{run:?}");
    }

    #[test]
    fn a_consumer_that_fails_releases_a_sleeping_producer() {
        let err = ring::run_ring(
            16,
            Sleep::new().expect("eventfds"),
            Duration::from_secs(5),
            Ok,
            |pos, _| {
                if pos == 100 {
                    std::thread::sleep(Duration::from_millis(20));
                    anyhow::bail!("consumer gives up at {pos}");
                }
                Ok(())
            },
        )
        .expect_err("the consumer's error");
        assert!(format!("{err:#}").contains("gives up"), "{err:#}");
    }
}
