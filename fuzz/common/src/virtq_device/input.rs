//! The input of the `virtq_device` target: what a hostile guest writes and what the device
//! does, as types that derive `Arbitrary`.

use arbitrary::Arbitrary;
/// A guest-physical address, biased toward mapped memory.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    /// Into the buffer arena after the rings in region A.
    Arena(u16),
    /// Into region B.
    B(u16),
    /// Anywhere in region A, rings included.
    A(u16),
    /// `back` bytes before the end of a region (straddles it when `len > back`: from B into
    /// C, from A into the hole).
    RegionEnd {
        /// The end of region B, else of region A.
        in_b: bool,
        /// How far before the end.
        back: u8,
    },
    /// In the hole between the regions.
    Hole(u32),
    /// Any 64-bit value.
    Raw(u64),
}

/// A descriptor or buffer length, biased toward small ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    /// Up to 255 bytes.
    Small(u8),
    /// Up to 64 KiB.
    Mid(u16),
    /// Any 32-bit value.
    Raw(u32),
}

/// Descriptor flags.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Flags {
    /// NEXT / WRITE / INDIRECT only.
    Known(u8),
    /// Unknown bits too.
    Raw(u16),
}

/// A descriptor's `next` field.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Next {
    /// In range of the table it is in.
    Idx(u16),
    /// Any index, in range or not.
    Raw(u16),
}

/// A descriptor, field by field.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Desc {
    /// `addr`.
    pub addr: Addr,
    /// `len`.
    pub len: Len,
    /// `flags`.
    pub flags: Flags,
    /// `next`.
    pub next: Next,
}

/// What the guest writes into one descriptor slot.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DescInit {
    /// A descriptor built from fields.
    Structured(Desc),
    /// Any 16 bytes.
    Raw([u8; 16]),
}

/// A head index the guest puts into an avail slot.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Head {
    /// In range.
    Idx(u16),
    /// Any index, in range or not.
    Raw(u16),
}

/// What the guest writes into `avail.idx`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AvailIdx {
    /// `k % (size + 1)` entries past the device's `next_avail`: a legal index.
    Ahead(u16),
    /// Any index: a jump of more than the queue size is an error.
    Raw(u16),
}

/// One of the three parts of a split ring.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RingPart {
    /// The descriptor table.
    Desc,
    /// The avail ring.
    Avail,
    /// The used ring.
    Used,
}

/// One buffer of a chain a well-behaved driver would build.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Buf {
    /// Where it is.
    pub addr: Addr,
    /// How long it is.
    pub len: Len,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub write: bool,
}

/// Something the guest does to memory.
#[derive(Arbitrary, Debug, Clone)]
pub enum GuestWrite {
    /// What a driver does to post one chain: descriptors `at, at+1, ...` (mod size) linked with
    /// NEXT, or with `indirect`, an indirect table there and one INDIRECT descriptor at `at`;
    /// then the head into the next avail slot and `avail.idx` (Release).
    PostChain {
        /// First descriptor (mod size): the head.
        at: u16,
        /// The chain's buffers, in order.
        bufs: Vec<Buf>,
        /// Where the indirect table goes, for an indirect chain.
        indirect: Option<Addr>,
    },
    /// Rewrite descriptor `i % size`.
    Desc {
        /// Which descriptor (mod size).
        i: u16,
        /// What to write.
        d: DescInit,
    },
    /// A long indirect chain: `count` copies of `buf` linked in a table at `table`, one
    /// INDIRECT descriptor at `at` (mod size) pointing at it, posted. Region B holds up to 2048
    /// entries, enough for `MAX_SEGMENTS`.
    PostIndirectRun {
        /// The INDIRECT descriptor (mod size), which is the head.
        at: u16,
        /// Where the table goes.
        table: Addr,
        /// Table entries (mod 4096).
        count: u16,
        /// What every entry describes.
        buf: Buf,
    },
    /// What a driver does: heads into the next slots, then `avail.idx` (Release).
    Post(Vec<Head>),
    /// One avail slot (mod size), without moving `avail.idx`.
    AvailSlot {
        /// Which slot.
        slot: u16,
        /// What goes in it.
        head: Head,
    },
    /// `avail.idx` (Release), alone.
    AvailIdx(AvailIdx),
    /// `avail.flags`.
    AvailFlags(u16),
    /// `used_event` (at the end of the avail ring).
    UsedEvent(u16),
    /// Raw bytes over a ring part (kept inside that part).
    RawRing {
        /// Which part.
        part: RingPart,
        /// Byte offset into it (mod its size).
        off: u16,
        /// The bytes (cut at the part's end).
        data: Vec<u8>,
    },
    /// Raw bytes anywhere (payload, or garbage).
    Bytes {
        /// Where.
        at: Addr,
        /// What.
        data: Vec<u8>,
    },
    /// `len` copies of `byte` at `at`, if all of it is mapped.
    Fill {
        /// Where.
        at: Addr,
        /// How many bytes.
        len: u16,
        /// Which byte.
        byte: u8,
    },
    /// An indirect table at `at`.
    Indirect {
        /// Where.
        at: Addr,
        /// Its entries (`next` resolved against their count).
        descs: Vec<DescInit>,
    },
}

