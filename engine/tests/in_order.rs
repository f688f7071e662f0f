//! `VIRTIO_F_IN_ORDER` (virtio 1.2 §2.7.9) between the engine's device side and the guest-sim
//! driver.
//!
//! - With the feature, the device returns a TX batch with one used element, written in the
//!   batch's first slot and naming the batch's last chain, and moves `used.idx` by the batch
//!   size; the in-order driver gets every buffer back, in posting order, with length 0.
//! - A device that writes every element itself (the RX path) is valid in-order too: the driver
//!   reaps it with the real lengths.
//! - A hostile device (an element naming a buffer not in the batch, `used.idx` past what is in
//!   flight) gives the driver `DriverError::BadUsedId`, never a panic.
//!
//! The used-ring checks fill every used slot not holding an unreaped element with a sentinel
//! before the device completes a batch, then check which slots changed.

use std::collections::{HashSet, VecDeque};

use engine::net::rx::{RxOutcome, RxWriter};
use engine::net::tx::TxBatch;
use engine::virtq::{Chain, DeviceQueue};
use guest_sim::{Buf, DriverError, DriverQueue, MockGuest};
use proptest::prelude::*;
use vring::layout::{used, UsedElem};
use vring::net::{bit, Features, VirtioNetHdr};

const HDR: usize = VirtioNetHdr::SIZE;
/// Bytes of one TX chain: header, an 8-byte sequence number, filler.
const FRAME: usize = 64;
/// Written into used slots the device must not touch. As an element: id 0x5eed_f00d (never a
/// head), len 0xdead_beef.
const SENTINEL: u64 = 0xdead_beef_5eed_f00d;
/// Guest memory reserved per buffer slot: the frame, then an indirect table at `TABLE_OFF`.
const SLOT_BYTES: u64 = 256;
const TABLE_OFF: u64 = 128;

fn features(in_order: bool, event_idx: bool) -> Features {
    Features::of(&[bit::VERSION_1, bit::RING_INDIRECT_DESC])
        .with(bit::IN_ORDER, in_order)
        .with(bit::RING_EVENT_IDX, event_idx)
}

/// A small deterministic generator for the long runs (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// How a TX chain is posted.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One descriptor (`add_one`).
    One,
    /// The header descriptor, then the rest of the frame in `n - 1` pieces, linked with NEXT.
    Linked(u8),
    /// The same pieces in an indirect table.
    Indirect(u8),
}

impl Shape {
    /// Main-table descriptors the chain takes.
    fn descs(self) -> u16 {
        match self {
            Shape::One | Shape::Indirect(_) => 1,
            Shape::Linked(n) => n as u16,
        }
    }

    fn random(rng: &mut Rng, multi: bool) -> Shape {
        if !multi {
            return Shape::One;
        }
        match rng.range(0, 2) {
            0 => Shape::One,
            1 => Shape::Linked(rng.range(2, 4) as u8),
            _ => Shape::Indirect(rng.range(1, 4) as u8),
        }
    }
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    prop_oneof![
        3 => Just(Shape::One),
        1 => (2u8..=4).prop_map(Shape::Linked),
        1 => (1u8..=4).prop_map(Shape::Indirect),
    ]
}

/// The bytes of frame `seq`: a zero header, the sequence number, a pattern.
fn frame_bytes(seq: u64) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[HDR..HDR + 8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in f[HDR + 8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    f
}

/// The frame split into `n` buffers: the header alone, then `n - 1` non-empty pieces.
fn pieces(gpa: u64, n: u8) -> Vec<Buf> {
    let n = n.max(1) as usize;
    if n == 1 {
        return vec![Buf::read(gpa, FRAME as u32)];
    }
    let mut bufs = vec![Buf::read(gpa, HDR as u32)];
    let rest = FRAME - HDR;
    for i in 0..n - 1 {
        let a = HDR + i * rest / (n - 1);
        let b = HDR + (i + 1) * rest / (n - 1);
        bufs.push(Buf::read(gpa + a as u64, (b - a) as u32));
    }
    bufs
}

/// A posted chain the model follows.
#[derive(Clone, Copy, Debug)]
struct Posted {
    head: u16,
    seq: u64,
    descs: u16,
}

/// How the device returns a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Completion {
    /// `TxBatch::complete` (`add_used_batch`, one `used.idx` store).
    Batch,
    /// `add_used` for each chain, then `publish_used` (what the RX path does).
    PerElement,
}

/// Driver and device on one queue, with a model of what is where.
struct Rig {
    g: MockGuest,
    drv: DriverQueue,
    dev: DeviceQueue,
    batch: TxBatch,
    size: u16,
    dev_in_order: bool,
    slots: Vec<u64>,
    /// Published by the driver, not yet popped.
    posted: VecDeque<Posted>,
    /// Returned by the device (published), not yet reaped.
    done: VecDeque<Posted>,
    next_seq: u64,
    /// Chains reaped (the driver's `last_used`, unwrapped).
    reaped: u64,
    /// Main-table descriptors held by chains posted and not yet reaped.
    held: u16,
    /// Batches completed with a single element (in-order `Batch` completions of 2+ chains).
    merged_batches: u64,
}

