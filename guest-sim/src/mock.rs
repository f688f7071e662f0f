//! A guest for tests, benches and the fuzzer (the part rust-vmm's `MockSplitQueue` plays):
//! guest memory with queues laid out in it, an arena for buffers, and raw ring writers that
//! let a test play a hostile guest byte by byte.

use vring::layout::{self, avail, Descriptor, QueueAddrs};
use vring::{GuestMemory, MemError, RegionSpec};

use std::sync::atomic::Ordering;

/// Guest memory with `queues` placed at the start of the first region and a bump allocator
/// for buffers over the rest.
#[derive(Debug)]
pub struct MockGuest {
    /// The memory.
    pub mem: GuestMemory,
    /// Where each queue is.
    pub queues: Vec<QueueAddrs>,
    arena: Vec<(u64, u64)>,
    cursor: usize,
    next: u64,
}

impl MockGuest {
    /// One region of `mem_bytes` at guest-physical 0, with a queue of each of `sizes`.
    pub fn new(mem_bytes: u64, sizes: &[u16]) -> Result<Self, MemError> {
        Self::with_regions(
            &[RegionSpec {
                gpa: 0,
                len: mem_bytes,
            }],
            sizes,
        )
    }

    /// The given regions (holes allowed); queues go at the start of the lowest region, the
    /// arena covers what is left of every region.
    pub fn with_regions(regions: &[RegionSpec], sizes: &[u16]) -> Result<Self, MemError> {
        let mem = GuestMemory::new(regions)?;
        let mut table = mem.regions();
        table.sort_by_key(|r| r.gpa);
        let mut at = table[0].gpa;
        let mut queues = Vec::new();
        for &s in sizes {
            let (q, len) = QueueAddrs::packed(at, s);
            queues.push(q);
            at = (at + len).next_multiple_of(layout::DESC_ALIGN.max(64));
        }
        if at > table[0].gpa + table[0].len {
            return Err(MemError::BadRegions(
                "queues do not fit in the first region",
            ));
        }
        let mut arena: Vec<(u64, u64)> = table.iter().map(|r| (r.gpa, r.gpa + r.len)).collect();
        arena[0].0 = at.next_multiple_of(64);
        let next = arena[0].0;
        Ok(MockGuest {
            mem,
            queues,
            arena,
            cursor: 0,
            next,
        })
    }

    /// Allocates `len` bytes of guest memory (64-byte aligned), or `None` when full.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        loop {
            let (_, end) = *self.arena.get(self.cursor)?;
            let start = self.next.next_multiple_of(64);
            if start.checked_add(len)? <= end {
                self.next = start + len;
                return Some(start);
            }
            self.cursor += 1;
            self.next = self.arena.get(self.cursor)?.0;
        }
    }

    /// Writes raw descriptor `i` of queue `q`'s table: a hostile guest writes whatever it likes.
    pub fn write_desc(&self, q: usize, i: u16, d: Descriptor) -> Result<(), MemError> {
        let a = self.queues[q];
        self.mem
            .write_gpa(a.desc + i as u64 * Descriptor::SIZE as u64, &d.to_bytes())
    }

    /// Writes avail-ring slot `slot` (masked by the size) of queue `q`.
    pub fn write_avail_slot(&self, q: usize, slot: u16, head: u16) -> Result<(), MemError> {
        let a = self.queues[q];
        let at = a.avail + avail::ring(slot & (a.size - 1));
        self.mem.write_gpa(at, &head.to_le_bytes())
    }

    /// Sets `avail.idx` of queue `q` (Release, as a driver would).
    pub fn set_avail_idx(&self, q: usize, idx: u16) -> Result<(), MemError> {
        let a = self.queues[q];
        let span = self.mem.translate(a.avail + avail::IDX, 2)?;
        self.mem.store_u16(span.off, idx, Ordering::Release)
    }

    /// Reads `used.idx` of queue `q`.
    pub fn used_idx(&self, q: usize) -> Result<u16, MemError> {
        let a = self.queues[q];
        let span = self.mem.translate(a.used + layout::used::IDX, 2)?;
        self.mem.load_u16(span.off, Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_spans_regions_and_skips_holes() {
        let regions = [
            RegionSpec {
                gpa: 0,
                len: 0x4000,
            },
            RegionSpec {
                gpa: 0x10_0000,
                len: 0x1000,
            },
        ];
        let mut g = MockGuest::with_regions(&regions, &[16]).expect("guest");
        let a = g.alloc(0x3000).expect("first");
        assert!(a >= 0x100 && a + 0x3000 <= 0x4000);
        let b = g.alloc(0x1000).expect("second region");
        assert_eq!(b, 0x10_0000);
        assert!(g.alloc(1).is_none());
    }
}