/// Where a ring part goes, when the placement is not the packed one.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PartAddr {
    /// `4 * off` into region A (wrapped).
    A(u16),
    /// `4 * off` into region B (wrapped).
    B(u16),
    /// Any 64-bit address.
    Raw(u64),
}

/// Where the three ring parts go.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Placement {
    /// The mock's compact layout at the start of region A.
    Packed,
    /// Anywhere: ring parts may overlap each other and the buffers, be misaligned or unmapped.
    Parts {
        /// The descriptor table.
        desc: PartAddr,
        /// The avail ring.
        avail: PartAddr,
        /// The used ring.
        used: PartAddr,
    },
}

/// A frame the backend hands to RX.
#[derive(Arbitrary, Debug, Clone)]
pub enum Frame {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` copies of `byte`.
    Filled {
        /// Frame length.
        len: u16,
        /// The byte.
        byte: u8,
    },
}

/// The head an `add_used` returns.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum UsedHead {
    /// The head of the last chain popped.
    Last,
    /// Any head: the device writes what it is told.
    Raw(u16),
}

/// Which heads an `add_used_batch` returns.
#[derive(Arbitrary, Debug, Clone)]
pub enum BatchHeads {
    /// The oldest `n` popped and not yet returned by a batch (at most the queue size).
    Popped(u8),
    /// Any heads (at most the queue size of them): the device writes what it is told.
    Raw(Vec<u16>),
}

/// One device operation (or a guest write between two).
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `DeviceQueue::pop`, then the chain's copy helpers from byte `skip`.
    Pop {
        /// Where the copy helpers start.
        skip: u16,
    },
    /// `net::header::pop_tx`.
    PopTx,
    /// `RxWriter::prepare`: pop the next RX buffer ahead of a frame. The harness gives it back
    /// (`RxWriter::release`) before any op that pops or unpops the queue directly, as the worker,
    /// the only one popping its RX queue, never interleaves them.
    RxPrepare,
    /// `RxWriter::deliver`.
    Rx {
        /// The virtio-net header, as bytes.
        hdr: [u8; 12],
        /// The frame.
        frame: Frame,
    },
    /// `DeviceQueue::add_used`.
    AddUsed {
        /// Which head.
        head: UsedHead,
        /// The used length.
        len: u32,
    },
    /// `DeviceQueue::pop_batch` of up to `max % (MAX_BATCH + 1)` chains, with `check_tx` as the
    /// check when `tx` (what `TxBatch::pop` does) and no check otherwise.
    PopBatch {
        /// Most chains (mod `MAX_BATCH + 1`).
        max: u8,
        /// With the TX check.
        tx: bool,
    },
    /// `DeviceQueue::add_used_batch` (what `TxBatch::complete` does).
    AddUsedBatch {
        /// Which heads.
        heads: BatchHeads,
        /// The used length of each.
        len: u32,
    },
    /// `DeviceQueue::publish_used`.
    Publish,
    /// `DeviceQueue::needs_notification`.
    Notify,
    /// `DeviceQueue::enable_notifications`.
    Enable,
    /// `DeviceQueue::disable_notifications`.
    Disable,
    /// Give back up to `n` of the chains popped since the last completion.
    Unpop(u8),
    /// `DeviceQueue::pending`.
    Pending,
    /// The guest writes memory while the device runs.
    Guest(GuestWrite),
}

/// One run of the `virtq_device` target. The field order is the byte format: corpus files
/// decode field by field, so reordering fields or variants makes old corpora mean other cases.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// Index into [`SIZES`](super::SIZES) (mod its length): the queue size; the rest of it
    /// (divided by that length) picks how many RX buffers are popped ahead
    /// ([`Input::rx_batch`]), so corpora from before that choice keep their meaning.
    pub size: u8,
    /// `VIRTIO_F_RING_EVENT_IDX`.
    pub event_idx: bool,
    /// `VIRTIO_F_RING_INDIRECT_DESC`.
    pub indirect: bool,
    /// `VIRTIO_NET_F_MRG_RXBUF`.
    pub mrg_rxbuf: bool,
    /// `VIRTIO_F_IN_ORDER`.
    pub in_order: bool,
    /// Where the rings go.
    pub placement: Placement,
    /// Initial descriptor table, entry by entry.
    pub table: Vec<DescInit>,
    /// Guest writes before the device starts.
    pub setup: Vec<GuestWrite>,
    /// What the device does, in order (the first `MAX_OPS`).
    pub ops: Vec<Op>,
}

impl Input {
    /// How many RX buffers the writer pops ahead at a time: one, as QEMU does, for the values
    /// of `size` older corpora use; a few; or a worker's whole batch.
    pub fn rx_batch(&self) -> usize {
        [1, 3, 64][(self.size as usize / super::SIZES.len()) % 3]
    }
}
