//! The device side of a split virtqueue against a hostile guest.
//!
//! Guest memory is three regions (a `MockGuest` with one memfd per region, mapped apart): A,
//! a hole, then B and C back to back, so a buffer may cross from B into C (one segment per
//! region) while one running off A's end is in the hole. The input picks a
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
//! valid), mixed with region edges (B's end runs on into C, A's into the hole, C's past the
//! last region), the hole and raw 64-bit values.
//!
//! After every operation the replay checks:
//! - popped chains: head in range, every segment non-empty, inside the mapping
//!   (`host_ptr` succeeds) and inside one region; at most one segment per region per
//!   descriptor; `readable_len`/`writable_len` are the sums of the segment lengths;
//!   `read_into`/`readable_from`/`write_from` agree with the segments;
//! - index bookkeeping: `next_avail`/`next_used` move exactly as the operation says, an empty
//!   pop means `avail.idx` in memory equals `next_avail`, published `used.idx` is in memory,
//!   RX used elements add up to header + frame;
//! - batches (`pop_batch`, `add_used_batch` on popped heads): a batch pop takes at most what
//!   was asked, every chain it returns passes the chain checks (and the TX check when it was
//!   the check); a used batch with `IN_ORDER` writes one element, in the batch's first slot,
//!   naming its last head, leaves the batch's other slots alone and moves `next_used` by the
//!   batch size; without it, one element per head;
//! - errors: `BadAddress` only for a range that is not all inside the regions (by a model of
//!   the region table of its own); the first error marks the queue broken with that error and
//!   counts it; before it,
//!   nothing is broken and every counter is zero; after it, every pop, TX pop, RX delivery,
//!   `pending` and `enable_notifications` returns `QueueError::Broken`, and
//!   `needs_notification` says true. (`add_used` and `add_used_batch` still complete chains
//!   popped before the break.)
//!
//! [`replay`] runs one [`Input`]; [`replay_bytes`] decodes bytes the way the fuzz target does
//! first, so a corpus file or a crash artifact replays here as it did under the fuzzer. A
//! broken oracle panics.

mod guest;
mod harness;
mod input;
mod oracle;

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use engine::virtq::{ErrorKind, QueueStats};
use guest_sim::MockGuest;
use vring::{RegionSpec, Span};

pub use input::{
    Addr, AvailIdx, BatchHeads, Buf, Desc, DescInit, Flags, Frame, GuestWrite, Head, Input, Len,
    Next, Op, PartAddr, Placement, RingPart, UsedHead,
};

/// The low region: the rings (packed layout) and then buffer arena.
pub const REGION_A: RegionSpec = RegionSpec {
    gpa: 0,
    len: 0x4000,
};
/// The high region, after a hole.
pub const REGION_B: RegionSpec = RegionSpec {
    gpa: 0x10_0000,
    len: 0x8000,
};
const A_END: u64 = REGION_A.gpa + REGION_A.len;
const B_END: u64 = REGION_B.gpa + REGION_B.len;
/// Right after B (a second memory backend): buffers running off B's end go on into it.
pub const REGION_C: RegionSpec = RegionSpec {
    gpa: B_END,
    len: 0x2000,
};
/// Every region, in guest-physical order.
pub const REGIONS: [RegionSpec; 3] = [REGION_A, REGION_B, REGION_C];

/// Whether every byte of `[addr, addr + len)` is in one of [`REGIONS`]: the model the
/// device's translation is checked against.
pub(crate) fn mapped(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut at = addr;
    while at < end {
        match REGIONS.iter().find(|r| r.gpa <= at && at < r.gpa + r.len) {
            Some(r) => at = r.gpa + r.len,
            None => return false,
        }
    }
    true
}

/// The queue sizes [`Input::size`] picks from.
pub const SIZES: [u16; 4] = [1, 2, 16, 256];
/// Bound on setup writes and on operations, whatever the input length.
pub const MAX_OPS: usize = 256;
/// Largest readable part whose bytes are compared against `read_into`.
const MAX_COMPARE: u64 = 16 * 1024;
/// Most chains one `pop_batch` takes (the engine's TX batch is 64).
pub const MAX_BATCH: usize = 64;

thread_local! {
    /// One mock guest per queue size, created once and zeroed for every input: a memfd and a
    /// mapping per run would dominate the run time.
    static GUESTS: RefCell<Vec<Option<MockGuest>>> =
        RefCell::new((0..SIZES.len()).map(|_| None).collect());
}

/// What one replay did, so that a test can check its input reached the case it was written
/// for. The oracles themselves are asserts inside the replay.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `DeviceQueue::new` accepted the placement. When it did not, nothing else ran.
    pub started: bool,
    /// The error that broke the queue, if one did.
    pub first_err: Option<ErrorKind>,
    /// The queue's counters at the end.
    pub stats: QueueStats,
}

/// Runs `input` against a fresh (zeroed) guest and checks every oracle after every operation.
///
/// # Panics
///
/// When an oracle does not hold: that is a bug found.
pub fn replay(input: &Input) -> Outcome {
    let si = input.size as usize % SIZES.len();
    GUESTS.with(|guests| {
        let mut guests = guests.borrow_mut();
        let guest = guests[si].get_or_insert_with(|| {
            MockGuest::with_split_regions(&REGIONS, &[SIZES[si]]).expect("mock guest")
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
        harness::run(guest, input)
    })
}

/// Decodes `data` as `libfuzzer-sys` does for the fuzz target (`Input::arbitrary_take_rest`,
/// after the same minimum-length check) and replays it. `None` when the bytes do not decode:
/// the fuzzer skips those too.
///
/// # Panics
///
/// As [`replay`].
pub fn replay_bytes(data: &[u8]) -> Option<Outcome> {
    if data.len() < Input::size_hint(0).0 {
        return None;
    }
    let input = Input::arbitrary_take_rest(Unstructured::new(data)).ok()?;
    Some(replay(&input))
}
