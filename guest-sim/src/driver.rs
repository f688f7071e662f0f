//! The driver side of a split virtqueue, as a guest's virtio driver runs it (modeled on Linux
//! `drivers/virtio/virtio_ring.c`): a free list of descriptors, chains posted to the avail ring,
//! `avail.idx` published once per batch, kicks decided by event index, used entries reaped.
//!
//! Ordering with the device (see the table in `engine::virtq::split`): entries before
//! `avail.idx` (Release); `used.idx` before entries (Acquire); a SeqCst fence between publishing
//! and reading the other side's event field, in both the kick and the interrupt decisions.

use std::sync::atomic::{fence, Ordering};

use vring::layout::{self, avail, used, Descriptor, QueueAddrs, UsedElem};
use vring::{GuestMemory, MemError};

/// One buffer of a chain, as the driver posts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (RX) rather than device-readable (TX).
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn read(gpa: u64, len: u32) -> Self {
        Buf {
            gpa,
            len,
            write: false,
        }
    }
    /// A device-writable buffer.
    pub fn write(gpa: u64, len: u32) -> Self {
        Buf {
            gpa,
            len,
            write: true,
        }
    }

    /// Its descriptor, linked to `next` when `more` follow.
    fn descriptor(&self, more: bool, next: u16) -> Descriptor {
        let mut flags = if self.write {
            layout::VIRTQ_DESC_F_WRITE
        } else {
            0
        };
        if more {
            flags |= layout::VIRTQ_DESC_F_NEXT;
        }
        Descriptor {
            addr: self.gpa,
            len: self.len,
            flags,
            next,
        }
    }
}

/// Which free descriptors the driver takes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FreeOrder {
    /// Those freed longest ago: while the device returns chains in order, descriptors cycle in
    /// ring order and heads come in sequence (DPDK's rings).
    #[default]
    Fifo,
    /// Those freed last (Linux `virtio_ring`'s free list): heads come in no ring order, and a
    /// device that assumed they did would be caught. Not with `VIRTIO_F_IN_ORDER`, where the
    /// ring order is the rule.
    Lifo,
}

/// Device-writable bytes of a chain (saturating: a chain's total is at most 2^32 - 1 anyway).
fn writable_len(bufs: &[Buf]) -> u32 {
    bufs.iter()
        .filter(|b| b.write)
        .fold(0u32, |a, b| a.saturating_add(b.len))
}

