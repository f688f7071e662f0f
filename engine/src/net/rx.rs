//! The RX side: putting one frame into the guest's posted buffers (§5.1.6.4).
//!
//! Without `MRG_RXBUF` each frame takes one chain, which must hold header and frame; a frame
//! that does not fit is dropped and the buffer given back, as Linux `handle_rx` does. With
//! `MRG_RXBUF` a frame spreads over as many chains as it needs, and the first chain's header
//! says how many (`num_buffers`).

use vring::net::VirtioNetHdr;
use vring::GuestMemory;

use crate::virtq::{Chain, DeviceQueue, QueueError};

/// What happened to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into `buffers` chains (used elements added, not yet published).
    Delivered {
        /// Chains used.
        buffers: u16,
    },
    /// The guest has not posted enough buffers; nothing was consumed. Retry after a kick.
    NoBuffers,
    /// The frame cannot fit in the guest's buffers (no `MRG_RXBUF` and the buffer is smaller
    /// than the frame); the buffer was given back. Count it as a drop.
    TooLarge,
}

/// Delivers frames into an RX queue. Holds reusable chain buffers, so delivering does not
/// allocate.
#[derive(Debug)]
pub struct RxWriter {
    mrg_rxbuf: bool,
    first: Chain,
    cur: Chain,
    used: Vec<(u16, u32)>,
}

impl RxWriter {
    /// A writer for a queue with or without mergeable buffers negotiated.
    pub fn new(mrg_rxbuf: bool) -> Self {
        RxWriter {
            mrg_rxbuf,
            first: Chain::with_capacity(16),
            cur: Chain::with_capacity(16),
            used: Vec::with_capacity(64),
        }
    }

    fn pop_checked(
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        chain: &mut Chain,
    ) -> Result<bool, QueueError> {
        if !q.pop(mem, chain)? {
            return Ok(false);
        }
        if !chain.readable().is_empty() {
            return Err(q.fail(QueueError::UnexpectedReadable));
        }
        // §5.1.6.3.1: "each buffer MUST be at least the size of the struct virtio_net_hdr" —
        // which also keeps a ring of empty buffers from spinning the merge loop.
        let len = chain.writable_len();
        if (len as usize) < VirtioNetHdr::SIZE {
            return Err(q.fail(QueueError::HeaderTooShort { len }));
        }
        Ok(true)
    }

    /// Writes `hdr` (with `num_buffers` filled in) and `frame` into the guest's next buffers.
    pub fn deliver(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        hdr: &VirtioNetHdr,
        frame: &[u8],
    ) -> Result<RxOutcome, QueueError> {
        const H: usize = VirtioNetHdr::SIZE;
        if !Self::pop_checked(q, mem, &mut self.first)? {
            return Ok(RxOutcome::NoBuffers);
        }
        let cap = self.first.writable_len() as usize;
        let need = H + frame.len();
        if !self.mrg_rxbuf {
            if cap < need {
                q.unpop(1);
                return Ok(RxOutcome::TooLarge);
            }
            let mut h = *hdr;
            h.num_buffers = 1;
            self.first.write_from(mem, 0, &h.to_bytes());
            self.first.write_from(mem, H, frame);
            q.add_used(mem, self.first.head(), need as u32)?;
            return Ok(RxOutcome::Delivered { buffers: 1 });
        }

        // Mergeable: the first chain takes the header and as much frame as fits.
        self.used.clear();
        let in_first = frame.len().min(cap - H);
        self.first.write_from(mem, H, &frame[..in_first]);
        self.used.push((self.first.head(), (H + in_first) as u32));
        let mut done = in_first;
        while done < frame.len() {
            // One frame never needs more chains than the ring holds.
            if self.used.len() >= q.size() as usize || !Self::pop_checked(q, mem, &mut self.cur)? {
                q.unpop(self.used.len() as u16);
                return Ok(RxOutcome::NoBuffers);
            }
            let n = self.cur.write_from(mem, 0, &frame[done..]);
            self.used.push((self.cur.head(), n as u32));
            done += n;
        }
        let buffers = self.used.len() as u16;
        let mut h = *hdr;
        h.num_buffers = buffers;
        self.first.write_from(mem, 0, &h.to_bytes());
        for &(head, len) in &self.used {
            q.add_used(mem, head, len)?;
        }
        Ok(RxOutcome::Delivered { buffers })
    }
}