impl Rig {
    fn new(size: u16, dev_in_order: bool, drv_in_order: bool, event_idx: bool) -> Rig {
        let mut g = MockGuest::new(1 << 20, &[size]).expect("guest");
        let drv = DriverQueue::new(&g.mem, g.queues[0], event_idx)
            .expect("driver")
            .with_in_order(drv_in_order);
        let dev = DeviceQueue::new(&g.mem, g.queues[0], features(dev_in_order, event_idx))
            .expect("device");
        assert_eq!(dev.in_order(), dev_in_order);
        let slots = (0..size)
            .map(|_| g.alloc(SLOT_BYTES).expect("buffer"))
            .collect();
        Rig {
            g,
            drv,
            dev,
            batch: TxBatch::new(size as usize),
            size,
            dev_in_order,
            slots,
            posted: VecDeque::new(),
            done: VecDeque::new(),
            next_seq: 0,
            reaped: 0,
            held: 0,
            merged_batches: 0,
        }
    }

    fn used_slot_addr(&self, i: u16) -> u64 {
        self.g.queues[0].used + used::ring(i & (self.size - 1))
    }

    fn read_used_slot(&self, i: u16) -> u64 {
        let mut b = [0u8; 8];
        self.g
            .mem
            .read_gpa(self.used_slot_addr(i), &mut b)
            .expect("used slot");
        u64::from_le_bytes(b)
    }

    fn used_idx(&self) -> u16 {
        self.g.used_idx(0).expect("used.idx")
    }

    /// Posts up to `shapes.len()` chains (stops at the first that does not fit), then
    /// publishes. Returns how many were posted.
    fn post(&mut self, shapes: &[Shape]) -> usize {
        let mut n = 0;
        for &s in shapes {
            if s.descs() > self.drv.num_free() {
                break;
            }
            let seq = self.next_seq;
            // Buffers are reaped in posting order and at most `size` chains are in flight, so
            // slot `seq % size` is free again by now.
            let gpa = self.slots[(seq % self.size as u64) as usize];
            self.g.mem.write_gpa(gpa, &frame_bytes(seq)).expect("frame");
            let head = match s {
                Shape::One => self.drv.add_one(&self.g.mem, Buf::read(gpa, FRAME as u32)),
                Shape::Linked(k) => self.drv.add(&self.g.mem, &pieces(gpa, k)),
                Shape::Indirect(k) => {
                    self.drv
                        .add_indirect(&self.g.mem, gpa + TABLE_OFF, &pieces(gpa, k))
                }
            }
            .expect("post");
            self.posted.push_back(Posted {
                head,
                seq,
                descs: s.descs(),
            });
            self.held += s.descs();
            self.next_seq += 1;
            n += 1;
        }
        self.drv.publish(&self.g.mem).expect("publish");
        assert_eq!(self.drv.num_free(), self.size - self.held);
        n
    }

    /// The device pops up to `max` chains as one TX batch and returns them. Returns how many.
    fn device(&mut self, max: usize, how: Completion) -> usize {
        // The device pops what it saw at its last read of `avail.idx`, and reads it again
        // only when that is used up.
        let seen = self.dev.seen_avail().wrapping_sub(self.dev.next_avail()) as usize;
        let avail = if seen > 0 { seen } else { self.posted.len() };
        if let Some(e) = self.batch.pop(&mut self.dev, &self.g.mem, max) {
            panic!("pop: {e}");
        }
        let n = self.batch.len();
        assert_eq!(n, max.min(avail), "popped the wrong number");
        let mut heads = Vec::with_capacity(n);
        for c in self.batch.chains() {
            let p = self.posted.pop_front().expect("model");
            assert_eq!(c.head(), p.head, "popped out of order (seq {})", p.seq);
            assert_eq!(c.readable_len() as usize, FRAME);
            let mut f = [0u8; FRAME];
            assert_eq!(c.read_into(&self.g.mem, 0, &mut f), FRAME);
            assert_eq!(f, frame_bytes(p.seq), "frame bytes of seq {}", p.seq);
            heads.push(p.head);
            self.done.push_back(p);
        }
        // Every slot that holds no unreaped element gets the sentinel.
        let start = self.dev.next_used();
        assert_eq!(
            start,
            self.used_idx(),
            "unpublished elements before the batch"
        );
        let free = (self.reaped as u16)
            .wrapping_add(self.size)
            .wrapping_sub(start);
        assert!(
            free as usize >= n && free <= self.size,
            "free {free}, batch {n}"
        );
        for i in 0..free {
            self.g
                .mem
                .write_gpa(
                    self.used_slot_addr(start.wrapping_add(i)),
                    &SENTINEL.to_le_bytes(),
                )
                .expect("sentinel");
        }
        match how {
            Completion::Batch => self
                .batch
                .complete(&mut self.dev, &self.g.mem)
                .expect("complete"),
            Completion::PerElement => {
                for &h in &heads {
                    self.dev.add_used(&self.g.mem, h, 0).expect("add_used");
                }
                self.dev.publish_used(&self.g.mem).expect("publish_used");
            }
        }
        let end = start.wrapping_add(n as u16);
        assert_eq!(self.dev.next_used(), end);
        assert_eq!(self.used_idx(), end, "used.idx must move by the batch size");
        // Which slots the device wrote.
        let elem = |h: u16| h as u64;
        let mut expect: Vec<u64> = vec![SENTINEL; free as usize];
        if n > 0 {
            if self.dev_in_order && how == Completion::Batch {
                // One element, in the batch's first slot, naming its last chain, len 0.
                expect[0] = elem(heads[n - 1]);
                if n > 1 {
                    self.merged_batches += 1;
                }
            } else {
                for (k, &h) in heads.iter().enumerate() {
                    expect[k] = elem(h);
                }
            }
        }
        for (i, &want) in expect.iter().enumerate() {
            let got = self.read_used_slot(start.wrapping_add(i as u16));
            assert_eq!(
                got, want,
                "used slot {} (batch of {n} at used index {start}, {how:?}, in_order {}): \
                 {got:#x}, expected {want:#x}",
                i, self.dev_in_order
            );
        }
        n
    }

