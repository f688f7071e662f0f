//! virtio-net wire definitions (virtio 1.2 §5.1): feature bits and `virtio_net_hdr_v1`.

use std::fmt;

/// Feature bit numbers (§5.1.3 and §6).
pub mod bit {
    /// Device handles packets with partial checksum (guest → host offload).
    pub const CSUM: u32 = 0;
    /// Driver handles packets with partial checksum (host → guest).
    pub const GUEST_CSUM: u32 = 1;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u32 = 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u32 = 8;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u32 = 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u32 = 12;
    /// Driver can merge receive buffers (`num_buffers`).
    pub const MRG_RXBUF: u32 = 15;
    /// Driver can use indirect descriptors (§2.7.5.3).
    pub const RING_INDIRECT_DESC: u32 = 28;
    /// `used_event` / `avail_event` notification suppression (§2.7.10).
    pub const RING_EVENT_IDX: u32 = 29;
    /// Compliance with virtio 1.x (little-endian, 12-byte net header).
    pub const VERSION_1: u32 = 32;
    /// Buffers are used in the order they were made available (§2.7.9 for split rings): the
    /// driver takes descriptors in ring order, and the device may return a whole batch with
    /// one used-ring entry naming the batch's last buffer.
    pub const IN_ORDER: u32 = 35;
}

/// A set of feature bits.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(pub u64);

impl Features {
    /// Every feature this project implements, in both directions.
    pub const SUPPORTED: Features = Features(
        1 << bit::CSUM
            | 1 << bit::GUEST_CSUM
            | 1 << bit::GUEST_TSO4
            | 1 << bit::GUEST_TSO6
            | 1 << bit::HOST_TSO4
            | 1 << bit::HOST_TSO6
            | 1 << bit::MRG_RXBUF
            | 1 << bit::RING_INDIRECT_DESC
            | 1 << bit::RING_EVENT_IDX
            | 1 << bit::VERSION_1
            | 1 << bit::IN_ORDER,
    );

    /// The empty set.
    pub const fn empty() -> Self {
        Features(0)
    }

    /// A set of the given bit numbers.
    pub fn of(bits: &[u32]) -> Self {
        Features(bits.iter().fold(0, |acc, b| acc | 1u64 << b))
    }

    /// Whether bit `b` is in the set.
    #[inline]
    pub const fn has(self, b: u32) -> bool {
        self.0 & (1u64 << b) != 0
    }

    /// The set with bit `b` added or removed.
    pub const fn with(self, b: u32, on: bool) -> Self {
        if on {
            Features(self.0 | 1u64 << b)
        } else {
            Features(self.0 & !(1u64 << b))
        }
    }

    /// Intersection.
    pub const fn and(self, o: Features) -> Self {
        Features(self.0 & o.0)
    }

    /// Whether every bit of `self` is in `o`.
    pub const fn is_subset_of(self, o: Features) -> bool {
        self.0 & !o.0 == 0
    }

    /// Checks the dependencies between bits that §5.1.3.1 requires of a negotiated set.
    pub fn check_dependencies(self) -> Result<(), FeatureError> {
        let needs = [
            (bit::GUEST_TSO4, bit::GUEST_CSUM),
            (bit::GUEST_TSO6, bit::GUEST_CSUM),
            (bit::HOST_TSO4, bit::CSUM),
            (bit::HOST_TSO6, bit::CSUM),
        ];
        for (b, dep) in needs {
            if self.has(b) && !self.has(dep) {
                return Err(FeatureError::MissingDependency {
                    feature: name(b),
                    needs: name(dep),
                });
            }
        }
        if !self.has(bit::VERSION_1) {
            return Err(FeatureError::NoVersion1);
        }
        Ok(())
    }
}

/// A negotiated set that the spec forbids.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FeatureError {
    /// A feature was negotiated without the one it depends on.
    #[error("{feature} negotiated without {needs}")]
    MissingDependency {
        /// The feature.
        feature: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// Only virtio 1.x (modern, little-endian, 12-byte header) is implemented.
    #[error("VERSION_1 not negotiated (legacy devices are not implemented)")]
    NoVersion1,
    /// The driver acknowledged a bit the device did not offer.
    #[error("driver acknowledged features {0:#x} that were not offered")]
    NotOffered(u64),
}

