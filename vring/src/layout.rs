//! The split-virtqueue wire layout (virtio 1.2 §2.7), shared by both sides.
//!
//! Everything is little-endian. The structs are `#[repr(C)]` so their layout can be pinned by
//! tests against the spec; guest memory itself is only ever accessed through
//! [`crate::memory::GuestMemory`], field by field, never through references to these structs.

/// Largest queue size a split ring may have (§2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flag: the buffer continues via the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Avail-ring flag (driver → device): do not interrupt me when you consume a buffer.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used-ring flag (device → driver): do not kick me when you add a buffer.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Required alignment of the descriptor table (§2.7, "Alignment").
pub const DESC_ALIGN: u64 = 16;
/// Required alignment of the avail ring.
pub const AVAIL_ALIGN: u64 = 2;
/// Required alignment of the used ring.
pub const USED_ALIGN: u64 = 4;

/// One descriptor-table entry (§2.7.5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor in the chain when `flags & NEXT`.
    pub next: u16,
}

impl Descriptor {
    /// Size of a descriptor in the table.
    pub const SIZE: usize = 16;

    /// Decodes a descriptor from its 16 little-endian bytes.
    #[inline]
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Decodes a descriptor from its two little-endian 64-bit words (`addr`, then
    /// `len | flags << 32 | next << 48`), as [`crate::GuestMemory::read_words`] returns them.
    #[inline]
    pub fn from_words(lo: u64, hi: u64) -> Self {
        Descriptor {
            addr: lo,
            len: hi as u32,
            flags: (hi >> 32) as u16,
            next: (hi >> 48) as u16,
        }
    }

    /// The descriptor's two little-endian 64-bit words (see [`Descriptor::from_words`]).
    #[inline]
    pub fn to_words(self) -> (u64, u64) {
        (
            self.addr,
            self.len as u64 | (self.flags as u64) << 32 | (self.next as u64) << 48,
        )
    }

    /// Encodes the descriptor as 16 little-endian bytes.
    #[inline]
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Whether `NEXT` is set.
    #[inline]
    pub fn has_next(&self) -> bool {
        self.flags & VIRTQ_DESC_F_NEXT != 0
    }

    /// Whether `WRITE` is set.
    #[inline]
    pub fn is_write_only(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }

    /// Whether `INDIRECT` is set.
    #[inline]
    pub fn is_indirect(&self) -> bool {
        self.flags & VIRTQ_DESC_F_INDIRECT != 0
    }
}

/// Header of the avail ring (§2.7.6); `ring[size]` and `used_event` follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AvailHeader {
    /// `VRING_AVAIL_F_*`.
    pub flags: u16,
    /// Where the driver will put the next entry (free-running, mod 2^16).
    pub idx: u16,
}

/// One used-ring element (§2.7.8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index of the chain that was used (u32 for padding reasons, per the spec).
    pub id: u32,
    /// Bytes written into the device-writable part of the chain.
    pub len: u32,
}

/// Header of the used ring (§2.7.8); `ring[size]` and `avail_event` follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UsedHeader {
    /// `VRING_USED_F_*`.
    pub flags: u16,
    /// Where the device will put the next entry (free-running, mod 2^16).
    pub idx: u16,
}

/// Byte offsets of the avail ring's fields, relative to its start.
pub mod avail {
    /// `flags`.
    pub const FLAGS: u64 = 0;
    /// `idx`.
    pub const IDX: u64 = 2;
    /// `ring[i]`.
    #[inline]
    pub const fn ring(i: u16) -> u64 {
        4 + 2 * i as u64
    }
    /// `used_event` (only meaningful with `VIRTIO_RING_F_EVENT_IDX`).
    #[inline]
    pub const fn used_event(size: u16) -> u64 {
        4 + 2 * size as u64
    }
    /// Total size of the avail ring, event field included.
    #[inline]
    pub const fn size(size: u16) -> u64 {
        6 + 2 * size as u64
    }
}

/// Byte offsets of the used ring's fields, relative to its start.
pub mod used {
    /// `flags`.
    pub const FLAGS: u64 = 0;
    /// `idx`.
    pub const IDX: u64 = 2;
    /// `ring[i]`.
    #[inline]
    pub const fn ring(i: u16) -> u64 {
        4 + 8 * i as u64
    }
    /// `avail_event` (only meaningful with `VIRTIO_RING_F_EVENT_IDX`).
    #[inline]
    pub const fn avail_event(size: u16) -> u64 {
        4 + 8 * size as u64
    }
    /// Total size of the used ring, event field included.
    #[inline]
    pub const fn size(size: u16) -> u64 {
        6 + 8 * size as u64
    }
}

/// Size of a descriptor table of `size` entries.
#[inline]
pub const fn desc_table_size(size: u16) -> u64 {
    Descriptor::SIZE as u64 * size as u64
}

