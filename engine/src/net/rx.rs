//! The RX side: putting one frame into the guest's posted buffers (§5.1.6.4), the way Linux
//! `handle_rx` does it: learn the frame's length, gather enough buffers for it
//! ([`RxWriter::gather`], `get_rx_bufs`), let the backend write header and frame straight into
//! them, then return them to the guest with `num_buffers` set ([`RxWriter::commit`]).
//!
//! Without `MRG_RXBUF` each frame takes one chain, which must hold header and frame; a frame
//! that does not fit is dropped and the buffer given back. With `MRG_RXBUF` a frame spreads
//! over as many chains as it needs, and the first chain's header says how many.

use vring::net::VirtioNetHdr;
use vring::{GuestMemory, Span};

use crate::virtq::chain::write_iov;
use crate::virtq::{Chain, DeviceQueue, QueueError, MAX_SEGMENTS};

/// What [`RxWriter::gather`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gather {
    /// Buffers for the frame are popped; [`RxWriter::iov`] lists them.
    Ready,
    /// The guest has not posted enough buffers; nothing was consumed. Retry after a kick.
    NoBuffers,
    /// The frame cannot fit: no `MRG_RXBUF` and the buffer is smaller than the frame, or all
    /// the ring's buffers together are. The buffers were given back; the frame must be
    /// dropped and counted.
    TooLarge,
}

/// What happened to one frame in [`RxWriter::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into `buffers` chains (used elements added, not yet published).
    Delivered {
        /// Chains used.
        buffers: u16,
    },
    /// See [`Gather::NoBuffers`].
    NoBuffers,
    /// See [`Gather::TooLarge`].
    TooLarge,
}

/// Delivers frames into an RX queue. Holds reusable buffers, so delivering does not allocate.
#[derive(Debug)]
pub struct RxWriter {
    mrg_rxbuf: bool,
    first: Chain,
    cur: Chain,
    /// Popped chains of the current frame: head and writable capacity.
    heads: Vec<(u16, u32)>,
    iov: Vec<Span>,
    /// `heads`/`iov` hold one chain popped ahead of any frame by [`RxWriter::prepare`].
    prepared: bool,
}

impl RxWriter {
    /// A writer for a queue with or without mergeable buffers negotiated.
    pub fn new(mrg_rxbuf: bool) -> Self {
        RxWriter {
            mrg_rxbuf,
            first: Chain::with_capacity(16),
            cur: Chain::with_capacity(16),
            heads: Vec::with_capacity(64),
            iov: Vec::with_capacity(64),
            prepared: false,
        }
    }

