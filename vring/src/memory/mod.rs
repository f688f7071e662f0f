//! Guest memory as a vhost-user frontend hands it over: a table of regions, each a range of
//! guest-physical addresses backed by a file (memfd, hugetlbfs) at some offset, and known to the
//! frontend at some address of its own.
//!
//! This module owns every `unsafe` access to guest memory in the workspace. The rules it keeps:
//!
//! - The host side is one reserved range of the address space (`map`), every byte of it
//!   mapped, with each region's file mapped shared into its own place: one `mmap` per region
//!   (as rust-vmm `vm-memory`'s `GuestRegionMmap`), and one bounds check for any access
//!   whatever the number of regions. The range lives as long as the [`GuestMemory`]; it is
//!   never resized or remapped.
//! - Nobody gets a `&`/`&mut` to guest bytes. Bulk data moves by copy into or out of the
//!   caller's own buffers; ring fields are read and written with volatile or atomic accesses.
//!   The only references handed out are to atomics (`&AtomicU16`/`&AtomicU32`-like loads and
//!   stores done here), which are defined for memory another party writes concurrently.
//! - Every access is bounds-checked against the mapping, so a wrong offset is an error, never
//!   an access outside it.
//! - Guest-physical addresses are translated with overflow checks, through the region table
//!   (`table`): [`GuestMemory::translate`] for a range inside one region (ring parts),
//!   [`GuestMemory::segments`] for a buffer, which may cross from one region into the next
//!   (Linux `translate_desc`): one [`Span`] per region. Regions that are neighbours in
//!   guest-physical space need not be neighbours in the mapping. Holes are unmapped.
//! - Frontend addresses (`VHOST_USER_SET_VRING_ADDR`) become guest-physical ones through
//!   [`GuestMemory::va_to_gpa`].
//!
//! The frontend must not shrink a region's file while the memory is mapped: the pages past its
//! new end would fault (`SIGBUS`) on access, as they would for any vhost-user backend.

mod map;
mod table;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use map::Mapping;
pub use table::{FrontendRegion, Segments, MAX_REGIONS};
use table::{Region, Table};

