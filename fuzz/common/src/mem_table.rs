//! Guest memory from a hostile vhost-user memory table (`VHOST_USER_SET_MEM_TABLE`).
//!
//! The input is a table of up to [`MAX_TABLE`] regions — guest-physical address, size,
//! frontend address, offset into one of two files (a 64 KiB memfd, and one of 20 KiB + 7
//! bytes, whose last page is partly past its end) — each value drawn relative to the previous
//! region (so regions are often adjacent, overlapping or just apart) or raw; then probes.
//! [`replay`] hands the table to `GuestMemory::from_frontend` and checks it against a model of
//! its own:
//!
//! - the table is accepted exactly when the model finds it valid (1..=`MAX_REGIONS` regions,
//!   none empty, no guest-physical, frontend or file range that wraps, no two regions
//!   overlapping in guest-physical or in frontend space, every region inside its file); a
//!   refused one is a table error, never an I/O error (nothing is mapped for it) or a panic;
//! - accepted: `regions()` is the table in guest-physical order; each region translates whole,
//!   its frontend range to its guest-physical one, and a write at its middle lands in its file
//!   at `mmap_offset` plus the same distance;
//! - every probe: `translate` succeeds exactly for a range inside one region, `segments` covers
//!   exactly the ranges whose every byte is in some region (one segment per region crossed,
//!   each inside one region of the mapping), `read_gpa` reads what the files hold at those
//!   bytes, and `va_to_gpa` succeeds exactly for a frontend range inside one region, with the
//!   model's address.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;

use arbitrary::{Arbitrary, Unstructured};
use vring::memory::MAX_REGIONS;
use vring::{FrontendRegion, GuestMemory, MemError, RegionSpec};

/// Most regions an input's table has.
pub const MAX_TABLE: usize = 12;
/// Most probes run per input.
pub const MAX_PROBES: usize = 32;
/// Most bytes a probe reads and compares.
const MAX_READ: u64 = 4096;
/// The two files' lengths.
pub const FILE_LENS: [u64; 2] = [0x1_0000, 0x5007];

/// An address, placed against the previous region (or 0 for the first).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Place {
    /// `gap` bytes after the previous region's end (0: adjacent).
    After(u16),
    /// `back` bytes before the previous region's end (overlapping it when `back > 0`).
    Before(u16),
    /// `n` pages from 0.
    Pages(u16),
    /// Anywhere.
    Raw(u64),
}

/// A length or file offset.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    /// `n` pages.
    Pages(u8),
    /// `n` bytes.
    Bytes(u16),
    /// Anything.
    Raw(u64),
}

/// One table entry.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RegionIn {
    /// Guest-physical address.
    pub gpa: Place,
    /// Size.
    pub size: Size,
    /// Frontend address.
    pub va: Place,
    /// Offset into its file.
    pub offset: Size,
    /// Which file (the second when set).
    pub second_file: bool,
}

/// An address a probe starts at.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum At {
    /// `off` bytes into region `i` (mod the table's length): often inside, at an edge or
    /// just past one.
    Region {
        /// Which region.
        i: u8,
        /// How far into it (past its end too).
        off: u16,
    },
    /// `back` bytes before the end of region `i`.
    End {
        /// Which region.
        i: u8,
        /// How far before its end.
        back: u16,
    },
    /// Anywhere.
    Raw(u64),
}

/// One probe: a guest-physical range and a frontend range.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Probe {
    /// Where the range starts (in guest-physical space, and the same place in frontend space).
    pub at: At,
    /// Its length.
    pub len: Size,
}

/// One run of the `mem_table` target.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// The table (the first `MAX_TABLE` entries).
    pub table: Vec<RegionIn>,
    /// The probes (the first `MAX_PROBES`).
    pub probes: Vec<Probe>,
}

thread_local! {
    /// The two files, made once (a fresh memfd per run would dominate its time).
    static FILES: RefCell<Option<[File; 2]>> = const { RefCell::new(None) };
}

fn files() -> [File; 2] {
    FILES.with(|f| {
        let mut f = f.borrow_mut();
        let [a, b] = f.get_or_insert_with(|| {
            // Two memfds from vring (this crate makes none itself), kept by their fds; the
            // mapping that made them is gone before the second is cut to a length that is not
            // a whole number of pages.
            let m = GuestMemory::new_regions(&[
                RegionSpec {
                    gpa: 0,
                    len: FILE_LENS[0],
                },
                RegionSpec {
                    gpa: 0x100_0000,
                    len: FILE_LENS[1].next_multiple_of(4096),
                },
            ])
            .expect("memfds");
            let mut fds = m
                .frontend_regions()
                .into_iter()
                .map(|(_, fd)| File::from(fd.try_clone_to_owned().expect("dup")));
            let (a, b) = (fds.next().expect("first"), fds.next().expect("second"));
            drop(m);
            b.set_len(FILE_LENS[1]).expect("cut the second file");
            [a, b]
        });
        [a.try_clone().expect("dup"), b.try_clone().expect("dup")]
    })
}

