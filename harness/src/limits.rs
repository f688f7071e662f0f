//! `vhostbench limits`: this machine's ceilings, measured the way the engine is measured.
//!
//! Every limit but the tap ones runs a producer (or requester) pinned to [`VCPU_CORE`] and a
//! consumer (or responder) pinned to [`WORKER_CORE`], threads named `limit-*`; the tap limits
//! run one thread, `limit-tap`, on [`WORKER_CORE`]:
//!
//! - `spsc_handoff` (Mpps): a shared-memory single-producer single-consumer ring of 256 `u64`
//!   slots; both sides keep local copies of the indices and publish once per batch of up to
//!   64, like the virtqueue. The most a split ring could move with zero work per packet.
//! - `spsc_copy_64`, `spsc_copy_1500` (Mpps): the same ring, each slot naming a buffer in a
//!   shared 256-buffer pool (a memfd mapping, the same [`vring::GuestMemory`] copy path the
//!   engine uses). The producer copies the packet in, the consumer copies it out into a
//!   private sink: guest-fills-buffer plus vhost-copies-out, one copy on each side.
//! - `busy_poll_wake_rtt` / `_p99` (ns): A sets a flag, B busy-polls, sees it and answers
//!   on a second cache line, A busy-polls for the answer. Median and p99 of per-sample round
//!   trips (hdrhistogram), up to 100 000 samples per repeat, capped by the duration.
//! - `blocking_wake_rtt` / `_p99` (ns): the same with B blocked in `read` on an eventfd and A
//!   blocked in `read` on a second one: the cost of waking a sleeping thread, twice.
//! - `tap_write_64`, `tap_write_1500` (Mpps): one `write(2)` per frame of a 12-byte zero
//!   virtio-net header plus a 64- or 1500-byte test frame ([`vring::frame`], EtherType 0x88b5,
//!   not addressed to the namespace) into a tap in a fresh network namespace, whose stack
//!   consumes (drops) it. One thread pinned to [`WORKER_CORE`]: the worker's side of
//!   `tap-vhost`/`emulated` tx with nothing else to do.
//! - `tap_uring_64`, `tap_uring_1500` (Mpps): the same frames written with io_uring, batches of
//!   64 `WRITE` SQEs on a registered (fixed) file and one `submit_and_wait` per batch, every
//!   completion checked to equal the frame length.
//!
//! The tap limits need root ([`topology::probe`]): [`measure_all`] skips them with the reason
//! on stderr, [`measure_by_name`] fails with it. Each creates and deletes its own namespace.
//!
//! Every loop verifies what it transfers (sequence numbers, stamps in the packet bytes,
//! eventfd counts, write lengths and the tap's receive counter); a mismatch is an error. The
//! RTT samples include one pair of [`guest_sim::clock::now_ns`] reads (~20–40 ns with the TSC
//! clocksource), the clock the guest's `rr` round trips are timed with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use vring::{GuestMemory, RegionSpec};

use crate::padded::CachePadded;
use crate::pin::{spawn_pinned, VCPU_CORE, WORKER_CORE};
use crate::stats::Summary;
use crate::topology::{self, Netns, UringWriter};
use engine::sys;
use guest_sim::clock;
use std::fs::File;
use std::io::Write;

/// Names of all limits, in the order [`measure_all`] reports them.
pub const NAMES: &[&str] = &[
    "spsc_handoff",
    "spsc_copy_64",
    "spsc_copy_1500",
    "busy_poll_wake_rtt",
    "busy_poll_wake_rtt_p99",
    "blocking_wake_rtt",
    "blocking_wake_rtt_p99",
    "tap_write_64",
    "tap_write_1500",
    "tap_uring_64",
    "tap_uring_1500",
];

/// The limits of [`NAMES`] that need a tap (root); skipped where [`topology::probe`] says no.
pub const TAP_NAMES: &[&str] = &[
    "tap_write_64",
    "tap_write_1500",
    "tap_uring_64",
    "tap_uring_1500",
];

