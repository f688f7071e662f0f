//! The device under test and its model: each operation runs on a `DeviceQueue` and the
//! harness checks what it did against what it must do (index bookkeeping, used elements,
//! errors and the broken state).

use engine::net::header::{check_tx, pop_tx};
use engine::net::rx::{RxOutcome, RxWriter};
use engine::virtq::{Chain, DeviceQueue, ErrorKind, QueueError};
use guest_sim::MockGuest;
use vring::layout::{self, avail, used, Descriptor, QueueAddrs};
use vring::net::{bit, Features, VirtioNetHdr};
use vring::GuestMemory;

use super::guest::{Ctx, Guest};
use super::input::{BatchHeads, Input, Op, Placement, UsedHead};
use super::oracle::check_chain;
use super::{mapped, Outcome, MAX_BATCH, MAX_OPS};

/// The device under test and a model of what each operation must do to it.
struct Harness<'a> {
    g: Guest<'a>,
    q: DeviceQueue,
    chain: Chain,
    /// Room for `pop_batch`.
    batch: Vec<Chain>,
    rx: RxWriter,
    mrg_rxbuf: bool,
    event_idx: bool,
    in_order: bool,
    /// Heads popped by `pop`/`pop_tx`/`pop_batch` in pop order and not yet returned by an
    /// `add_used_batch` (`unpop` takes them off the end).
    popped: Vec<u16>,
    /// The first error any operation returned.
    first_err: Option<ErrorKind>,
    /// Chains popped since the last completion, which `unpop` may give back.
    unpoppable: u16,
    last_head: u16,
    /// `next_used` at the last successful `publish_used`.
    published: u16,
    kicks_disabled: bool,
}