    /// One buffer the driver got back: must be the oldest returned one, with length 0.
    fn check_reaped(&mut self, u: UsedElem) {
        let p = self
            .done
            .pop_front()
            .unwrap_or_else(|| panic!("driver reaped {u:?} that the device never returned"));
        assert_eq!(
            (u.id, u.len),
            (p.head as u32, 0),
            "reaped seq {} out of order or with a length",
            p.seq
        );
        self.reaped += 1;
        self.held -= p.descs;
    }

    /// Reaps everything published with `reap`.
    fn reap(&mut self) -> u32 {
        let mut got = Vec::new();
        let n = self.drv.reap(&self.g.mem, |u| got.push(u)).expect("reap");
        assert_eq!(n as usize, got.len());
        let expected = self.done.len();
        for u in got {
            self.check_reaped(u);
        }
        assert_eq!(n as usize, expected, "reap left published buffers behind");
        self.check_counts();
        n
    }

    /// Takes up to `k` buffers with `pop_used`.
    fn pop_used(&mut self, k: usize) {
        for _ in 0..k {
            match self.drv.pop_used(&self.g.mem).expect("pop_used") {
                Some(u) => self.check_reaped(u),
                None => {
                    assert!(
                        self.done.is_empty(),
                        "pop_used: none, with buffers returned"
                    );
                    break;
                }
            }
        }
        self.check_counts();
    }

    fn check_counts(&self) {
        assert_eq!(self.drv.num_free(), self.size - self.held, "num_free");
        assert_eq!(
            self.drv.in_flight() as usize,
            self.posted.len() + self.done.len(),
            "in_flight"
        );
    }

    /// Returns and reaps everything; checks the queue is back to empty.
    fn drain(&mut self) {
        while !self.posted.is_empty() || !self.done.is_empty() {
            let cap = self.batch.capacity();
            self.device(cap, Completion::Batch);
            self.reap();
        }
        assert_eq!(self.reaped, self.next_seq, "not every chain came back");
        assert_eq!(self.drv.num_free(), self.size);
        assert_eq!(self.drv.in_flight(), 0);
        assert_eq!(self.dev.next_avail(), self.next_seq as u16);
        assert_eq!(self.used_idx(), self.next_seq as u16);
        assert!(self.dev.broken().is_none());
        let mut c = Chain::default();
        assert!(!self.dev.pop(&self.g.mem, &mut c).expect("empty pop"));
        assert_eq!(self.drv.pop_used(&self.g.mem).expect("pop_used"), None);
    }

    /// Pushes `n` one-descriptor chains through in full batches (moves the indices on).
    fn advance(&mut self, mut n: u64) {
        while n > 0 {
            let k = n.min(self.size as u64) as usize;
            assert_eq!(self.post(&vec![Shape::One; k]), k);
            self.device(k, Completion::Batch);
            self.reap();
            n -= k as u64;
        }
    }
}

/// A long random run of post / complete / reap on one rig; returns it for more checks.
fn random_run(size: u16, chains: u64, multi: bool, seed: u64) -> Rig {
    let mut r = Rig::new(size, true, true, true);
    let mut rng = Rng(seed);
    while r.next_seq < chains {
        match rng.range(0, 9) {
            0..=3 => {
                let k = rng.range(1, size as u64);
                let shapes: Vec<Shape> = (0..k).map(|_| Shape::random(&mut rng, multi)).collect();
                r.post(&shapes);
            }
            4..=6 => {
                let k = rng.range(1, size as u64) as usize;
                r.device(k, Completion::Batch);
            }
            7 => {
                let k = rng.range(1, size as u64) as usize;
                r.device(k, Completion::PerElement);
            }
            8 => {
                r.reap();
            }
            _ => {
                let k = rng.range(1, size as u64) as usize;
                r.pop_used(k);
            }
        }
    }
    r.drain();
    r
}

// ---------------------------------------------------------------------------------------------
// (a) device and driver both in order

/// Size 8, ~140k chains: the 16-bit indices wrap twice and batches straddle the ring's end.
/// Every chain comes back once, in posting order, length 0; a batch takes one used element
/// in its first slot (the sentinel stays in the others) and moves `used.idx` by its size.
#[test]
fn in_order_tx_batches_round_trip_across_index_wrap() {
    let r = random_run(8, 140_000, false, 0x1234_5678_9abc_def1);
    assert!(r.next_seq >= 140_000);
    assert!(
        r.merged_batches > 1000,
        "few merged batches: {}",
        r.merged_batches
    );
}