/// Unit of throughput limits: millions of packets per second.
pub const UNIT_MPPS: &str = "mpps";
/// Unit of latency limits: nanoseconds.
pub const UNIT_NS: &str = "ns";

/// Ring slots (a power of two), like a 256-entry virtqueue.
const RING: usize = 256;
const MASK: u64 = RING as u64 - 1;
/// Most slots produced or consumed before publishing the index (`VHOST_NET_BATCH`).
const BATCH: u64 = 64;
/// The producer reads the clock once per this many batches.
const CLOCK_EVERY_BATCHES: u32 = 16;
/// Round trips per RTT repeat, at most (the duration caps it too).
const RTT_SAMPLES: u64 = 100_000;
/// Untimed round trips before each RTT repeat.
const RTT_WARMUP: u64 = 1_000;
/// Packet bytes carry the sequence number here and its complement in the last 8 bytes.
const STAMP: usize = 8;

/// One limit, measured `repeat` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LimitResult {
    /// Limit name, one of [`NAMES`].
    pub name: String,
    /// `"mpps"` or `"ns"`.
    pub unit: String,
    /// Smallest of `samples`.
    pub min: f64,
    /// Median of `samples`.
    pub median: f64,
    /// Largest of `samples`.
    pub max: f64,
    /// One value per repeat, in measurement order.
    pub samples: Vec<f64>,
}

impl LimitResult {
    /// Summarises per-repeat `samples`; an error if there are none.
    pub fn from_samples(name: &str, unit: &str, samples: Vec<f64>) -> anyhow::Result<Self> {
        let s =
            Summary::from_values(&samples).ok_or_else(|| anyhow!("limit {name}: no samples"))?;
        Ok(Self {
            name: name.to_string(),
            unit: unit.to_string(),
            min: s.min,
            median: s.median,
            max: s.max,
            samples,
        })
    }
}

/// A round-trip limit: the per-repeat medians and the per-repeat 99th percentiles.
#[derive(Clone, Debug, PartialEq)]
pub struct RttLimit {
    /// `<name>`: median round trip of each repeat, ns.
    pub p50: LimitResult,
    /// `<name>_p99`: 99th-percentile round trip of each repeat, ns.
    pub p99: LimitResult,
}

impl RttLimit {
    /// Both rows, median first.
    pub fn into_results(self) -> [LimitResult; 2] {
        [self.p50, self.p99]
    }
}

/// Measures every limit, each `repeat` times for `duration`, in the order of [`NAMES`].
pub fn measure_all(duration: Duration, repeat: usize) -> anyhow::Result<Vec<LimitResult>> {
    let mut out = vec![
        spsc_handoff(duration, repeat)?,
        spsc_copy_64(duration, repeat)?,
        spsc_copy_1500(duration, repeat)?,
    ];
    out.extend(busy_poll_wake_rtt(duration, repeat)?.into_results());
    out.extend(blocking_wake_rtt(duration, repeat)?.into_results());
    let privileges = topology::probe();
    if privileges.can_run {
        report_stale_namespaces();
        out.push(tap_write_64(duration, repeat)?);
        out.push(tap_write_1500(duration, repeat)?);
        out.push(tap_uring_64(duration, repeat)?);
        out.push(tap_uring_1500(duration, repeat)?);
    } else {
        eprintln!(
            "skipping {}: {}",
            TAP_NAMES.join(", "),
            privileges.summary()
        );
    }
    Ok(out)
}

/// Measures the limit called `name` (see [`NAMES`]). An RTT limit and its `_p99` come
/// together, so this returns both rows for either name.
pub fn measure_by_name(
    name: &str,
    duration: Duration,
    repeat: usize,
) -> anyhow::Result<Vec<LimitResult>> {
    Ok(match name {
        "spsc_handoff" => vec![spsc_handoff(duration, repeat)?],
        "spsc_copy_64" => vec![spsc_copy_64(duration, repeat)?],
        "spsc_copy_1500" => vec![spsc_copy_1500(duration, repeat)?],
        "busy_poll_wake_rtt" | "busy_poll_wake_rtt_p99" => {
            busy_poll_wake_rtt(duration, repeat)?.into_results().into()
        }
        "blocking_wake_rtt" | "blocking_wake_rtt_p99" => {
            blocking_wake_rtt(duration, repeat)?.into_results().into()
        }
        "tap_write_64" => vec![tap_write_64(duration, repeat)?],
        "tap_write_1500" => vec![tap_write_1500(duration, repeat)?],
        "tap_uring_64" => vec![tap_uring_64(duration, repeat)?],
        "tap_uring_1500" => vec![tap_uring_1500(duration, repeat)?],
        other => bail!("unknown limit {other:?} (known: {})", NAMES.join(", ")),
    })
}