impl Harness<'_> {
    /// An `Ok` from an operation that must fail once the queue is broken.
    fn ok_live(&self, op: &str) {
        if let Some(k) = self.first_err {
            panic!("{op} succeeded on a queue broken by {k:?}");
        }
    }

    fn on_err(&mut self, e: &QueueError, op: &str) {
        match self.first_err {
            None => {
                assert!(
                    !matches!(e, QueueError::Broken),
                    "{op}: Broken from a queue that never failed"
                );
                self.first_err = Some(e.kind());
                self.check_state();
                // Straight away, not only when the input happens to pop again.
                let mut scratch = Chain::default();
                let r = self.q.pop(self.g.mem, &mut scratch);
                assert!(
                    matches!(r, Err(QueueError::Broken)),
                    "pop after {e:?} returned {r:?}"
                );
            }
            Some(k) => assert!(
                matches!(e, QueueError::Broken),
                "{op} on a queue broken by {k:?} returned {e:?}, not Broken"
            ),
        }
    }

    fn check_state(&self) {
        match self.first_err {
            None => {
                assert!(
                    self.q.broken().is_none(),
                    "queue broken ({:?}) but no operation returned an error",
                    self.q.broken()
                );
                assert!(
                    self.q.stats.errors.iter().all(|&c| c == 0),
                    "error counters {:?} without an error",
                    self.q.stats.errors
                );
            }
            Some(k) => {
                let b = self
                    .q
                    .broken()
                    .unwrap_or_else(|| panic!("{k:?} returned but the queue is not broken"));
                assert_eq!(b.kind(), k, "broken() is not the first error");
                assert!(
                    self.q.stats.errors[k as usize] >= 1,
                    "{k:?} not counted: {:?}",
                    self.q.stats.errors
                );
            }
        }
    }

    fn check_err_detail(&self, e: &QueueError) {
        match *e {
            QueueError::AvailIdxJump {
                avail_idx,
                next_avail,
                size,
            } => {
                assert_eq!(size, self.q.size());
                assert_eq!(next_avail, self.q.next_avail());
                assert!(
                    avail_idx.wrapping_sub(next_avail) > size,
                    "AvailIdxJump for a legal index: {e:?}"
                );
            }
            QueueError::HeadOutOfRange { head, size } => {
                assert!(head >= size, "{e:?}");
            }
            // A buffer (or indirect table) across regions is legal; only one with a byte
            // outside every region is not.
            QueueError::BadAddress { addr, len, .. } => {
                assert!(
                    !mapped(addr, len as u64),
                    "BadAddress for a mapped range: {e:?}"
                );
            }
            _ => {}
        }
    }

    fn step(&mut self, op: &Op) {
        let held = self.rx.held() as u16;
        if held > 0
            && matches!(
                op,
                Op::Pop { .. } | Op::PopTx | Op::PopBatch { .. } | Op::Unpop(_)
            )
        {
            let na = self.q.next_avail();
            self.rx.release(&mut self.q);
            assert_eq!(self.rx.held(), 0);
            assert_eq!(
                self.q.next_avail(),
                na.wrapping_sub(held),
                "release gave back what was held"
            );
        }
        // Buffers popped ahead by `rx` count as not yet popped: the next frame uses them or
        // gives them back. `na` is where the queue stands without them.
        let held = self.rx.held() as u16;
        let size = self.q.size();
        let na = self.q.next_avail().wrapping_sub(held);
        let nu = self.q.next_used();
        // Where the queue stands now, buffers held by `rx` not counted.
        let consumed = |h: &Self| h.q.next_avail().wrapping_sub(h.rx.held() as u16);
        match op {
            Op::Pop { skip } => match self.q.pop(self.g.mem, &mut self.chain) {
                Ok(true) => {
                    self.ok_live("pop");
                    assert_eq!(self.q.next_avail(), na.wrapping_add(1));
                    check_chain(self.g.mem, &self.chain, size, *skip as usize, true);
                    self.unpoppable = self.unpoppable.saturating_add(1);
                    self.last_head = self.chain.head();
                    self.popped.push(self.chain.head());
                }
                Ok(false) => {
                    self.ok_live("pop");
                    assert_eq!(self.q.next_avail(), na);
                    assert_eq!(self.g.avail_idx(), na, "empty pop with entries in the ring");
                }
                Err(e) => {
                    self.check_err_detail(&e);
                    self.on_err(&e, "pop");
                }
            },
            Op::PopTx => match pop_tx(&mut self.q, self.g.mem, &mut self.chain) {
                Ok(Some(f)) => {
                    self.ok_live("pop_tx");
                    assert_eq!(self.q.next_avail(), na.wrapping_add(1));
                    check_chain(self.g.mem, &self.chain, size, 0, false);
                    assert!(
                        self.chain.writable().is_empty(),
                        "TX chain with writable part"
                    );
                    let total = self.chain.readable_len();
                    assert!(total as usize >= VirtioNetHdr::SIZE);
                    assert_eq!(f.len, total - VirtioNetHdr::SIZE as u32);
                    let mut raw = [0u8; VirtioNetHdr::SIZE];
                    assert_eq!(self.chain.read_into(self.g.mem, 0, &mut raw), raw.len());
                    assert_eq!(f.hdr, VirtioNetHdr::from_bytes(&raw));
                    self.unpoppable = self.unpoppable.saturating_add(1);
                    self.last_head = self.chain.head();
                    self.popped.push(self.chain.head());
                }
                Ok(None) => {
                    self.ok_live("pop_tx");
                    assert_eq!(self.q.next_avail(), na);
                    assert_eq!(self.g.avail_idx(), na, "empty pop with entries in the ring");
                }
                Err(e) => {
                    match e {
                        QueueError::UnexpectedWritable => {
                            assert!(!self.chain.writable().is_empty())
                        }
                        QueueError::HeaderTooShort { len } => {
                            assert!((len as usize) < VirtioNetHdr::SIZE);
                            assert_eq!(len, self.chain.readable_len());
                        }
                        _ => self.check_err_detail(&e),
                    }
                    self.on_err(&e, "pop_tx");
                }
            },
            Op::RxPrepare => match self.rx.prepare(&mut self.q, self.g.mem) {
                Ok(Some(off)) => {
                    if held == 0 {
                        self.ok_live("rx prepare");
                    }
                    assert!(off < self.g.mem.mapped_len(), "offset {off} outside");
                    assert!(
                        self.rx.held() >= 1,
                        "prepare found a buffer it does not hold"
                    );
                    if held > 0 {
                        assert_eq!(self.rx.held() as u16, held, "prepare popped again");
                    }
                    assert_eq!(consumed(self), na, "prepare used a buffer");
                    assert_eq!(self.q.next_used(), nu);
                }
                Ok(None) => {
                    self.ok_live("rx prepare");
                    assert_eq!(held, 0, "a held buffer vanished");
                    assert_eq!((self.q.next_avail(), self.rx.held()), (na, 0));
                }
                Err(e) => {
                    assert_eq!(self.rx.held(), 0, "a broken queue's buffers still held");
                    assert_eq!(self.q.next_used(), nu);
                    if !matches!(e, QueueError::Broken) {
                        self.check_err_detail(&e);
                    }
                    self.on_err(&e, "rx prepare");
                }
            },
            Op::Rx { hdr, frame } => {
                let hdr = VirtioNetHdr::from_bytes(hdr);
                let frame = frame.bytes();
                match self.rx.deliver(&mut self.q, self.g.mem, &hdr, &frame) {
                    Ok(RxOutcome::Delivered { buffers }) => {
                        self.ok_live("rx deliver");
                        assert!(buffers >= 1 && buffers <= size, "{buffers} buffers");
                        if !self.mrg_rxbuf {
                            assert_eq!(buffers, 1, "merged buffers without MRG_RXBUF");
                        }
                        assert_eq!(consumed(self), na.wrapping_add(buffers));
                        assert_eq!(self.q.next_used(), nu.wrapping_add(buffers));
                        let mut total = 0u64;
                        for k in 0..buffers {
                            let (id, len) = self.g.used_elem(nu.wrapping_add(k));
                            assert!(id < size as u32, "used id {id} out of range");
                            if k == 0 {
                                assert!(len as usize >= VirtioNetHdr::SIZE, "first len {len}");
                            } else {
                                assert!(len > 0, "empty merged buffer {k}");
                            }
                            total += len as u64;
                        }
                        assert_eq!(
                            total,
                            (VirtioNetHdr::SIZE + frame.len()) as u64,
                            "used lengths do not add up to header + frame"
                        );
                        self.unpoppable = 0;
                    }
                    Ok(RxOutcome::NoBuffers) => {
                        self.ok_live("rx deliver");
                        assert_eq!(self.rx.held(), 0, "NoBuffers while holding buffers");
                        assert_eq!(self.q.next_avail(), na, "NoBuffers consumed buffers");
                        assert_eq!(self.q.next_used(), nu);
                    }
                    Ok(RxOutcome::TooLarge) => {
                        self.ok_live("rx deliver");
                        // With mergeable buffers only when the whole ring cannot hold it.
                        assert!(
                            !self.mrg_rxbuf
                                || VirtioNetHdr::SIZE + frame.len()
                                    > self.q.size() as usize * u32::MAX as usize
                                || self.q.pending(self.g.mem).unwrap_or(0) == self.q.size(),
                            "TooLarge with mergeable buffers and room to wait for"
                        );
                        assert_eq!(consumed(self), na, "TooLarge consumed buffers");
                        assert_eq!(self.q.next_used(), nu);
                    }
                    Err(e) => {
                        assert_eq!(self.rx.held(), 0, "a broken queue's buffers still held");
                        self.check_err_detail(&e);
                        self.on_err(&e, "rx deliver");
                    }
                }
            }
            Op::AddUsed { head, len } => {
                let head = match head {
                    UsedHead::Last => self.last_head,
                    UsedHead::Raw(h) => *h,
                };
                match self.q.add_used(self.g.mem, head, *len) {
                    Ok(()) => {
                        assert_eq!(self.q.next_used(), nu.wrapping_add(1));
                        assert_eq!(self.g.used_elem(nu), (head as u32, *len));
                        self.unpoppable = 0;
                    }
                    Err(e) => self.on_err(&e, "add_used"),
                }
            }
            Op::Publish => match self.q.publish_used(self.g.mem) {
                Ok(()) => {
                    if nu != self.published {
                        assert_eq!(self.g.used_idx(), nu, "used.idx not published");
                    }
                    self.published = nu;
                }
                Err(e) => self.on_err(&e, "publish_used"),
            },
            Op::Notify => {
                let n = self.q.needs_notification(self.g.mem);
                if self.first_err.is_some() {
                    assert!(n, "broken queue must notify");
                }
            }
            Op::Enable => match (self.q.seen_avail(), self.q.enable_notifications(self.g.mem)) {
                (seen, Ok(more)) => {
                    self.ok_live("enable_notifications");
                    self.kicks_disabled = false;
                    // News means published since the device last looked.
                    assert_eq!(more, self.g.avail_idx() != seen);
                    if !self.event_idx {
                        assert_eq!(self.g.used_flags(), 0, "kicks enabled, NO_NOTIFY still set");
                    }
                }
                (_, Err(e)) => {
                    if !matches!(e, QueueError::Broken) {
                        self.kicks_disabled = false;
                    }
                    self.check_err_detail(&e);
                    self.on_err(&e, "enable_notifications");
                }
            },
            Op::Disable => {
                self.q.disable_notifications(self.g.mem);
                if !self.kicks_disabled && !self.event_idx {
                    assert_eq!(
                        self.g.used_flags(),
                        layout::VRING_USED_F_NO_NOTIFY,
                        "kicks disabled, NO_NOTIFY not set"
                    );
                }
                self.kicks_disabled = true;
            }
            Op::PopBatch { max, tx } => self.pop_batch(*max as usize % (MAX_BATCH + 1), *tx),
            Op::AddUsedBatch { heads, len } => {
                let heads: Vec<u16> = match heads {
                    BatchHeads::Popped(n) => {
                        let n = (*n as usize).min(self.popped.len()).min(size as usize);
                        self.popped.drain(..n).collect()
                    }
                    BatchHeads::Raw(h) => h.iter().copied().take(size as usize).collect(),
                };
                self.add_used_batch(&heads, *len);
            }
            Op::Unpop(n) => {
                let n = (*n as u16).min(self.unpoppable);
                self.q.unpop(n);
                self.unpoppable -= n;
                let keep = self.popped.len().saturating_sub(n as usize);
                self.popped.truncate(keep);
                assert_eq!(self.q.next_avail(), na.wrapping_sub(n));
            }
            Op::Pending => match self.q.pending(self.g.mem) {
                Ok(n) => {
                    self.ok_live("pending");
                    if n == 0 {
                        let at = na.wrapping_add(held);
                        assert_eq!(self.g.avail_idx(), at, "nothing pending with entries");
                    }
                }
                Err(e) => {
                    self.check_err_detail(&e);
                    self.on_err(&e, "pending");
                }
            },
            // The guest may rewrite what the device has not popped; held buffers are popped.
            Op::Guest(w) => self.g.apply(w, na.wrapping_add(held)),
        }
        self.check_state();
    }

    fn pop_batch(&mut self, max: usize, tx: bool) {
        let size = self.q.size();
        let na = self.q.next_avail();
        let nu = self.q.next_used();
        let chains_before = self.q.stats.chains;
        let mut checked = 0usize;
        let (n, err) = self.q.pop_batch(self.g.mem, &mut self.batch[..max], |c| {
            checked += 1;
            if tx {
                check_tx(c).map(|_| ())
            } else {
                Ok(())
            }
        });
        assert!(n <= max, "pop_batch({max}) popped {n}");
        assert_eq!(
            self.q.next_avail(),
            na.wrapping_add(n as u16),
            "next_avail after pop_batch"
        );
        assert_eq!(self.q.next_used(), nu, "pop_batch moved next_used");
        assert_eq!(
            self.q.stats.chains,
            chains_before + n as u64,
            "chains counted"
        );
        // The check saw every popped chain, plus the refused one if it refused one.
        assert!(
            checked == n || checked == n + 1,
            "{checked} checks for {n} chains"
        );
        for c in &self.batch[..n] {
            check_chain(self.g.mem, c, size, 0, !tx);
            if tx {
                assert!(c.writable().is_empty(), "TX batch chain with writable part");
                assert!(c.readable_len() as usize >= VirtioNetHdr::SIZE);
            }
            self.popped.push(c.head());
        }
        self.unpoppable = self.unpoppable.saturating_add(n as u16);
        if let Some(c) = self.batch[..n].last() {
            self.last_head = c.head();
        }
        match err {
            None => {
                self.ok_live("pop_batch");
                if n == 0 && max > 0 {
                    assert_eq!(
                        self.g.avail_idx(),
                        na,
                        "empty pop_batch with entries in the ring"
                    );
                }
            }
            Some(e) => {
                match e {
                    QueueError::UnexpectedWritable => {
                        assert!(tx, "UnexpectedWritable without the TX check");
                        assert_eq!(checked, n + 1);
                    }
                    QueueError::HeaderTooShort { len } => {
                        assert!(tx, "HeaderTooShort without the TX check");
                        assert!((len as usize) < VirtioNetHdr::SIZE);
                    }
                    _ => self.check_err_detail(&e),
                }
                self.on_err(&e, "pop_batch");
            }
        }
    }

    fn add_used_batch(&mut self, heads: &[u16], len: u32) {
        let size = self.q.size();
        let nu = self.q.next_used();
        let used_before = self.q.stats.used;
        let k = heads.len() as u16;
        // The slots the batch spans (all distinct: at most `size` of them).
        let before: Vec<(u32, u32)> = (0..k)
            .map(|i| self.g.used_elem(nu.wrapping_add(i)))
            .collect();
        match self
            .q
            .add_used_batch(self.g.mem, heads.iter().copied(), len)
        {
            Ok(()) => {
                assert_eq!(
                    self.q.next_used(),
                    nu.wrapping_add(k),
                    "next_used after a batch of {k}"
                );
                assert_eq!(self.q.stats.used, used_before + k as u64, "used counted");
                for i in 0..k {
                    let got = self.g.used_elem(nu.wrapping_add(i));
                    let want = if !self.in_order {
                        (heads[i as usize] as u32, len)
                    } else if i == 0 {
                        // One element in the first slot, naming the last head.
                        (heads[k as usize - 1] as u32, len)
                    } else {
                        before[i as usize]
                    };
                    assert_eq!(
                        got, want,
                        "used slot {i} of a batch of {k} (in_order {}, size {size})",
                        self.in_order
                    );
                }
                if k > 0 {
                    self.unpoppable = 0;
                }
            }
            Err(e) => self.on_err(&e, "add_used_batch"),
        }
    }
}

