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
    /// arena covers what is left of every region. Regions that touch form one stretch of the
    /// arena, so buffers may cross from one into the next.
    pub fn with_regions(regions: &[RegionSpec], sizes: &[u16]) -> Result<Self, MemError> {
        Self::on(GuestMemory::new(regions)?, sizes)
    }

    /// As [`MockGuest::with_regions`], on memory with one memfd per region, mapped apart
    /// ([`GuestMemory::new_regions`]): a buffer crossing from one region into the next reads
    /// right only if the device splits it.
    pub fn with_split_regions(regions: &[RegionSpec], sizes: &[u16]) -> Result<Self, MemError> {
        Self::on(GuestMemory::new_regions(regions)?, sizes)
    }

    /// `mem_bytes` at guest-physical 0 as memory a device must split buffers in: the queues
    /// of `sizes` in a first region of their own, then regions of `region_len` bytes (the last
    /// one shorter if need be) back to back, one memfd each, mapped apart. Buffers from
    /// [`MockGuest::alloc`] cross region boundaries wherever they fall on one. `region_len`
    /// and the queues' space are rounded up to whole pages.
    pub fn split(mem_bytes: u64, region_len: u64, sizes: &[u16]) -> Result<Self, MemError> {
        let page = vring::memory::PAGE_SIZE;
        let mut rings = 0u64;
        for &s in sizes {
            let (_, len) = QueueAddrs::packed(rings, s);
            rings = (rings + len).next_multiple_of(layout::DESC_ALIGN.max(64));
        }
        let rings = rings.max(1).next_multiple_of(page);
        let step = region_len.max(1).next_multiple_of(page);
        let mut regions = vec![RegionSpec { gpa: 0, len: rings }];
        let mut at = rings;
        while at < mem_bytes {
            let len = step.min(mem_bytes.next_multiple_of(page) - at);
            regions.push(RegionSpec { gpa: at, len });
            at += len;
        }
        Self::with_split_regions(&regions, sizes)
    }

    fn on(mem: GuestMemory, sizes: &[u16]) -> Result<Self, MemError> {
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
        let mut arena: Vec<(u64, u64)> = Vec::with_capacity(table.len());
        for r in &table {
            match arena.last_mut() {
                Some(last) if last.1 == r.gpa => last.1 = r.gpa + r.len,
                _ => arena.push((r.gpa, r.gpa + r.len)),
            }
        }
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
    fn split_memory_puts_buffers_across_region_boundaries() {
        let mut g = MockGuest::split(1 << 20, 0x1000, &[256]).expect("guest");
        let regions = g.mem.regions();
        assert!(regions.len() > 100);
        // The rings are in the first region, in one piece.
        let q = g.queues[0];
        assert!(g
            .mem
            .translate(q.desc, q.used + 4 + 8 * 256 + 2 - q.desc)
            .is_ok());
        // Buffers of 1500 bytes back to back: many of them straddle a boundary, and read back
        // what was written.
        let mut straddling = 0;
        for i in 0..100u8 {
            let b = g.alloc(1500).expect("alloc");
            let data = vec![i; 1500];
            g.mem.write_gpa(b, &data).expect("write");
            let mut back = vec![0u8; 1500];
            g.mem.read_gpa(b, &mut back).expect("read");
            assert_eq!(back, data);
            straddling += usize::from(g.mem.translate(b, 1500).is_err());
        }
        assert!(straddling > 20, "{straddling}");
    }

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