/// `spsc_handoff`: Mpps through the bare ring, one value per repeat.
pub fn spsc_handoff(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        samples.push(handoff_once(duration)?);
    }
    LimitResult::from_samples("spsc_handoff", UNIT_MPPS, samples)
}

/// `spsc_copy_64`: [`spsc_copy`] with 64-byte packets.
pub fn spsc_copy_64(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    spsc_copy(64, duration, repeat)
}

/// `spsc_copy_1500`: [`spsc_copy`] with 1500-byte packets.
pub fn spsc_copy_1500(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    spsc_copy(1500, duration, repeat)
}

/// `spsc_copy_<size>`: Mpps through the ring with one copy in and one copy out of `size`
/// bytes per packet (`size` from 16 to 65 536).
pub fn spsc_copy(size: usize, duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    ensure!(
        (2 * STAMP..=65_536).contains(&size),
        "packet size {size} outside 16..=65536"
    );
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        samples.push(copy_once(size, duration)?);
    }
    LimitResult::from_samples(&format!("spsc_copy_{size}"), UNIT_MPPS, samples)
}

/// `busy_poll_wake_rtt`: round trip between two busy-polling threads, ns.
pub fn busy_poll_wake_rtt(duration: Duration, repeat: usize) -> anyhow::Result<RttLimit> {
    rtt_limit("busy_poll_wake_rtt", repeat, || busy_rtt_once(duration))
}

/// `blocking_wake_rtt`: round trip between two threads blocked on eventfds, ns.
pub fn blocking_wake_rtt(duration: Duration, repeat: usize) -> anyhow::Result<RttLimit> {
    rtt_limit("blocking_wake_rtt", repeat, || blocking_rtt_once(duration))
}

fn rtt_limit(
    name: &str,
    repeat: usize,
    mut once: impl FnMut() -> anyhow::Result<Histogram<u64>>,
) -> anyhow::Result<RttLimit> {
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let h = once()?;
        ensure!(!h.is_empty(), "{name}: no round trips completed");
        p50.push(h.value_at_quantile(0.5) as f64);
        p99.push(h.value_at_quantile(0.99) as f64);
    }
    Ok(RttLimit {
        p50: LimitResult::from_samples(name, UNIT_NS, p50)?,
        p99: LimitResult::from_samples(&format!("{name}_p99"), UNIT_NS, p99)?,
    })
}

// ---------------------------------------------------------------------------------------------
// The ring.

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

fn join<T>(h: JoinHandle<anyhow::Result<T>>, name: &str) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow!("{name} panicked"))?
        .with_context(|| format!("{name} failed"))
}

