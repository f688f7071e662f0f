//! What a hostile or broken guest can do to a queue, as typed errors.
//!
//! Every error marks the queue broken (the device stops using it, like Linux's
//! `vq_err`/`VIRTIO_CONFIG_S_NEEDS_RESET`) and is counted by [`ErrorKind`].

use vring::MemError;

/// Why a queue stopped. Each names the spec rule it enforces where there is one.
#[derive(Debug, thiserror::Error, Clone)]
pub enum QueueError {
    /// Queue size not a power of two in 1..=32768 (§2.7: "Queue Size value is always a power
    /// of 2. The maximum Queue Size value is 32768").
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u16),
    /// A ring part is misaligned or not inside guest memory (§2.7 alignment table).
    #[error("ring part {part} at {gpa:#x} is misaligned or unmapped")]
    BadRing {
        /// `desc`, `avail` or `used`.
        part: &'static str,
        /// Its guest-physical address.
        gpa: u64,
        /// Translation failure, when that was the cause.
        #[source]
        source: Option<MemError>,
    },
    /// `avail.idx` moved more than the queue size past the last consumed entry.
    #[error("avail.idx {avail_idx} is more than {size} ahead of {next_avail}")]
    AvailIdxJump {
        /// What the guest wrote.
        avail_idx: u16,
        /// Where the device is.
        next_avail: u16,
        /// Queue size.
        size: u16,
    },
    /// A queue started at a base more than a queue's worth of chains past `used.idx` in guest
    /// memory (or behind it): no ring can have that many chains in flight.
    #[error("base {base} is more than {size} ahead of used.idx {used_idx}")]
    BadBase {
        /// The avail index the queue was to start at.
        base: u16,
        /// What guest memory holds.
        used_idx: u16,
        /// Queue size.
        size: u16,
    },
    /// A head index from the avail ring is not a descriptor-table index.
    #[error("head {head} out of range for queue size {size}")]
    HeadOutOfRange {
        /// The index.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A `next` field points outside the (direct or indirect) table.
    #[error("next index {next} out of range for table of {size}")]
    NextOutOfRange {
        /// The index.
        next: u16,
        /// Table entries.
        size: u32,
    },
    /// More descriptors than the table holds: a loop (§2.7.5.2: "the device MUST NOT loop").
    #[error("chain at head {head} is longer than its table ({max}): loop")]
    ChainLoop {
        /// The chain's head.
        head: u16,
        /// The limit.
        max: u32,
    },
    /// The chain's total length exceeds 2^32 - 1 bytes.
    #[error("chain at head {head} is longer than 2^32 - 1 bytes")]
    LengthOverflow {
        /// The chain's head.
        head: u16,
    },
    /// A buffer address/length is outside guest memory or overflows.
    #[error("buffer {addr:#x}+{len:#x} is not in guest memory")]
    BadAddress {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u32,
        /// Translation failure.
        #[source]
        source: MemError,
    },
    /// `INDIRECT` used without `VIRTIO_F_RING_INDIRECT_DESC` negotiated.
    #[error("indirect descriptor without RING_INDIRECT_DESC negotiated")]
    IndirectNotNegotiated,
    /// Indirect table length zero, not a multiple of 16, or over the queue's limit
    /// (§2.7.5.3.1: "len / 16" entries).
    #[error("indirect table length {0} is invalid")]
    IndirectBadLength(u32),
    /// `INDIRECT` inside an indirect table (§2.7.5.3.1: "MUST NOT set INDIRECT ... within an
    /// indirect descriptor").
    #[error("nested indirect descriptor")]
    NestedIndirect,
    /// `INDIRECT` together with `NEXT` (§2.7.5.3.1: "MUST NOT set both").
    #[error("descriptor with both INDIRECT and NEXT")]
    IndirectWithNext,
    /// A device-readable descriptor after a device-writable one (§2.7.4.2).
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// More segments than the device's iov limit.
    #[error("chain has more than {0} segments")]
    TooManySegments(usize),
    /// A TX (device-readable) chain with writable parts.
    #[error("transmit chain has device-writable descriptors")]
    UnexpectedWritable,
    /// An RX (device-writable) chain with readable parts.
    #[error("receive chain has device-readable descriptors")]
    UnexpectedReadable,
    /// A chain too short for the 12-byte virtio-net header (including zero-length ones).
    #[error("chain of {len} bytes cannot hold the 12-byte virtio-net header")]
    HeaderTooShort {
        /// What the chain offered.
        len: u32,
    },
    /// The queue already failed; see the first error.
    #[error("queue is broken")]
    Broken,
}

