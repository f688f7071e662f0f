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
///
/// Buffers are popped ahead, up to a batch at a time ([`RxWriter::with_batch`]; one by one by
/// default, as QEMU's `virtqueue_pop` does): one `avail.idx` read and one walk of the batch's
/// descriptors, all their misses in flight together, instead of an avail slot, a descriptor and
/// a buffer missed in turn inside every frame. A frame that fits the next popped buffer (every
/// frame up to the buffer size: the usual case) is written straight into it. A frame that needs
/// more (mergeable buffers) or cannot fit gives the popped buffers back to the ring first
/// (they are the last popped, in ring order) and takes the general path, one chain at a time.
/// Popped buffers not used yet stay the device's between handler runs, as Linux's
/// `vhost_net_buf` holds frames; [`RxWriter::release`] gives them back (before the queue's
/// state is read, at stop).
#[derive(Debug)]
pub struct RxWriter {
    mrg_rxbuf: bool,
    /// Chains popped ahead, in ring order; `ahead[next..popped]` are popped and unused.
    ahead: Vec<Chain>,
    next: usize,
    popped: usize,
    /// The current frame's buffers.
    cur: Current,
    /// The general path: the chain being popped, and the frame's chains (head and writable
    /// capacity) and their writable segments.
    chain: Chain,
    heads: Vec<(u16, u32)>,
    iov: Vec<Span>,
}

/// Where the current frame's buffers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Current {
    /// No frame gathered.
    None,
    /// In `ahead[i]`, one chain.
    Ahead(usize),
    /// In `heads`/`iov` (the general path).
    Merged,
}

impl RxWriter {
    /// A writer for a queue with or without mergeable buffers negotiated, popping buffers one
    /// at a time.
    pub fn new(mrg_rxbuf: bool) -> Self {
        Self::with_batch(mrg_rxbuf, 1)
    }

    /// A writer that pops up to `batch` buffers at a time (at least one).
    pub fn with_batch(mrg_rxbuf: bool, batch: usize) -> Self {
        RxWriter {
            mrg_rxbuf,
            ahead: (0..batch.max(1)).map(|_| Chain::with_capacity(4)).collect(),
            next: 0,
            popped: 0,
            cur: Current::None,
            chain: Chain::with_capacity(16),
            heads: Vec::with_capacity(64),
            iov: Vec::with_capacity(64),
        }
    }

    /// Popped buffers not used yet.
    pub fn held(&self) -> usize {
        self.popped - self.next
    }

    /// Makes sure a popped buffer is waiting in `ahead`, popping a batch if none is. `Ok(false)`:
    /// the guest has posted none.
    fn fill(&mut self, q: &mut DeviceQueue, mem: &GuestMemory) -> Result<bool, QueueError> {
        if self.next < self.popped {
            if q.broken().is_some() {
                // Broken since: the held buffers are as dead as the queue.
                self.give_back_ahead(q);
                return Err(QueueError::Broken);
            }
            return Ok(true);
        }
        let (n, failed) = q.pop_batch(mem, &mut self.ahead, |c| {
            if !c.readable().is_empty() {
                return Err(QueueError::UnexpectedReadable);
            }
            // §5.1.6.3.1: "each buffer MUST be at least the size of the struct
            // virtio_net_hdr" — which also keeps a ring of empty buffers from spinning the
            // merge loop.
            let len = c.writable_len();
            if (len as usize) < VirtioNetHdr::SIZE {
                return Err(QueueError::HeaderTooShort { len });
            }
            // The lines the frame will be written to: the guest read them a lap ago, so each
            // store would wait for its copy to be invalidated. Asked for now, for the whole
            // batch at once.
            if let Some(s) = c.writable().first() {
                mem.prefetch_write(s.off);
                mem.prefetch_write(s.off + 64);
            }
            Ok(())
        });
        (self.next, self.popped) = (0, n);
        if n > 0 {
            // And the used elements the batch will take, eight to a line.
            for k in (0..n as u16).step_by(8) {
                mem.prefetch_write(q.used_elem_offset(k));
            }
        }
        match failed {
            // A bad buffer breaks the queue now, whatever good ones came before it in the batch
            // (they go back unused: the queue takes no more frames either way).
            Some(e) => {
                self.give_back_ahead(q);
                Err(e)
            }
            None => Ok(n > 0),
        }
    }

    /// Gives the popped, unused buffers back to the ring: they are the last popped.
    fn give_back_ahead(&mut self, q: &mut DeviceQueue) {
        q.unpop((self.popped - self.next) as u16);
        (self.next, self.popped) = (0, 0);
    }

    /// Gives every buffer the writer holds back to the ring (the current frame's and those
    /// popped ahead), so the queue's state (`GET_VRING_BASE`) names the first buffer the device
    /// has not used.
    pub fn release(&mut self, q: &mut DeviceQueue) {
        self.abort(q);
        self.give_back_ahead(q);
    }