fn handoff_once(duration: Duration) -> anyhow::Result<f64> {
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

fn copy_once(size: usize, duration: Duration) -> anyhow::Result<f64> {
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

// ---------------------------------------------------------------------------------------------
// Round trips.

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

fn busy_rtt_once(duration: Duration) -> anyhow::Result<Histogram<u64>> {
    let flags = Arc::new(Flags {
        request: CachePadded(AtomicU64::new(0)),
        answer: CachePadded(AtomicU64::new(0)),
    });

    let f = Arc::clone(&flags);
    let responder = spawn_pinned("limit-pong".into(), WORKER_CORE, move || {
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
    let requester = spawn_pinned("limit-ping".into(), VCPU_CORE, move || {
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
            if seq % 64 == 0 && Instant::now() >= deadline {
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

fn blocking_rtt_once(duration: Duration) -> anyhow::Result<Histogram<u64>> {
    let wake = Arc::new(Wake {
        request: sys::eventfd().context("eventfd")?,
        answer: sys::eventfd().context("eventfd")?,
        stop: AtomicBool::new(false),
    });
    let warmup = RTT_WARMUP / 10;

    let w = Arc::clone(&wake);
    let responder = spawn_pinned("limit-pong".into(), WORKER_CORE, move || {
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
    let requester = spawn_pinned("limit-ping".into(), VCPU_CORE, move || {
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
            if Instant::now() >= deadline {
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

// ---------------------------------------------------------------------------------------------
// Taps.

/// Name of the tap the tap limits write to (inside their own namespace).
const LIMIT_TAP: &str = "vhbtap0";

/// Deletes namespaces left by killed runs, and says so.
fn report_stale_namespaces() {
    let stale = topology::cleanup_stale();
    if !stale.is_empty() {
        eprintln!(
            "deleted network namespaces of processes that are gone: {}",
            stale.join(", ")
        );
    }
}

/// An error naming `name` and why the tap limits cannot run here, if they cannot.
fn require_tap(name: &str) -> anyhow::Result<()> {
    let p = topology::probe();
    ensure!(p.can_run, "limit {name} needs a tap: {}", p.summary());
    Ok(())
}

/// `tap_write_64`: [`tap_write`] with 64-byte frames.
pub fn tap_write_64(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_write(64, duration, repeat)
}

/// `tap_write_1500`: [`tap_write`] with 1500-byte frames.
pub fn tap_write_1500(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_write(1500, duration, repeat)
}

/// `tap_uring_64`: [`tap_uring`] with 64-byte frames.
pub fn tap_uring_64(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_uring(64, duration, repeat)
}

/// `tap_uring_1500`: [`tap_uring`] with 1500-byte frames.
pub fn tap_uring_1500(duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_uring(1500, duration, repeat)
}

/// `tap_write_<size>`: Mpps of one `write(2)` per frame (12-byte header + `size`-byte frame,
/// `size` from 30 to 1514) into a tap whose namespace drops them.
pub fn tap_write(size: usize, duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_limit(
        &format!("tap_write_{size}"),
        size,
        duration,
        repeat,
        write_once,
    )
}

/// `tap_uring_<size>`: Mpps of the same frames written with io_uring, 64 per submit.
pub fn tap_uring(size: usize, duration: Duration, repeat: usize) -> anyhow::Result<LimitResult> {
    tap_limit(
        &format!("tap_uring_{size}"),
        size,
        duration,
        repeat,
        uring_once,
    )
}

/// One tap repeat: writes frames of `size` to the tap fd for `duration` on the calling
/// (pinned) thread; returns (frames written, seconds).
type TapOnce = fn(File, usize, Duration) -> anyhow::Result<(u64, f64)>;

fn tap_limit(
    name: &str,
    size: usize,
    duration: Duration,
    repeat: usize,
    once: TapOnce,
) -> anyhow::Result<LimitResult> {
    ensure!(
        (vring::frame::MIN_FRAME..=1514).contains(&size),
        "{name}: frame size {size} outside {}..=1514",
        vring::frame::MIN_FRAME
    );
    require_tap(name)?;
    let ns = Netns::create().with_context(|| format!("{name}: namespace"))?;
    let tap = topology::open_tap(&ns, LIMIT_TAP, 0).with_context(|| format!("{name}: tap"))?;
    let mut samples = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let before = topology::link_stats(&ns, &tap.name)?;
        let file = tap.file.try_clone().context("dup tap fd")?;
        let h = spawn_pinned("limit-tap".into(), WORKER_CORE, move || {
            once(file, size, duration)
        })
        .context("spawning limit-tap")?;
        let (frames, secs) = join(h, "limit-tap")?;
        let after = topology::link_stats(&ns, &tap.name)?;
        // Every frame the writes accepted reached the tap's receive path (the kernel's count).
        let counted = after.rx_packets - before.rx_packets;
        ensure!(
            counted == frames,
            "{name}: wrote {frames} frames, the tap received {counted}"
        );
        ensure!(secs > 0.0, "{name}: zero elapsed time");
        samples.push(frames as f64 / secs / 1e6);
    }
    drop(tap);
    drop(ns);
    LimitResult::from_samples(name, UNIT_MPPS, samples)
}

/// A 12-byte zero header followed by a test frame of `size` bytes, sequence 0.
fn tap_frame(size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; topology::TAP_VNET_HDR_LEN + size];
    vring::frame::fill(&mut buf[topology::TAP_VNET_HDR_LEN..], 0, 0);
    buf
}

fn write_once(file: File, size: usize, duration: Duration) -> anyhow::Result<(u64, f64)> {
    let mut buf = tap_frame(size);
    let mut file = file;
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut seq = 0u64;
    loop {
        for _ in 0..BATCH {
            vring::frame::stamp(&mut buf[topology::TAP_VNET_HDR_LEN..], seq, 0);
            let n = file
                .write(&buf)
                .with_context(|| format!("write of frame {seq}"))?;
            ensure!(
                n == buf.len(),
                "frame {seq}: wrote {n} of {} bytes",
                buf.len()
            );
            seq += 1;
        }
        if Instant::now() >= end {
            break;
        }
    }
    Ok((seq, t0.elapsed().as_secs_f64()))
}

fn uring_once(file: File, size: usize, duration: Duration) -> anyhow::Result<(u64, f64)> {
    let frame = tap_frame(size);
    let mut w = UringWriter::new(file, BATCH as usize, frame.len()).context("io_uring")?;
    for i in 0..BATCH as usize {
        w.buf_mut(i)
            .context("io_uring buffer")?
            .copy_from_slice(&frame);
    }
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut seq = 0u64;
    loop {
        for i in 0..BATCH as usize {
            let buf = w.buf_mut(i).context("io_uring buffer")?;
            vring::frame::stamp(&mut buf[topology::TAP_VNET_HDR_LEN..], seq, 0);
            seq += 1;
        }
        w.write_all()
            .with_context(|| format!("io_uring batch ending at frame {seq}"))?;
        if Instant::now() >= end {
            break;
        }
    }
    Ok((seq, t0.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_measures_something() {
        let results = measure_all(Duration::from_millis(20), 1).expect("limits");
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        let expected: Vec<&str> = if topology::probe().can_run {
            NAMES.to_vec()
        } else {
            NAMES
                .iter()
                .copied()
                .filter(|n| !TAP_NAMES.contains(n))
                .collect()
        };
        assert_eq!(names, expected);
        for r in &results {
            assert!(r.unit == UNIT_MPPS || r.unit == UNIT_NS, "{r:?}");
            assert_eq!(r.samples.len(), 1);
            for v in [r.min, r.median, r.max] {
                assert!(v.is_finite() && v > 0.0, "{r:?}");
            }
        }
    }

    #[test]
    fn by_name_and_unknown() {
        let d = Duration::from_millis(5);
        let r = measure_by_name("spsc_copy_64", d, 2).expect("measure");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].samples.len(), 2);
        assert!(measure_by_name("nope", d, 1).is_err());
        assert!(spsc_copy(8, d, 1).is_err());
        assert!(tap_write(8, d, 1).is_err());
        assert!(tap_uring(9000, d, 1).is_err());
    }

    #[test]
    fn tap_limits_by_name_or_the_reason() {
        let d = Duration::from_millis(5);
        let p = topology::probe();
        for name in TAP_NAMES {
            assert!(NAMES.contains(name));
            match measure_by_name(name, d, 2) {
                Ok(r) => {
                    assert!(p.can_run);
                    assert_eq!(r.len(), 1);
                    assert_eq!(r[0].name, *name);
                    assert_eq!(r[0].samples.len(), 2);
                    assert!(r[0].min > 0.0, "{r:?}");
                }
                Err(e) => {
                    assert!(!p.can_run, "{name}: {e:#}");
                    assert!(format!("{e:#}").contains(&p.summary()), "{e:#}");
                }
            }
        }
    }

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