/// Driver-side failures.
#[derive(Debug, thiserror::Error, Clone)]
pub enum DriverError {
    /// Not enough free descriptors for the chain.
    #[error("{need} descriptors needed, {free} free")]
    NoSpace {
        /// Wanted.
        need: usize,
        /// Available.
        free: u16,
    },
    /// An empty chain.
    #[error("empty chain")]
    Empty,
    /// Queue size not a power of two in 1..=32768.
    #[error("bad queue size {0}")]
    BadSize(u16),
    /// A ring part or buffer is not in guest memory.
    #[error("guest memory")]
    Memory(#[from] MemError),
    /// The device returned a head we did not post, or did not expect back.
    #[error("device returned unknown head {0}")]
    BadUsedId(u32),
    /// The device moved `used.idx` past the buffers published to it.
    #[error("device published used.idx {used_idx} with only {in_flight} buffers in flight")]
    UsedIdxJump {
        /// What it published.
        used_idx: u16,
        /// Buffers the driver had given it (counted from the last one reaped).
        in_flight: u16,
    },
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct DriverQueue {
    addrs: QueueAddrs,
    mask: u16,
    desc_off: usize,
    avail_off: usize,
    used_off: usize,
    event_idx: bool,
    /// Free-list links (the driver's own copy; it never trusts what is in guest memory).
    next: Vec<u16>,
    /// Descriptors in the chain whose head is the index, 0 when not posted.
    chain_len: Vec<u16>,
    /// Device-writable bytes of the chain whose head is the index: its used length when an
    /// in-order device returns it inside a batch without an element of its own.
    chain_wlen: Vec<u32>,
    free_head: u16,
    /// Last descriptor of the free list (freed chains are appended here).
    free_tail: u16,
    num_free: u16,
    /// What the driver last wrote to each main-table descriptor, as its two words (the table
    /// starts zeroed).
    shadow: Vec<(u64, u64)>,
    /// What the driver last wrote to each avail-ring slot (the ring starts zeroed).
    avail_shadow: Vec<u16>,
    /// Next avail slot to fill.
    avail_idx: u16,
    /// `avail.idx` as last published.
    published: u16,
    /// Next used entry to reap.
    last_used: u16,
    /// Last `used.idx` read.
    used_idx: u16,
    /// `VIRTIO_F_IN_ORDER` negotiated: descriptors are taken in ring order and the device may
    /// return a batch with one used element.
    in_order: bool,
    /// Freed chains go to the front of the free list (see [`FreeOrder::Lifo`]); never with
    /// `in_order`.
    lifo: bool,
    /// In order: the used element of the batch being reaped (it names the batch's last
    /// buffer), once read and checked.
    batch_last: Option<UsedElem>,
    /// A device error seen while reaping: the queue is unusable from then on (a real driver
    /// would reset the device), and every later reap returns it again.
    broken: Option<DriverError>,
}

impl DriverQueue {
    /// Sets up a queue at `addrs`, zeroing its rings. `event_idx`: `RING_EVENT_IDX` negotiated.
    pub fn new(mem: &GuestMemory, addrs: QueueAddrs, event_idx: bool) -> Result<Self, DriverError> {
        let size = addrs.size;
        if size == 0 || !size.is_power_of_two() || size > layout::MAX_QUEUE_SIZE {
            return Err(DriverError::BadSize(size));
        }
        let desc = mem.translate(addrs.desc, layout::desc_table_size(size))?;
        let av = mem.translate(addrs.avail, avail::size(size))?;
        let us = mem.translate(addrs.used, used::size(size))?;
        for s in [desc, av, us] {
            mem.fill(s, 0)?;
        }
        Ok(DriverQueue {
            addrs,
            mask: size - 1,
            desc_off: desc.off,
            avail_off: av.off,
            used_off: us.off,
            event_idx,
            next: (1..=size).collect(),
            chain_len: vec![0; size as usize],
            chain_wlen: vec![0; size as usize],
            free_head: 0,
            free_tail: size - 1,
            num_free: size,
            shadow: vec![(0, 0); size as usize],
            avail_shadow: vec![0; size as usize],
            avail_idx: 0,
            published: 0,
            last_used: 0,
            used_idx: 0,
            in_order: false,
            lifo: false,
            batch_last: None,
            broken: None,
        })
    }

    /// Turns on `VIRTIO_F_IN_ORDER` handling (the feature was negotiated). The driver already
    /// takes descriptors in ring order as long as the device returns them in order, which is
    /// what the feature promises; reaping then follows the device's batches (see
    /// [`DriverQueue::pop_used`]).
    ///
    /// Call it on a new queue, before posting: in order the free list is the ring itself.
    pub fn with_in_order(mut self, on: bool) -> Self {
        self.in_order = on;
        // In order, descriptors go in ring order whatever the free order asked.
        self.lifo &= !on;
        self
    }

    /// A queue whose rings were already in use — a guest going on after its device was
    /// restarted, or after a migration: as [`DriverQueue::new`], but with `avail.idx` and
    /// `used.idx` both at `idx` and nothing in flight. A device takes over from base `idx`.
    pub fn new_at(
        mem: &GuestMemory,
        addrs: QueueAddrs,
        event_idx: bool,
        idx: u16,
    ) -> Result<Self, DriverError> {
        let mut q = Self::new(mem, addrs, event_idx)?;
        mem.store_u16(q.avail_off + avail::IDX as usize, idx, Ordering::Release)?;
        mem.store_u16(q.used_off + used::IDX as usize, idx, Ordering::Release)?;
        q.avail_idx = idx;
        q.published = idx;
        q.last_used = idx;
        q.used_idx = idx;
        Ok(q)
    }

    /// Takes free descriptors in `order` (ignored with `VIRTIO_F_IN_ORDER`, where descriptors
    /// go in ring order).
    pub fn with_free_order(mut self, order: FreeOrder) -> Self {
        self.lifo = order == FreeOrder::Lifo && !self.in_order;
        self
    }

    /// Where the rings are.
    pub fn addrs(&self) -> QueueAddrs {
        self.addrs
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains posted and not yet returned by the device.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }

    /// The descriptor after `i` in the free list. In order the list is the ring itself
    /// (§2.7.5: descriptors are used in ring order, `next` is `i + 1`, wrapping), so it is
    /// computed, not loaded: a burst's heads then do not wait on a chain of dependent loads.
    #[inline]
    fn next_of(&self, i: u16) -> u16 {
        if self.in_order {
            i.wrapping_add(1) & self.mask
        } else {
            self.next[i as usize]
        }
    }

    fn alloc(&mut self, n: usize) -> Result<u16, DriverError> {
        if n == 0 {
            return Err(DriverError::Empty);
        }
        if n > self.num_free as usize {
            return Err(DriverError::NoSpace {
                need: n,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let mut last = head;
        for _ in 1..n {
            last = self.next_of(last);
        }
        self.free_head = self.next_of(last);
        self.num_free -= n as u16;
        self.chain_len[head as usize] = n as u16;
        Ok(head)
    }

    #[inline]
    fn write_desc(
        &mut self,
        mem: &GuestMemory,
        table_off: usize,
        i: u16,
        d: Descriptor,
    ) -> Result<(), DriverError> {
        let (lo, hi) = d.to_words();
        if table_off == self.desc_off {
            // The main table: skip a descriptor identical to what is already there. Only the
            // driver writes descriptors, so its copy is the truth; not rewriting keeps the line
            // shared with the device instead of stealing it back every time.
            if self.shadow[i as usize] == (lo, hi) {
                return Ok(());
            }
            self.shadow[i as usize] = (lo, hi);
        }
        Ok(mem.write_words(table_off + i as usize * Descriptor::SIZE, lo, hi)?)
    }

    #[inline]
    fn push_avail(&mut self, mem: &GuestMemory, head: u16) -> Result<u16, DriverError> {
        let slot = self.avail_idx & self.mask;
        // Like the descriptors: a driver recycling buffers in order puts the same head in the
        // same slot every lap (DPDK's in-order rings fill the avail ring once, at set-up), so
        // skip the store and leave the line shared with the device.
        if self.avail_shadow[slot as usize] != head {
            mem.write_u16(self.avail_off + avail::ring(slot) as usize, head)?;
            self.avail_shadow[slot as usize] = head;
        }
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(head)
    }

    /// Posts a chain of direct descriptors (not yet visible: see [`DriverQueue::publish`]).
    /// Returns its head.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[Buf]) -> Result<u16, DriverError> {
        let head = self.alloc(bufs.len())?;
        self.chain_wlen[head as usize] = writable_len(bufs);
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let more = k + 1 < bufs.len();
            let next = if more { self.next_of(i) } else { 0 };
            self.write_desc(mem, self.desc_off, i, b.descriptor(more, next))?;
            i = next;
        }
        self.push_avail(mem, head)
    }

    /// The head the next chain will get, if a descriptor is free. A driver that keeps one
    /// buffer per descriptor (DPDK's in-order TX ring) picks the buffer by it.
    #[inline]
    pub fn next_free_head(&self) -> Option<u16> {
        (self.num_free > 0).then_some(self.free_head)
    }

    /// The heads the next `n` one-descriptor chains will get, in order (fewer if fewer are
    /// free): a driver keeping one buffer per descriptor fills a burst's buffers before
    /// posting any.
    pub fn next_free_heads(&self, n: usize) -> impl Iterator<Item = u16> + '_ {
        let mut h = self.free_head;
        (0..n.min(self.num_free as usize)).map(move |_| {
            let cur = h;
            h = self.next_of(h);
            cur
        })
    }

    /// Posts a chain of one descriptor, the usual packet buffer: [`DriverQueue::add`] without
    /// the chain loop. Returns its head.
    #[inline]
    pub fn add_one(&mut self, mem: &GuestMemory, buf: Buf) -> Result<u16, DriverError> {
        if self.num_free == 0 {
            return Err(DriverError::NoSpace { need: 1, free: 0 });
        }
        let head = self.free_head;
        self.free_head = self.next_of(head);
        self.num_free -= 1;
        self.chain_len[head as usize] = 1;
        self.chain_wlen[head as usize] = if buf.write { buf.len } else { 0 };
        self.write_desc(mem, self.desc_off, head, buf.descriptor(false, 0))?;
        self.push_avail(mem, head)
    }

    /// Posts a chain as one indirect descriptor whose table (`bufs.len()` × 16 bytes) the
    /// driver writes at `table_gpa`. Returns its head.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemory,
        table_gpa: u64,
        bufs: &[Buf],
    ) -> Result<u16, DriverError> {
        if bufs.is_empty() {
            return Err(DriverError::Empty);
        }
        let bytes = (bufs.len() * Descriptor::SIZE) as u64;
        let entry = |k: usize| {
            let more = k + 1 < bufs.len();
            bufs[k].descriptor(more, if more { k as u16 + 1 } else { 0 })
        };
        match mem.translate(table_gpa, bytes) {
            Ok(table) => {
                for k in 0..bufs.len() {
                    self.write_desc(mem, table.off, k as u16, entry(k))?;
                }
            }
            // Across a region boundary (physically contiguous memory may span two memory
            // backends): entry by entry, once the whole table is known to be mapped.
            Err(_) => {
                mem.segments(table_gpa, bytes)
                    .try_for_each(|s| s.map(drop))?;
                for k in 0..bufs.len() {
                    let at = table_gpa + (k * Descriptor::SIZE) as u64;
                    mem.write_gpa(at, &entry(k).to_bytes())?;
                }
            }
        }
        let head = self.alloc(1)?;
        self.chain_wlen[head as usize] = writable_len(bufs);
        let d = Descriptor {
            addr: table_gpa,
            len: bytes as u32,
            flags: layout::VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        self.write_desc(mem, self.desc_off, head, d)?;
        self.push_avail(mem, head)
    }

    /// Publishes everything posted since the last call and says whether the device asked to be
    /// kicked for it (Linux `virtqueue_kick_prepare`).
    pub fn publish(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        let new = self.avail_idx;
        let old = self.published;
        if new == old {
            return Ok(false);
        }
        // Release: the descriptors and avail entries written above are visible to the device no
        // later than the index; pairs with the device's Acquire load of `avail.idx`.
        mem.store_u16(self.avail_off + avail::IDX as usize, new, Ordering::Release)?;
        self.published = new;
        // SeqCst fence: closes the lost-kick race — the device stores `avail_event` (or clears
        // NO_NOTIFY), fences, and re-reads `avail.idx` before sleeping; we store `avail.idx`,
        // fence, and read its request. One of us must see the other's store.
        fence(Ordering::SeqCst);
        Ok(if self.event_idx {
            // Relaxed atomic, ordered by the fence above.
            let ev = mem.load_u16(
                self.used_off + used::avail_event(self.addrs.size) as usize,
                Ordering::Relaxed,
            )?;
            layout::need_event(ev, new, old)
        } else {
            let flags = mem.load_u16(self.used_off + used::FLAGS as usize, Ordering::Relaxed)?;
            flags & layout::VRING_USED_F_NO_NOTIFY == 0
        })
    }

    /// Takes every used element the device has published, freeing their descriptors, and
    /// hands each to `f`. Reads `used.idx` once. Returns how many there were.
    #[inline]
    pub fn reap(
        &mut self,
        mem: &GuestMemory,
        mut f: impl FnMut(UsedElem),
    ) -> Result<u32, DriverError> {
        self.load_used_idx(mem)?;
        let mut n = 0;
        while self.last_used != self.used_idx {
            if self.in_order && self.batch_last.is_none() {
                n += self.reap_in_order_batch(mem, &mut f)?;
                continue;
            }
            f(self.take_used(mem)?);
            n += 1;
        }
        Ok(n)
    }

    /// In order, at the start of a device batch: reads its element once, finds the buffer it
    /// names among those `used.idx` published (before handing any back, as
    /// [`DriverQueue::next_in_order`] does), then frees the batch in one pass. Returns how
    /// many buffers it returned.
    fn reap_in_order_batch(
        &mut self,
        mem: &GuestMemory,
        f: &mut impl FnMut(UsedElem),
    ) -> Result<u32, DriverError> {
        let off = self.used_off + used::ring(self.last_used & self.mask) as usize;
        let e = UsedElem {
            id: mem.read_u32(off)?,
            len: mem.read_u32(off + 4)?,
        };
        let Some(k) = self.published_position(e.id) else {
            return Err(self.fail(DriverError::BadUsedId(e.id)));
        };
        for j in 0..=k {
            let head = self.avail_shadow[(self.last_used & self.mask) as usize];
            let n = self.chain_len[head as usize];
            if n == 0 {
                return Err(self.fail(DriverError::BadUsedId(head as u32)));
            }
            self.free_chain(head, n);
            let len = if j == k {
                e.len
            } else {
                self.chain_wlen[head as usize]
            };
            f(UsedElem {
                id: head as u32,
                len,
            });
        }
        Ok(k as u32 + 1)
    }

    /// Puts chain `head` (`n` descriptors) at the *tail* of the free list and counts it used:
    /// descriptors cycle in order, so a driver posting the same buffers again finds the same
    /// descriptors already written (see `write_desc`) — like DPDK's in-order TX rings. With
    /// [`FreeOrder::Lifo`], at the front instead, as Linux's free list.
    #[inline(always)]
    fn free_chain(&mut self, head: u16, n: u16) {
        let mut last = head;
        for _ in 1..n {
            last = self.next_of(last);
        }
        if self.lifo {
            self.free_to_front(head, last);
        } else {
            if self.num_free == 0 {
                self.free_head = head;
            } else if !self.in_order {
                self.next[self.free_tail as usize] = head;
            }
            self.free_tail = last;
        }
        self.num_free += n;
        self.chain_len[head as usize] = 0;
        self.last_used = self.last_used.wrapping_add(1);
    }

    /// [`FreeOrder::Lifo`]: the chain `head..=last` goes to the front of the free list (Linux
    /// `detach_buf_split`), so the next chain reuses it first.
    #[inline(always)]
    fn free_to_front(&mut self, head: u16, last: u16) {
        self.next[last as usize] = self.free_head;
        self.free_head = head;
        if self.num_free == 0 {
            self.free_tail = last;
        }
    }

    /// Takes the next used element, freeing its descriptors. `Ok(None)`: nothing new.
    #[inline]
    pub fn pop_used(&mut self, mem: &GuestMemory) -> Result<Option<UsedElem>, DriverError> {
        if !self.has_used(mem)? {
            return Ok(None);
        }
        self.take_used(mem).map(Some)
    }

    /// Reads `used.idx` and checks the device did not publish more than is in flight. After a
    /// device error every call returns that error again.
    #[inline]
    fn load_used_idx(&mut self, mem: &GuestMemory) -> Result<(), DriverError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        // Acquire: pairs with the device's Release store of `used.idx`; the used elements are
        // read after it.
        let idx = mem.load_u16(self.used_off + used::IDX as usize, Ordering::Acquire)?;
        // Only published buffers can have been used.
        let in_flight = self.published.wrapping_sub(self.last_used);
        if idx.wrapping_sub(self.last_used) > in_flight {
            return Err(self.fail(DriverError::UsedIdxJump {
                used_idx: idx,
                in_flight,
            }));
        }
        self.used_idx = idx;
        Ok(())
    }

    /// Records a device error: the queue is broken from now on (a real driver would reset the
    /// device).
    fn fail(&mut self, e: DriverError) -> DriverError {
        self.broken.get_or_insert_with(|| e.clone());
        e
    }

    /// Takes the used element at `last_used` (which `used.idx` has passed) and frees its chain.
    #[inline]
    fn take_used(&mut self, mem: &GuestMemory) -> Result<UsedElem, DriverError> {
        let (id, len) = if self.in_order {
            self.next_in_order(mem)?
        } else {
            let off = self.used_off + used::ring(self.last_used & self.mask) as usize;
            (mem.read_u32(off)?, mem.read_u32(off + 4)?)
        };
        let head = u16::try_from(id).ok().filter(|&h| h < self.addrs.size);
        let n = match head {
            Some(h) if self.chain_len[h as usize] > 0 => self.chain_len[h as usize],
            _ => return Err(self.fail(DriverError::BadUsedId(id))),
        };
        self.free_chain(id as u16, n);
        Ok(UsedElem { id, len })
    }

    /// In order: the next used buffer is the next one posted (the avail slot `last_used`
    /// names it). The device wrote one element for its batch, in the batch's first slot,
    /// naming the batch's last buffer; that element is checked when first read — it must name
    /// a buffer inside what `used.idx` published — before any buffer of the batch is handed
    /// back. Buffers before the named one carry no element of their own and count as used
    /// completely (§2.7.9): their used length is what the chain offered the device to write
    /// (0 for TX). Returns the buffer's id and used length.
    #[inline]
    fn next_in_order(&mut self, mem: &GuestMemory) -> Result<(u32, u32), DriverError> {
        let slot = self.last_used & self.mask;
        let head = self.avail_shadow[slot as usize] as u32;
        let last = match self.batch_last {
            Some(e) => e,
            None => {
                let off = self.used_off + used::ring(slot) as usize;
                let e = UsedElem {
                    id: mem.read_u32(off)?,
                    len: mem.read_u32(off + 4)?,
                };
                if e.id != head && self.published_position(e.id).is_none() {
                    return Err(self.fail(DriverError::BadUsedId(e.id)));
                }
                e
            }
        };
        if last.id == head {
            self.batch_last = None;
            return Ok((head, last.len));
        }
        self.batch_last = Some(last);
        Ok((head, self.chain_wlen[head as usize]))
    }

    /// Where, counted from `last_used`, the buffer with head `id` is among those `used.idx`
    /// has published as used, if it is one of them. Out of line: kept off the per-buffer path,
    /// whose code it once slowed by a quarter when inlined there.
    #[inline(never)]
    fn published_position(&self, id: u32) -> Option<usize> {
        let published = self.used_idx.wrapping_sub(self.last_used);
        (0..published).position(|k| {
            let s = self.last_used.wrapping_add(k) & self.mask;
            self.avail_shadow[s as usize] as u32 == id
        })
    }

    /// Whether the device has used a buffer not yet reaped (reads `used.idx` only when the
    /// entries seen last time are all reaped). The same checks as [`DriverQueue::pop_used`].
    pub fn has_used(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        if self.last_used == self.used_idx {
            self.load_used_idx(mem)?;
        }
        Ok(self.last_used != self.used_idx)
    }

    /// Host offset of `avail.idx`: a hint for taking its line before [`DriverQueue::publish`]
    /// stores to it.
    pub fn avail_idx_offset(&self) -> usize {
        self.avail_off + avail::IDX as usize
    }

    /// Host offset of the used element the device writes next: a hint for prefetching.
    pub fn next_used_offset(&self) -> usize {
        self.used_off + used::ring(self.last_used & self.mask) as usize
    }

    /// In order: the head of the next buffer the device will return (the oldest in flight),
    /// if any is. Without `IN_ORDER` the device may return any, so `None`.
    pub fn next_used_head(&self) -> Option<u16> {
        (self.in_order && self.published != self.last_used)
            .then(|| self.avail_shadow[(self.last_used & self.mask) as usize])
    }

    /// The heads of the buffers `used.idx` has published and the driver has not reaped yet, at
    /// most `max` of them, oldest first, as of the last read of `used.idx`
    /// ([`DriverQueue::has_used`]): a hint for prefetching what the driver reads next. In order
    /// they are the buffers posted next (no guest memory read); otherwise the used elements
    /// are read, unchecked (the reap checks them), and heads outside the ring left out.
    pub fn used_heads_hint<'a>(
        &'a self,
        mem: &'a GuestMemory,
        max: u16,
    ) -> impl Iterator<Item = u16> + 'a {
        let n = self.used_idx.wrapping_sub(self.last_used).min(max);
        (0..n).filter_map(move |k| {
            let slot = self.last_used.wrapping_add(k) & self.mask;
            if self.in_order {
                return Some(self.avail_shadow[slot as usize]);
            }
            let off = self.used_off + used::ring(slot) as usize;
            mem.read_u32(off)
                .ok()
                .and_then(|id| u16::try_from(id).ok())
                .filter(|&h| h < self.addrs.size)
        })
    }

    /// Asks for interrupts again and says whether used entries are already waiting (then the
    /// caller must reap instead of sleeping). Linux `virtqueue_enable_cb`.
    pub fn enable_interrupts(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        // Relaxed atomic stores (the other side reads them concurrently); the SeqCst fence
        // below orders them before the re-read.
        if self.event_idx {
            mem.store_u16(
                self.avail_off + avail::used_event(self.addrs.size) as usize,
                self.last_used,
                Ordering::Relaxed,
            )?;
        } else {
            mem.store_u16(self.avail_off + avail::FLAGS as usize, 0, Ordering::Relaxed)?;
        }
        // SeqCst fence: closes the lost-interrupt race — the device stores `used.idx`, fences,
        // and reads `used_event`; we store `used_event`, fence, and re-read `used.idx`.
        fence(Ordering::SeqCst);
        self.used_idx = mem.load_u16(self.used_off + used::IDX as usize, Ordering::Acquire)?;
        Ok(self.used_idx != self.last_used)
    }

    /// Asks for an interrupt only once about three quarters of the buffers in flight are used,
    /// and says whether that many are already (then the caller must reap instead of sleeping).
    /// Linux `virtqueue_enable_cb_delayed`, which its TX path uses when the ring fills up: the
    /// driver wakes while the device still has a quarter left, instead of after the first
    /// buffer. Without event indices this is [`DriverQueue::enable_interrupts`].
    pub fn enable_interrupts_delayed(&mut self, mem: &GuestMemory) -> Result<bool, DriverError> {
        if !self.event_idx {
            return self.enable_interrupts(mem);
        }
        let bufs = self.published.wrapping_sub(self.last_used) * 3 / 4;
        // Relaxed atomic store; the SeqCst fence below orders it before the re-read.
        mem.store_u16(
            self.avail_off + avail::used_event(self.addrs.size) as usize,
            self.last_used.wrapping_add(bufs),
            Ordering::Relaxed,
        )?;
        // SeqCst fence: closes the lost-interrupt race, as in `enable_interrupts`.
        fence(Ordering::SeqCst);
        self.load_used_idx(mem)?;
        Ok(self.used_idx.wrapping_sub(self.last_used) > bufs)
    }

    /// Asks the device not to interrupt (Linux `virtqueue_disable_cb`). With event indices the
    /// request is `used_event` set half the index space ahead of what we have reaped: the used
    /// index can run at most a queue size (<= 2^15) past it, so the device's `need_event` test
    /// does not fire until we move `used_event` again.
    pub fn disable_interrupts(&mut self, mem: &GuestMemory) -> Result<(), DriverError> {
        if self.event_idx {
            let ev = self.last_used.wrapping_add(0x8000);
            mem.store_u16(
                self.avail_off + avail::used_event(self.addrs.size) as usize,
                ev,
                Ordering::Relaxed,
            )?;
        } else {
            mem.store_u16(
                self.avail_off + avail::FLAGS as usize,
                layout::VRING_AVAIL_F_NO_INTERRUPT,
                Ordering::Relaxed,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockGuest;

    #[test]
    fn free_list_recycles_descriptors() {
        let mut g = MockGuest::new(1 << 16, &[4]).expect("guest");
        let mut q = DriverQueue::new(&g.mem, g.queues[0], false).expect("queue");
        let b = g.alloc(64).expect("alloc");
        let h = q
            .add(
                &g.mem,
                &[Buf::read(b, 8), Buf::read(b, 8), Buf::write(b, 8)],
            )
            .expect("add");
        assert_eq!(q.num_free(), 1);
        assert!(matches!(
            q.add(&g.mem, &[Buf::read(b, 8), Buf::read(b, 8)]),
            Err(DriverError::NoSpace { need: 2, free: 1 })
        ));
        assert!(matches!(q.add(&g.mem, &[]), Err(DriverError::Empty)));
        q.publish(&g.mem).expect("publish");
        // Play the device: return the chain.
        let used = g.queues[0].used;
        g.mem
            .write_gpa(used + used::ring(0), &[h as u8, 0, 0, 0, 5, 0, 0, 0])
            .expect("elem");
        g.mem
            .write_gpa(used + used::IDX, &1u16.to_le_bytes())
            .expect("idx");
        let u = q.pop_used(&g.mem).expect("reap").expect("one");
        assert_eq!((u.id, u.len), (h as u32, 5));
        assert_eq!(q.num_free(), 4);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn has_used_sees_published_entries_and_checks_the_index() {
        let mut g = MockGuest::new(1 << 16, &[4]).expect("guest");
        let mut q = DriverQueue::new(&g.mem, g.queues[0], false).expect("queue");
        let b = g.alloc(64).expect("alloc");
        let h = q.add_one(&g.mem, Buf::write(b, 64)).expect("add");
        q.publish(&g.mem).expect("publish");
        assert!(!q.has_used(&g.mem).expect("nothing used yet"));
        let used = g.queues[0].used;
        let elem = used + used::ring(0);
        assert_eq!(
            q.next_used_offset(),
            g.mem.translate(elem, 8).expect("elem").off
        );
        g.mem
            .write_gpa(elem, &[h as u8, 0, 0, 0, 7, 0, 0, 0])
            .expect("elem");
        g.mem
            .write_gpa(used + used::IDX, &1u16.to_le_bytes())
            .expect("idx");
        assert!(q.has_used(&g.mem).expect("one used"));
        // Asking again reads nothing and consumes nothing.
        assert!(q.has_used(&g.mem).expect("still one"));
        let u = q.pop_used(&g.mem).expect("reap").expect("one");
        assert_eq!((u.id, u.len), (h as u32, 7));
        assert!(!q.has_used(&g.mem).expect("all reaped"));
        // A device claiming more than is in flight is caught here too, and stays caught.
        g.mem
            .write_gpa(used + used::IDX, &3u16.to_le_bytes())
            .expect("idx");
        assert!(matches!(
            q.has_used(&g.mem),
            Err(DriverError::UsedIdxJump { .. })
        ));
        assert!(q.has_used(&g.mem).is_err());
    }

    #[test]
    fn delayed_interrupt_asks_at_three_quarters() {
        let mut g = MockGuest::new(1 << 16, &[8]).expect("guest");
        let mut q = DriverQueue::new(&g.mem, g.queues[0], true).expect("queue");
        let b = g.alloc(64).expect("alloc");
        for _ in 0..8 {
            q.add_one(&g.mem, Buf::read(b, 8)).expect("add");
        }
        q.publish(&g.mem).expect("publish");
        let a = g.queues[0];
        let used_event = |m: &GuestMemory| {
            let mut v = [0u8; 2];
            m.read_gpa(a.avail + avail::used_event(8), &mut v)
                .expect("used_event");
            u16::from_le_bytes(v)
        };
        // Nothing used yet: interrupt after 6 of the 8, and sleep.
        assert!(!q.enable_interrupts_delayed(&g.mem).expect("enable"));
        assert_eq!(used_event(&g.mem), 6);
        // The device returns 7 (one in-order-style element is enough for the count): more
        // than three quarters are done, so the caller reaps instead of sleeping.
        for (i, id) in (0..7u64).enumerate() {
            g.mem
                .write_gpa(a.used + used::ring(i as u16), &id.to_le_bytes())
                .expect("elem");
        }
        g.mem
            .write_gpa(a.used + used::IDX, &7u16.to_le_bytes())
            .expect("idx");
        assert!(q.enable_interrupts_delayed(&g.mem).expect("enable"));
    }

    #[test]
    fn lifo_reuses_the_last_freed_chain_first() {
        let mut g = MockGuest::new(1 << 16, &[8]).expect("guest");
        let a = g.queues[0];
        let mut q = DriverQueue::new(&g.mem, a, false)
            .expect("queue")
            .with_free_order(FreeOrder::Lifo);
        let b = g.alloc(64).expect("alloc");
        let heads: Vec<u16> = (0..3)
            .map(|_| {
                q.add(&g.mem, &[Buf::read(b, 8), Buf::read(b, 8)])
                    .expect("add")
            })
            .collect();
        assert_eq!(heads, [0, 2, 4]);
        q.publish(&g.mem).expect("publish");
        // The device returns the first two, in order.
        for (i, h) in heads[..2].iter().enumerate() {
            g.mem
                .write_gpa(a.used + used::ring(i as u16), &(*h as u64).to_le_bytes())
                .expect("elem");
        }
        g.mem
            .write_gpa(a.used + used::IDX, &2u16.to_le_bytes())
            .expect("idx");
        assert_eq!(q.reap(&g.mem, |_| {}).expect("reap"), 2);
        // The chain freed last (head 2) comes first, then head 0, then the never-used tail.
        let next: Vec<u16> = (0..3)
            .map(|_| {
                q.add(&g.mem, &[Buf::read(b, 8), Buf::read(b, 8)])
                    .expect("add")
            })
            .collect();
        assert_eq!(next, [2, 0, 6]);
        assert_eq!(q.num_free(), 0);
    }

    #[test]
    fn a_queue_resumed_at_an_index_posts_from_there() {
        let mut g = MockGuest::new(1 << 16, &[4]).expect("guest");
        let a = g.queues[0];
        let mut q = DriverQueue::new_at(&g.mem, a, true, 65534).expect("queue");
        let b = g.alloc(64).expect("alloc");
        for _ in 0..3 {
            q.add_one(&g.mem, Buf::read(b, 8)).expect("add");
        }
        q.publish(&g.mem).expect("publish");
        let mut idx = [0u8; 2];
        g.mem.read_gpa(a.avail + avail::IDX, &mut idx).expect("idx");
        assert_eq!(u16::from_le_bytes(idx), 1);
        assert_eq!(q.in_flight(), 3);
        assert!(!q.has_used(&g.mem).expect("nothing used"));
    }

    #[test]
    fn unknown_used_id_is_an_error() {
        let mut g = MockGuest::new(1 << 16, &[4]).expect("guest");
        let mut q = DriverQueue::new(&g.mem, g.queues[0], false).expect("queue");
        let b = g.alloc(64).expect("alloc");
        q.add(&g.mem, &[Buf::read(b, 8)]).expect("add");
        q.publish(&g.mem).expect("publish");
        let used = g.queues[0].used;
        g.mem
            .write_gpa(used + used::ring(0), &[3, 0, 0, 0, 0, 0, 0, 0])
            .expect("elem");
        g.mem
            .write_gpa(used + used::IDX, &1u16.to_le_bytes())
            .expect("idx");
        assert!(matches!(q.pop_used(&g.mem), Err(DriverError::BadUsedId(3))));
    }

    #[test]
    fn the_used_heads_hint_names_what_the_next_reaps_return() {
        for in_order in [false, true] {
            let mut g = MockGuest::new(1 << 16, &[8]).expect("guest");
            let a = g.queues[0];
            let mut q = DriverQueue::new(&g.mem, a, false)
                .expect("queue")
                .with_in_order(in_order);
            let b = g.alloc(64).expect("alloc");
            let heads: Vec<u16> = (0..4)
                .map(|_| q.add_one(&g.mem, Buf::write(b, 8)).expect("add"))
                .collect();
            q.publish(&g.mem).expect("publish");
            // The device returns the first three, one element each.
            for (i, h) in heads[..3].iter().enumerate() {
                g.mem
                    .write_gpa(a.used + used::ring(i as u16), &(*h as u64).to_le_bytes())
                    .expect("elem");
            }
            g.mem
                .write_gpa(a.used + used::IDX, &3u16.to_le_bytes())
                .expect("idx");
            assert_eq!(
                q.used_heads_hint(&g.mem, 8).count(),
                0,
                "before used.idx is read"
            );
            assert!(q.has_used(&g.mem).expect("used"));
            let hint: Vec<u16> = q.used_heads_hint(&g.mem, 8).collect();
            assert_eq!(hint, heads[..3], "in order: {in_order}");
            assert_eq!(q.used_heads_hint(&g.mem, 2).count(), 2);
            let reaped: Vec<u16> = std::iter::from_fn(|| q.pop_used(&g.mem).expect("reap"))
                .map(|u| u.id as u16)
                .collect();
            assert_eq!(reaped, hint);
            assert_eq!(q.used_heads_hint(&g.mem, 8).count(), 0);
        }
    }
}