    /// Pops the next buffer before there is a frame for it, so that when one comes only the
    /// copy and the used element are left to do (the worker calls this while it busy-polls
    /// for RX frames: the walk and its checks move off the path from frame to guest). The
    /// buffer is the device's from then on, as after any pop; the next [`RxWriter::gather`]
    /// starts from it, and [`RxWriter::release`] gives it back. Returns the first writable
    /// segment's host offset (a hint for taking its lines ahead of the writes), or `None` if
    /// no buffer is posted. Calling it again while a buffer is held changes nothing.
    pub fn prepare(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
    ) -> Result<Option<usize>, QueueError> {
        if !self.fill(q, mem)? {
            return Ok(None);
        }
        Ok(self.ahead[self.next].writable().first().map(|s| s.off))
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
        self.abort(q);
        if !self.fill(q, mem)? {
            return Ok(Gather::NoBuffers);
        }
        if self.ahead[self.next].writable_len() as usize >= len {
            self.cur = Current::Ahead(self.next);
            return Ok(Gather::Ready);
        }
        // The frame needs more than the next buffer: back to the ring with everything popped
        // ahead, and the general path.
        self.give_back_ahead(q);
        if !self.mrg_rxbuf {
            return Ok(Gather::TooLarge);
        }
        self.gather_merged(q, mem, len)
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
        let len = chain.writable_len();
        if (len as usize) < VirtioNetHdr::SIZE {
            return Err(q.fail(QueueError::HeaderTooShort { len }));
        }
        Ok(true)
    }

    /// The general path: pops chains one at a time until they hold `len` bytes.
    #[cold]
    fn gather_merged(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        len: usize,
    ) -> Result<Gather, QueueError> {
        self.heads.clear();
        self.iov.clear();
        let mut cap = 0usize;
        while cap < len {
            // The whole ring is not enough: this frame can never fit, however long we wait for
            // the guest (which cannot post more than the ring holds). Drop it.
            let too_large = self.heads.len() >= q.size() as usize;
            if too_large || !Self::pop_checked(q, mem, &mut self.chain)? {
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
            if self.iov.len() + self.chain.writable().len() > MAX_SEGMENTS {
                self.heads.clear();
                self.iov.clear();
                return Err(q.fail(QueueError::TooManySegments(MAX_SEGMENTS)));
            }
            cap += self.chain.writable_len() as usize;
            self.heads
                .push((self.chain.head(), self.chain.writable_len()));
            self.iov.extend_from_slice(self.chain.writable());
        }
        self.cur = Current::Merged;
        Ok(Gather::Ready)
    }

    /// The writable segments gathered for the current frame.
    pub fn iov(&self) -> &[Span] {
        match self.cur {
            Current::None => &[],
            Current::Ahead(i) => self.ahead[i].writable(),
            Current::Merged => &self.iov,
        }
    }

    /// Gives the current frame's buffers back unused (the backend had nothing after all). A
    /// buffer popped ahead stays held for the next frame.
    pub fn abort(&mut self, q: &mut DeviceQueue) {
        if self.cur == Current::Merged {
            q.unpop(self.heads.len() as u16);
            self.heads.clear();
            self.iov.clear();
        }
        self.cur = Current::None;
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
        match std::mem::replace(&mut self.cur, Current::None) {
            Current::None => Ok(0),
            Current::Ahead(i) => {
                // One buffer: num_buffers is 1 with or without MRG_RXBUF (§5.1.6.4.1).
                let c = &self.ahead[i];
                let n = written
                    .max(VirtioNetHdr::SIZE)
                    .min(c.writable_len() as usize);
                match c.writable() {
                    [first, ..] if first.len >= VirtioNetHdr::SIZE => {
                        // The segment was translated inside guest memory; should the write
                        // fail anyway the frame is still returned, as `write_iov` does.
                        let at = first.off + VirtioNetHdr::NUM_BUFFERS_OFFSET;
                        let _ = mem.write_at(at, &1u16.to_le_bytes());
                    }
                    segs => {
                        write_iov(
                            mem,
                            segs,
                            VirtioNetHdr::NUM_BUFFERS_OFFSET,
                            &1u16.to_le_bytes(),
                        );
                    }
                }
                let head = c.head();
                self.next = i + 1;
                q.add_used(mem, head, n as u32)?;
                Ok(1)
            }
            Current::Merged => self.commit_merged(q, mem, written),
        }
    }

    fn commit_merged(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        written: usize,
    ) -> Result<u16, QueueError> {
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
        write_iov(mem, self.iov(), 0, &hdr.to_bytes());
        write_iov(mem, self.iov(), VirtioNetHdr::SIZE, frame);
        let buffers = self.commit(q, mem, VirtioNetHdr::SIZE + frame.len())?;
        Ok(RxOutcome::Delivered { buffers })
    }
}
