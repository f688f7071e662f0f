//! The region table: where each region is in guest-physical space, in the frontend's address
//! space and in the host mapping. Validated once when memory is built; searched by binary
//! search (rust-vmm `vm-memory`'s `GuestMemoryMmap::find_region`), the lowest region tried first
//! (the one-region fast path). No `unsafe` here: this module only does arithmetic on addresses.

use super::{MemError, Span};

/// Most regions one memory may have: vhost-user's `VHOST_USER_MAX_RAM_SLOTS`. A frontend that
/// sends more is refused before anything is mapped.
pub const MAX_REGIONS: usize = 512;

/// One region as a vhost-user frontend describes it in `VHOST_USER_SET_MEM_TABLE`
/// (`VhostUserMemoryRegion`), its fd aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendRegion {
    /// First guest-physical address (`guest_phys_addr`).
    pub gpa: u64,
    /// Length in bytes (`memory_size`).
    pub size: u64,
    /// Where the frontend has the region in its own address space (`userspace_addr`): ring
    /// addresses from `VHOST_USER_SET_VRING_ADDR` are given in this space.
    pub va: u64,
    /// Where the region starts in its fd (`mmap_offset`).
    pub mmap_offset: u64,
}

/// One region, placed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Region {
    pub(super) gpa: u64,
    /// One past the last guest-physical address.
    pub(super) end: u64,
    /// Frontend virtual address of `gpa`.
    pub(super) va: u64,
    /// Where the region's first byte is in the mapping.
    pub(super) host_off: usize,
    /// Where it starts in its file.
    pub(super) mmap_offset: u64,
    /// Which file backs it (an index into the memory's files).
    pub(super) file: usize,
}

impl Region {
    #[inline(always)]
    pub(super) fn len(&self) -> u64 {
        self.end - self.gpa
    }
}

/// Checks what a frontend may get wrong in a table, before anything is mapped: a count of
/// regions in `1..=MAX_REGIONS`, no empty region, no range that wraps the 64-bit space, and no
/// two regions that overlap in guest-physical or in frontend-virtual space.
pub(super) fn check(regions: &[FrontendRegion]) -> Result<(), MemError> {
    if regions.is_empty() {
        return Err(MemError::NoRegions);
    }
    if regions.len() > MAX_REGIONS {
        return Err(MemError::TooManyRegions {
            count: regions.len(),
            max: MAX_REGIONS,
        });
    }
    for (index, r) in regions.iter().enumerate() {
        if r.size == 0 {
            return Err(MemError::EmptyRegion { index });
        }
        if r.gpa.checked_add(r.size).is_none() {
            return Err(MemError::Overflow {
                gpa: r.gpa,
                len: r.size,
            });
        }
        if r.va.checked_add(r.size).is_none() {
            return Err(MemError::VaOverflow {
                va: r.va,
                len: r.size,
            });
        }
        if r.mmap_offset.checked_add(r.size).is_none() {
            return Err(MemError::FileRange {
                index,
                offset: r.mmap_offset,
                size: r.size,
                file_len: u64::MAX,
            });
        }
    }
    // Sorted by start, ranges overlap exactly when one starts before its predecessor ends.
    // (The sums cannot overflow: checked above.)
    let overlap = |start: fn(&FrontendRegion) -> u64| -> Option<(usize, usize)> {
        let mut order: Vec<usize> = (0..regions.len()).collect();
        order.sort_by_key(|&i| start(&regions[i]));
        order.windows(2).find_map(|w| {
            let (a, b) = (&regions[w[0]], &regions[w[1]]);
            (start(b) < start(a) + a.size).then_some((w[0], w[1]))
        })
    };
    if let Some((a, b)) = overlap(|r| r.gpa) {
        return Err(MemError::GpaOverlap { a, b });
    }
    if let Some((a, b)) = overlap(|r| r.va) {
        return Err(MemError::VaOverlap { a, b });
    }
    Ok(())
}

/// The placed regions, sorted by guest-physical address, and an index of them sorted by
/// frontend virtual address.
#[derive(Debug)]
pub(super) struct Table {
    /// A copy of the lowest region, for the one-region fast path of [`Table::translate`].
    first: Region,
    pub(super) by_gpa: Box<[Region]>,
    by_va: Box<[u32]>,
}

impl Table {
    /// `regions` must have passed [`check`] (at least one region, no overlaps, no overflow);
    /// `None` if there is none after all.
    pub(super) fn new(mut regions: Vec<Region>) -> Option<Table> {
        regions.sort_by_key(|r| r.gpa);
        let mut by_va: Vec<u32> = (0..regions.len() as u32).collect();
        by_va.sort_by_key(|&i| regions[i as usize].va);
        Some(Table {
            first: *regions.first()?,
            by_gpa: regions.into_boxed_slice(),
            by_va: by_va.into_boxed_slice(),
        })
    }