/// Name of a feature bit, as in the spec.
pub fn name(b: u32) -> &'static str {
    match b {
        bit::CSUM => "CSUM",
        bit::GUEST_CSUM => "GUEST_CSUM",
        bit::GUEST_TSO4 => "GUEST_TSO4",
        bit::GUEST_TSO6 => "GUEST_TSO6",
        bit::HOST_TSO4 => "HOST_TSO4",
        bit::HOST_TSO6 => "HOST_TSO6",
        bit::MRG_RXBUF => "MRG_RXBUF",
        bit::RING_INDIRECT_DESC => "RING_INDIRECT_DESC",
        bit::RING_EVENT_IDX => "RING_EVENT_IDX",
        bit::VERSION_1 => "VERSION_1",
        bit::IN_ORDER => "IN_ORDER",
        _ => "UNKNOWN",
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_set();
        for b in 0..64 {
            if self.has(b) {
                match name(b) {
                    "UNKNOWN" => l.entry(&b),
                    n => l.entry(&n),
                };
            }
        }
        l.finish()
    }
}

/// `flags`: `csum_start`/`csum_offset` are valid (partial checksum).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: checksum already validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCPv4 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCPv6 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type` bit: ECN.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr_v1` (§5.1.6): the 12-byte header before every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
    /// How many buffers this frame was merged into (RX with `MRG_RXBUF`; 1 otherwise).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Size on the wire.
    pub const SIZE: usize = 12;
    /// Offset of `num_buffers`, which the device fills in last for merged RX frames.
    pub const NUM_BUFFERS_OFFSET: usize = 10;

    /// Decodes the header.
    #[inline]
    pub fn from_bytes(b: &[u8; 12]) -> Self {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// Decodes the header from its first eight bytes and last four, as little-endian words
    /// (what two loads from guest memory give): the fields come out of registers, with no
    /// byte array on the stack for the next load to trip over.
    #[inline]
    pub fn from_le_words(lo: u64, hi: u32) -> Self {
        VirtioNetHdr {
            flags: lo as u8,
            gso_type: (lo >> 8) as u8,
            hdr_len: (lo >> 16) as u16,
            gso_size: (lo >> 32) as u16,
            csum_start: (lo >> 48) as u16,
            csum_offset: hi as u16,
            num_buffers: (hi >> 16) as u16,
        }
    }

    /// Encodes the header.
    #[inline]
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn header_decodes_the_same_from_words() {
        let b: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let lo = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let hi = u32::from_le_bytes([9, 10, 11, 12]);
        assert_eq!(
            VirtioNetHdr::from_le_words(lo, hi),
            VirtioNetHdr::from_bytes(&b)
        );
    }

    #[test]
    fn header_layout_is_pinned() {
        assert_eq!(size_of::<VirtioNetHdr>(), VirtioNetHdr::SIZE);
        assert_eq!(offset_of!(VirtioNetHdr, flags), 0);
        assert_eq!(offset_of!(VirtioNetHdr, gso_type), 1);
        assert_eq!(offset_of!(VirtioNetHdr, hdr_len), 2);
        assert_eq!(offset_of!(VirtioNetHdr, gso_size), 4);
        assert_eq!(offset_of!(VirtioNetHdr, csum_start), 6);
        assert_eq!(offset_of!(VirtioNetHdr, csum_offset), 8);
        assert_eq!(
            offset_of!(VirtioNetHdr, num_buffers),
            VirtioNetHdr::NUM_BUFFERS_OFFSET
        );
    }

    #[test]
    fn header_round_trips() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(VirtioNetHdr::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[4..6], 1448u16.to_le_bytes());
    }

    #[test]
    fn dependencies_are_enforced() {
        let v1 = Features::of(&[bit::VERSION_1]);
        assert_eq!(v1.check_dependencies(), Ok(()));
        assert_eq!(Features::SUPPORTED.check_dependencies(), Ok(()));
        assert!(v1.with(bit::HOST_TSO4, true).check_dependencies().is_err());
        assert!(v1.with(bit::GUEST_TSO6, true).check_dependencies().is_err());
        assert_eq!(
            v1.with(bit::GUEST_TSO6, true)
                .with(bit::GUEST_CSUM, true)
                .check_dependencies(),
            Ok(())
        );
        assert_eq!(
            Features::empty().check_dependencies(),
            Err(FeatureError::NoVersion1)
        );
    }
}