/// Full-ring batches exactly: every batch is the whole ring, starting anywhere in it.
#[test]
fn in_order_full_ring_batches() {
    for size in [1u16, 2, 8, 256] {
        let mut r = Rig::new(size, true, true, false);
        // Start the batches off slot 0 so they straddle the ring's end.
        r.advance(3);
        for _ in 0..(70_000 / size as u64 + 3) {
            assert_eq!(r.post(&vec![Shape::One; size as usize]), size as usize);
            assert_eq!(r.device(size as usize, Completion::Batch), size as usize);
            r.reap();
        }
        r.drain();
        assert!(r.next_seq > 65_536, "size {size}: indices did not wrap");
    }
}

/// The batch's element is read once: a driver reaping with `pop_used` one at a time, across
/// a batch, gets the same answer as `reap`.
#[test]
fn in_order_pop_used_one_at_a_time_across_batches() {
    let mut r = Rig::new(16, true, true, true);
    r.advance(13);
    assert_eq!(r.post(&[Shape::One; 16]), 16);
    r.device(5, Completion::Batch);
    r.device(7, Completion::Batch);
    r.pop_used(3);
    r.device(4, Completion::Batch);
    r.pop_used(1);
    r.pop_used(20);
    assert!(r.done.is_empty());
    r.drain();
}

/// `pop_batch` + `add_used_batch` called directly (not through `TxBatch`), including an empty
/// batch, which must write nothing and leave `used.idx` alone.
#[test]
fn in_order_pop_batch_and_add_used_batch_directly() {
    let mut r = Rig::new(16, true, true, true);
    r.advance(14);
    let mut chains: Vec<Chain> = (0..16).map(|_| Chain::with_capacity(4)).collect();
    for round in 0..5000u64 {
        let k = 1 + (round * 7 % 16) as usize;
        assert_eq!(r.post(&vec![Shape::One; k]), k);
        let start = r.dev.next_used();
        for i in 0..16 {
            r.g.mem
                .write_gpa(
                    r.used_slot_addr(start.wrapping_add(i)),
                    &SENTINEL.to_le_bytes(),
                )
                .expect("sentinel");
        }
        // An empty batch first: nothing written, nothing moved, nothing published.
        r.dev
            .add_used_batch(&r.g.mem, std::iter::empty(), 0)
            .expect("empty batch");
        r.dev.publish_used(&r.g.mem).expect("publish nothing");
        assert_eq!(r.dev.next_used(), start);
        assert_eq!(r.used_idx(), start);
        assert_eq!(r.read_used_slot(start), SENTINEL);
        let mut seen = 0;
        let (n, err) = r.dev.pop_batch(&r.g.mem, &mut chains, |c| {
            seen += 1;
            assert!(c.writable().is_empty());
            Ok(())
        });
        assert!(err.is_none(), "{err:?}");
        assert_eq!((n, seen), (k, k));
        let heads: Vec<u16> = chains[..n].iter().map(Chain::head).collect();
        for (h, p) in heads.iter().zip(&r.posted) {
            assert_eq!(*h, p.head);
        }
        r.dev
            .add_used_batch(&r.g.mem, heads.iter().copied(), 0)
            .expect("add_used_batch");
        // Not visible before the publish.
        assert_eq!(r.used_idx(), start);
        r.dev.publish_used(&r.g.mem).expect("publish");
        assert_eq!(r.used_idx(), start.wrapping_add(n as u16));
        assert_eq!(r.read_used_slot(start), heads[n - 1] as u64);
        for i in 1..16 {
            assert_eq!(
                r.read_used_slot(start.wrapping_add(i)),
                SENTINEL,
                "slot +{i}"
            );
        }
        let moved: Vec<Posted> = r.posted.drain(..n).collect();
        r.done.extend(moved);
        r.reap();
    }
    r.drain();
}

/// The batch's element carries the length of the buffer it names; the buffers it skips come
/// back with length 0 (TX buffers are device-readable: "used completely" is 0 bytes written).
#[test]
fn in_order_batch_element_length_belongs_to_its_last_buffer() {
    let mut r = hostile_setup(8, 3, 4);
    let start = r.used_idx();
    write_used_elem(&r, start, r.posted[2].head as u32, 5);
    write_used_elem(&r, start.wrapping_add(3), r.posted[3].head as u32, 9);
    set_used_idx(&r, start.wrapping_add(4));
    let mut got = Vec::new();
    r.drv.reap(&r.g.mem, |u| got.push(u)).expect("reap");
    let want: Vec<(u32, u32)> = r
        .posted
        .iter()
        .zip([0, 0, 5, 9])
        .map(|(p, l)| (p.head as u32, l))
        .collect();
    let got: Vec<(u32, u32)> = got.iter().map(|u| (u.id, u.len)).collect();
    assert_eq!(got, want);
    assert_eq!(r.drv.num_free(), 8);
}

// ---------------------------------------------------------------------------------------------
// (b) in-order driver, device writing every element itself