/// A fieldless tag for [`QueueError`], to index counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum ErrorKind {
    BadSize,
    BadRing,
    AvailIdxJump,
    BadBase,
    HeadOutOfRange,
    NextOutOfRange,
    ChainLoop,
    LengthOverflow,
    BadAddress,
    IndirectNotNegotiated,
    IndirectBadLength,
    NestedIndirect,
    IndirectWithNext,
    ReadableAfterWritable,
    TooManySegments,
    UnexpectedWritable,
    UnexpectedReadable,
    HeaderTooShort,
    Broken,
}

impl ErrorKind {
    /// Number of kinds.
    pub const COUNT: usize = ErrorKind::Broken as usize + 1;
    /// Every kind, in counter order.
    pub const ALL: [ErrorKind; Self::COUNT] = [
        ErrorKind::BadSize,
        ErrorKind::BadRing,
        ErrorKind::AvailIdxJump,
        ErrorKind::BadBase,
        ErrorKind::HeadOutOfRange,
        ErrorKind::NextOutOfRange,
        ErrorKind::ChainLoop,
        ErrorKind::LengthOverflow,
        ErrorKind::BadAddress,
        ErrorKind::IndirectNotNegotiated,
        ErrorKind::IndirectBadLength,
        ErrorKind::NestedIndirect,
        ErrorKind::IndirectWithNext,
        ErrorKind::ReadableAfterWritable,
        ErrorKind::TooManySegments,
        ErrorKind::UnexpectedWritable,
        ErrorKind::UnexpectedReadable,
        ErrorKind::HeaderTooShort,
        ErrorKind::Broken,
    ];

    /// A stable snake_case name for results files.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadSize => "bad_size",
            ErrorKind::BadRing => "bad_ring",
            ErrorKind::AvailIdxJump => "avail_idx_jump",
            ErrorKind::BadBase => "bad_base",
            ErrorKind::HeadOutOfRange => "head_out_of_range",
            ErrorKind::NextOutOfRange => "next_out_of_range",
            ErrorKind::ChainLoop => "chain_loop",
            ErrorKind::LengthOverflow => "length_overflow",
            ErrorKind::BadAddress => "bad_address",
            ErrorKind::IndirectNotNegotiated => "indirect_not_negotiated",
            ErrorKind::IndirectBadLength => "indirect_bad_length",
            ErrorKind::NestedIndirect => "nested_indirect",
            ErrorKind::IndirectWithNext => "indirect_with_next",
            ErrorKind::ReadableAfterWritable => "readable_after_writable",
            ErrorKind::TooManySegments => "too_many_segments",
            ErrorKind::UnexpectedWritable => "unexpected_writable",
            ErrorKind::UnexpectedReadable => "unexpected_readable",
            ErrorKind::HeaderTooShort => "header_too_short",
            ErrorKind::Broken => "broken",
        }
    }
}

impl QueueError {
    /// The counter this error goes to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueueError::BadSize(_) => ErrorKind::BadSize,
            QueueError::BadRing { .. } => ErrorKind::BadRing,
            QueueError::AvailIdxJump { .. } => ErrorKind::AvailIdxJump,
            QueueError::BadBase { .. } => ErrorKind::BadBase,
            QueueError::HeadOutOfRange { .. } => ErrorKind::HeadOutOfRange,
            QueueError::NextOutOfRange { .. } => ErrorKind::NextOutOfRange,
            QueueError::ChainLoop { .. } => ErrorKind::ChainLoop,
            QueueError::LengthOverflow { .. } => ErrorKind::LengthOverflow,
            QueueError::BadAddress { .. } => ErrorKind::BadAddress,
            QueueError::IndirectNotNegotiated => ErrorKind::IndirectNotNegotiated,
            QueueError::IndirectBadLength(_) => ErrorKind::IndirectBadLength,
            QueueError::NestedIndirect => ErrorKind::NestedIndirect,
            QueueError::IndirectWithNext => ErrorKind::IndirectWithNext,
            QueueError::ReadableAfterWritable => ErrorKind::ReadableAfterWritable,
            QueueError::TooManySegments(_) => ErrorKind::TooManySegments,
            QueueError::UnexpectedWritable => ErrorKind::UnexpectedWritable,
            QueueError::UnexpectedReadable => ErrorKind::UnexpectedReadable,
            QueueError::HeaderTooShort { .. } => ErrorKind::HeaderTooShort,
            QueueError::Broken => ErrorKind::Broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_indexed_in_order_and_named_uniquely() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::COUNT);
    }
}