/// Page size regions made by [`GuestMemory::new`] are aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// One guest-physical range, for memory this process creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// First guest-physical address of the region.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Errors from building or accessing guest memory. A bad region table is one of these, never
/// a panic.
#[derive(Debug, thiserror::Error, Clone)]
pub enum MemError {
    /// The region table is empty.
    #[error("no memory regions")]
    NoRegions,
    /// More regions than [`MAX_REGIONS`].
    #[error("{count} memory regions, at most {max} allowed")]
    TooManyRegions {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A region of zero bytes.
    #[error("memory region {index} is empty")]
    EmptyRegion {
        /// Its place in the table as given.
        index: usize,
    },
    /// Two regions overlap in guest-physical space.
    #[error("memory regions {a} and {b} overlap in guest-physical space")]
    GpaOverlap {
        /// One region (place in the table as given).
        a: usize,
        /// The other.
        b: usize,
    },
    /// Two regions overlap in the frontend's address space.
    #[error("memory regions {a} and {b} overlap in the frontend's address space")]
    VaOverlap {
        /// One region (place in the table as given).
        a: usize,
        /// The other.
        b: usize,
    },
    /// A region's `mmap_offset + size` is past what its file holds (or overflows).
    #[error(
        "memory region {index}: {offset:#x}+{size:#x} is outside its file of {file_len:#x} bytes"
    )]
    FileRange {
        /// Its place in the table as given.
        index: usize,
        /// `mmap_offset`.
        offset: u64,
        /// `size`.
        size: u64,
        /// The file's length (`u64::MAX` when the sum overflowed).
        file_len: u64,
    },
    /// A region table made here is unaligned or overlapping, or the memory is too large.
    #[error("bad region table: {0}")]
    BadRegions(&'static str),
    /// `gpa + len` overflows the 64-bit address space.
    #[error("address range {gpa:#x}+{len:#x} overflows")]
    Overflow {
        /// First address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A frontend range `va + len` overflows the 64-bit address space.
    #[error("frontend address range {va:#x}+{len:#x} overflows")]
    VaOverflow {
        /// First address.
        va: u64,
        /// Length.
        len: u64,
    },
    /// The range is not inside one region (it is in a hole, past the end, or — for
    /// [`GuestMemory::translate`] — crosses into the next region), or, from
    /// [`GuestMemory::segments`], the rest of it from `gpa` on is in a hole or past the end.
    #[error("address range {gpa:#x}+{len:#x} is not inside one memory region")]
    Unmapped {
        /// First address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A frontend range is not inside one region.
    #[error("frontend address range {va:#x}+{len:#x} is not inside one memory region")]
    UnmappedVa {
        /// First address.
        va: u64,
        /// Length.
        len: u64,
    },
    /// A host offset/length pair does not lie inside the mapping.
    #[error("host range {off:#x}+{len:#x} is outside the mapping")]
    HostRange {
        /// Offset into the mapping.
        off: usize,
        /// Length.
        len: usize,
    },
    /// A ring field is not aligned for its atomic access.
    #[error("host offset {0:#x} is misaligned for an atomic access")]
    Misaligned(usize),
    /// Creating, sizing, inspecting or mapping a file failed.
    #[error("guest memory setup failed")]
    Io(#[source] std::sync::Arc<std::io::Error>),
}

impl From<std::io::Error> for MemError {
    fn from(e: std::io::Error) -> Self {
        MemError::Io(std::sync::Arc::new(e))
    }
}

/// A range of the mapping, produced by [`GuestMemory::translate`] or
/// [`GuestMemory::segments`] and therefore inside it (and inside one region).
///
/// It is an offset, not a pointer: using it goes through the [`GuestMemory`] accessors, which
/// check it again (one compare), so a `Span` can never reach outside the mapping, even one
/// presented to the wrong `GuestMemory`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Offset into the mapping.
    pub off: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Span {
    /// The sub-range `[at, at + len)` of this span, if it fits.
    pub fn sub(self, at: usize, len: usize) -> Option<Span> {
        let end = at.checked_add(len)?;
        (end <= self.len).then_some(Span {
            off: self.off + at,
            len,
        })
    }
}

/// A region to map: where it goes, and which of the files backs it.
struct Source {
    region: FrontendRegion,
    /// Its place in the table as given (for errors).
    index: usize,
    /// False for memory this process made: its frontend address is where it is mapped here.
    va_given: bool,
    file: usize,
}

/// Guest memory: the mapping, the region table that maps guest-physical (and frontend)
/// addresses onto it, and the files behind it.
#[derive(Debug)]
pub struct GuestMemory {
    map: Mapping,
    table: Table,
    files: Box<[Arc<File>]>,
}

impl GuestMemory {
    /// Creates one memfd holding `regions` back to back (in guest-physical order) and maps it.
    /// Regions must be page-aligned and not overlap; holes between them are allowed.
    pub fn new(regions: &[RegionSpec]) -> Result<Self, MemError> {
        let mut sorted = check_specs(regions)?;
        sorted.sort_by_key(|r| r.gpa);
        let total = sorted
            .iter()
            .try_fold(0u64, |a, r| a.checked_add(r.len))
            .ok_or(MemError::BadRegions("regions too large"))?;
        let file = Arc::new(memfd(total)?);
        let mut off = 0;
        let sources = sorted
            .iter()
            .map(|r| {
                let s = Source {
                    region: FrontendRegion {
                        gpa: r.gpa,
                        size: r.len,
                        va: 0,
                        mmap_offset: off,
                    },
                    index: 0,
                    va_given: false,
                    file: 0,
                };
                off += r.len;
                s
            })
            .collect();
        Self::build(sources, vec![file])
    }

    /// Creates one memfd per region and maps each in the reverse of guest-physical order, so
    /// that regions which are neighbours in guest-physical space are never neighbours in the
    /// mapping: what a frontend with one memory backend per NUMA node, or hot-plugged DIMMs,
    /// hands over. A buffer crossing from one region into the next must then be split to be
    /// read right, which is what tests need. Same rules for `regions` as [`GuestMemory::new`].
    pub fn new_regions(regions: &[RegionSpec]) -> Result<Self, MemError> {
        let mut sorted = check_specs(regions)?;
        sorted.sort_by_key(|r| std::cmp::Reverse(r.gpa));
        let mut files = Vec::with_capacity(sorted.len());
        let mut sources = Vec::with_capacity(sorted.len());
        for r in &sorted {
            sources.push(Source {
                region: FrontendRegion {
                    gpa: r.gpa,
                    size: r.len,
                    va: 0,
                    mmap_offset: 0,
                },
                index: files.len(),
                va_given: false,
                file: files.len(),
            });
            files.push(Arc::new(memfd(r.len)?));
        }
        // A page of nothing between regions as well: no two regions' bytes touch.
        Self::build_with_gaps(sources, files, PAGE_SIZE as usize)
    }

    /// Maps guest memory as a vhost-user frontend describes it (`VHOST_USER_SET_MEM_TABLE`):
    /// per region, its table entry and the fd that came with it. One shared mapping of each
    /// fd at its offset. Refused with a typed error, before anything is mapped: an empty table,
    /// more than [`MAX_REGIONS`], an empty region, a range that overflows (guest-physical,
    /// frontend or file), regions overlapping in guest-physical or in frontend space, and a
    /// region past its file's end.
    pub fn from_frontend(regions: Vec<(FrontendRegion, File)>) -> Result<Self, MemError> {
        let table: Vec<FrontendRegion> = regions.iter().map(|(r, _)| *r).collect();
        table::check(&table)?;
        let mut sources = Vec::with_capacity(regions.len());
        let mut files = Vec::with_capacity(regions.len());
        for (i, (region, file)) in regions.into_iter().enumerate() {
            sources.push(Source {
                region,
                index: i,
                va_given: true,
                file: i,
            });
            files.push(Arc::new(file));
        }
        // The mapping follows the frontend's own layout.
        sources.sort_by_key(|s| s.region.va);
        Self::build(sources, files)
    }

    fn build(sources: Vec<Source>, files: Vec<Arc<File>>) -> Result<Self, MemError> {
        Self::build_with_gaps(sources, files, 0)
    }

    /// Places `sources` (a table that passed `table::check`) in the mapping in the order given,
    /// each slot aligned as its file needs and `gap` bytes apart at least; reserves the
    /// mapping, and maps every region's file into its slot.
    fn build_with_gaps(
        sources: Vec<Source>,
        files: Vec<Arc<File>>,
        gap: usize,
    ) -> Result<Self, MemError> {
        let page = map::page_size() as u64;
        let too_large = MemError::BadRegions("guest memory too large for this host");
        struct Slot {
            /// Where the file mapping starts in the range, and how long it is.
            at: usize,
            map_len: usize,
            /// The aligned file offset it starts from.
            map_off: u64,
        }
        let mut regions = Vec::with_capacity(sources.len());
        let mut slots = Vec::with_capacity(sources.len());
        let mut cursor: u64 = 0;
        let mut max_align: u64 = page;
        let mut lens = vec![None; files.len()];
        for s in &sources {
            let file = &files[s.file];
            let file_len = match lens[s.file] {
                Some(l) => l,
                None => *lens[s.file].insert(file.metadata()?.len()),
            };
            let r = s.region;
            // `check` made sure the sum does not overflow.
            if r.mmap_offset + r.size > file_len {
                return Err(MemError::FileRange {
                    index: s.index,
                    offset: r.mmap_offset,
                    size: r.size,
                    file_len,
                });
            }
            let align = map::file_alignment(file)? as u64;
            max_align = max_align.max(align);
            let map_off = r.mmap_offset & !(align - 1);
            let delta = r.mmap_offset - map_off;
            // The slot: whole alignment units around the region's bytes. Its file mapping stops
            // at the last page the file has (past it, accesses would fault); the rest of the
            // slot stays anonymous.
            let slot_len = (delta + r.size).checked_next_multiple_of(align);
            let file_pages = (file_len - map_off).checked_next_multiple_of(page);
            let (Some(slot_len), Some(file_pages)) = (slot_len, file_pages) else {
                return Err(too_large);
            };
            let at = cursor
                .checked_next_multiple_of(align)
                .ok_or(too_large.clone())?;
            let host_off = at + delta;
            let conv = |v: u64| usize::try_from(v).map_err(|_| too_large.clone());
            slots.push(Slot {
                at: conv(at)?,
                map_len: conv(slot_len.min(file_pages))?,
                map_off,
            });
            regions.push(Region {
                gpa: r.gpa,
                end: r.gpa + r.size,
                va: r.va,
                host_off: conv(host_off)?,
                mmap_offset: r.mmap_offset,
                file: s.file,
            });
            cursor = at
                .checked_add(slot_len)
                .and_then(|c| c.checked_add(gap as u64))
                .ok_or(too_large.clone())?;
        }
        let total = usize::try_from(cursor).map_err(|_| too_large.clone())?;
        let map = Mapping::reserve(total, usize::try_from(max_align).map_err(|_| too_large)?)?;
        for (s, slot) in sources.iter().zip(&slots) {
            map.map_file(slot.at, slot.map_len, &files[s.file], slot.map_off)?;
        }
        for (s, r) in sources.iter().zip(&mut regions) {
            if !s.va_given {
                // Memory made here: its frontend address is its address in this process, as
                // QEMU's `userspace_addr` is in QEMU.
                r.va = map.base() as u64 + r.host_off as u64;
            }
        }
        Ok(GuestMemory {
            map,
            table: Table::new(regions).ok_or(MemError::NoRegions)?,
            files: files.into_boxed_slice(),
        })
    }

    /// The region table, in guest-physical order.
    pub fn regions(&self) -> Vec<RegionSpec> {
        self.table
            .by_gpa
            .iter()
            .map(|r| RegionSpec {
                gpa: r.gpa,
                len: r.len(),
            })
            .collect()
    }

    /// The table a frontend sends for this memory (`VHOST_USER_SET_MEM_TABLE`), in
    /// guest-physical order: each region's entry and the fd to send with it. Another process
    /// maps the same memory from them with [`GuestMemory::from_frontend`].
    pub fn frontend_regions(&self) -> Vec<(FrontendRegion, BorrowedFd<'_>)> {
        self.table
            .by_gpa
            .iter()
            .map(|r| {
                (
                    FrontendRegion {
                        gpa: r.gpa,
                        size: r.len(),
                        va: r.va,
                        mmap_offset: r.mmap_offset,
                    },
                    self.files[r.file].as_fd(),
                )
            })
            .collect()
    }

    /// Each region's bytes as one span of the mapping, in guest-physical order (for
    /// registering them with the kernel, as io_uring fixed buffers).
    pub fn host_regions(&self) -> impl Iterator<Item = Span> + '_ {
        self.table.by_gpa.iter().map(|r| Span {
            off: r.host_off,
            len: r.len() as usize,
        })
    }

    /// Total mapped bytes (the regions, and any alignment gaps between them).
    pub fn mapped_len(&self) -> usize {
        self.map.len()
    }

    /// Translates the guest-physical range `[gpa, gpa + len)`, which must lie inside one
    /// region, to a [`Span`] of the mapping. For ring parts, which a device needs in one
    /// piece; a buffer goes through [`GuestMemory::segments`].
    ///
    /// Fails if the range overflows, or is not inside one region (in a hole, past the end, or
    /// crossing into the next region). A zero-length range is valid anywhere inside a region
    /// or at its end. With one region there is no search.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Result<Span, MemError> {
        self.table.translate(gpa, len)
    }

    /// The spans of the mapping that the guest-physical range `[gpa, gpa + len)` covers, in
    /// order: one per region it crosses (Linux `translate_desc`). Each item is a non-empty span
    /// inside one region, or an error — the rest of the range overflows or starts in a hole
    /// or past the last region — after which the iterator ends. A zero-length range has no
    /// segments. The caller bounds how many it takes.
    #[inline]
    pub fn segments(&self, gpa: u64, len: u64) -> Segments<'_> {
        Segments::new(&self.table, gpa, len)
    }

    /// The guest-physical address of the frontend range `[va, va + len)` (a ring address from
    /// `VHOST_USER_SET_VRING_ADDR`), which must lie inside one region.
    pub fn va_to_gpa(&self, va: u64, len: u64) -> Result<u64, MemError> {
        self.table.va_to_gpa(va, len)
    }

    #[inline]
    fn check(&self, off: usize, len: usize) -> Result<*mut u8, MemError> {
        // `off <= map.len() - len` rather than `off + len <= map.len()`: the same test without
        // the overflow check, and with `len` a constant (the fixed-size accessors) the
        // subtraction folds into one compare.
        match self.map.len().checked_sub(len) {
            Some(last) if off <= last => {
                // SAFETY: `off + len <= map.len()`, so the result stays inside (or one past
                // the end of) the mapping, every byte of which is mapped.
                Ok(unsafe { self.map.base().add(off) })
            }
            _ => Err(MemError::HostRange { off, len }),
        }
    }

    /// A raw pointer to the start of `span`, for handing to the kernel (iovecs, io_uring).
    /// Dereferencing it is the caller's `unsafe`; the span is checked to be inside the mapping,
    /// which stays mapped as long as `self` lives.
    #[inline]
    pub fn host_ptr(&self, span: Span) -> Result<*mut u8, MemError> {
        self.check(span.off, span.len)
    }

    /// The host address of `off` if it is inside the mapping, for the cache hints below (which
    /// never dereference it).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn hint_ptr(&self, off: usize) -> Option<*const u8> {
        (off < self.map.len()).then(|| self.map.base().cast_const().wrapping_add(off))
    }

    /// Hints the CPU to start loading the cache line at `off` (no effect past the mapping's
    /// end, or off x86-64). Used to overlap the misses on buffers the other side just wrote:
    /// issued for a whole batch before any of it is read, they are in flight together.
    #[inline(always)]
    pub fn prefetch(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.hint_ptr(off) {
            // SAFETY: `p` is inside the mapping; `prefetcht0` is SSE, part of the x86-64
            // baseline, never faults, and reads nothing into the program.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p as *const i8,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Hints the CPU to take the cache line at `off` for writing (`prefetchw`: exclusive, so a
    /// later store need not first invalidate the other side's copy). No effect past the
    /// mapping's end, or off x86-64. Used for lines this side will write next while the other
    /// side is not expected to touch them.
    #[inline(always)]
    pub fn prefetch_write(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.hint_ptr(off) {
            // SAFETY: `p` is inside the mapping. `prefetchw` never faults, changes no
            // architectural state and neither reads nor writes memory as far as the program
            // can tell (on an x86-64 CPU without it, the encoding executes as a NOP).
            unsafe {
                std::arch::asm!(
                    "prefetchw [{}]",
                    in(reg) p,
                    options(nostack, preserves_flags, readonly)
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Writes two little-endian `u64`s, back to back, at any alignment: one store each,
    /// straight from registers. (Building the 16 bytes in a local array first and copying it
    /// in makes the copy's 16-byte load wait on the two 8-byte stores that built it — a
    /// store-forwarding stall on every call.) Like [`GuestMemory::write_at`], a plain copy.
    #[inline]
    pub fn write_u64_pair(&self, off: usize, a: u64, b: u64) -> Result<(), MemError> {
        let p = self.check(off, 16)?;
        // SAFETY: sixteen bytes at `p` are inside the mapping (checked above);
        // `write_unaligned` has no alignment requirement. No reference is formed.
        unsafe {
            ptr::write_unaligned(p as *mut u64, a.to_le());
            ptr::write_unaligned(p.add(8) as *mut u64, b.to_le());
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes from the mapping at `off` into `dst`.
    #[inline]
    pub fn read_at(&self, off: usize, dst: &mut [u8]) -> Result<(), MemError> {
        let src = self.check(off, dst.len())?;
        // SAFETY: `src..src+len` is inside the mapping (checked above) and `dst` is the
        // caller's own buffer, so the ranges cannot overlap. The guest may write these bytes
        // concurrently; the copy treats them as untrusted data and no reference to them is
        // formed. Like vm-memory's `copy_slice`, bulk copies use memcpy rather than a
        // byte-wise volatile loop: the compiler cannot elide or fuse a memcpy into guest memory
        // whose result is used.
        unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the mapping at `off`.
    #[inline]
    pub fn write_at(&self, off: usize, src: &[u8]) -> Result<(), MemError> {
        let dst = self.check(off, src.len())?;
        // SAFETY: `dst..dst+len` is inside the mapping (checked above) and `src` is the
        // caller's own buffer, so the ranges cannot overlap. No reference to guest bytes is
        // formed.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Reads guest-physical memory into `dst`; the range may cross from one region into the
    /// next. On an error nothing useful is in `dst`.
    pub fn read_gpa(&self, gpa: u64, dst: &mut [u8]) -> Result<(), MemError> {
        if let Ok(span) = self.translate(gpa, dst.len() as u64) {
            return self.read_at(span.off, dst);
        }
        let mut at = 0;
        for s in self.segments(gpa, dst.len() as u64) {
            let s = s?;
            self.read_at(s.off, &mut dst[at..at + s.len])?;
            at += s.len;
        }
        Ok(())
    }

    /// Writes `src` to guest-physical memory; the range may cross from one region into the
    /// next. Nothing is written unless all of it is mapped.
    pub fn write_gpa(&self, gpa: u64, src: &[u8]) -> Result<(), MemError> {
        if let Ok(span) = self.translate(gpa, src.len() as u64) {
            return self.write_at(span.off, src);
        }
        // Checked whole first: a write into a hole changes nothing.
        self.segments(gpa, src.len() as u64)
            .try_for_each(|s| s.map(drop))?;
        let mut at = 0;
        for s in self.segments(gpa, src.len() as u64) {
            let s = s?;
            self.write_at(s.off, &src[at..at + s.len])?;
            at += s.len;
        }
        Ok(())
    }

    /// Fills `span` with `byte`.
    pub fn fill(&self, span: Span, byte: u8) -> Result<(), MemError> {
        let dst = self.check(span.off, span.len)?;
        // SAFETY: the range is inside the mapping (checked above); no reference is formed.
        unsafe { ptr::write_bytes(dst, byte, span.len) };
        Ok(())
    }

    /// Volatile little-endian read of a `u16`. Reads once; the value is the caller's copy.
    #[inline]
    pub fn read_u16(&self, off: usize) -> Result<u16, MemError> {
        let p = self.check(off, 2)?;
        if (p as usize).is_multiple_of(2) {
            // SAFETY: two bytes at `p` are inside the mapping and `p` is 2-aligned. One aligned
            // load, so the value is read once (ring entries are always aligned).
            return Ok(u16::from_le(unsafe { ptr::read_volatile(p as *const u16) }));
        }
        // SAFETY: two bytes at `p` are inside the mapping; `[u8; 2]` has alignment 1.
        let b = unsafe { ptr::read_volatile(p as *const [u8; 2]) };
        Ok(u16::from_le_bytes(b))
    }

    /// Volatile little-endian read of a `u32`.
    #[inline]
    pub fn read_u32(&self, off: usize) -> Result<u32, MemError> {
        let p = self.check(off, 4)?;
        if (p as usize).is_multiple_of(4) {
            // SAFETY: four bytes at `p` are inside the mapping and `p` is 4-aligned. One aligned
            // load (a volatile `[u8; 4]` read compiles to four byte loads).
            return Ok(u32::from_le(unsafe { ptr::read_volatile(p as *const u32) }));
        }
        // SAFETY: four bytes at `p` are inside the mapping; `[u8; 4]` has alignment 1.
        let b = unsafe { ptr::read_volatile(p as *const [u8; 4]) };
        Ok(u32::from_le_bytes(b))
    }

    /// Volatile little-endian read of a `u64`.
    #[inline]
    pub fn read_u64(&self, off: usize) -> Result<u64, MemError> {
        let p = self.check(off, 8)?;
        if (p as usize).is_multiple_of(8) {
            // SAFETY: eight bytes at `p` are inside the mapping and `p` is 8-aligned. One aligned
            // load (a volatile `[u8; 8]` read compiles to eight byte loads).
            return Ok(u64::from_le(unsafe { ptr::read_volatile(p as *const u64) }));
        }
        // SAFETY: eight bytes at `p` are inside the mapping; `[u8; 8]` has alignment 1.
        let b = unsafe { ptr::read_volatile(p as *const [u8; 8]) };
        Ok(u64::from_le_bytes(b))
    }

    /// Volatile read of 16 bytes (one split-ring descriptor) as two little-endian `u64`
    /// words, taken once even if the guest rewrites them meanwhile.
    #[inline]
    pub fn read_words(&self, off: usize) -> Result<(u64, u64), MemError> {
        let p = self.check(off, 16)?;
        if (p as usize).is_multiple_of(8) {
            // SAFETY: sixteen bytes at `p` are inside the mapping and `p` is 8-aligned, so both
            // `u64` loads are aligned and in bounds. (Descriptor tables are 16-aligned, so this
            // is the hot path; the words go straight to registers, with no byte array to
            // reassemble.)
            let (a, b) = unsafe {
                (
                    ptr::read_volatile(p as *const u64),
                    ptr::read_volatile((p as *const u64).add(1)),
                )
            };
            return Ok((u64::from_le(a), u64::from_le(b)));
        }
        // SAFETY: sixteen bytes at `p` are inside the mapping; `[u8; 16]` has alignment 1.
        let b = unsafe { ptr::read_volatile(p as *const [u8; 16]) };
        let (mut lo, mut hi) = ([0u8; 8], [0u8; 8]);
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        Ok((u64::from_le_bytes(lo), u64::from_le_bytes(hi)))
    }

    /// Volatile little-endian write of a `u16`.
    #[inline]
    pub fn write_u16(&self, off: usize, v: u16) -> Result<(), MemError> {
        let p = self.check(off, 2)?;
        if (p as usize).is_multiple_of(2) {
            // SAFETY: two bytes at `p` are inside the mapping and `p` is 2-aligned. One aligned
            // store (a volatile `[u8; 2]` write compiles to two byte stores, each taking a
            // store-buffer entry).
            unsafe { ptr::write_volatile(p as *mut u16, v.to_le()) };
            return Ok(());
        }
        // SAFETY: two bytes at `p` are inside the mapping; `[u8; 2]` has alignment 1.
        unsafe { ptr::write_volatile(p as *mut [u8; 2], v.to_le_bytes()) };
        Ok(())
    }

    /// Volatile little-endian write of a `u32`.
    #[inline]
    pub fn write_u32(&self, off: usize, v: u32) -> Result<(), MemError> {
        let p = self.check(off, 4)?;
        if (p as usize).is_multiple_of(4) {
            // SAFETY: four bytes at `p` are inside the mapping and `p` is 4-aligned. One aligned
            // store (a volatile `[u8; 4]` write compiles to four byte stores, each taking a
            // store-buffer entry).
            unsafe { ptr::write_volatile(p as *mut u32, v.to_le()) };
            return Ok(());
        }
        // SAFETY: four bytes at `p` are inside the mapping; `[u8; 4]` has alignment 1.
        unsafe { ptr::write_volatile(p as *mut [u8; 4], v.to_le_bytes()) };
        Ok(())
    }

    /// Volatile little-endian write of a `u64`.
    #[inline]
    pub fn write_u64(&self, off: usize, v: u64) -> Result<(), MemError> {
        let p = self.check(off, 8)?;
        if (p as usize).is_multiple_of(8) {
            // SAFETY: eight bytes at `p` are inside the mapping and `p` is 8-aligned. One aligned
            // store (a volatile `[u8; 8]` write compiles to eight byte stores, each taking a
            // store-buffer entry).
            unsafe { ptr::write_volatile(p as *mut u64, v.to_le()) };
            return Ok(());
        }
        // SAFETY: eight bytes at `p` are inside the mapping; `[u8; 8]` has alignment 1.
        unsafe { ptr::write_volatile(p as *mut [u8; 8], v.to_le_bytes()) };
        Ok(())
    }

    /// Volatile write of 16 bytes (one descriptor) as two little-endian `u64` words.
    #[inline]
    pub fn write_words(&self, off: usize, lo: u64, hi: u64) -> Result<(), MemError> {
        let p = self.check(off, 16)?;
        if (p as usize).is_multiple_of(8) {
            // SAFETY: sixteen bytes at `p` are inside the mapping and `p` is 8-aligned, so both
            // `u64` stores are aligned and in bounds. (A volatile `[u8; 16]` store compiles to
            // 16 byte stores.)
            unsafe {
                ptr::write_volatile(p as *mut u64, lo.to_le());
                ptr::write_volatile((p as *mut u64).add(1), hi.to_le());
            }
            return Ok(());
        }
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        // SAFETY: sixteen bytes at `p` are inside the mapping; `[u8; 16]` has alignment 1.
        unsafe { ptr::write_volatile(p as *mut [u8; 16], b) };
        Ok(())
    }

    #[inline]
    fn atomic_u16(&self, off: usize) -> Result<&AtomicU16, MemError> {
        let p = self.check(off, 2)?;
        if !(p as usize).is_multiple_of(2) {
            return Err(MemError::Misaligned(off));
        }
        // SAFETY: `p` is 2-aligned and two bytes at it are inside the mapping, which outlives
        // the returned reference (tied to `&self`). `AtomicU16` has the size and alignment of
        // `u16`, and a reference to an atomic is defined even when another thread or process
        // writes the same bytes concurrently — that is what atomics are for.
        Ok(unsafe { AtomicU16::from_ptr(p as *mut u16) })
    }

    /// Atomic little-endian load of a ring index. Use [`Ordering::Acquire`] when the index
    /// publishes entries the caller is about to read.
    #[inline]
    pub fn load_u16(&self, off: usize, order: Ordering) -> Result<u16, MemError> {
        Ok(u16::from_le(self.atomic_u16(off)?.load(order)))
    }

    /// Atomic little-endian store of a ring index. Use [`Ordering::Release`] when the index
    /// publishes entries the caller has just written.
    #[inline]
    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) -> Result<(), MemError> {
        self.atomic_u16(off)?.store(v.to_le(), order);
        Ok(())
    }
}

/// Checks regions made here: non-empty, page-aligned, not overlapping.
fn check_specs(regions: &[RegionSpec]) -> Result<Vec<RegionSpec>, MemError> {
    for r in regions {
        if r.len == 0 {
            return Err(MemError::BadRegions("empty region"));
        }
        if !r.gpa.is_multiple_of(PAGE_SIZE) || !r.len.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::BadRegions("region not page aligned"));
        }
    }
    let table: Vec<FrontendRegion> = regions
        .iter()
        .map(|r| FrontendRegion {
            gpa: r.gpa,
            size: r.len,
            // Frontend addresses are assigned once the regions are mapped; for the check,
            // the identity (which cannot overlap where guest-physical ranges do not).
            va: r.gpa,
            mmap_offset: 0,
        })
        .collect();
    table::check(&table)?;
    Ok(regions.to_vec())
}

/// A new memfd of `len` bytes.
fn memfd(len: u64) -> Result<File, MemError> {
    let name = c"vhostbench-guest";
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other
    // preconditions. The returned fd is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid, and nobody else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> GuestMemory {
        // Two regions with a hole between them, given out of order.
        GuestMemory::new(&[
            RegionSpec {
                gpa: 0x10_0000,
                len: 0x2000,
            },
            RegionSpec {
                gpa: 0,
                len: 0x1000,
            },
        ])
        .expect("memory")
    }

    #[test]
    fn prefetch_hints_change_nothing_anywhere() {
        let m = two_regions();
        m.write_at(0x40, &[7u8; 64]).expect("write");
        // Inside, at the last byte, past the end and far past it (ignored, never a fault).
        for off in [0x40, m.mapped_len() - 1, m.mapped_len(), usize::MAX] {
            m.prefetch(off);
            m.prefetch_write(off);
        }
        let mut back = [0u8; 64];
        m.read_at(0x40, &mut back).expect("read");
        assert_eq!(back, [7u8; 64]);
    }

    #[test]
    fn translate_checks_bounds_holes_and_overflow() {
        let m = two_regions();
        assert_eq!(m.mapped_len(), 0x3000);
        assert_eq!(
            m.translate(0, 0x1000).ok(),
            Some(Span {
                off: 0,
                len: 0x1000
            })
        );
        assert_eq!(
            m.translate(0x10_0010, 16).ok(),
            Some(Span {
                off: 0x1010,
                len: 16
            })
        );
        assert_eq!(
            m.translate(0x1000, 0).ok(),
            Some(Span {
                off: 0x1000,
                len: 0
            })
        );
        assert!(matches!(
            m.translate(0xfff, 2),
            Err(MemError::Unmapped { .. })
        ));
        assert!(matches!(
            m.translate(0x2000, 1),
            Err(MemError::Unmapped { .. })
        ));
        assert!(matches!(
            m.translate(0x10_1fff, 2),
            Err(MemError::Unmapped { .. })
        ));
        assert!(matches!(
            m.translate(u64::MAX, 2),
            Err(MemError::Overflow { .. })
        ));
        assert!(matches!(
            m.translate(0x10_0000, u64::MAX),
            Err(MemError::Overflow { .. })
        ));
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(GuestMemory::new(&[]).is_err());
        assert!(GuestMemory::new(&[RegionSpec { gpa: 0, len: 0 }]).is_err());
        assert!(GuestMemory::new(&[RegionSpec { gpa: 1, len: 4096 }]).is_err());
        let overlap = [
            RegionSpec { gpa: 0, len: 8192 },
            RegionSpec {
                gpa: 4096,
                len: 4096,
            },
        ];
        assert!(GuestMemory::new(&overlap).is_err());
        let wrap = [RegionSpec {
            gpa: u64::MAX - 4095,
            len: 8192,
        }];
        assert!(GuestMemory::new(&wrap).is_err());
    }

    #[test]
    fn accessors_are_bounds_checked() {
        let m = two_regions();
        let end = m.mapped_len();
        assert!(m.read_u16(end - 2).is_ok());
        assert!(m.read_u16(end - 1).is_err());
        assert!(m.read_words(end - 15).is_err());
        assert!(m.write_at(usize::MAX, &[1]).is_err());
        assert!(m.load_u16(1, Ordering::Acquire).is_err());
        let mut b = [0u8; 4];
        assert!(m.read_at(end - 3, &mut b).is_err());
        assert!(m.host_ptr(Span { off: end, len: 1 }).is_err());
        // The whole mapping is one valid span; anything longer, or wrapping, is not.
        assert!(m.host_ptr(Span { off: 0, len: end }).is_ok());
        assert!(m
            .host_ptr(Span {
                off: 0,
                len: end + 1
            })
            .is_err());
        assert!(m
            .host_ptr(Span {
                off: 1,
                len: usize::MAX
            })
            .is_err());
        assert!(m
            .host_ptr(Span {
                off: usize::MAX,
                len: 2
            })
            .is_err());
    }

    #[test]
    fn values_round_trip_little_endian() {
        let m = two_regions();
        m.write_gpa(0x10_0000, &[1, 2, 3, 4]).expect("write");
        assert_eq!(m.read_u32(0x1000).ok(), Some(0x0403_0201));
        m.write_u64(8, 0x1122_3344_5566_7788).expect("write");
        assert_eq!(m.read_u64(8).ok(), Some(0x1122_3344_5566_7788));
        m.store_u16(16, 0xbeef, Ordering::Release).expect("store");
        assert_eq!(m.read_u16(16).ok(), Some(0xbeef));
        let mut out = [0u8; 2];
        m.read_gpa(16, &mut out).expect("read");
        assert_eq!(out, [0xef, 0xbe]);
    }

    /// The table of `m` and a dup of each fd, as a frontend would send them.
    fn sent(m: &GuestMemory) -> Vec<(FrontendRegion, File)> {
        m.frontend_regions()
            .into_iter()
            .map(|(r, fd)| (r, File::from(fd.try_clone_to_owned().expect("dup"))))
            .collect()
    }

    #[test]
    fn a_frontends_table_maps_the_same_bytes() {
        for m in [
            two_regions(),
            GuestMemory::new_regions(&[
                RegionSpec {
                    gpa: 0x10_0000,
                    len: 0x2000,
                },
                RegionSpec {
                    gpa: 0,
                    len: 0x1000,
                },
            ])
            .expect("memory"),
        ] {
            let other = GuestMemory::from_frontend(sent(&m)).expect("map");
            assert_eq!(other.regions(), m.regions());
            m.write_gpa(0x10_0100, b"shared").expect("write");
            let mut out = [0u8; 6];
            other.read_gpa(0x10_0100, &mut out).expect("read");
            assert_eq!(&out, b"shared");
            // Ring addresses come in the frontend's address space.
            for (r, _) in m.frontend_regions() {
                assert_eq!(other.va_to_gpa(r.va + 8, 8).ok(), Some(r.gpa + 8));
                assert_eq!(m.va_to_gpa(r.va, r.size).ok(), Some(r.gpa));
                assert!(other.va_to_gpa(r.va + r.size - 4, 8).is_err());
            }
        }
    }

    #[test]
    fn a_region_may_start_anywhere_in_its_file() {
        // One file, two regions at unaligned offsets of it, with frontend addresses of their
        // own (the frontend's mapping is not ours).
        let file = memfd(0x10_000).expect("memfd");
        let fd = |f: &File| f.try_clone().expect("dup");
        let table = vec![
            (
                FrontendRegion {
                    gpa: 0x4000,
                    size: 0x1800,
                    va: 0x7f00_0000_1000,
                    mmap_offset: 0x2010,
                },
                fd(&file),
            ),
            (
                FrontendRegion {
                    gpa: 0,
                    size: 0x4000,
                    va: 0x7e00_0000_0000,
                    mmap_offset: 0x8000,
                },
                fd(&file),
            ),
        ];
        let m = GuestMemory::from_frontend(table).expect("map");
        m.write_gpa(0x4000 - 3, b"abcdef")
            .expect("across the boundary");
        // The bytes are in the file where the table says.
        let other = GuestMemory::from_frontend(vec![(
            FrontendRegion {
                gpa: 0,
                size: 0x10_000,
                va: 0,
                mmap_offset: 0,
            },
            fd(&file),
        )])
        .expect("whole file");
        let mut b = [0u8; 3];
        other.read_gpa(0x8000 + 0x4000 - 3, &mut b).expect("read");
        assert_eq!(&b, b"abc");
        other.read_gpa(0x2010, &mut b).expect("read");
        assert_eq!(&b, b"def");
        assert_eq!(m.va_to_gpa(0x7f00_0000_1010, 0x10).ok(), Some(0x4010));
        // The file's tail past the last region is not guest memory.
        assert!(m.translate(0x5800, 1).is_err());
    }

    #[test]
    fn hostile_frontend_tables_are_errors_not_panics() {
        let file = memfd(0x4000).expect("memfd");
        let one = |r: FrontendRegion| vec![(r, file.try_clone().expect("dup"))];
        let r = |gpa, size, va, mmap_offset| FrontendRegion {
            gpa,
            size,
            va,
            mmap_offset,
        };
        let bad = |t: Vec<(FrontendRegion, File)>| GuestMemory::from_frontend(t).err();
        assert!(matches!(bad(Vec::new()), Some(MemError::NoRegions)));
        assert!(matches!(
            bad(one(r(0, 0, 0, 0))),
            Some(MemError::EmptyRegion { index: 0 })
        ));
        assert!(matches!(
            bad(one(r(0, 0x4001, 0, 0))),
            Some(MemError::FileRange { .. })
        ));
        // Named by its place in the table, whatever order the mapping takes.
        let mut two = one(r(0, 0x1000, 0x9000, 0));
        two.extend(one(r(0x1000, 0x1000, 0x1000, 0x3800)));
        assert!(matches!(
            bad(two),
            Some(MemError::FileRange { index: 1, .. })
        ));
        assert!(matches!(
            bad(one(r(0, 0x1000, 0, 0x3001))),
            Some(MemError::FileRange { .. })
        ));
        assert!(matches!(
            bad(one(r(0, 0x1000, 0, u64::MAX - 0x10))),
            Some(MemError::FileRange { .. })
        ));
        assert!(matches!(
            bad(one(r(u64::MAX - 0xfff, 0x1000, 0, 0))),
            Some(MemError::Overflow { .. })
        ));
        assert!(matches!(
            bad(one(r(0, 0x1000, u64::MAX - 0xffe, 0))),
            Some(MemError::VaOverflow { .. })
        ));
        let mut two = one(r(0, 0x2000, 0x10_000, 0));
        two.extend(one(r(0x1000, 0x1000, 0x20_000, 0)));
        assert!(matches!(bad(two), Some(MemError::GpaOverlap { .. })));
        let mut two = one(r(0, 0x1000, 0x10_000, 0));
        two.extend(one(r(0x1000, 0x1000, 0x10_800, 0)));
        assert!(matches!(bad(two), Some(MemError::VaOverlap { .. })));
        let many: Vec<_> = (0..=MAX_REGIONS as u64)
            .flat_map(|i| one(r(i * 0x1000, 0x1000, i * 0x1000, 0)))
            .collect();
        assert!(matches!(bad(many), Some(MemError::TooManyRegions { .. })));
        // An fd that is not a file that can be mapped.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let sock = File::from(OwnedFd::from(a));
        assert!(bad(vec![(r(0, 0x1000, 0, 0), sock)]).is_some());
    }

    #[test]
    fn neighbouring_regions_apart_in_the_mapping_split_a_range() {
        let m = GuestMemory::new_regions(&[
            RegionSpec {
                gpa: 0,
                len: 0x1000,
            },
            RegionSpec {
                gpa: 0x1000,
                len: 0x1000,
            },
            RegionSpec {
                gpa: 0x3000,
                len: 0x1000,
            },
        ])
        .expect("memory");
        let data: Vec<u8> = (0..64).collect();
        m.write_gpa(0x1000 - 16, &data).expect("write across");
        let mut back = [0u8; 64];
        m.read_gpa(0x1000 - 16, &mut back).expect("read across");
        assert_eq!(&back[..], &data[..]);
        assert!(matches!(
            m.translate(0x1000 - 16, 64),
            Err(MemError::Unmapped { .. })
        ));
        let segs: Vec<Span> = m
            .segments(0x1000 - 16, 64)
            .map(|s| s.expect("mapped"))
            .collect();
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].len, segs[1].len), (16, 48));
        // Not neighbours in the mapping: reading the range as one span would be wrong.
        assert_ne!(segs[0].off + segs[0].len, segs[1].off);
        // Into the hole: an error, and a write changes nothing.
        assert!(m.write_gpa(0x2000 - 8, &[0xff; 16]).is_err());
        let mut b = [0u8; 8];
        m.read_gpa(0x2000 - 8, &mut b).expect("read");
        assert_eq!(b, [0; 8]);
        let segs: Vec<_> = m.segments(0x2000 - 8, 16).collect();
        assert!(matches!(
            segs[..],
            [
                Ok(_),
                Err(MemError::Unmapped {
                    gpa: 0x2000,
                    len: 8
                })
            ]
        ));
        assert_eq!(m.host_regions().count(), 3);
    }
}
