//! The host side of guest memory: one reserved range of this process's address space, with
//! each region's file mapped shared into its place (`MAP_FIXED`). Every byte of the range is
//! mapped for as long as the [`Mapping`] lives — a region's file pages, or private zero pages
//! where nothing else goes (alignment gaps, a slot's tail past its file's end) — so a bounds
//! check against the whole range is all an access needs, however many regions there are.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr;

/// A reserved, fully mapped range of the address space; unmapped on drop.
#[derive(Debug)]
pub(super) struct Mapping {
    /// The usable range: `len` bytes from `base`, aligned as asked.
    base: *mut u8,
    len: usize,
    /// What `mmap` returned, to unmap (the usable range plus alignment slack).
    raw: *mut libc::c_void,
    raw_len: usize,
}

// SAFETY: `Mapping` owns its range of the address space; the raw pointers are addresses, not
// borrowed data, and stay valid until drop whichever thread holds or drops them.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` hands out only the addresses. The one user, `GuestMemory`, accesses the
// bytes behind them only by copies, volatile and atomic accesses and never forms a reference
// to them: concurrent use from several threads is the same as the guest's concurrent use from
// another process, which the accesses are written for.
unsafe impl Sync for Mapping {}

/// The system's page size.
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// The alignment `mmap` needs for `file`'s offsets and fixed addresses: its huge page size on
/// hugetlbfs, the page size elsewhere.
pub(super) fn file_alignment(file: &File) -> io::Result<usize> {
    const HUGETLBFS_MAGIC: libc::c_long = 0x9584_58f6;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `fs` is a writable statfs for the call's duration; the fd is valid (borrowed
    // from `file`).
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled the struct (and it started zeroed).
    let fs = unsafe { fs.assume_init() };
    let page = page_size();
    if fs.f_type as libc::c_long == HUGETLBFS_MAGIC {
        let huge = usize::try_from(fs.f_bsize).unwrap_or(page);
        if huge.is_power_of_two() && huge > page {
            return Ok(huge);
        }
    }
    Ok(page)
}

impl Mapping {
    /// Reserves `len` bytes (`len > 0`) aligned to `align` (a power of two, at least a page),
    /// all of it private anonymous read-write memory that takes no space until touched
    /// (`MAP_NORESERVE`).
    pub(super) fn reserve(len: usize, align: usize) -> io::Result<Mapping> {
        let slack = align.saturating_sub(page_size());
        let raw_len = len
            .checked_add(slack)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks: no existing memory
        // is affected. The result is checked before use.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                raw_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let skip = (raw as usize).next_multiple_of(align) - raw as usize;
        Ok(Mapping {
            // `skip <= slack`, so the usable range is inside the reservation.
            base: (raw as *mut u8).wrapping_add(skip),
            len,
            raw,
            raw_len,
        })
    }

    /// Maps `len` bytes of `file` from `offset`, shared, over `[at, at + len)` of the range.
    /// `at` and `offset` must be aligned as `mmap` requires for `file`; the range must hold
    /// the bytes (checked).
    pub(super) fn map_file(
        &self,
        at: usize,
        len: usize,
        file: &File,
        offset: u64,
    ) -> io::Result<()> {
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let addr = self.base.wrapping_add(at);
        // SAFETY: `[addr, addr + len)` is inside the range this `Mapping` reserved (checked
        // above) and owns: `MAP_FIXED` replaces only our own pages there, never memory anyone
        // else holds. Nothing holds a reference into guest memory (accesses are copies,
        // volatile or atomic), so no live Rust reference sees the pages change.
        let p = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The start of the usable range.
    #[inline(always)]
    pub(super) fn base(&self) -> *mut u8 {
        self.base
    }

    /// Its length.
    #[inline(always)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `raw`/`raw_len` is the reservation made in `reserve`, file mappings included
        // (they replaced parts of it); nothing uses it after drop.
        unsafe { libc::munmap(self.raw, self.raw_len) };
    }
}
