//! The TX side of virtio-net framing: a chain is a 12-byte `virtio_net_hdr_v1` followed by the
//! frame (§5.1.6). The header may be split across descriptors or share one with the payload;
//! [`Chain::read_into`] takes it from wherever it lies.

use vring::net::VirtioNetHdr;
use vring::GuestMemory;

use crate::virtq::{Chain, DeviceQueue, QueueError};

/// One transmitted frame, as found in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxFrame {
    /// The guest's header (offload requests).
    pub hdr: VirtioNetHdr,
    /// Frame bytes after the header.
    pub len: u32,
}

/// Checks the shape of a TX chain without reading its bytes: no device-writable parts, room
/// for the header. Returns the frame length (header excluded).
#[inline(always)]
pub fn check_tx(chain: &Chain) -> Result<u32, QueueError> {
    if !chain.writable().is_empty() {
        return Err(QueueError::UnexpectedWritable);
    }
    let total = chain.readable_len();
    if (total as usize) < VirtioNetHdr::SIZE {
        return Err(QueueError::HeaderTooShort { len: total });
    }
    Ok(total - VirtioNetHdr::SIZE as u32)
}

/// Reads the header of a chain that passed [`check_tx`].
#[inline(always)]
pub fn read_tx_header(mem: &GuestMemory, chain: &Chain) -> VirtioNetHdr {
    let whole = chain
        .readable()
        .first()
        .filter(|s| s.len >= VirtioNetHdr::SIZE)
        .map(|s| (mem.read_u64(s.off), mem.read_u32(s.off + 8)));
    match whole {
        // The usual layout: the header at the start of the first buffer, read as two words
        // straight into registers (a 12-byte copy to the stack followed by field loads made the
        // loads wait for the copy's stores: a store-forwarding stall on every frame).
        Some((Ok(lo), Ok(hi))) => VirtioNetHdr::from_le_words(lo, hi),
        // Split across descriptors. Cannot come up short: the readable part is at least SIZE.
        _ => {
            let mut raw = [0u8; VirtioNetHdr::SIZE];
            chain.read_into(mem, 0, &mut raw);
            VirtioNetHdr::from_bytes(&raw)
        }
    }
}

/// Reads and checks the header of a TX chain: no device-writable parts, room for the header.
#[inline(always)]
pub fn parse_tx(mem: &GuestMemory, chain: &Chain) -> Result<TxFrame, QueueError> {
    let len = check_tx(chain)?;
    Ok(TxFrame {
        hdr: read_tx_header(mem, chain),
        len,
    })
}

/// Pops the next TX chain and parses it. `Ok(None)`: the ring is empty. A malformed chain
/// breaks the queue, which counts it.
#[inline(always)]
pub fn pop_tx(
    q: &mut DeviceQueue,
    mem: &GuestMemory,
    chain: &mut Chain,
) -> Result<Option<TxFrame>, QueueError> {
    if !q.pop(mem, chain)? {
        return Ok(None);
    }
    match parse_tx(mem, chain) {
        Ok(f) => Ok(Some(f)),
        Err(e) => Err(q.fail(e)),
    }
}
