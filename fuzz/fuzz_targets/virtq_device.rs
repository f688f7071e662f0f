#![no_main]
//! The device side of a split virtqueue against a hostile guest.
//!
//! Guest memory is two regions with a hole between them (a `MockGuest`). The input picks a
//! queue size (1, 2, 16 or 256), the negotiated features (event index, indirect, mergeable RX,
//! in-order), where the three ring parts go (the mock's packed layout, or anywhere:
//! overlapping, in the second region, misaligned, unmapped), the initial descriptor table, a
//! list of raw and structured guest writes (descriptors, avail slots and index, raw bytes over
//! any ring part, indirect tables and payload in the buffer area, and whole chains posted the
//! way a driver would, direct or indirect, up to indirect tables longer than `MAX_SEGMENTS`),
//! and then a sequence of device operations (single and batched pops and completions)
//! interleaved with more guest writes.
//!
//! Descriptor addresses are drawn mostly as small offsets into the regions (so chains are often
//! valid), mixed with region edges, the hole and raw 64-bit values.
//!
//! After every operation the target checks:
//! - popped chains: head in range, every segment non-empty, inside the mapping
//!   (`host_ptr` succeeds) and inside one region; `readable_len`/`writable_len` are the sums of
//!   the segment lengths; `read_into`/`readable_from`/`write_from` agree with the segments;
//! - index bookkeeping: `next_avail`/`next_used` move exactly as the operation says, an empty
//!   pop means `avail.idx` in memory equals `next_avail`, published `used.idx` is in memory,
//!   RX used elements add up to header + frame;
//! - batches (`pop_batch`, `add_used_batch` on popped heads): a batch pop takes at most what
//!   was asked, every chain it returns passes the chain checks (and the TX check when it was
//!   the check); a used batch with `IN_ORDER` writes one element, in the batch's first slot,
//!   naming its last head, leaves the batch's other slots alone and moves `next_used` by the
//!   batch size; without it, one element per head;
//! - errors: the first error marks the queue broken with that error and counts it; before it,
//!   nothing is broken and every counter is zero; after it, every pop, TX pop, RX delivery,
//!   `pending` and `enable_notifications` returns `QueueError::Broken`, and
//!   `needs_notification` says true. (`add_used` and `add_used_batch` still complete chains
//!   popped before the break.)

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use engine::net::header::{check_tx, pop_tx};
use engine::net::rx::{RxOutcome, RxWriter};
use engine::virtq::{Chain, DeviceQueue, ErrorKind, QueueError, MAX_SEGMENTS};
use guest_sim::MockGuest;
use vring::layout::{self, avail, used, Descriptor, QueueAddrs};
use vring::net::{bit, Features, VirtioNetHdr};
use vring::{GuestMemory, RegionSpec, Span};

/// The low region: the rings (packed layout) and then buffer arena.
const REGION_A: RegionSpec = RegionSpec {
    gpa: 0,
    len: 0x4000,
};
/// The high region, after a hole.
const REGION_B: RegionSpec = RegionSpec {
    gpa: 0x10_0000,
    len: 0x8000,
};
const A_END: u64 = REGION_A.gpa + REGION_A.len;
const B_END: u64 = REGION_B.gpa + REGION_B.len;
/// Host offsets: the mock lays the regions out back to back in gpa order.
const HOST_A: (usize, usize) = (0, REGION_A.len as usize);
const HOST_B: (usize, usize) = (
    REGION_A.len as usize,
    (REGION_A.len + REGION_B.len) as usize,
);

const SIZES: [u16; 4] = [1, 2, 16, 256];
/// Bound on setup writes and on operations, whatever the input length.
const MAX_OPS: usize = 256;
/// Largest readable part whose bytes are compared against `read_into`.
const MAX_COMPARE: u64 = 16 * 1024;
/// Most chains one `pop_batch` takes (the engine's TX batch is 64).
const MAX_BATCH: usize = 64;