    /// Pops the next buffer before there is a frame for it, so that when one comes only the
    /// copy and the used element are left to do (the worker calls this while it busy-polls
    /// for RX frames: the walk and its checks move off the path from frame to guest). The
    /// buffer is the device's from then on, as after any pop; the next [`RxWriter::gather`]
    /// starts from it, and [`RxWriter::abort`] gives it back. Returns the first writable
    /// segment's host offset (a hint for taking its lines ahead of the writes), or `None` if
    /// no buffer is posted. Calling it again while a buffer is held changes nothing.
    pub fn prepare(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
    ) -> Result<Option<usize>, QueueError> {
        if self.prepared && q.broken().is_some() {
            // Broken since: the held buffer is as dead as the queue.
            self.abort(q);
            return Err(QueueError::Broken);
        }
        if !self.prepared {
            self.heads.clear();
            self.iov.clear();
            if !Self::pop_checked(q, mem, &mut self.first)? {
                return Ok(None);
            }
            self.heads
                .push((self.first.head(), self.first.writable_len()));
            self.iov.extend_from_slice(self.first.writable());
            self.prepared = true;
        }
        Ok(self.iov.first().map(|s| s.off))
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

    /// Pops buffers for a frame of `len` bytes, header included. On [`Gather::Ready`] the
    /// buffers' writable segments are in [`RxWriter::iov`], in order; follow with
    /// [`RxWriter::commit`] or [`RxWriter::abort`].
    pub fn gather(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        len: usize,
    ) -> Result<Gather, QueueError> {
        // The first chain: the one `prepare` holds, or popped now.
        let held = self.prepared && q.broken().is_none();
        if !held && self.prepare(q, mem)?.is_none() {
            return Ok(Gather::NoBuffers);
        }
        self.prepared = false;
        let Some(&(_, first_cap)) = self.heads.first() else {
            return Ok(Gather::NoBuffers);
        };
        let mut cap = first_cap as usize;
        if !self.mrg_rxbuf && cap < len {
            q.unpop(1);
            self.heads.clear();
            self.iov.clear();
            return Ok(Gather::TooLarge);
        }
        while cap < len {
            // The whole ring is not enough: this frame can never fit, however long we wait for
            // the guest (which cannot post more than the ring holds). Drop it.
            let too_large = self.heads.len() >= q.size() as usize;
            if too_large || !Self::pop_checked(q, mem, &mut self.cur)? {
                q.unpop(self.heads.len() as u16);
                self.heads.clear();
                self.iov.clear();
                return Ok(if too_large {
                    Gather::TooLarge
                } else {
                    Gather::NoBuffers
                });
            }
            // The frame's segments together are held to the iov limit too (vhost's
            // `get_rx_bufs` stops at UIO_MAXIOV): thousands of chains of thousands of
            // segments each must not become one vector of millions.
            if self.iov.len() + self.cur.writable().len() > MAX_SEGMENTS {
                self.heads.clear();
                self.iov.clear();
                return Err(q.fail(QueueError::TooManySegments(MAX_SEGMENTS)));
            }
            cap += self.cur.writable_len() as usize;
            self.heads.push((self.cur.head(), self.cur.writable_len()));
            self.iov.extend_from_slice(self.cur.writable());
        }
        Ok(Gather::Ready)
    }

    /// The writable segments gathered for the current frame.
    pub fn iov(&self) -> &[Span] {
        &self.iov
    }

    /// Returns the gathered buffers to the ring unused (the backend had nothing after all).
    pub fn abort(&mut self, q: &mut DeviceQueue) {
        q.unpop(self.heads.len() as u16);
        self.heads.clear();
        self.iov.clear();
        self.prepared = false;
    }

    /// The backend wrote `written` bytes (header included) into [`RxWriter::iov`]: sets
    /// `num_buffers` and adds a used element per chain that received bytes; chains left empty
    /// go back to the ring. Returns the number of buffers used.
    pub fn commit(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        written: usize,
    ) -> Result<u16, QueueError> {
        if let ([(head, cap)], [first]) = (&self.heads[..], &self.iov[..]) {
            // One buffer of one segment, the usual case without mergeable buffers: the same
            // result as the general path below, without its loops.
            if first.len >= VirtioNetHdr::SIZE {
                let n = written.max(VirtioNetHdr::SIZE).min(*cap as usize);
                let at = first.off + VirtioNetHdr::NUM_BUFFERS_OFFSET;
                // The segment was translated inside guest memory; should the write fail anyway
                // the frame is still returned, as `write_iov` does.
                let _ = mem.write_at(at, &1u16.to_le_bytes());
                let head = *head;
                self.heads.clear();
                self.iov.clear();
                q.add_used(mem, head, n as u32)?;
                return Ok(1);
            }
        }
        let mut left = written.max(VirtioNetHdr::SIZE);
        let mut used = 0usize;
        for &(_, cap) in &self.heads {
            if left == 0 {
                break;
            }
            left -= left.min(cap as usize);
            used += 1;
        }
        // Trailing chains that got nothing are the last popped: give them back.
        q.unpop((self.heads.len() - used) as u16);
        let nb = used as u16;
        // §5.1.6.4.1: num_buffers is the count with MRG_RXBUF, and 1 without it.
        self.first_write(mem, VirtioNetHdr::NUM_BUFFERS_OFFSET, &nb.to_le_bytes());
        let mut left = written.max(VirtioNetHdr::SIZE);
        for &(head, cap) in &self.heads[..used] {
            let n = left.min(cap as usize);
            left -= n;
            q.add_used(mem, head, n as u32)?;
        }
        self.heads.clear();
        self.iov.clear();
        Ok(nb)
    }

    fn first_write(&self, mem: &GuestMemory, at: usize, bytes: &[u8]) {
        write_iov(mem, &self.iov, at, bytes);
    }

    /// Copies `hdr` and `frame` into the guest's next buffers (gather, copy, commit).
    pub fn deliver(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        hdr: &VirtioNetHdr,
        frame: &[u8],
    ) -> Result<RxOutcome, QueueError> {
        match self.gather(q, mem, VirtioNetHdr::SIZE + frame.len())? {
            Gather::NoBuffers => return Ok(RxOutcome::NoBuffers),
            Gather::TooLarge => return Ok(RxOutcome::TooLarge),
            Gather::Ready => {}
        }
        write_iov(mem, &self.iov, 0, &hdr.to_bytes());
        write_iov(mem, &self.iov, VirtioNetHdr::SIZE, frame);
        let buffers = self.commit(q, mem, VirtioNetHdr::SIZE + frame.len())?;
        Ok(RxOutcome::Delivered { buffers })
    }
}