/// Where one queue's three parts live in guest-physical memory, as the driver tells the device
/// (`VHOST_SET_VRING_ADDR` / the `queue_desc`, `queue_driver`, `queue_device` registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAddrs {
    /// Number of entries; a power of two, at most [`MAX_QUEUE_SIZE`].
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring ("driver area").
    pub avail: u64,
    /// Used ring ("device area").
    pub used: u64,
}

impl QueueAddrs {
    /// A compact layout for a queue of `size` entries starting at `base` (which must be
    /// 16-aligned): descriptor table, then avail ring, then the used ring at the next 4-byte
    /// boundary. Returns the addresses and the total length used.
    pub fn packed(base: u64, size: u16) -> (QueueAddrs, u64) {
        let desc = base;
        let avail = desc + desc_table_size(size);
        let used = (avail + avail::size(size)).next_multiple_of(USED_ALIGN);
        let end = used + used::size(size);
        (
            QueueAddrs {
                size,
                desc,
                avail,
                used,
            },
            end - base,
        )
    }
}

/// `vring_need_event` (§2.7.10): with event indices, should the side that moved its index
/// from `old` to `new` notify the other, which asked to be told once the index passes `event`?
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn descriptor_layout_is_pinned() {
        assert_eq!(size_of::<Descriptor>(), 16);
        assert_eq!(align_of::<Descriptor>(), 8);
        assert_eq!(offset_of!(Descriptor, addr), 0);
        assert_eq!(offset_of!(Descriptor, len), 8);
        assert_eq!(offset_of!(Descriptor, flags), 12);
        assert_eq!(offset_of!(Descriptor, next), 14);
    }

    #[test]
    fn ring_headers_and_used_elem_are_pinned() {
        assert_eq!(size_of::<AvailHeader>(), 4);
        assert_eq!(offset_of!(AvailHeader, flags), 0);
        assert_eq!(offset_of!(AvailHeader, idx), avail::IDX as usize);
        assert_eq!(size_of::<UsedHeader>(), 4);
        assert_eq!(offset_of!(UsedHeader, flags), 0);
        assert_eq!(offset_of!(UsedHeader, idx), used::IDX as usize);
        assert_eq!(size_of::<UsedElem>(), 8);
        assert_eq!(offset_of!(UsedElem, id), 0);
        assert_eq!(offset_of!(UsedElem, len), 4);
    }

    #[test]
    fn ring_sizes_match_the_spec_formulas() {
        // §2.7: desc 16*N; avail 6+2*N; used 6+8*N.
        for n in [1u16, 2, 256, 32768] {
            assert_eq!(desc_table_size(n), 16 * n as u64);
            assert_eq!(avail::size(n), 6 + 2 * n as u64);
            assert_eq!(used::size(n), 6 + 8 * n as u64);
            assert_eq!(avail::used_event(n), avail::size(n) - 2);
            assert_eq!(used::avail_event(n), used::size(n) - 2);
        }
        assert_eq!(avail::ring(3), 10);
        assert_eq!(used::ring(3), 28);
    }

    #[test]
    fn descriptor_bytes_round_trip() {
        let d = Descriptor {
            addr: 0x1122_3344_5566_7788,
            len: 0x99aa_bbcc,
            flags: 7,
            next: 0xdead,
        };
        let b = d.to_bytes();
        assert_eq!(b[0], 0x88);
        assert_eq!(b[8], 0xcc);
        assert_eq!(Descriptor::from_bytes(b), d);
        let (lo, hi) = d.to_words();
        assert_eq!(Descriptor::from_words(lo, hi), d);
        assert_eq!(lo.to_le_bytes(), b[..8]);
        assert_eq!(hi.to_le_bytes(), b[8..]);
    }

    #[test]
    fn packed_layout_is_aligned_and_disjoint() {
        let (q, len) = QueueAddrs::packed(0x1000, 256);
        assert_eq!(q.desc % DESC_ALIGN, 0);
        assert_eq!(q.avail % AVAIL_ALIGN, 0);
        assert_eq!(q.used % USED_ALIGN, 0);
        assert!(q.avail >= q.desc + desc_table_size(256));
        assert!(q.used >= q.avail + avail::size(256));
        assert_eq!(0x1000 + len, q.used + used::size(256));
    }

    #[test]
    fn need_event_matches_the_reference_formula() {
        // Moved 10 -> 12; the other side asked at 10 or 11: notify. At 12 or 9: not.
        assert!(need_event(10, 12, 10));
        assert!(need_event(11, 12, 10));
        assert!(!need_event(12, 12, 10));
        assert!(!need_event(9, 12, 10));
        // Wrap-around.
        assert!(need_event(0xffff, 1, 0xfffe));
        assert!(!need_event(1, 1, 0xfffe));
    }
}