impl Size {
    fn get(self) -> u64 {
        match self {
            Size::Pages(n) => n as u64 * 4096,
            Size::Bytes(n) => n as u64,
            Size::Raw(v) => v,
        }
    }
}

impl Place {
    /// The address, against the end of the previous region (`prev_end`).
    fn get(self, prev_end: u64) -> u64 {
        match self {
            Place::After(gap) => prev_end.wrapping_add(gap as u64),
            Place::Before(back) => prev_end.wrapping_sub(back as u64),
            Place::Pages(n) => n as u64 * 4096,
            Place::Raw(v) => v,
        }
    }
}

/// A table entry resolved, with its file's length.
#[derive(Clone, Copy, Debug)]
struct Entry {
    r: FrontendRegion,
    file: usize,
}

/// The model: whether the table is valid.
fn valid(t: &[Entry]) -> bool {
    let n = t.len();
    if n == 0 || n > MAX_REGIONS {
        return false;
    }
    let ok_one = |e: &Entry| {
        let r = e.r;
        r.size > 0
            && r.gpa.checked_add(r.size).is_some()
            && r.va.checked_add(r.size).is_some()
            && r.mmap_offset
                .checked_add(r.size)
                .is_some_and(|end| end <= FILE_LENS[e.file])
    };
    if !t.iter().all(ok_one) {
        return false;
    }
    // Pairwise, with no sorting: two ranges overlap when each starts before the other ends.
    let overlap = |a: u64, b: u64, size_a: u64, size_b: u64| a < b + size_b && b < a + size_a;
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (t[i].r, t[j].r);
            if overlap(a.gpa, b.gpa, a.size, b.size) || overlap(a.va, b.va, a.size, b.size) {
                return false;
            }
        }
    }
    true
}

/// The entry holding guest-physical byte `g`.
fn holding(t: &[Entry], g: u64) -> Option<&Entry> {
    t.iter().find(|e| e.r.gpa <= g && g - e.r.gpa < e.r.size)
}

/// Whether `[gpa, gpa + len)` is inside one entry (a zero-length range at an entry's end too).
fn inside_one(t: &[Entry], gpa: u64, len: u64) -> bool {
    gpa.checked_add(len).is_some_and(|end| {
        t.iter()
            .any(|e| e.r.gpa <= gpa && end <= e.r.gpa + e.r.size)
    })
}

/// Whether every byte of `[gpa, gpa + len)` is in some entry.
fn covered(t: &[Entry], gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    let mut at = gpa;
    while at < end {
        match holding(t, at) {
            Some(e) => at = e.r.gpa + e.r.size,
            None => return false,
        }
    }
    true
}

/// What the files hold at guest-physical `[gpa, gpa + len)` (all of it covered).
fn file_bytes(t: &[Entry], files: &[File; 2], gpa: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let mut at = 0u64;
    while at < len {
        let g = gpa + at;
        let e = holding(t, g).expect("covered");
        let n = (e.r.gpa + e.r.size - g).min(len - at);
        files[e.file]
            .read_exact_at(
                &mut out[at as usize..(at + n) as usize],
                e.r.mmap_offset + (g - e.r.gpa),
            )
            .expect("pread");
        at += n;
    }
    out
}

/// What a replay did, so a test can check its input reached its case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `from_frontend` accepted the table.
    pub accepted: bool,
    /// Probes whose range was mapped across more than one region.
    pub across: usize,
}

