//! The ring ceilings: `spsc_handoff`, `spsc_copy_<size>` and, with [`super::sleep`]'s waiting
//! policy, `sleep_ring_<size>_q<queue>`. A shared-memory single-producer single-consumer ring,
//! the producer pinned to the vCPU's core and the consumer to the worker's, both keeping local
//! copies of the indices and publishing once per batch of up to 64, like the virtqueue. What a
//! side does when it finds nothing to do (ring full, ring empty) is its [`Wait`] policy: spin
//! ([`Spin`]) or sleep on an eventfd ([`super::sleep::Sleep`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use vring::{GuestMemory, RegionSpec};

use super::join;
use crate::padded::CachePadded;
use crate::pin::{spawn_pinned, vcpu_core, worker_core};

/// Slots of the spinning rings (a power of two), like a 256-entry virtqueue.
pub(super) const RING: u32 = 256;
/// Most slots produced or consumed before publishing the index (`VHOST_NET_BATCH`).
const BATCH: u64 = 64;
/// The producer reads the clock once per this many batches.
const CLOCK_EVERY_BATCHES: u32 = 16;
/// Packet bytes carry the sequence number here and its complement in the last 8 bytes.
const STAMP: usize = 8;
/// Slots per 128-byte chunk of the slot array.
const SLOTS_PER_CHUNK: usize = 16;

/// One side of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Fills slots; waits when the ring is full.
    Producer,
    /// Empties slots; waits when the ring is empty.
    Consumer,
}

impl Side {
    /// The side that waits for what this side publishes.
    pub(super) fn peer(self) -> Side {
        match self {
            Side::Producer => Side::Consumer,
            Side::Consumer => Side::Producer,
        }
    }
}

/// What a side of the ring does when it finds nothing to do, and what the other side owes it.
pub(super) trait Wait: Send + Sync + 'static {
    /// `side` found nothing to do. Returns when it should look again; `ready` re-reads the
    /// ring (and the peer's exit flag) and says whether there is something to do now. Returns
    /// whether the side slept.
    fn idle(&self, side: Side, ready: &mut dyn FnMut() -> bool) -> anyhow::Result<bool>;
    /// `side` just published its index with a Release store: the other side may be waiting
    /// for it.
    fn published(&self, side: Side) -> anyhow::Result<()>;
    /// `side` is leaving (it has set its exit flag): the other side must not wait for it.
    fn leave(&self, side: Side);
}

/// The spinning policy: look again at once.
pub(super) struct Spin;

impl Wait for Spin {
    #[inline(always)]
    fn idle(&self, _side: Side, _ready: &mut dyn FnMut() -> bool) -> anyhow::Result<bool> {
        std::hint::spin_loop();
        Ok(false)
    }

    #[inline(always)]
    fn published(&self, _side: Side) -> anyhow::Result<()> {
        Ok(())
    }

    fn leave(&self, _side: Side) {}
}

/// A single-producer single-consumer ring of `u64` slots with free-running indices.
struct Ring<W> {
    /// Slots produced so far; written by the producer only, once per batch.
    head: CachePadded<AtomicU64>,
    /// Slots consumed so far; written by the consumer only, once per batch.
    tail: CachePadded<AtomicU64>,
    /// The producer has stopped; `head` is final.
    done: CachePadded<AtomicBool>,
    /// The consumer has exited (normally after `done`, or early on an error).
    consumer_gone: CachePadded<AtomicBool>,
    /// Slots, a power of two.
    size: u64,
    /// In 128-byte chunks, so no slot shares a line with anything else.
    slots: Box<[CachePadded<[AtomicU64; SLOTS_PER_CHUNK]>]>,
    wait: W,
}

impl<W: Wait> Ring<W> {
    fn new(size: u32, wait: W) -> anyhow::Result<Self> {
        ensure!(
            size.is_power_of_two() && size as usize >= SLOTS_PER_CHUNK,
            "ring size {size} is not a power of two of at least {SLOTS_PER_CHUNK}"
        );
        Ok(Self {
            head: CachePadded(AtomicU64::new(0)),
            tail: CachePadded(AtomicU64::new(0)),
            done: CachePadded(AtomicBool::new(false)),
            consumer_gone: CachePadded(AtomicBool::new(false)),
            size: size as u64,
            slots: (0..size as usize / SLOTS_PER_CHUNK)
                .map(|_| CachePadded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            wait,
        })
    }

    #[inline(always)]
    fn slot(&self, pos: u64) -> &AtomicU64 {
        let i = (pos & (self.size - 1)) as usize;
        &self.slots[i / SLOTS_PER_CHUNK].0[i % SLOTS_PER_CHUNK]
    }

    /// The exit flag `side` sets when it leaves.
    fn gone(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Producer => &self.done,
            Side::Consumer => &self.consumer_gone,
        }
    }
}