/// Writable (RX-like) chains of one or two descriptors; the device writes a per-chain number
/// of bytes and returns each chain with its own element and real length, publishing in groups.
/// The in-order driver hands back each length and the bytes are there.
#[test]
fn in_order_driver_reaps_per_element_device_with_lengths() {
    let size = 16u16;
    let mut g = MockGuest::new(1 << 20, &[size]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true)
        .expect("driver")
        .with_in_order(true);
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], features(true, true)).expect("device");
    let slots: Vec<u64> = (0..size)
        .map(|_| g.alloc(SLOT_BYTES).expect("buf"))
        .collect();
    let mut rng = Rng(0xfeed_beef_0bad_cafe);
    let mut chain = Chain::default();
    // (head, buffer gpa, capacity)
    let mut posted: VecDeque<(u16, u64, u32)> = VecDeque::new();
    // (head, gpa, written bytes)
    let mut done: VecDeque<(u16, u64, Vec<u8>)> = VecDeque::new();
    let mut seq = 0u64;
    let mut reaped = 0u64;
    while reaped < 80_000 {
        // Post.
        for _ in 0..rng.range(0, size as u64) {
            let two = rng.range(0, 1) == 1;
            if drv.num_free() < if two { 2 } else { 1 } {
                break;
            }
            let gpa = slots[(seq % size as u64) as usize];
            let cap = rng.range(1, 200) as u32;
            let bufs = if two && cap > 1 {
                vec![
                    Buf::write(gpa, cap / 2),
                    Buf::write(gpa + cap as u64 / 2, cap - cap / 2),
                ]
            } else {
                vec![Buf::write(gpa, cap)]
            };
            let head = drv.add(&g.mem, &bufs).expect("add");
            posted.push_back((head, gpa, cap));
            seq += 1;
        }
        drv.publish(&g.mem).expect("publish");
        // Device: a group of chains, each with its own element.
        for _ in 0..rng.range(0, size as u64) {
            if !dev.pop(&g.mem, &mut chain).expect("pop") {
                break;
            }
            let (head, gpa, cap) = posted.pop_front().expect("model");
            assert_eq!(chain.head(), head);
            assert_eq!(chain.writable_len(), cap);
            let len = rng.range(0, cap as u64) as usize;
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
            assert_eq!(chain.write_from(&g.mem, 0, &data), len);
            dev.add_used(&g.mem, head, len as u32).expect("add_used");
            done.push_back((head, gpa, data));
        }
        dev.publish_used(&g.mem).expect("publish_used");
        // Driver: all of it, or some with pop_used.
        let take = if rng.range(0, 1) == 0 {
            usize::MAX
        } else {
            rng.range(0, size as u64) as usize
        };
        let mut n = 0;
        while n < take {
            let Some(u) = drv.pop_used(&g.mem).expect("pop_used") else {
                assert!(done.is_empty());
                break;
            };
            let (head, gpa, data) = done.pop_front().expect("reaped more than returned");
            assert_eq!((u.id, u.len as usize), (head as u32, data.len()));
            let mut b = vec![0u8; data.len()];
            g.mem.read_gpa(gpa, &mut b).expect("read");
            assert_eq!(b, data);
            reaped += 1;
            n += 1;
        }
        assert_eq!(drv.in_flight() as usize, posted.len() + done.len());
    }
    assert!(dev.broken().is_none());
}

/// The RX path itself (`RxWriter`, mergeable buffers, one element per buffer) with
/// `IN_ORDER` negotiated and an in-order driver: frames arrive whole, `num_buffers` right,
/// each buffer's length its share, across index wrap.
#[test]
fn in_order_rx_mergeable_round_trip() {
    let size = 32u16;
    let buf_len = 128u32;
    let mut g = MockGuest::new(4 << 20, &[size]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true)
        .expect("driver")
        .with_in_order(true);
    let f = features(true, true).with(bit::MRG_RXBUF, true);
    let mut dev = DeviceQueue::new(&g.mem, g.queues[0], f).expect("dev");
    let mut rx = RxWriter::new(true);
    let mut gpa_of = vec![0u64; size as usize];
    let mut order = VecDeque::new();
    for _ in 0..size {
        let gpa = g.alloc(buf_len as u64).expect("alloc");
        let head = drv.add(&g.mem, &[Buf::write(gpa, buf_len)]).expect("add");
        gpa_of[head as usize] = gpa;
        order.push_back(head);
    }
    drv.publish(&g.mem).expect("publish");
    let mut rng = Rng(77);
    let mut total_bufs = 0u64;
    for k in 0..12_000u64 {
        let len = rng.range(1, 1500) as usize;
        let frame: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + k) as u8).collect();
        let hdr = VirtioNetHdr {
            flags: 1,
            ..Default::default()
        };
        let out = rx.deliver(&mut dev, &g.mem, &hdr, &frame).expect("deliver");
        let RxOutcome::Delivered { buffers } = out else {
            panic!("frame {k}: {out:?}");
        };
        dev.publish_used(&g.mem).expect("publish");
        let mut data = Vec::new();
        let mut left = HDR + len;
        for b in 0..buffers {
            let u = drv.pop_used(&g.mem).expect("reap").expect("used");
            let head = order.pop_front().expect("model");
            assert_eq!(u.id, head as u32, "frame {k} buffer {b} out of order");
            let share = left.min(buf_len as usize);
            assert_eq!(u.len as usize, share, "frame {k} buffer {b} length");
            left -= share;
            let mut bytes = vec![0u8; share];
            g.mem
                .read_gpa(gpa_of[head as usize], &mut bytes)
                .expect("read");
            if b == 0 {
                let h = VirtioNetHdr::from_bytes(bytes[..HDR].try_into().expect("hdr"));
                assert_eq!(h.num_buffers, buffers);
                assert_eq!(h.flags, 1);
                bytes.drain(..HDR);
            }
            data.extend_from_slice(&bytes);
            // Give it back.
            let again = drv
                .add(&g.mem, &[Buf::write(gpa_of[head as usize], buf_len)])
                .expect("repost");
            order.push_back(again);
            gpa_of[again as usize] = gpa_of[head as usize];
        }
        assert_eq!(drv.pop_used(&g.mem).expect("reap"), None);
        drv.publish(&g.mem).expect("publish");
        assert_eq!(data, frame, "frame {k}");
        total_bufs += buffers as u64;
    }
    assert!(total_bufs > 65_536, "indices did not wrap: {total_bufs}");
    assert_eq!(drv.num_free(), 0);
    assert!(dev.broken().is_none());
}

