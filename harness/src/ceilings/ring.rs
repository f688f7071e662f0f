//! The ring ceilings: `spsc_handoff` and `spsc_copy_<size>`. A shared-memory single-producer
//! single-consumer ring, the producer pinned to the vCPU's core and the consumer to the
//! worker's, both keeping local copies of the indices and publishing once per batch of up to
//! 64, like the virtqueue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use vring::{GuestMemory, RegionSpec};

use super::join;
use crate::padded::CachePadded;
use crate::pin::{spawn_pinned, VCPU_CORE, WORKER_CORE};

/// Ring slots (a power of two), like a 256-entry virtqueue.
const RING: usize = 256;
const MASK: u64 = RING as u64 - 1;
/// Most slots produced or consumed before publishing the index (`VHOST_NET_BATCH`).
const BATCH: u64 = 64;
/// The producer reads the clock once per this many batches.
const CLOCK_EVERY_BATCHES: u32 = 16;
/// Packet bytes carry the sequence number here and its complement in the last 8 bytes.
const STAMP: usize = 8;

/// A single-producer single-consumer ring of `u64` slots with free-running indices.
struct Ring {
    /// Slots produced so far; written by the producer only, once per batch.
    head: CachePadded<AtomicU64>,
    /// Slots consumed so far; written by the consumer only, once per batch.
    tail: CachePadded<AtomicU64>,
    /// The producer has stopped; `head` is final.
    done: CachePadded<AtomicBool>,
    /// The consumer has exited (normally after `done`, or early on an error).
    consumer_gone: CachePadded<AtomicBool>,
    slots: CachePadded<[AtomicU64; RING]>,
}

impl Ring {
    fn new() -> Self {
        Self {
            head: CachePadded(AtomicU64::new(0)),
            tail: CachePadded(AtomicU64::new(0)),
            done: CachePadded(AtomicBool::new(false)),
            consumer_gone: CachePadded(AtomicBool::new(false)),
            slots: CachePadded(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

/// Sets a flag when dropped, so the other side stops waiting even if this side errors or
/// panics. Release: everything this side did happens-before a peer's Acquire load of the flag.
struct SetOnDrop(Arc<Ring>, fn(&Ring) -> &AtomicBool);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        (self.1)(&self.0).store(true, Ordering::Release);
    }
}

/// Runs one ring measurement: `produce(pos)` returns the slot value for sequence number
/// `pos` (and may write the packet it names); `consume(pos, value)` checks and uses it.
/// Returns Mpps: packets consumed over the time from the producer's start to the consumer's
/// last packet.
fn run_ring<P, C>(duration: Duration, mut produce: P, mut consume: C) -> anyhow::Result<f64>
where
    P: FnMut(u64) -> anyhow::Result<u64> + Send + 'static,
    C: FnMut(u64, u64) -> anyhow::Result<()> + Send + 'static,
{
    let ring = Arc::new(Ring::new());
    let start = Arc::new(Barrier::new(2));

    let (r, b) = (Arc::clone(&ring), Arc::clone(&start));
    let producer = spawn_pinned("limit-prod".into(), VCPU_CORE, move || {
        let _done = SetOnDrop(Arc::clone(&r), |r| &r.done);
        b.wait();
        let t0 = Instant::now();
        let end = t0 + duration;
        let mut head = 0u64;
        let mut tail = 0u64; // local copy of the consumer's index
        let mut clock = 0u32;
        loop {
            let mut free = RING as u64 - (head - tail);
            if free == 0 {
                // Acquire pairs with the consumer's Release of `tail`: its reads of the slots
                // (and of the buffers they name) below `tail` are complete before we
                // overwrite them. Without it we could recycle a slot it is still reading.
                tail = r.tail.load(Ordering::Acquire);
                free = RING as u64 - (head - tail);
                if free == 0 {
                    if r.consumer_gone.load(Ordering::Acquire) {
                        break;
                    }
                    std::hint::spin_loop();
                    continue;
                }
            }
            let n = free.min(BATCH);
            for pos in head..head + n {
                let v = produce(pos)?;
                // Relaxed: ordered for the consumer by the Release store of `head` below.
                r.slots[(pos & MASK) as usize].store(v, Ordering::Relaxed);
            }
            head += n;
            // Release: the slot values and packet bytes written above are visible to a
            // consumer that Acquire-loads this `head`. Without it the consumer could read a
            // slot or buffer before it is written.
            r.head.store(head, Ordering::Release);
            clock += 1;
            if clock == CLOCK_EVERY_BATCHES {
                clock = 0;
                if Instant::now() >= end {
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>((t0, head))
    })
    .context("spawning limit-prod")?;

    let (r, b) = (Arc::clone(&ring), Arc::clone(&start));
    let consumer = spawn_pinned("limit-cons".into(), WORKER_CORE, move || {
        let _gone = SetOnDrop(Arc::clone(&r), |r| &r.consumer_gone);
        b.wait();
        let mut tail = 0u64;
        let mut head = 0u64; // local copy of the producer's index
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
                    std::hint::spin_loop();
                    continue;
                }
            }
            ensure!(
                avail <= RING as u64,
                "ring overrun: {avail} slots published"
            );
            let n = avail.min(BATCH);
            for pos in tail..tail + n {
                // Relaxed: the Acquire load of `head` above ordered this read.
                let v = r.slots[(pos & MASK) as usize].load(Ordering::Relaxed);
                consume(pos, v)?;
            }
            tail += n;
            // Release: our reads of these slots and buffers complete before the producer,
            // Acquire-loading `tail`, reuses them.
            r.tail.store(tail, Ordering::Release);
        }
        Ok::<_, anyhow::Error>((Instant::now(), tail))
    })
    .context("spawning limit-cons")?;

    let produced = join(producer, "limit-prod");
    let consumed = join(consumer, "limit-cons");
    // The consumer's error is the more telling one: it is the side that verifies.
    let (t1, received) = consumed?;
    let (t0, sent) = produced?;
    ensure!(
        received == sent,
        "consumer received {received} of {sent} packets"
    );
    let secs = (t1 - t0).as_secs_f64();
    ensure!(secs > 0.0, "zero elapsed time");
    Ok(received as f64 / secs / 1e6)
}

pub(super) fn handoff_once(duration: Duration) -> anyhow::Result<f64> {
    run_ring(duration, Ok, |pos, v| {
        if v != pos {
            bail!("sequence mismatch: expected {pos}, got {v}");
        }
        std::hint::black_box(v);
        Ok(())
    })
}

/// A slot names a buffer the way a descriptor does: buffer index in the low 32 bits, packet
/// length in the high 32 bits.
fn slot_value(buf: u64, len: usize) -> u64 {
    buf | ((len as u64) << 32)
}

pub(super) fn copy_once(size: usize, duration: Duration) -> anyhow::Result<f64> {
    // Buffers start on cache-line boundaries, like a driver's buffer pool.
    let stride = size.next_multiple_of(64);
    let pool_len = (stride * RING).next_multiple_of(vring::memory::PAGE_SIZE as usize);
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
        let buf = pos & MASK;
        packet[..STAMP].copy_from_slice(&pos.to_le_bytes());
        packet[size - STAMP..].copy_from_slice(&(!pos).to_le_bytes());
        pool.write_at(buf as usize * stride, &packet)?;
        Ok(slot_value(buf, size))
    };

    let pool = Arc::clone(&mem);
    let mut sink = vec![0u8; size];
    let consume = move |pos: u64, v: u64| {
        let (buf, len) = (v & 0xffff_ffff, (v >> 32) as usize);
        if buf != pos & MASK || len != size {
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
    run_ring(duration, produce, consume)
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