thread_local! {
    /// One mock guest per queue size, created once and zeroed for every input: a memfd and a
    /// mapping per run would dominate the run time.
    static GUESTS: RefCell<Vec<Option<MockGuest>>> =
        RefCell::new((0..SIZES.len()).map(|_| None).collect());
}

// ---------------------------------------------------------------------------------------------
// Input

/// A guest-physical address, biased toward mapped memory.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// Into the buffer arena after the rings in region A.
    Arena(u16),
    /// Into region B.
    B(u16),
    /// Anywhere in region A, rings included.
    A(u16),
    /// `back` bytes before the end of a region (straddles it when `len > back`).
    RegionEnd {
        in_b: bool,
        back: u8,
    },
    /// In the hole between the regions.
    Hole(u32),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Mid(u16),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Flags {
    /// NEXT / WRITE / INDIRECT only.
    Known(u8),
    /// Unknown bits too.
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Next {
    /// In range of the table it is in.
    Idx(u16),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Desc {
    addr: Addr,
    len: Len,
    flags: Flags,
    next: Next,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DescInit {
    Structured(Desc),
    Raw([u8; 16]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Head {
    /// In range.
    Idx(u16),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AvailIdx {
    /// `k % (size + 1)` entries past the device's `next_avail`: a legal index.
    Ahead(u16),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RingPart {
    Desc,
    Avail,
    Used,
}

/// One buffer of a chain a well-behaved driver would build.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Buf {
    addr: Addr,
    len: Len,
    write: bool,
}

/// Something the guest does to memory.
#[derive(Arbitrary, Debug, Clone)]
enum GuestWrite {
    /// What a driver does to post one chain: descriptors `at, at+1, ...` (mod size) linked with
    /// NEXT, or with `indirect`, an indirect table there and one INDIRECT descriptor at `at`;
    /// then the head into the next avail slot and `avail.idx` (Release).
    PostChain {
        at: u16,
        bufs: Vec<Buf>,
        indirect: Option<Addr>,
    },
    /// Rewrite descriptor `i % size`.
    Desc {
        i: u16,
        d: DescInit,
    },
    /// A long indirect chain: `count` copies of `buf` linked in a table at `table`, one
    /// INDIRECT descriptor at `at` (mod size) pointing at it, posted. Region B holds up to 2048
    /// entries, enough for `MAX_SEGMENTS`.
    PostIndirectRun {
        at: u16,
        table: Addr,
        count: u16,
        buf: Buf,
    },
    /// What a driver does: heads into the next slots, then `avail.idx` (Release).
    Post(Vec<Head>),
    AvailSlot {
        slot: u16,
        head: Head,
    },
    AvailIdx(AvailIdx),
    AvailFlags(u16),
    UsedEvent(u16),
    /// Raw bytes over a ring part (kept inside that part).
    RawRing {
        part: RingPart,
        off: u16,
        data: Vec<u8>,
    },
    /// Raw bytes anywhere (payload, or garbage).
    Bytes {
        at: Addr,
        data: Vec<u8>,
    },
    Fill {
        at: Addr,
        len: u16,
        byte: u8,
    },
    /// An indirect table at `at`.
    Indirect {
        at: Addr,
        descs: Vec<DescInit>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PartAddr {
    /// `4 * off` into region A (wrapped).
    A(u16),
    /// `4 * off` into region B (wrapped).
    B(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Placement {
    /// The mock's compact layout at the start of region A.
    Packed,
    /// Anywhere: ring parts may overlap each other and the buffers, be misaligned or unmapped.
    Parts {
        desc: PartAddr,
        avail: PartAddr,
        used: PartAddr,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum Frame {
    Bytes(Vec<u8>),
    Filled { len: u16, byte: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum UsedHead {
    /// The head of the last chain popped.
    Last,
    Raw(u16),
}

/// Which heads an `add_used_batch` returns.
#[derive(Arbitrary, Debug, Clone)]
enum BatchHeads {
    /// The oldest `n` popped and not yet returned by a batch (at most the queue size).
    Popped(u8),
    /// Any heads (at most the queue size of them): the device writes what it is told.
    Raw(Vec<u16>),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// `DeviceQueue::pop`, then the chain's copy helpers from byte `skip`.
    Pop {
        skip: u16,
    },
    /// `net::header::pop_tx`.
    PopTx,
    /// `RxWriter::prepare`: pop the next RX buffer ahead of a frame. The harness gives it back
    /// (`RxWriter::abort`) before any op that pops or unpops the queue directly, as the worker,
    /// the only one popping its RX queue, never interleaves them.
    RxPrepare,
    /// `RxWriter::deliver`.
    Rx {
        hdr: [u8; 12],
        frame: Frame,
    },
    AddUsed {
        head: UsedHead,
        len: u32,
    },
    /// `DeviceQueue::pop_batch` of up to `max % (MAX_BATCH + 1)` chains, with `check_tx` as the
    /// check when `tx` (what `TxBatch::pop` does) and no check otherwise.
    PopBatch {
        max: u8,
        tx: bool,
    },
    /// `DeviceQueue::add_used_batch` (what `TxBatch::complete` does).
    AddUsedBatch {
        heads: BatchHeads,
        len: u32,
    },
    Publish,
    Notify,
    Enable,
    Disable,
    /// Give back up to `n` of the chains popped since the last completion.
    Unpop(u8),
    Pending,
    Guest(GuestWrite),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size: u8,
    event_idx: bool,
    indirect: bool,
    mrg_rxbuf: bool,
    /// `VIRTIO_F_IN_ORDER`.
    in_order: bool,
    placement: Placement,
    /// Initial descriptor table, entry by entry.
    table: Vec<DescInit>,
    /// Guest writes before the device starts.
    setup: Vec<GuestWrite>,
    ops: Vec<Op>,
}

// ---------------------------------------------------------------------------------------------
// Resolving the input against the memory layout

/// What the input's relative values are resolved against.
struct Ctx {
    size: u16,
    /// First arena address in region A.
    arena: u64,
    qa: QueueAddrs,
    /// Host offsets of the ring parts (valid once `DeviceQueue::new` accepted them).
    avail_off: usize,
    used_off: usize,
}

impl Addr {
    fn gpa(self, cx: &Ctx) -> u64 {
        match self {
            Addr::Arena(o) => cx.arena + o as u64 % (A_END - cx.arena),
            Addr::B(o) => REGION_B.gpa + o as u64 % REGION_B.len,
            Addr::A(o) => REGION_A.gpa + o as u64 % REGION_A.len,
            Addr::RegionEnd { in_b, back } => {
                let end = if in_b { B_END } else { A_END };
                end - back as u64
            }
            Addr::Hole(o) => A_END + o as u64 % (REGION_B.gpa - A_END),
            Addr::Raw(a) => a,
        }
    }
}

impl Len {
    fn get(self) -> u32 {
        match self {
            Len::Small(n) => n as u32,
            Len::Mid(n) => n as u32,
            Len::Raw(n) => n,
        }
    }
}

impl DescInit {
    /// The 16 bytes, with `next` indices resolved against a table of `entries`.
    fn bytes(self, cx: &Ctx, entries: u16) -> [u8; 16] {
        match self {
            DescInit::Raw(b) => b,
            DescInit::Structured(d) => Descriptor {
                addr: d.addr.gpa(cx),
                len: d.len.get(),
                flags: match d.flags {
                    Flags::Known(f) => f as u16 & 7,
                    Flags::Raw(f) => f,
                },
                next: match d.next {
                    Next::Idx(i) => i % entries.max(1),
                    Next::Raw(i) => i,
                },
            }
            .to_bytes(),
        }
    }
}

impl Head {
    fn get(self, size: u16) -> u16 {
        match self {
            Head::Idx(i) => i % size,
            Head::Raw(h) => h,
        }
    }
}

impl PartAddr {
    fn gpa(self) -> u64 {
        match self {
            PartAddr::A(o) => REGION_A.gpa + (o as u64 * 4) % REGION_A.len,
            PartAddr::B(o) => REGION_B.gpa + (o as u64 * 4) % REGION_B.len,
            PartAddr::Raw(a) => a,
        }
    }
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Frame::Bytes(b) => b.clone(),
            Frame::Filled { len, byte } => vec![*byte; *len as usize],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The guest

struct Guest<'a> {
    mem: &'a GuestMemory,
    cx: Ctx,
    /// The driver's own `avail.idx`.
    idx: u16,
}

impl Guest<'_> {
    /// Every write may hit a hole: a hostile guest writes where it likes, and a failed write is
    /// simply not done.
    fn apply(&mut self, w: &GuestWrite, dev_next_avail: u16) {
        let cx = &self.cx;
        let size = cx.size;
        let mem = self.mem;
        match w {
            GuestWrite::Desc { i, d } => {
                let i = i % size;
                let _ = mem.write_gpa(
                    cx.qa.desc + i as u64 * Descriptor::SIZE as u64,
                    &d.bytes(cx, size),
                );
            }
            GuestWrite::PostChain { at, bufs, indirect } => {
                let head = at % size;
                let desc = |addr: u64, len: u32, flags: u16, next: u16| {
                    Descriptor {
                        addr,
                        len,
                        flags,
                        next,
                    }
                    .to_bytes()
                };
                let link = |i: usize, n: usize, b: &Buf, next: u16| {
                    let mut flags = 0;
                    if b.write {
                        flags |= layout::VIRTQ_DESC_F_WRITE;
                    }
                    if i + 1 < n {
                        flags |= layout::VIRTQ_DESC_F_NEXT;
                    }
                    desc(b.addr.gpa(cx), b.len.get(), flags, next)
                };
                match indirect {
                    None => {
                        let n = bufs.len().min(size as usize);
                        for (i, b) in bufs.iter().take(n).enumerate() {
                            let idx = head.wrapping_add(i as u16) % size;
                            let next = head.wrapping_add(i as u16 + 1) % size;
                            let _ = mem.write_gpa(
                                cx.qa.desc + idx as u64 * Descriptor::SIZE as u64,
                                &link(i, n, b, next),
                            );
                        }
                    }
                    Some(table) => {
                        let n = bufs.len().min(MAX_OPS);
                        let base = table.gpa(cx);
                        for (i, b) in bufs.iter().take(n).enumerate() {
                            let _ = mem.write_gpa(
                                base.wrapping_add(i as u64 * Descriptor::SIZE as u64),
                                &link(i, n, b, i as u16 + 1),
                            );
                        }
                        let _ = mem.write_gpa(
                            cx.qa.desc + head as u64 * Descriptor::SIZE as u64,
                            &desc(
                                base,
                                (n * Descriptor::SIZE) as u32,
                                layout::VIRTQ_DESC_F_INDIRECT,
                                0,
                            ),
                        );
                    }
                }
                let slot = cx.qa.avail + avail::ring(self.idx & (size - 1));
                let _ = mem.write_gpa(slot, &head.to_le_bytes());
                self.idx = self.idx.wrapping_add(1);
                self.store_idx(self.idx);
            }
            GuestWrite::PostIndirectRun {
                at,
                table,
                count,
                buf,
            } => {
                let head = at % size;
                let n = *count as u64 % 4096;
                let base = table.gpa(cx);
                let mut flags = layout::VIRTQ_DESC_F_NEXT;
                if buf.write {
                    flags |= layout::VIRTQ_DESC_F_WRITE;
                }
                let (addr, len) = (buf.addr.gpa(cx), buf.len.get());
                for i in 0..n {
                    let last = i + 1 == n;
                    let d = Descriptor {
                        addr,
                        len,
                        flags: if last {
                            flags & !layout::VIRTQ_DESC_F_NEXT
                        } else {
                            flags
                        },
                        next: (i + 1) as u16,
                    };
                    let at = base.wrapping_add(i * Descriptor::SIZE as u64);
                    if mem.write_gpa(at, &d.to_bytes()).is_err() {
                        break;
                    }
                }
                let ind = Descriptor {
                    addr: base,
                    len: (n * Descriptor::SIZE as u64) as u32,
                    flags: layout::VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                };
                let _ = mem.write_gpa(
                    cx.qa.desc + head as u64 * Descriptor::SIZE as u64,
                    &ind.to_bytes(),
                );
                let slot = cx.qa.avail + avail::ring(self.idx & (size - 1));
                let _ = mem.write_gpa(slot, &head.to_le_bytes());
                self.idx = self.idx.wrapping_add(1);
                self.store_idx(self.idx);
            }
            GuestWrite::Post(heads) => {
                for h in heads.iter().take(size as usize) {
                    let at = cx.qa.avail + avail::ring(self.idx & (size - 1));
                    let _ = mem.write_gpa(at, &h.get(size).to_le_bytes());
                    self.idx = self.idx.wrapping_add(1);
                }
                self.store_idx(self.idx);
            }
            GuestWrite::AvailSlot { slot, head } => {
                let at = cx.qa.avail + avail::ring(slot & (size - 1));
                let _ = mem.write_gpa(at, &head.get(size).to_le_bytes());
            }
            GuestWrite::AvailIdx(i) => {
                let v = match *i {
                    AvailIdx::Ahead(k) => dev_next_avail.wrapping_add(k % (size + 1)),
                    AvailIdx::Raw(v) => v,
                };
                self.idx = v;
                self.store_idx(v);
            }
            GuestWrite::AvailFlags(f) => {
                let _ = mem.write_gpa(cx.qa.avail + avail::FLAGS, &f.to_le_bytes());
            }
            GuestWrite::UsedEvent(e) => {
                let _ = mem.write_gpa(cx.qa.avail + avail::used_event(size), &e.to_le_bytes());
            }
            GuestWrite::RawRing { part, off, data } => {
                let (base, len) = match part {
                    RingPart::Desc => (cx.qa.desc, layout::desc_table_size(size)),
                    RingPart::Avail => (cx.qa.avail, avail::size(size)),
                    RingPart::Used => (cx.qa.used, used::size(size)),
                };
                let off = *off as u64 % len;
                let n = data.len().min((len - off) as usize);
                let _ = mem.write_gpa(base + off, &data[..n]);
            }
            GuestWrite::Bytes { at, data } => {
                let _ = mem.write_gpa(at.gpa(cx), data);
            }
            GuestWrite::Fill { at, len, byte } => {
                if let Ok(span) = mem.translate(at.gpa(cx), *len as u64) {
                    let _ = mem.fill(span, *byte);
                }
            }
            GuestWrite::Indirect { at, descs } => {
                let n = descs.len().min(MAX_OPS) as u16;
                let base = at.gpa(cx);
                for (i, d) in descs.iter().take(n as usize).enumerate() {
                    let _ = mem.write_gpa(
                        base.wrapping_add(i as u64 * Descriptor::SIZE as u64),
                        &d.bytes(cx, n),
                    );
                }
            }
        }
    }

    fn store_idx(&self, v: u16) {
        self.mem
            .store_u16(
                self.cx.avail_off + avail::IDX as usize,
                v,
                Ordering::Release,
            )
            .expect("avail.idx is mapped and aligned: DeviceQueue::new checked it");
    }

    fn avail_idx(&self) -> u16 {
        self.mem
            .read_u16(self.cx.avail_off + avail::IDX as usize)
            .expect("avail ring is mapped")
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_u16(self.cx.used_off + used::IDX as usize)
            .expect("used ring is mapped")
    }

    fn used_flags(&self) -> u16 {
        self.mem
            .read_u16(self.cx.used_off + used::FLAGS as usize)
            .expect("used ring is mapped")
    }

    fn used_elem(&self, i: u16) -> (u32, u32) {
        let v = self
            .mem
            .read_u64(self.cx.used_off + used::ring(i & (self.cx.size - 1)) as usize)
            .expect("used ring is mapped");
        (v as u32, (v >> 32) as u32)
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

fn check_segment(mem: &GuestMemory, s: Span, what: &str) {
    assert!(s.len > 0, "{what}: empty segment {s:?}");
    assert!(
        mem.host_ptr(s).is_ok(),
        "{what}: segment {s:?} outside the mapping"
    );
    let end = s.off + s.len;
    let in_a = s.off >= HOST_A.0 && end <= HOST_A.1;
    let in_b = s.off >= HOST_B.0 && end <= HOST_B.1;
    assert!(in_a || in_b, "{what}: segment {s:?} straddles two regions");
}

/// Reads the bytes of `segs`, concatenated.
fn gather(mem: &GuestMemory, segs: &[Span]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let at = out.len();
        out.resize(at + s.len, 0);
        mem.read_at(s.off, &mut out[at..])
            .expect("segment is mapped");
    }
    out
}

fn check_chain(mem: &GuestMemory, chain: &Chain, size: u16, skip: usize, write: bool) {
    assert!(chain.head() < size, "head {} >= size {size}", chain.head());
    let mut r = 0u64;
    for &s in chain.readable() {
        check_segment(mem, s, "readable");
        r += s.len as u64;
    }
    let mut w = 0u64;
    for &s in chain.writable() {
        check_segment(mem, s, "writable");
        w += s.len as u64;
    }
    assert_eq!(
        r,
        chain.readable_len() as u64,
        "readable_len != sum of segments"
    );
    assert_eq!(
        w,
        chain.writable_len() as u64,
        "writable_len != sum of segments"
    );
    let segs = chain.readable().len() + chain.writable().len();
    assert!(
        chain.descriptors() >= 1,
        "a chain has at least one descriptor"
    );
    assert!(
        segs <= chain.descriptors() as usize,
        "{segs} segments from {} descriptors",
        chain.descriptors()
    );
    assert!(segs <= MAX_SEGMENTS, "{segs} segments > MAX_SEGMENTS");

    // The copy helpers agree with the segments.
    let mut rf = 0u64;
    for s in chain.readable_from(skip) {
        check_segment(mem, s, "readable_from");
        rf += s.len as u64;
    }
    assert_eq!(rf, r.saturating_sub(skip as u64), "readable_from({skip})");
    let mut wf = 0u64;
    for s in chain.writable_from(skip) {
        check_segment(mem, s, "writable_from");
        wf += s.len as u64;
    }
    assert_eq!(wf, w.saturating_sub(skip as u64), "writable_from({skip})");

    let mut dst = [0u8; 256];
    let n = chain.read_into(mem, skip, &mut dst);
    let want = (r.saturating_sub(skip as u64)).min(dst.len() as u64) as usize;
    assert_eq!(n, want, "read_into({skip}) copied {n}, expected {want}");
    if r <= MAX_COMPARE {
        let all = gather(mem, chain.readable());
        assert_eq!(
            &dst[..n],
            &all[skip.min(all.len())..][..n],
            "read_into bytes"
        );
    }
    if write {
        let src = [0xa5u8; 64];
        let n = chain.write_from(mem, skip, &src);
        let want = (w.saturating_sub(skip as u64)).min(src.len() as u64) as usize;
        assert_eq!(n, want, "write_from({skip}) wrote {n}, expected {want}");
    }
}

// ---------------------------------------------------------------------------------------------
// The device and its model

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
    /// `rx` holds a buffer popped by `RxWriter::prepare`.
    rx_prepared: bool,
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
            _ => {}
        }
    }

    fn step(&mut self, op: &Op) {
        if self.rx_prepared
            && matches!(
                op,
                Op::Pop { .. } | Op::PopTx | Op::PopBatch { .. } | Op::Unpop(_)
            )
        {
            let na = self.q.next_avail();
            self.rx.abort(&mut self.q);
            self.rx_prepared = false;
            assert_eq!(self.q.next_avail(), na.wrapping_sub(1), "abort gave back one");
        }
        let size = self.q.size();
        let na = self.q.next_avail();
        let nu = self.q.next_used();
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
            Op::RxPrepare => {
                let was = self.rx_prepared;
                match self.rx.prepare(&mut self.q, self.g.mem) {
                    Ok(Some(off)) => {
                        if !was {
                            self.ok_live("rx prepare");
                        }
                        assert!(off < self.g.mem.mapped_len(), "offset {off} outside");
                        let want = if was { na } else { na.wrapping_add(1) };
                        assert_eq!(self.q.next_avail(), want, "prepare popped twice");
                        assert_eq!(self.q.next_used(), nu);
                        self.rx_prepared = true;
                    }
                    Ok(None) => {
                        self.ok_live("rx prepare");
                        assert!(!was, "a held buffer vanished");
                        assert_eq!(self.q.next_avail(), na);
                    }
                    Err(e) => {
                        self.rx_prepared = false;
                        if !matches!(e, QueueError::Broken) {
                            self.check_err_detail(&e);
                        }
                        self.on_err(&e, "rx prepare");
                    }
                }
            }
            Op::Rx { hdr, frame } => {
                let hdr = VirtioNetHdr::from_bytes(hdr);
                let frame = frame.bytes();
                // A held buffer counts as not yet popped: deliver uses it or gives it back.
                let na = if std::mem::take(&mut self.rx_prepared) {
                    na.wrapping_sub(1)
                } else {
                    na
                };
                match self.rx.deliver(&mut self.q, self.g.mem, &hdr, &frame) {
                    Ok(RxOutcome::Delivered { buffers }) => {
                        self.ok_live("rx deliver");
                        assert!(buffers >= 1 && buffers <= size, "{buffers} buffers");
                        if !self.mrg_rxbuf {
                            assert_eq!(buffers, 1, "merged buffers without MRG_RXBUF");
                        }
                        assert_eq!(self.q.next_avail(), na.wrapping_add(buffers));
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
                        assert_eq!(self.q.next_avail(), na, "TooLarge consumed buffers");
                        assert_eq!(self.q.next_used(), nu);
                    }
                    Err(e) => {
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
                        assert_eq!(self.g.avail_idx(), na, "nothing pending with entries");
                    }
                }
                Err(e) => {
                    self.check_err_detail(&e);
                    self.on_err(&e, "pending");
                }
            },
            Op::Guest(w) => self.g.apply(w, na),
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

// ---------------------------------------------------------------------------------------------

fn part_ok(mem: &GuestMemory, gpa: u64, len: u64, align: u64) -> bool {
    gpa.is_multiple_of(align) && mem.translate(gpa, len).is_ok()
}

fn run(guest: &MockGuest, input: &Input) {
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
            return;
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
        rx: RxWriter::new(input.mrg_rxbuf),
        rx_prepared: false,
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
}

fuzz_target!(|input: Input| {
    let si = input.size as usize % SIZES.len();
    GUESTS.with(|guests| {
        let mut guests = guests.borrow_mut();
        let guest = guests[si].get_or_insert_with(|| {
            MockGuest::with_regions(&[REGION_A, REGION_B], &[SIZES[si]]).expect("mock guest")
        });
        let mem = &guest.mem;
        mem.fill(
            Span {
                off: 0,
                len: mem.mapped_len(),
            },
            0,
        )
        .expect("reset guest memory");
        run(guest, &input);
    });
});