    /// The region that holds `gpa`, or would if it were not past the region's end: the last one
    /// starting at or below it. The caller checks the end.
    #[inline(always)]
    fn candidate(&self, gpa: u64) -> Option<&Region> {
        match &*self.by_gpa {
            // One region (the simulator's memory, a small VM): no search.
            [r] => Some(r),
            rs => {
                let i = rs.partition_point(|r| r.gpa <= gpa);
                rs.get(i.checked_sub(1)?)
            }
        }
    }

    /// `[gpa, gpa + len)` inside one region, as a span of the mapping.
    ///
    /// The lowest region is tried first, from a copy kept in the table itself: with one region
    /// (the simulator's memory, a small VM) that is all there is, and it costs what the
    /// one-region memory did before there could be more. Other regions are searched out of
    /// line, which hands back only a host offset (in a register; a whole `Result` from there
    /// would make the fast path build its own in memory too).
    #[inline(always)]
    pub(super) fn translate(&self, gpa: u64, len: u64) -> Result<Span, MemError> {
        let end = gpa
            .checked_add(len)
            .ok_or(MemError::Overflow { gpa, len })?;
        let r = &self.first;
        let off = if gpa >= r.gpa && end <= r.end {
            // Both fit in usize: the region's bytes are all inside the mapping.
            r.host_off + (gpa - r.gpa) as usize
        } else {
            match self.host_off_elsewhere(gpa, end) {
                Some(off) => off,
                None => return Err(MemError::Unmapped { gpa, len }),
            }
        };
        Ok(Span {
            off,
            len: len as usize,
        })
    }

    /// The host offset of `gpa` if `[gpa, end)` is inside a region other than the lowest.
    #[inline(never)]
    fn host_off_elsewhere(&self, gpa: u64, end: u64) -> Option<usize> {
        let r = self.candidate(gpa)?;
        (gpa >= r.gpa && end <= r.end).then(|| r.host_off + (gpa - r.gpa) as usize)
    }

    /// The region holding the byte at `gpa` (a zero-length range at a region's end is not in
    /// it here: the segment walk never asks for one).
    #[inline]
    fn holding(&self, gpa: u64) -> Option<&Region> {
        self.candidate(gpa).filter(|r| gpa >= r.gpa && gpa < r.end)
    }

    /// The guest-physical address of the frontend range `[va, va + len)`, which must lie
    /// inside one region.
    pub(super) fn va_to_gpa(&self, va: u64, len: u64) -> Result<u64, MemError> {
        let end = va
            .checked_add(len)
            .ok_or(MemError::VaOverflow { va, len })?;
        let i = self
            .by_va
            .partition_point(|&i| self.by_gpa[i as usize].va <= va);
        let r = i
            .checked_sub(1)
            .map(|i| &self.by_gpa[self.by_va[i] as usize]);
        match r {
            Some(r) if va >= r.va && end - r.va <= r.len() => Ok(r.gpa + (va - r.va)),
            _ => Err(MemError::UnmappedVa { va, len }),
        }
    }
}

/// The spans of the mapping that a guest-physical range covers, one per region it crosses
/// (Linux `translate_desc`). See [`super::GuestMemory::segments`].
#[derive(Clone, Debug)]
pub struct Segments<'a> {
    table: &'a Table,
    gpa: u64,
    left: u64,
    /// An error was returned: the walk is over.
    done: bool,
}