/// The same queue returned both ways, batch by batch at random: both are valid in-order
/// completions and the driver follows either.
#[test]
fn in_order_driver_follows_mixed_batch_and_per_element_completions() {
    let mut r = Rig::new(8, true, true, false);
    let mut rng = Rng(99);
    for _ in 0..20_000 {
        let k = rng.range(1, 8) as usize;
        r.post(&vec![Shape::One; k]);
        let how = if rng.range(0, 1) == 0 {
            Completion::Batch
        } else {
            Completion::PerElement
        };
        r.device(rng.range(1, 8) as usize, how);
        if rng.range(0, 2) == 0 {
            r.reap();
        }
    }
    r.drain();
}

// ---------------------------------------------------------------------------------------------
// (c) hostile device

/// An in-order driver with `n` one-descriptor TX chains posted (after `warm` chains went
/// through, so the used ring has old elements in it).
fn hostile_setup(size: u16, warm: u64, n: usize) -> Rig {
    let mut r = Rig::new(size, true, true, false);
    r.advance(warm);
    assert_eq!(r.post(&vec![Shape::One; n]), n);
    r
}

fn write_used_elem(r: &Rig, i: u16, id: u32, len: u32) {
    let v = id as u64 | (len as u64) << 32;
    r.g.mem
        .write_gpa(r.used_slot_addr(i), &v.to_le_bytes())
        .expect("used elem");
}

fn set_used_idx(r: &Rig, idx: u16) {
    r.g.mem
        .write_gpa(r.g.queues[0].used + used::IDX, &idx.to_le_bytes())
        .expect("used.idx");
}

