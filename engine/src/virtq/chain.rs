//! Walking a descriptor chain (virtio 1.2 §2.7.5) into host segments, with every check a
//! hostile guest needs.
//!
//! Each descriptor is read once, as 16 bytes, into a local copy: the guest may rewrite the table
//! while we walk it, and nothing we decide is based on a second read. Chains get a TTL (the
//! table size) so a loop ends in [`QueueError::ChainLoop`]; lengths are summed in 64 bits and
//! checked against 2^32 - 1; every address is translated with overflow checks.
//!
//! A buffer may cross from one memory region into the next (one memory backend per NUMA node,
//! hot-plugged DIMMs): like Linux `translate_desc`, it becomes one segment per region, and so
//! may an indirect table, whose descriptors are then read by guest-physical address. A range
//! with any byte in a hole, or past the last region, is [`QueueError::BadAddress`]. Every
//! segment counts against [`MAX_SEGMENTS`], so a guest splitting its buffers cannot make the
//! device allocate without bound.

use vring::layout::{Descriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use vring::{GuestMemory, Span};

use super::error::QueueError;

/// The most segments one chain may have: Linux's `UIO_MAXIOV` (1024) plus `VHOST_NET_BATCH`
/// (64) of headroom, the iov array size of `vhost_net`.
pub const MAX_SEGMENTS: usize = 1024 + 64;

/// A popped descriptor chain, as host segments: the device-readable ones first, then the
/// device-writable ones (§2.7.4.2 requires that order). A descriptor gives one segment per
/// memory region its buffer lies in (none when it is empty).
///
/// The segment vector is reused across pops, so the hot path does not allocate.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    head: u16,
    segs: Vec<Span>,
    n_readable: usize,
    read_len: u32,
    write_len: u32,
    descriptors: u32,
    /// A device-writable descriptor was seen (even a zero-length one, which adds no segment).
    seen_write: bool,
}

impl Chain {
    /// An empty chain with room for `cap` segments.
    pub fn with_capacity(cap: usize) -> Self {
        Chain {
            segs: Vec::with_capacity(cap),
            ..Default::default()
        }
    }

    /// Head index, to return in the used ring.
    #[inline]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The device-readable segments.
    #[inline]
    pub fn readable(&self) -> &[Span] {
        &self.segs[..self.n_readable]
    }

    /// The device-writable segments.
    #[inline]
    pub fn writable(&self) -> &[Span] {
        &self.segs[self.n_readable..]
    }

    /// Total device-readable bytes.
    #[inline]
    pub fn readable_len(&self) -> u32 {
        self.read_len
    }

    /// Total device-writable bytes.
    #[inline]
    pub fn writable_len(&self) -> u32 {
        self.write_len
    }

    /// How many descriptors the chain used (indirect tables counted by their entries).
    #[inline]
    pub fn descriptors(&self) -> u32 {
        self.descriptors
    }

    /// Copies readable bytes, starting `skip` bytes into the readable part, into `dst`.
    /// Returns how many bytes were copied (less than `dst.len()` if the chain is shorter).
    #[inline]
    pub fn read_into(&self, mem: &GuestMemory, skip: usize, dst: &mut [u8]) -> usize {
        if let [s] = self.readable() {
            // One readable segment, the usual TX chain: no segment walk.
            let n = s.len.saturating_sub(skip).min(dst.len());
            return match n > 0 && mem.read_at(s.off + skip, &mut dst[..n]).is_ok() {
                true => n,
                false => 0,
            };
        }
        read_iov(mem, self.readable(), skip, dst)
    }

    /// Copies `src` into the writable part, starting `skip` bytes in. Returns how many bytes
    /// were written (less than `src.len()` if the chain is shorter).
    pub fn write_from(&self, mem: &GuestMemory, skip: usize, src: &[u8]) -> usize {
        write_iov(mem, self.writable(), skip, src)
    }

    /// The readable segments from byte `skip` on (for example the frame after the net header).
    pub fn readable_from(&self, skip: usize) -> impl Iterator<Item = Span> + '_ {
        skip_spans(self.readable(), skip)
    }

    /// The writable segments from byte `skip` on.
    pub fn writable_from(&self, skip: usize) -> impl Iterator<Item = Span> + '_ {
        skip_spans(self.writable(), skip)
    }

    fn reset(&mut self, head: u16) {
        self.head = head;
        self.segs.clear();
        self.n_readable = 0;
        self.read_len = 0;
        self.write_len = 0;
        self.descriptors = 0;
        self.seen_write = false;
    }
}

fn skip_spans(spans: &[Span], mut skip: usize) -> impl Iterator<Item = Span> + '_ {
    spans.iter().filter_map(move |s| {
        if skip >= s.len {
            skip -= s.len;
            return None;
        }
        let out = Span {
            off: s.off + skip,
            len: s.len - skip,
        };
        skip = 0;
        Some(out)
    })
}

