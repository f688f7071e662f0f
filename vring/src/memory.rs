//! Guest memory: a memfd, mapped once, described by a table of guest-physical regions.
//!
//! This module owns every `unsafe` access to guest memory in the workspace. The rules it keeps:
//!
//! - The mapping lives as long as the [`GuestMemory`]; it is never resized or remapped.
//! - Nobody gets a `&`/`&mut` to guest bytes. Bulk data moves by copy into or out of the
//!   caller's own buffers; ring fields are read and written with volatile or atomic accesses.
//!   The only references handed out are to atomics (`&AtomicU16`/`&AtomicU32`-like loads and
//!   stores done here), which are defined for memory another party writes concurrently.
//! - Every access is bounds-checked against the mapping, so a wrong offset is an error, never
//!   an access outside the mapping.
//! - Guest-physical addresses are translated with overflow checks ([`GuestMemory::translate`]);
//!   a range must lie inside one region (holes between regions are unmapped).
//!
//! Like `VHOST_SET_MEM_TABLE`, the table is a list of `(guest_phys_addr, size)` regions; here
//! they are laid out back to back in one memfd, so another process can map the same memory by
//! receiving the fd and the table.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// Page size regions are aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// One guest-physical range in the region table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// First guest-physical address of the region.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Errors from building or accessing guest memory.
#[derive(Debug, thiserror::Error, Clone)]
pub enum MemError {
    /// The region table is empty, or a region is empty, unaligned or overlaps another.
    #[error("bad region table: {0}")]
    BadRegions(&'static str),
    /// `gpa + len` overflows the 64-bit address space.
    #[error("address range {gpa:#x}+{len:#x} overflows")]
    Overflow { gpa: u64, len: u64 },
    /// The range is not inside one region (it is in a hole, past the end, or straddles two).
    #[error("address range {gpa:#x}+{len:#x} is not inside one memory region")]
    Unmapped { gpa: u64, len: u64 },
    /// A host offset/length pair does not lie inside the mapping.
    #[error("host range {off:#x}+{len:#x} is outside the mapping")]
    HostRange { off: usize, len: usize },
    /// A ring field is not aligned for its atomic access.
    #[error("host offset {0:#x} is misaligned for an atomic access")]
    Misaligned(usize),
    /// Creating, sizing or mapping the memfd failed.
    #[error("memfd setup failed")]
    Io(#[source] std::sync::Arc<std::io::Error>),
}

impl From<std::io::Error> for MemError {
    fn from(e: std::io::Error) -> Self {
        MemError::Io(std::sync::Arc::new(e))
    }
}

/// A range of the mapping, produced by [`GuestMemory::translate`] and therefore inside it.
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

#[derive(Clone, Copy, Debug)]
struct Region {
    gpa: u64,
    /// One past the last guest-physical address.
    end: u64,
    /// Where the region starts in the mapping.
    host_off: usize,
}

/// Guest memory: a memfd mapped shared, plus the region table that maps guest-physical
/// addresses onto it.
#[derive(Debug)]
pub struct GuestMemory {
    file: File,
    map: MmapRaw,
    regions: Box<[Region]>,
}

impl GuestMemory {
    /// Creates a memfd holding `regions` back to back and maps it.
    pub fn new(regions: &[RegionSpec]) -> Result<Self, MemError> {
        let table = Self::check_table(regions)?;
        let total: u64 = regions.iter().map(|r| r.len).sum();
        let name = c"vhostbench-guest";
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other
        // preconditions. The returned fd is checked before use.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `fd` was just returned by memfd_create, is valid, and nobody else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(total)?;
        Self::map(file, table)
    }

    /// Maps an existing memory fd (for example one received from another process) with the
    /// given region table. The file must be at least as long as the regions together.
    pub fn from_file(file: File, regions: &[RegionSpec]) -> Result<Self, MemError> {
        let table = Self::check_table(regions)?;
        Self::map(file, table)
    }

    fn check_table(regions: &[RegionSpec]) -> Result<Box<[Region]>, MemError> {
        if regions.is_empty() {
            return Err(MemError::BadRegions("no regions"));
        }
        let mut sorted: Vec<RegionSpec> = regions.to_vec();
        sorted.sort_by_key(|r| r.gpa);
        let mut out = Vec::with_capacity(sorted.len());
        let mut host_off: u64 = 0;
        let mut prev_end: u64 = 0;
        for (i, r) in sorted.iter().enumerate() {
            if r.len == 0 {
                return Err(MemError::BadRegions("empty region"));
            }
            if !r.gpa.is_multiple_of(PAGE_SIZE) || !r.len.is_multiple_of(PAGE_SIZE) {
                return Err(MemError::BadRegions("region not page aligned"));
            }
            let end = r.gpa.checked_add(r.len).ok_or(MemError::Overflow {
                gpa: r.gpa,
                len: r.len,
            })?;
            if i > 0 && r.gpa < prev_end {
                return Err(MemError::BadRegions("overlapping regions"));
            }
            let host = usize::try_from(host_off)
                .map_err(|_| MemError::BadRegions("regions too large for this host"))?;
            out.push(Region {
                gpa: r.gpa,
                end,
                host_off: host,
            });
            host_off = host_off
                .checked_add(r.len)
                .ok_or(MemError::BadRegions("regions too large"))?;
            prev_end = end;
        }
        Ok(out.into_boxed_slice())
    }

    fn map(file: File, regions: Box<[Region]>) -> Result<Self, MemError> {
        let total = regions
            .last()
            .map(|r| r.host_off as u64 + (r.end - r.gpa))
            .unwrap_or(0);
        let total = usize::try_from(total).map_err(|_| MemError::BadRegions("too large"))?;
        if file.metadata()?.len() < total as u64 {
            return Err(MemError::BadRegions("file shorter than the region table"));
        }
        let map = MmapOptions::new().len(total).map_raw(&file)?;
        Ok(GuestMemory { file, map, regions })
    }

    /// The memfd, to hand to another process together with [`GuestMemory::regions`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The raw memfd number (for diagnostics).
    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The region table.
    pub fn regions(&self) -> Vec<RegionSpec> {
        self.regions
            .iter()
            .map(|r| RegionSpec {
                gpa: r.gpa,
                len: r.end - r.gpa,
            })
            .collect()
    }

    /// Total mapped bytes.
    pub fn mapped_len(&self) -> usize {
        self.map.len()
    }

    /// Translates the guest-physical range `[gpa, gpa + len)` to a [`Span`] of the mapping.
    ///
    /// Fails if the range overflows or is not inside one region. A zero-length range is
    /// valid anywhere inside a region or at its end.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Result<Span, MemError> {
        let end = gpa
            .checked_add(len)
            .ok_or(MemError::Overflow { gpa, len })?;
        for r in self.regions.iter() {
            if gpa >= r.gpa && end <= r.end {
                // Both fit in usize: the region's bytes are all inside the mapping.
                return Ok(Span {
                    off: r.host_off + (gpa - r.gpa) as usize,
                    len: len as usize,
                });
            }
        }
        Err(MemError::Unmapped { gpa, len })
    }

    #[inline]
    fn check(&self, off: usize, len: usize) -> Result<*mut u8, MemError> {
        // `off <= map.len() - len` rather than `off + len <= map.len()`: the same test without
        // the overflow check, and with `len` a constant (the fixed-size accessors) the
        // subtraction folds into one compare.
        match self.map.len().checked_sub(len) {
            Some(last) if off <= last => {
                // SAFETY: `off + len <= map.len()`, so the result stays inside (or one past
                // the end of) the mapping's allocation.
                Ok(unsafe { self.map.as_mut_ptr().add(off) })
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
        (off < self.map.len()).then(|| self.map.as_ptr().wrapping_add(off))
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

    /// Reads guest-physical memory into `dst`.
    pub fn read_gpa(&self, gpa: u64, dst: &mut [u8]) -> Result<(), MemError> {
        let span = self.translate(gpa, dst.len() as u64)?;
        self.read_at(span.off, dst)
    }

    /// Writes `src` to guest-physical memory.
    pub fn write_gpa(&self, gpa: u64, src: &[u8]) -> Result<(), MemError> {
        let span = self.translate(gpa, src.len() as u64)?;
        self.write_at(span.off, src)
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

    #[test]
    fn second_mapping_of_the_fd_sees_the_same_bytes() {
        let m = two_regions();
        let file = File::from(m.fd().try_clone_to_owned().expect("dup"));
        let other = GuestMemory::from_file(file, &m.regions()).expect("map");
        m.write_gpa(0x10_0100, b"shared").expect("write");
        let mut out = [0u8; 6];
        other.read_gpa(0x10_0100, &mut out).expect("read");
        assert_eq!(&out, b"shared");
    }
}