impl<'a> Segments<'a> {
    pub(super) fn new(table: &'a Table, gpa: u64, len: u64) -> Segments<'a> {
        Segments {
            table,
            gpa,
            left: len,
            done: false,
        }
    }

    fn fail(&mut self, e: MemError) -> Option<Result<Span, MemError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Iterator for Segments<'_> {
    type Item = Result<Span, MemError>;

    /// The next segment; an error (and then the end) if the rest of the range overflows, or
    /// its next byte is in a hole or past the last region.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.left == 0 {
            return None;
        }
        let (gpa, left) = (self.gpa, self.left);
        if gpa.checked_add(left).is_none() {
            return self.fail(MemError::Overflow { gpa, len: left });
        }
        let Some(r) = self.table.holding(gpa) else {
            return self.fail(MemError::Unmapped { gpa, len: left });
        };
        let n = left.min(r.end - gpa);
        self.gpa += n;
        self.left -= n;
        Some(Ok(Span {
            off: r.host_off + (gpa - r.gpa) as usize,
            len: n as usize,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fr(gpa: u64, size: u64, va: u64) -> FrontendRegion {
        FrontendRegion {
            gpa,
            size,
            va,
            mmap_offset: 0,
        }
    }

    #[test]
    fn hostile_tables_are_typed_errors() {
        assert!(matches!(check(&[]), Err(MemError::NoRegions)));
        let many = vec![fr(0, 1, 0); MAX_REGIONS + 1];
        assert!(matches!(
            check(&many),
            Err(MemError::TooManyRegions { count, .. }) if count == MAX_REGIONS + 1
        ));
        assert!(matches!(
            check(&[fr(0, 4096, 0), fr(8192, 0, 8192)]),
            Err(MemError::EmptyRegion { index: 1 })
        ));
        assert!(matches!(
            check(&[fr(u64::MAX - 10, 4096, 0)]),
            Err(MemError::Overflow { .. })
        ));
        assert!(matches!(
            check(&[fr(0, 4096, u64::MAX - 10)]),
            Err(MemError::VaOverflow { .. })
        ));
        let mut r = fr(0, 4096, 0);
        r.mmap_offset = u64::MAX - 1;
        assert!(matches!(check(&[r]), Err(MemError::FileRange { .. })));
        // Overlaps, in either order and whatever the other space says.
        assert!(matches!(
            check(&[fr(0x2000, 0x2000, 0), fr(0x1000, 0x2000, 0x10_0000)]),
            Err(MemError::GpaOverlap { a: 1, b: 0 })
        ));
        assert!(matches!(
            check(&[fr(0, 0x1000, 0x5000), fr(0x1000, 0x1000, 0x5fff)]),
            Err(MemError::VaOverlap { a: 0, b: 1 })
        ));
        // Touching is not overlapping.
        assert!(check(&[fr(0, 0x1000, 0x5000), fr(0x1000, 0x1000, 0x6000)]).is_ok());
    }

    fn table() -> Table {
        // Three regions: two adjacent in guest-physical space (and not in the mapping), then a
        // hole. Frontend addresses in another order again.
        let r = |gpa: u64, len: u64, va: u64, host_off: usize| Region {
            gpa,
            end: gpa + len,
            va,
            host_off,
            mmap_offset: 0,
            file: 0,
        };
        Table::new(vec![
            r(0x1_0000, 0x1000, 0x7000_0000, 0x1000),
            r(0, 0x1_0000, 0x7f00_0000, 0x8000),
            r(0x10_0000, 0x1000, 0x1000, 0),
        ])
        .expect("regions")
    }

    #[test]
    fn segments_split_at_region_boundaries_and_stop_at_holes() {
        let t = table();
        let segs: Vec<_> = Segments::new(&t, 0xfff0, 0x20).collect();
        assert_eq!(
            segs.iter().map(|s| s.clone().ok()).collect::<Vec<_>>(),
            [
                Some(Span {
                    off: 0x8000 + 0xfff0,
                    len: 0x10
                }),
                Some(Span {
                    off: 0x1000,
                    len: 0x10
                })
            ]
        );
        // Into the hole after the second region: the first segments, then the error.
        let segs: Vec<_> = Segments::new(&t, 0x1_0ff0, 0x20).collect();
        assert_eq!(segs.len(), 2);
        assert!(segs[0].is_ok());
        assert!(matches!(
            segs[1],
            Err(MemError::Unmapped {
                gpa: 0x1_1000,
                len: 0x10
            })
        ));
        assert!(matches!(
            Segments::new(&t, u64::MAX, 2).next(),
            Some(Err(MemError::Overflow { .. }))
        ));
        assert_eq!(Segments::new(&t, 0x5000_0000, 0).count(), 0);
        // One region: what `translate` gives.
        assert_eq!(
            Segments::new(&t, 0x10, 0x10).next().and_then(Result::ok),
            t.translate(0x10, 0x10).ok()
        );
        assert!(t.translate(0xfff0, 0x20).is_err());
    }

    #[test]
    fn frontend_addresses_translate_inside_one_region() {
        let t = table();
        assert_eq!(t.va_to_gpa(0x7f00_0010, 0x100).ok(), Some(0x10));
        assert_eq!(t.va_to_gpa(0x7000_0000, 0x1000).ok(), Some(0x1_0000));
        assert_eq!(t.va_to_gpa(0x1800, 8).ok(), Some(0x10_0800));
        for (va, len) in [
            (0x7f00_fff0, 0x20),
            (0x0, 1),
            (0x2000, 1),
            (u64::MAX, 2),
            (0x6fff_ffff, 2),
        ] {
            assert!(t.va_to_gpa(va, len).is_err(), "{va:#x}+{len:#x}");
        }
    }
}