/// A ring part at `gpa` is aligned and inside guest memory.
fn part_ok(mem: &GuestMemory, gpa: u64, len: u64, align: u64) -> bool {
    gpa.is_multiple_of(align) && mem.translate(gpa, len).is_ok()
}

/// Starts a device queue on `guest` as `input` says, checking that `DeviceQueue::new` accepts
/// exactly the legal placements, and runs the input's operations on it.
pub(super) fn run(guest: &MockGuest, input: &Input) -> Outcome {
    let mem = &guest.mem;
    let packed = guest.queues[0];
    let size = packed.size;
    let arena = (packed.used + used::size(size)).next_multiple_of(64);

    let qa = match input.placement {
        Placement::Packed => packed,
        Placement::Parts {
            desc,
            avail: av,
            used: us,
        } => QueueAddrs {
            size,
            desc: desc.gpa(),
            avail: av.gpa(),
            used: us.gpa(),
        },
    };
    let features = Features::of(&[bit::VERSION_1])
        .with(bit::RING_EVENT_IDX, input.event_idx)
        .with(bit::RING_INDIRECT_DESC, input.indirect)
        .with(bit::MRG_RXBUF, input.mrg_rxbuf)
        .with(bit::IN_ORDER, input.in_order);

    let expect_ok = part_ok(
        mem,
        qa.desc,
        layout::desc_table_size(size),
        layout::DESC_ALIGN,
    ) && part_ok(mem, qa.avail, avail::size(size), layout::AVAIL_ALIGN)
        && part_ok(mem, qa.used, used::size(size), layout::USED_ALIGN);
    let q = match DeviceQueue::new(mem, qa, features) {
        Ok(q) => {
            assert!(
                expect_ok,
                "DeviceQueue::new accepted a bad placement {qa:?}"
            );
            q
        }
        Err(e) => {
            assert!(!expect_ok, "DeviceQueue::new rejected {qa:?}: {e:?}");
            assert!(matches!(e, QueueError::BadRing { .. }), "{e:?}");
            return Outcome::default();
        }
    };
    assert_eq!(q.size(), size);
    assert_eq!(q.event_idx(), input.event_idx);
    assert_eq!(q.in_order(), input.in_order);

    let cx = Ctx {
        size,
        arena,
        qa,
        avail_off: mem.translate(qa.avail, 1).expect("checked").off,
        used_off: mem.translate(qa.used, 1).expect("checked").off,
    };
    let mut g = Guest { mem, cx, idx: 0 };
    for (i, d) in input.table.iter().take(size as usize).enumerate() {
        let _ = mem.write_gpa(
            qa.desc + i as u64 * Descriptor::SIZE as u64,
            &d.bytes(&g.cx, size),
        );
    }
    for w in input.setup.iter().take(MAX_OPS) {
        g.apply(w, 0);
    }

    let mut h = Harness {
        g,
        q,
        chain: Chain::with_capacity(16),
        batch: (0..MAX_BATCH).map(|_| Chain::with_capacity(4)).collect(),
        rx: RxWriter::with_batch(input.mrg_rxbuf, input.rx_batch()),
        mrg_rxbuf: input.mrg_rxbuf,
        event_idx: input.event_idx,
        in_order: input.in_order,
        popped: Vec::new(),
        first_err: None,
        unpoppable: 0,
        last_head: 0,
        published: 0,
        kicks_disabled: false,
    };
    h.check_state();
    for op in input.ops.iter().take(MAX_OPS) {
        h.step(op);
    }
    if h.first_err.is_some() {
        let mut scratch = Chain::default();
        let r = h.q.pop(h.g.mem, &mut scratch);
        assert!(matches!(r, Err(QueueError::Broken)), "final pop: {r:?}");
    }
    Outcome {
        started: true,
        first_err: h.first_err,
        stats: h.q.stats.clone(),
    }
}