/// Builds memory from the input's table and checks it and every probe against the model.
///
/// # Panics
///
/// When an oracle does not hold: a bug found.
pub fn replay(input: &Input) -> Outcome {
    let files = files();
    let mut table = Vec::new();
    let (mut gpa_end, mut va_end) = (0u64, 0u64);
    for e in input.table.iter().take(MAX_TABLE) {
        let size = e.size.get();
        let r = FrontendRegion {
            gpa: e.gpa.get(gpa_end),
            size,
            va: e.va.get(va_end),
            mmap_offset: e.offset.get(),
        };
        gpa_end = r.gpa.wrapping_add(size);
        va_end = r.va.wrapping_add(size);
        table.push(Entry {
            r,
            file: usize::from(e.second_file),
        });
    }
    let sent = table
        .iter()
        .map(|e| (e.r, files[e.file].try_clone().expect("dup")))
        .collect();
    let mem = match (GuestMemory::from_frontend(sent), valid(&table)) {
        (Ok(m), true) => m,
        (Err(e), false) => {
            assert!(
                !matches!(e, MemError::Io(_)),
                "a bad table reached mmap: {e:?} for {table:?}"
            );
            return Outcome::default();
        }
        (Ok(_), false) => panic!("a bad table was accepted: {table:?}"),
        (Err(e), true) => panic!("a good table was refused: {e:?} for {table:?}"),
    };
    let mut want: Vec<RegionSpec> = table
        .iter()
        .map(|e| RegionSpec {
            gpa: e.r.gpa,
            len: e.r.size,
        })
        .collect();
    want.sort_by_key(|r| r.gpa);
    assert_eq!(mem.regions(), want);
    let mut out = Outcome {
        accepted: true,
        across: 0,
    };
    for (k, e) in table.iter().enumerate() {
        let r = e.r;
        let s = mem
            .translate(r.gpa, r.size)
            .expect("a region translates whole");
        assert_eq!(s.len as u64, r.size);
        assert_eq!(mem.va_to_gpa(r.va, r.size).ok(), Some(r.gpa));
        // Its last byte and the next one are never inside one region.
        assert!(mem.va_to_gpa(r.va + r.size - 1, 2).is_err());
        // A write lands in the file where the table says.
        let mid = (r.size - 1) / 2;
        let n = (r.size - mid).min(8) as usize;
        let mark = [k as u8 ^ 0x5a, 1, 2, 3, 4, 5, 6, 7];
        mem.write_gpa(r.gpa + mid, &mark[..n]).expect("write");
        let mut back = [0u8; 8];
        files[e.file]
            .read_exact_at(&mut back[..n], r.mmap_offset + mid)
            .expect("pread");
        assert_eq!(back[..n], mark[..n], "region {k} maps its file elsewhere");
    }
    for p in input.probes.iter().take(MAX_PROBES) {
        let pick = |i: u8| &table[i as usize % table.len()];
        let gpa = match p.at {
            At::Region { i, off } => pick(i).r.gpa.wrapping_add(off as u64),
            At::End { i, back } => {
                let r = pick(i).r;
                (r.gpa + r.size).wrapping_sub(back as u64)
            }
            At::Raw(v) => v,
        };
        let len = p.len.get();
        assert_eq!(
            mem.translate(gpa, len).is_ok(),
            inside_one(&table, gpa, len),
            "translate({gpa:#x}, {len:#x})"
        );
        let cov = covered(&table, gpa, len);
        let mut total = 0u64;
        let mut failed = false;
        for s in mem.segments(gpa, len) {
            match s {
                Ok(s) => {
                    assert!(!failed && s.len > 0);
                    assert!(
                        mem.host_regions()
                            .any(|r| s.off >= r.off && s.off + s.len <= r.off + r.len),
                        "segment {s:?} not inside one region"
                    );
                    total += s.len as u64;
                }
                Err(_) => failed = true,
            }
        }
        assert_eq!(!failed, cov, "segments({gpa:#x}, {len:#x})");
        if cov && !inside_one(&table, gpa, len) {
            out.across += 1;
        }
        if cov {
            assert_eq!(total, len, "segments({gpa:#x}, {len:#x}) cover {total:#x}");
            let n = len.min(MAX_READ);
            let mut got = vec![0u8; n as usize];
            mem.read_gpa(gpa, &mut got).expect("read a covered range");
            assert_eq!(
                got,
                file_bytes(&table, &files, gpa, n),
                "read_gpa({gpa:#x})"
            );
        } else if len <= MAX_READ {
            let mut got = vec![0u8; len as usize];
            assert!(
                mem.read_gpa(gpa, &mut got).is_err(),
                "read_gpa({gpa:#x}, {len:#x})"
            );
            assert!(
                mem.write_gpa(gpa, &got).is_err(),
                "write_gpa({gpa:#x}, {len:#x})"
            );
        }
        // The same place in frontend space.
        let va = match p.at {
            At::Region { i, off } => pick(i).r.va.wrapping_add(off as u64),
            At::End { i, back } => {
                let r = pick(i).r;
                (r.va + r.size).wrapping_sub(back as u64)
            }
            At::Raw(v) => v,
        };
        // The region holding the byte at `va`; for a zero-length range at the end of one region
        // and the start of the next, the next (as for guest-physical addresses).
        let model = va.checked_add(len).and_then(|end| {
            let holds = |e: &&Entry| e.r.va <= va && va - e.r.va < e.r.size;
            let ends_at = |e: &&Entry| len == 0 && e.r.va + e.r.size == va;
            let e = table
                .iter()
                .find(holds)
                .or_else(|| table.iter().find(ends_at))?;
            (end <= e.r.va + e.r.size).then(|| e.r.gpa + (va - e.r.va))
        });
        assert_eq!(
            mem.va_to_gpa(va, len).ok(),
            model,
            "va_to_gpa({va:#x}, {len:#x})"
        );
    }
    out
}

/// Decodes `data` as `libfuzzer-sys` does for the fuzz target and replays it; `false` when
/// the bytes do not decode.
///
/// # Panics
///
/// As [`replay`].
pub fn replay_bytes(data: &[u8]) -> bool {
    if data.len() < Input::size_hint(0).0 {
        return false;
    }
    match Input::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => {
            replay(&input);
            true
        }
        Err(_) => false,
    }
}