/// Sets a side's exit flag when dropped, and tells the waiting policy, so the other side stops
/// waiting even if this side errors or panics. Release: everything this side did
/// happens-before a peer's Acquire load of the flag.
struct LeaveOnDrop<W: Wait>(Arc<Ring<W>>, Side);

impl<W: Wait> Drop for LeaveOnDrop<W> {
    fn drop(&mut self) {
        self.0.gone(self.1).store(true, Ordering::Release);
        self.0.wait.leave(self.1);
    }
}

/// What one ring measurement saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct RingRun {
    /// Packets consumed over the time from the producer's start to the consumer's last packet.
    pub mpps: f64,
    /// Packets that went through.
    pub packets: u64,
    /// Times the producer slept (found the ring full and blocked).
    pub producer_sleeps: u64,
    /// Times the consumer slept (found the ring empty and blocked).
    pub consumer_sleeps: u64,
}

/// Runs one ring measurement on a ring of `size` slots whose sides wait by `wait`:
/// `produce(pos)` returns the slot value for sequence number `pos` (and may write the packet
/// it names); `consume(pos, value)` checks and uses it.
pub(super) fn run_ring<W, P, C>(
    size: u32,
    wait: W,
    duration: Duration,
    mut produce: P,
    mut consume: C,
) -> anyhow::Result<RingRun>
where
    W: Wait,
    P: FnMut(u64) -> anyhow::Result<u64> + Send + 'static,
    C: FnMut(u64, u64) -> anyhow::Result<()> + Send + 'static,
{
    let ring = Arc::new(Ring::new(size, wait)?);
    let start = Arc::new(Barrier::new(2));
    let size = size as u64;

    let (r, b) = (Arc::clone(&ring), Arc::clone(&start));
    let producer = spawn_pinned("limit-prod".into(), vcpu_core(), move || {
        let _done = LeaveOnDrop(Arc::clone(&r), Side::Producer);
        b.wait();
        let t0 = Instant::now();
        let end = t0 + duration;
        let mut head = 0u64;
        let mut tail = 0u64; // local copy of the consumer's index
        let mut clock = 0u32;
        let mut sleeps = 0u64;
        loop {
            let mut free = size - (head - tail);
            if free == 0 {
                // Acquire pairs with the consumer's Release of `tail`: its reads of the slots
                // (and of the buffers they name) below `tail` are complete before we
                // overwrite them. Without it we could recycle a slot it is still reading.
                tail = r.tail.load(Ordering::Acquire);
                free = size - (head - tail);
                if free == 0 {
                    if r.consumer_gone.load(Ordering::Acquire) {
                        break;
                    }
                    let seen = tail;
                    let slept = r.wait.idle(Side::Producer, &mut || {
                        r.tail.load(Ordering::Acquire) != seen
                            || r.consumer_gone.load(Ordering::Acquire)
                    })?;
                    sleeps += slept as u64;
                    continue;
                }
            }
            let n = free.min(BATCH);
            for pos in head..head + n {
                let v = produce(pos)?;
                // Relaxed: ordered for the consumer by the Release store of `head` below.
                r.slot(pos).store(v, Ordering::Relaxed);
            }
            head += n;
            // Release: the slot values and packet bytes written above are visible to a
            // consumer that Acquire-loads this `head`. Without it the consumer could read a
            // slot or buffer before it is written.
            r.head.store(head, Ordering::Release);
            r.wait.published(Side::Producer)?;
            clock += 1;
            if clock == CLOCK_EVERY_BATCHES {
                clock = 0;
                if Instant::now() >= end {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>((t0, head, sleeps))
    })
    .context("spawning limit-prod")?;

    let (r, b) = (Arc::clone(&ring), Arc::clone(&start));
    let consumer = spawn_pinned("limit-cons".into(), worker_core(), move || {
        let _gone = LeaveOnDrop(Arc::clone(&r), Side::Consumer);
        b.wait();
        let mut tail = 0u64;
        let mut head = 0u64; // local copy of the producer's index
        let mut sleeps = 0u64;
        loop {
            let mut avail = head - tail;
            if avail == 0 {
                // Acquire pairs with the producer's Release of `head` (see there).
                head = r.head.load(Ordering::Acquire);
                avail = head - tail;
                if avail == 0 {
                    // `done` is set after the producer's last `head` store; Acquire on `done`
                    // makes that store visible to the re-read, so nothing published is
                    // left behind.
                    if r.done.load(Ordering::Acquire) {
                        head = r.head.load(Ordering::Acquire);
                        if head == tail {
                            break;
                        }
                        continue;
                    }
                    let slept = r.wait.idle(Side::Consumer, &mut || {
                        r.head.load(Ordering::Acquire) != tail || r.done.load(Ordering::Acquire)
                    })?;
                    sleeps += slept as u64;
                    continue;
                }
            }
            ensure!(avail <= size, "ring overrun: {avail} slots published");
            let n = avail.min(BATCH);
            for pos in tail..tail + n {
                // Relaxed: the Acquire load of `head` above ordered this read.
                let v = r.slot(pos).load(Ordering::Relaxed);
                consume(pos, v)?;
            }
            tail += n;
            // Release: our reads of these slots and buffers complete before the producer,
            // Acquire-loading `tail`, reuses them.
            r.tail.store(tail, Ordering::Release);
            r.wait.published(Side::Consumer)?;
        }
        Ok::<_, anyhow::Error>((Instant::now(), tail, sleeps))
    })
    .context("spawning limit-cons")?;

    let produced = join(producer, "limit-prod");
    let consumed = join(consumer, "limit-cons");
    // The consumer's error is the more telling one: it is the side that verifies.
    let (t1, received, consumer_sleeps) = consumed?;
    let (t0, sent, producer_sleeps) = produced?;
    ensure!(
        received == sent,
        "consumer received {received} of {sent} packets"
    );
    let secs = (t1 - t0).as_secs_f64();
    ensure!(secs > 0.0, "zero elapsed time");
    Ok(RingRun {
        mpps: received as f64 / secs / 1e6,
        packets: received,
        producer_sleeps,
        consumer_sleeps,
    })
}

pub(super) fn handoff_once(duration: Duration) -> anyhow::Result<f64> {
    let run = run_ring(RING, Spin, duration, Ok, |pos, v| {
        if v != pos {
            bail!("sequence mismatch: expected {pos}, got {v}");
        }
        std::hint::black_box(v);
        Ok(())
    })?;
    Ok(run.mpps)
}

/// A slot names a buffer the way a descriptor does: buffer index in the low 32 bits, packet
/// length in the high 32 bits.
fn slot_value(buf: u64, len: usize) -> u64 {
    buf | ((len as u64) << 32)
}

/// `spsc_copy_<size>`: the copy ring of [`RING`] slots, both sides spinning.
pub(super) fn copy_once(size: usize, duration: Duration) -> anyhow::Result<f64> {
    Ok(copy_run(size, RING, Spin, duration)?.mpps)
}

/// The copy ring: `slots` slots, each naming one of `slots` buffers of a shared pool; the
/// producer copies a `size`-byte packet in, the consumer copies it out and checks its stamps.
pub(super) fn copy_run<W: Wait>(
    size: usize,
    slots: u32,
    wait: W,
    duration: Duration,
) -> anyhow::Result<RingRun> {
    let mask = slots as u64 - 1;
    // Buffers start on cache-line boundaries, like a driver's buffer pool.
    let stride = size.next_multiple_of(64);
    let pool_len = (stride * slots as usize).next_multiple_of(vring::memory::PAGE_SIZE as usize);
    let mem = Arc::new(
        GuestMemory::new(&[RegionSpec {
            gpa: 0,
            len: pool_len as u64,
        }])
        .context("packet buffer pool")?,
    );

    let pool = Arc::clone(&mem);
    let mut packet = vec![0xa5u8; size];
    let produce = move |pos: u64| {
        let buf = pos & mask;
        packet[..STAMP].copy_from_slice(&pos.to_le_bytes());
        packet[size - STAMP..].copy_from_slice(&(!pos).to_le_bytes());
        pool.write_at(buf as usize * stride, &packet)?;
        Ok(slot_value(buf, size))
    };

    let pool = Arc::clone(&mem);
    let mut sink = vec![0u8; size];
    let consume = move |pos: u64, v: u64| {
        let (buf, len) = (v & 0xffff_ffff, (v >> 32) as usize);
        if buf != pos & mask || len != size {
            bail!("slot {pos}: bad descriptor buffer {buf} len {len}");
        }
        pool.read_at(buf as usize * stride, &mut sink)?;
        let first = stamp(&sink[..STAMP]);
        let last = stamp(&sink[size - STAMP..]);
        if first != pos || last != !pos {
            bail!(
                "packet {pos}: payload stamps {first} / {:#x} do not match",
                last
            );
        }
        std::hint::black_box(&sink);
        Ok(())
    };
    run_ring(slots, wait, duration, produce, consume)
}

fn stamp(b: &[u8]) -> u64 {
    let mut a = [0u8; STAMP];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_rejects_a_wrong_sequence() {
        let err = run_ring(
            RING,
            Spin,
            Duration::from_millis(50),
            // The producer's first batch is always 64 slots, so position 10 is produced.
            |pos| Ok(if pos == 10 { 7 } else { pos }),
            |pos, v| {
                ensure!(v == pos, "sequence mismatch: expected {pos}, got {v}");
                Ok(())
            },
        )
        .expect_err("a corrupted slot must fail the run");
        assert!(format!("{err:#}").contains("sequence mismatch"), "{err:#}");
    }
}