/// Reaps until an error, at most `limit` calls; returns the buffers reaped and the error.
fn reap_until_err(r: &mut Rig, limit: usize) -> (Vec<UsedElem>, Option<DriverError>) {
    let mut got = Vec::new();
    for _ in 0..limit {
        match r.drv.reap(&r.g.mem, |u| got.push(u)) {
            Ok(0) => return (got, None),
            Ok(_) => {}
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn pop_used_until_err(r: &mut Rig, limit: usize) -> (Vec<UsedElem>, Option<DriverError>) {
    let mut got = Vec::new();
    for _ in 0..limit {
        match r.drv.pop_used(&r.g.mem) {
            Ok(Some(u)) => got.push(u),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// Whatever came back before the error is a prefix of the posting order (the in-order driver
/// names buffers from its own records) and the free count matches.
fn check_prefix(r: &Rig, got: &[UsedElem]) {
    assert!(
        got.len() <= r.posted.len(),
        "more back than in flight: {got:?}"
    );
    for (u, p) in got.iter().zip(&r.posted) {
        assert_eq!(u.id, p.head as u32, "{got:?}");
    }
    assert_eq!(
        r.drv.num_free() as usize,
        r.size as usize - r.posted.len() + got.len()
    );
}

/// The batch's element names a head in range that was never posted.
#[test]
fn hostile_element_names_buffer_not_in_flight() {
    for use_reap in [true, false] {
        let mut r = hostile_setup(8, 5, 3);
        let heads: Vec<u16> = r.posted.iter().map(|p| p.head).collect();
        let stranger = (0..8u16).find(|h| !heads.contains(h)).expect("a free head");
        let start = r.used_idx();
        write_used_elem(&r, start, stranger as u32, 0);
        set_used_idx(&r, start.wrapping_add(3));
        let (got, err) = if use_reap {
            reap_until_err(&mut r, 4)
        } else {
            pop_used_until_err(&mut r, 8)
        };
        assert!(
            matches!(err, Some(DriverError::BadUsedId(id)) if id == stranger as u32),
            "reap {use_reap}: {err:?} after {got:?}"
        );
        // The element is checked before any buffer of its batch is handed back.
        assert!(
            got.is_empty(),
            "handed back {got:?} before refusing the element"
        );
        // And the error sticks: the stale slots further on are never taken as a batch.
        let (more, again) = reap_until_err(&mut r, 4);
        assert!(more.is_empty(), "{more:?}");
        assert!(
            matches!(again, Some(DriverError::BadUsedId(_))),
            "{again:?}"
        );
    }
}

/// Device-writable buffers returned inside an in-order batch without an element of their
/// own count as written whole (§2.7.9): their used length is the chain's writable length.
#[test]
fn in_order_skipped_writable_buffers_count_as_written_whole() {
    let mut g = MockGuest::new(1 << 20, &[8]).expect("guest");
    let mut drv = DriverQueue::new(&g.mem, g.queues[0], true)
        .expect("driver")
        .with_in_order(true);
    let bufs: Vec<u64> = (0..3).map(|_| g.alloc(256).expect("buf")).collect();
    let mut heads = Vec::new();
    for (i, &b) in bufs.iter().enumerate() {
        heads.push(
            drv.add_one(&g.mem, Buf::write(b, 100 + i as u32))
                .expect("post"),
        );
    }
    drv.publish(&g.mem).expect("publish");
    let used = g.queues[0].used;
    let elem = heads[2] as u64 | 40u64 << 32;
    g.mem
        .write_gpa(used + used::ring(0), &elem.to_le_bytes())
        .expect("elem");
    g.mem
        .write_gpa(used + used::IDX, &3u16.to_le_bytes())
        .expect("idx");
    let mut got = Vec::new();
    drv.reap(&g.mem, |u| got.push((u.id, u.len))).expect("reap");
    assert_eq!(
        got,
        vec![
            (heads[0] as u32, 100),
            (heads[1] as u32, 101),
            (heads[2] as u32, 40)
        ]
    );
}

/// The element names heads out of range.
#[test]
fn hostile_element_names_head_out_of_range() {
    for bad in [8u32, 0xffff, 0x1_0000, u32::MAX] {
        let mut r = hostile_setup(8, 2, 4);
        let start = r.used_idx();
        write_used_elem(&r, start, bad, 1);
        set_used_idx(&r, start.wrapping_add(4));
        let (got, err) = reap_until_err(&mut r, 4);
        assert!(
            matches!(err, Some(DriverError::BadUsedId(id)) if id == bad),
            "{bad:#x}: {err:?} after {got:?}"
        );
        check_prefix(&r, &got);
    }
}

/// The element names a buffer that is in flight but after the published batch: the
/// published entries end before it.
#[test]
fn hostile_element_names_buffer_past_the_published_batch() {
    let mut r = hostile_setup(8, 6, 4);
    let last = r.posted[3].head;
    let got = two_used_naming_bad_id(&mut r, last);
    assert!(got.len() < 2, "returned the whole short batch: {got:?}");
}

/// The element names a buffer that was already reaped (its head is free again).
#[test]
fn hostile_element_names_already_reaped_buffer() {
    let mut r = hostile_setup(8, 0, 0);
    assert_eq!(r.post(&[Shape::One; 2]), 2);
    let old = r.posted[0].head;
    r.device(2, Completion::Batch);
    r.reap();
    assert_eq!(r.post(&[Shape::One; 2]), 2);
    assert!(
        !r.posted.iter().any(|p| p.head == old),
        "head reused already"
    );
    two_used_naming_bad_id(&mut r, old);
}

/// The device claims two more used buffers with one element naming `id`; the driver must
/// refuse it as `BadUsedId(id)`, having handed back only a correct prefix. Returns what it
/// handed back.
fn two_used_naming_bad_id(r: &mut Rig, id: u16) -> Vec<UsedElem> {
    let start = r.used_idx();
    write_used_elem(r, start, id as u32, 0);
    set_used_idx(r, start.wrapping_add(2));
    let (got, err) = reap_until_err(r, 4);
    assert!(
        matches!(err, Some(DriverError::BadUsedId(b)) if b == id as u32),
        "{err:?} after {got:?}"
    );
    check_prefix(r, &got);
    got
}

/// `used.idx` moved past what is in flight, with a well-formed element for the buffers that
/// are: the index is refused before any buffer comes back (`UsedIdxJump`), and the error
/// sticks.
#[test]
fn hostile_used_idx_beyond_in_flight() {
    for (posted, jump) in [
        (2usize, 5u16),
        (0, 1),
        (3, 8),
        (1, 0x8000),
        (4, 0xffff),
        (8, 9),
    ] {
        for use_reap in [true, false] {
            let mut r = hostile_setup(8, 11, posted);
            let start = r.used_idx();
            if posted > 0 {
                write_used_elem(&r, start, r.posted[posted - 1].head as u32, 0);
            }
            set_used_idx(&r, start.wrapping_add(jump));
            let (got, err) = if use_reap {
                reap_until_err(&mut r, 4)
            } else {
                pop_used_until_err(&mut r, 16)
            };
            assert!(
                matches!(
                    err,
                    Some(DriverError::UsedIdxJump { in_flight, .. }) if in_flight as usize == posted
                ),
                "{posted} in flight, used.idx +{jump}, reap {use_reap}: {err:?} after {got:?}"
            );
            assert!(
                got.is_empty(),
                "handed back {got:?} before refusing the index"
            );
            // A driver that keeps calling gets the same error again, nothing else, no panic.
            let (more, again) = reap_until_err(&mut r, 4);
            assert!(more.is_empty());
            assert!(
                matches!(again, Some(DriverError::UsedIdxJump { .. })),
                "{again:?}"
            );
            assert!(r.drv.num_free() <= r.size);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (e) multi-descriptor chains

/// Header + payload chains linked with NEXT (2 to 4 descriptors) and indirect ones, in a size-8
/// queue, across index wrap: same guarantees as one-descriptor chains, and the free list gets
/// every descriptor back.
#[test]
fn in_order_multi_descriptor_chains_round_trip() {
    let r = random_run(8, 70_000, true, 0xabad_1dea_dead_10cc);
    assert!(
        r.merged_batches > 100,
        "few merged batches: {}",
        r.merged_batches
    );
}

/// Only linked chains, every batch the whole set of in-flight chains.
#[test]
fn in_order_linked_chains_full_batches() {
    for n in 2u8..=4 {
        let mut r = Rig::new(8, true, true, true);
        for round in 0..3000u64 {
            let k = 8 / n as usize;
            assert_eq!(r.post(&vec![Shape::Linked(n); k]), k, "round {round}");
            assert_eq!(r.drv.num_free(), 8 - (k as u16) * n as u16);
            r.device(k, Completion::Batch);
            r.reap();
        }
        r.drain();
    }
}

// ---------------------------------------------------------------------------------------------
// (d) properties

#[derive(Clone, Debug)]
enum Op {
    Post(Vec<Shape>),
    Device { max: usize, per_element: bool },
    Reap,
    PopUsed(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(shape_strategy(), 1..40).prop_map(Op::Post),
        3 => (1usize..300, prop::bool::weighted(0.2))
            .prop_map(|(max, per_element)| Op::Device { max, per_element }),
        1 => Just(Op::Reap),
        1 => (1usize..40).prop_map(Op::PopUsed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any queue size, in-order on or off (a device without it talking to an in-order driver
    /// included), any mix of batch sizes and reaping styles, optionally starting just short of
    /// the 16-bit wrap: every chain comes back once, in order, with length 0, and the used ring
    /// holds exactly the elements the mode says.
    #[test]
    fn round_trip_any_batching(
        size_log in 0u32..=8,
        drv_in_order in any::<bool>(),
        dev_in_order in any::<bool>(),
        event_idx in any::<bool>(),
        near_wrap in prop::option::weighted(0.3, 0u64..600),
        ops in prop::collection::vec(op_strategy(), 1..80),
    ) {
        let size = 1u16 << size_log;
        // A device may only batch for a driver that expects it.
        let dev_in_order = dev_in_order && drv_in_order;
        let mut r = Rig::new(size, dev_in_order, drv_in_order, event_idx);
        if let Some(back) = near_wrap {
            r.advance(65_536 - back.min(65_536));
        }
        for op in &ops {
            match op {
                Op::Post(shapes) => {
                    r.post(shapes);
                }
                Op::Device { max, per_element } => {
                    let max = 1 + (max - 1) % size as usize;
                    let how = if *per_element {
                        Completion::PerElement
                    } else {
                        Completion::Batch
                    };
                    r.device(max, how);
                }
                Op::Reap => {
                    r.reap();
                }
                Op::PopUsed(k) => r.pop_used(*k),
            }
        }
        r.drain();
    }

    /// Garbage in the used ring and any `used.idx`: the driver never panics, never returns a
    /// buffer twice or one not in flight (in order: only a prefix of the posting order), and
    /// keeps its free count straight; an index past what is in flight is always an error.
    #[test]
    fn hostile_used_ring_never_panics(
        size_log in 1u32..=4,
        in_order in any::<bool>(),
        warm in 0u64..40,
        posted in 0usize..=16,
        elems in prop::collection::vec(
            (prop_oneof![3 => 0u32..18, 1 => any::<u32>()], any::<u32>()), 16),
        jump in prop_oneof![3 => 0u16..20, 1 => any::<u16>()],
    ) {
        let size = 1u16 << size_log;
        let posted = posted.min(size as usize);
        let mut r = Rig::new(size, in_order, in_order, false);
        r.advance(warm);
        assert_eq!(r.post(&vec![Shape::One; posted]), posted);
        let start = r.used_idx();
        for (i, &(id, len)) in elems.iter().take(size as usize).enumerate() {
            write_used_elem(&r, start.wrapping_add(i as u16), id, len);
        }
        set_used_idx(&r, start.wrapping_add(jump));
        let mut got = Vec::new();
        let mut first_err = None;
        for _ in 0..4 {
            match r.drv.reap(&r.g.mem, |u| got.push(u)) {
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        prop_assert!(got.len() <= posted);
        let heads: Vec<u32> = r.posted.iter().map(|p| p.head as u32).collect();
        if in_order {
            for (u, h) in got.iter().zip(&heads) {
                prop_assert_eq!(u.id, *h);
            }
        } else {
            let mut seen = HashSet::new();
            for u in &got {
                prop_assert!(heads.contains(&u.id), "{:?} not in flight", u);
                prop_assert!(seen.insert(u.id), "{:?} returned twice", u);
            }
        }
        prop_assert_eq!(r.drv.num_free() as usize, size as usize - posted + got.len());
        if jump as usize > posted {
            prop_assert!(first_err.is_some(), "used.idx +{} with {} in flight: no error", jump, posted);
        }
    }
}