/// Copies from the segments `iov`, starting `skip` bytes in, into `dst`. Returns the bytes
/// copied (fewer than `dst.len()` if the segments are shorter).
pub fn read_iov(mem: &GuestMemory, iov: &[Span], skip: usize, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for s in skip_spans(iov, skip) {
        let n = s.len.min(dst.len() - done);
        if n == 0 || mem.read_at(s.off, &mut dst[done..done + n]).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// Copies `src` into the segments `iov`, starting `skip` bytes in. Returns the bytes written
/// (fewer than `src.len()` if the segments are shorter).
///
/// The one-segment case (the usual RX buffer) is inlined into the caller; more segments go
/// through an out-of-line loop.
#[inline]
pub fn write_iov(mem: &GuestMemory, iov: &[Span], skip: usize, src: &[u8]) -> usize {
    if let [s] = iov {
        let n = s.len.saturating_sub(skip).min(src.len());
        return match n > 0 && mem.write_at(s.off + skip, &src[..n]).is_ok() {
            true => n,
            false => 0,
        };
    }
    write_iov_segments(mem, iov, skip, src)
}

#[inline(never)]
fn write_iov_segments(mem: &GuestMemory, iov: &[Span], skip: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for s in skip_spans(iov, skip) {
        let n = s.len.min(src.len() - done);
        if n == 0 || mem.write_at(s.off, &src[done..done + n]).is_err() {
            break;
        }
        done += n;
    }
    done
}

/// What the walk needs to know about the queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    /// Host offset of the descriptor table.
    pub off: usize,
    /// Entries in it.
    pub size: u16,
    /// `VIRTIO_F_RING_INDIRECT_DESC` negotiated.
    pub indirect: bool,
}

/// Walks the chain starting at `head` into `chain`.
#[inline(always)]
pub(crate) fn walk(
    mem: &GuestMemory,
    table: Table,
    head: u16,
    chain: &mut Chain,
) -> Result<(), QueueError> {
    chain.reset(head);
    if head >= table.size {
        return Err(QueueError::HeadOutOfRange {
            head,
            size: table.size,
        });
    }
    let d = read_desc(mem, table.off, head)?;
    if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT) == 0 {
        // The common case, one direct descriptor. Of `push`'s checks only the translation is
        // left: one length cannot pass the 2^32 total, nothing comes before it, and one
        // segment is within MAX_SEGMENTS.
        chain.descriptors = 1;
        let write = d.is_write_only();
        if write {
            chain.write_len = d.len;
            chain.seen_write = true;
        } else {
            chain.read_len = d.len;
        }
        if d.len == 0 {
            return Ok(());
        }
        return match mem.translate(d.addr, d.len as u64) {
            Ok(span) => {
                chain.segs.push(span);
                chain.n_readable = usize::from(!write);
                Ok(())
            }
            Err(_) => push_split(mem, d, chain),
        };
    }
    walk_linked(mem, table, d, chain)
}

/// The rest of [`walk`]: a chain whose head descriptor `first` links on or is indirect.
#[inline(always)]
fn walk_linked(
    mem: &GuestMemory,
    table: Table,
    first: Descriptor,
    chain: &mut Chain,
) -> Result<(), QueueError> {
    let head = chain.head;
    let mut total: u64 = 0;
    let mut d = first;
    // TTL: a chain in the main table has at most `size` descriptors (Linux: "Loop detected").
    // The head is the first of them.
    let mut ttl = table.size as u32 - 1;
    loop {
        if d.is_indirect() {
            if !table.indirect {
                return Err(QueueError::IndirectNotNegotiated);
            }
            if d.has_next() {
                return Err(QueueError::IndirectWithNext);
            }
            return walk_indirect(mem, d, chain, &mut total);
        }
        push(mem, d, chain, &mut total)?;
        if !d.has_next() {
            return Ok(());
        }
        if d.next >= table.size {
            return Err(QueueError::NextOutOfRange {
                next: d.next,
                size: table.size as u32,
            });
        }
        if ttl == 0 {
            return Err(QueueError::ChainLoop {
                head,
                max: table.size as u32,
            });
        }
        ttl -= 1;
        d = read_desc(mem, table.off, d.next)?;
    }
}

#[cold]
#[inline(never)]
fn walk_indirect(
    mem: &GuestMemory,
    ind: Descriptor,
    chain: &mut Chain,
    total: &mut u64,
) -> Result<(), QueueError> {
    // §2.7.5.3.1: the table holds len/16 descriptors. Linux bounds it by the iov limit; a table
    // larger than the largest queue is certainly bogus.
    let bytes = ind.len;
    let n = bytes / Descriptor::SIZE as u32;
    if bytes == 0
        || !bytes.is_multiple_of(Descriptor::SIZE as u32)
        || n > vring::layout::MAX_QUEUE_SIZE as u32
    {
        return Err(QueueError::IndirectBadLength(bytes));
    }
    let table = match mem.translate(ind.addr, bytes as u64) {
        Ok(span) => IndirectTable::Mapped(span.off),
        // Across regions: every byte of it must be mapped (Linux translates the whole table
        // before reading it); its descriptors are then read by guest-physical address.
        Err(_) => {
            for seg in mem.segments(ind.addr, bytes as u64) {
                seg.map_err(|source| QueueError::BadAddress {
                    addr: ind.addr,
                    len: bytes,
                    source,
                })?;
            }
            IndirectTable::Split(ind.addr)
        }
    };
    let mut idx: u32 = 0;
    let mut ttl = n;
    loop {
        if ttl == 0 {
            return Err(QueueError::ChainLoop {
                head: chain.head,
                max: n,
            });
        }
        ttl -= 1;
        let d = match table {
            IndirectTable::Mapped(off) => read_desc(mem, off, idx as u16)?,
            IndirectTable::Split(gpa) => read_desc_gpa(mem, gpa, idx)?,
        };
        if d.is_indirect() {
            return Err(QueueError::NestedIndirect);
        }
        push(mem, d, chain, total)?;
        if !d.has_next() {
            return Ok(());
        }
        if d.next as u32 >= n {
            return Err(QueueError::NextOutOfRange {
                next: d.next,
                size: n,
            });
        }
        idx = d.next as u32;
    }
}

/// Where an indirect table's descriptors are read from.
#[derive(Clone, Copy)]
enum IndirectTable {
    /// Inside one region: its host offset.
    Mapped(usize),
    /// Across regions (all of it mapped): its guest-physical address.
    Split(u64),
}

/// Reads entry `idx` of an indirect table at `gpa` that crosses regions (the entry itself may
/// too, if a boundary is not 16-aligned). Read once, like every descriptor.
#[cold]
fn read_desc_gpa(mem: &GuestMemory, gpa: u64, idx: u32) -> Result<Descriptor, QueueError> {
    let mut b = [0u8; Descriptor::SIZE];
    // The table was checked mapped as a whole and `idx` is inside it, so neither the sum nor
    // the read fails; an error is reported all the same.
    let at = gpa + idx as u64 * Descriptor::SIZE as u64;
    mem.read_gpa(at, &mut b)
        .map_err(|source| QueueError::BadRing {
            part: "desc",
            gpa: at,
            source: Some(source),
        })?;
    Ok(Descriptor::from_bytes(b))
}

#[inline]
fn read_desc(mem: &GuestMemory, table_off: usize, idx: u16) -> Result<Descriptor, QueueError> {
    // The table was translated as a whole, so this offset is inside it; the accessor checks
    // the mapping bounds again regardless.
    let off = table_off + idx as usize * Descriptor::SIZE;
    mem.read_words(off)
        .map(|(lo, hi)| Descriptor::from_words(lo, hi))
        .map_err(|source| QueueError::BadRing {
            part: "desc",
            gpa: 0,
            source: Some(source),
        })
}

#[inline]
fn push(
    mem: &GuestMemory,
    d: Descriptor,
    chain: &mut Chain,
    total: &mut u64,
) -> Result<(), QueueError> {
    chain.descriptors += 1;
    let write = d.is_write_only();
    if write {
        chain.seen_write = true;
    } else if chain.seen_write {
        return Err(QueueError::ReadableAfterWritable);
    }
    *total += d.len as u64;
    if *total > u32::MAX as u64 {
        return Err(QueueError::LengthOverflow { head: chain.head });
    }
    // `total` is at most 2^32 - 1, so neither part can overflow.
    if write {
        chain.write_len += d.len;
    } else {
        chain.read_len += d.len;
    }
    // A zero-length descriptor carries no bytes; like Linux's translate_desc it produces no
    // segment (and so its address is never used).
    if d.len == 0 {
        return Ok(());
    }
    let span = match mem.translate(d.addr, d.len as u64) {
        Ok(span) => span,
        Err(_) => return push_split(mem, d, chain),
    };
    if chain.segs.len() == MAX_SEGMENTS {
        return Err(QueueError::TooManySegments(MAX_SEGMENTS));
    }
    chain.segs.push(span);
    if !write {
        chain.n_readable += 1;
    }
    Ok(())
}

/// The segments of a buffer that is not inside one region (Linux `translate_desc`): one per
/// region it crosses, each counted against [`MAX_SEGMENTS`]; a byte in a hole or past the last
/// region is [`QueueError::BadAddress`]. Off the hot path: `translate` already failed.
#[cold]
#[inline(never)]
fn push_split(mem: &GuestMemory, d: Descriptor, chain: &mut Chain) -> Result<(), QueueError> {
    for seg in mem.segments(d.addr, d.len as u64) {
        let span = seg.map_err(|source| QueueError::BadAddress {
            addr: d.addr,
            len: d.len,
            source,
        })?;
        if chain.segs.len() == MAX_SEGMENTS {
            return Err(QueueError::TooManySegments(MAX_SEGMENTS));
        }
        chain.segs.push(span);
        if !d.is_write_only() {
            chain.n_readable += 1;
        }
    }
    Ok(())
}
