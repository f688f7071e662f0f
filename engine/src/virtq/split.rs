//! The device side of a split virtqueue (virtio 1.2 §2.7): pop chains from the avail ring, add
//! used elements, publish `used.idx` once per batch, and suppress notifications both ways.
//!
//! The queue is owned by one thread (the worker); the guest is the only other party. Memory
//! ordering with the guest follows Linux `drivers/vhost/vhost.c`:
//!
//! | step | here | pairs with (driver) |
//! |---|---|---|
//! | read `avail.idx` | Acquire load | Release store of `avail.idx` after writing the entry |
//! | publish `used.idx` | Release store | Acquire load of `used.idx` before reading entries |
//! | re-enable kicks | store `avail_event`, SeqCst fence, re-read `avail.idx` | store `avail.idx`, fence, read `avail_event` |
//! | decide to interrupt | SeqCst fence after `used.idx`, read `used_event` | store `used_event`, fence, re-read `used.idx` |

use std::sync::atomic::{fence, Ordering};

use vring::layout::{self, avail, used, QueueAddrs};
use vring::net::{bit, Features};
use vring::GuestMemory;

use super::chain::{self, Chain, Table};
use super::error::{ErrorKind, QueueError};
use super::state::QueueState;

/// Counters of one queue. Plain integers: the queue has one owner thread, which copies them
/// out into the shared metrics.
#[derive(Clone, Debug, Default)]
pub struct QueueStats {
    /// Chains popped (a chain given back by `unpop` and popped again counts twice).
    pub chains: u64,
    /// Descriptors those chains used.
    pub descriptors: u64,
    /// Chains returned through the used ring (with `VIRTIO_F_IN_ORDER` a batch of them takes
    /// one element).
    pub used: u64,
    /// Times `used.idx` was published (batches).
    pub publishes: u64,
    /// Times the guest was told it should be interrupted.
    pub notifies: u64,
    /// Times an interrupt was suppressed by the guest's request.
    pub notifies_suppressed: u64,
    /// Reloads of `avail.idx` from guest memory.
    pub avail_reads: u64,
    /// Errors, by [`ErrorKind`].
    pub errors: [u64; ErrorKind::COUNT],
}

/// The device side of one split virtqueue.
#[derive(Debug)]
pub struct DeviceQueue {
    /// Where the rings are (for [`DeviceQueue::state`]).
    addrs: QueueAddrs,
    size: u16,
    mask: u16,
    table: Table,
    avail_off: usize,
    used_off: usize,
    event_idx: bool,
    /// `VIRTIO_F_IN_ORDER`: a batch may be returned with one used element.
    in_order: bool,
    /// Next avail-ring slot to consume (`last_avail_idx`).
    next_avail: u16,
    /// Last `avail.idx` read from the guest.
    avail_idx: u16,
    /// Next used-ring slot to fill; published to the guest by [`DeviceQueue::publish_used`].
    next_used: u16,
    /// `used.idx` as last published.
    published_used: u16,
    /// `used.idx` when the guest was last notified (`signalled_used`), if known.
    signalled_used: Option<u16>,
    /// Without event indices: an early notification went out and the guest's
    /// `VRING_AVAIL_F_NO_INTERRUPT` has not been seen set since
    /// (see [`DeviceQueue::needs_notification_early`]).
    early_notified: bool,
    /// Kicks currently suppressed.
    kicks_disabled: bool,
    broken: Option<QueueError>,
    /// Counters.
    pub stats: QueueStats,
}

impl DeviceQueue {
    /// Sets up the device side of a new queue the driver placed at `addrs`, with the
    /// negotiated `features` (`RING_EVENT_IDX`, `RING_INDIRECT_DESC`, `IN_ORDER`): both indices
    /// start at 0, as after a device reset (the driver zeroed the rings). Validates size,
    /// alignment and that each ring part lies in one memory region; after this, ring accesses
    /// are offsets into parts known to be mapped.
    pub fn new(
        mem: &GuestMemory,
        addrs: QueueAddrs,
        features: Features,
    ) -> Result<Self, QueueError> {
        Self::setup(mem, addrs, features)
    }

    /// Starts the device side of a queue that may already be in use (`SET_VRING_BASE`, then
    /// the ring is kicked): the device takes avail entries from `state.next_avail` on, and its
    /// used index from `used.idx` in guest memory, where the ring's last user left it (Linux
    /// `vhost_vq_init_access`). A base more than a queue's worth of chains ahead of `used.idx`
    /// is [`QueueError::BadBase`]; the ring itself is checked as in [`DeviceQueue::new`].
    pub fn start(
        mem: &GuestMemory,
        state: QueueState,
        features: Features,
    ) -> Result<Self, QueueError> {
        let mut q = Self::setup(mem, state.addrs, features)?;
        // Acquire: whatever returned the chains up to this index (the previous device) wrote
        // their used elements before it.
        let used_idx = mem
            .load_u16(q.used_off + used::IDX as usize, Ordering::Acquire)
            .map_err(|e| QueueError::BadRing {
                part: "used",
                gpa: state.addrs.used,
                source: Some(e),
            })?;
        let base = state.next_avail;
        if base.wrapping_sub(used_idx) > q.size {
            return Err(QueueError::BadBase {
                base,
                used_idx,
                size: q.size,
            });
        }
        q.next_avail = base;
        // Nothing is known of the guest's index until it is read ("forget the cached index").
        q.avail_idx = base;
        q.next_used = used_idx;
        q.published_used = used_idx;
        Ok(q)
    }

    /// Where the queue stands: what `GET_VRING_BASE` reports (see [`QueueState`]).
    pub fn state(&self) -> QueueState {
        QueueState {
            addrs: self.addrs,
            next_avail: self.next_avail,
        }
    }

    /// Stops the queue (`GET_VRING_BASE`) and returns where it stopped; a later
    /// [`DeviceQueue::start`] from it goes on from there. Return or give back every popped
    /// chain first ([`DeviceQueue::in_flight`] is then 0): one still out is lost to the guest.
    /// Used elements added and not yet published are published here.
    pub fn stop(mut self, mem: &GuestMemory) -> QueueState {
        // Published even on a broken queue: the chains were returned before it broke.
        let _ = self.publish_used(mem);
        self.state()
    }

    /// Chains popped and not yet returned through the used ring.
    pub fn in_flight(&self) -> u16 {
        self.next_avail.wrapping_sub(self.next_used)
    }

    fn setup(mem: &GuestMemory, addrs: QueueAddrs, features: Features) -> Result<Self, QueueError> {
        let size = addrs.size;
        if size == 0 || !size.is_power_of_two() || size > layout::MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize(size));
        }
        let part = |name, gpa: u64, len: u64, align: u64| {
            if !gpa.is_multiple_of(align) {
                return Err(QueueError::BadRing {
                    part: name,
                    gpa,
                    source: None,
                });
            }
            mem.translate(gpa, len)
                .map(|s| s.off)
                .map_err(|e| QueueError::BadRing {
                    part: name,
                    gpa,
                    source: Some(e),
                })
        };
        let desc_off = part(
            "desc",
            addrs.desc,
            layout::desc_table_size(size),
            layout::DESC_ALIGN,
        )?;
        let avail_off = part("avail", addrs.avail, avail::size(size), layout::AVAIL_ALIGN)?;
        let used_off = part("used", addrs.used, used::size(size), layout::USED_ALIGN)?;
        Ok(DeviceQueue {
            addrs,
            size,
            mask: size - 1,
            table: Table {
                off: desc_off,
                size,
                indirect: features.has(bit::RING_INDIRECT_DESC),
            },
            avail_off,
            used_off,
            event_idx: features.has(bit::RING_EVENT_IDX),
            in_order: features.has(bit::IN_ORDER),
            next_avail: 0,
            avail_idx: 0,
            next_used: 0,
            published_used: 0,
            signalled_used: None,
            early_notified: false,
            kicks_disabled: false,
            broken: None,
            stats: QueueStats::default(),
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether `VIRTIO_F_IN_ORDER` is in use.
    pub fn in_order(&self) -> bool {
        self.in_order
    }

    /// Whether `RING_EVENT_IDX` is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The error that stopped the queue, if any.
    pub fn broken(&self) -> Option<&QueueError> {
        self.broken.as_ref()
    }

    /// Marks the queue broken with `err` (also for errors found above this layer, such as a
    /// TX chain with writable parts), counts it, and returns it.
    pub fn fail(&mut self, err: QueueError) -> QueueError {
        self.stats.errors[err.kind() as usize] += 1;
        if self.broken.is_none() {
            self.broken = Some(err.clone());
        }
        err
    }

    #[inline]
    fn check_live(&mut self) -> Result<(), QueueError> {
        match self.broken {
            None => Ok(()),
            Some(_) => Err(QueueError::Broken),
        }
    }

    /// Reads `avail.idx` and checks it is at most `size` entries ahead of us.
    #[inline]
    fn read_avail_idx(&mut self, mem: &GuestMemory) -> Result<u16, QueueError> {
        self.stats.avail_reads += 1;
        // Acquire: pairs with the driver's Release store of `avail.idx`; the ring entries and
        // descriptors it publishes are read after this load.
        let idx = mem
            .load_u16(self.avail_off + avail::IDX as usize, Ordering::Acquire)
            .map_err(|e| QueueError::BadRing {
                part: "avail",
                gpa: 0,
                source: Some(e),
            })?;
        if idx.wrapping_sub(self.next_avail) > self.size {
            return Err(QueueError::AvailIdxJump {
                avail_idx: idx,
                next_avail: self.next_avail,
                size: self.size,
            });
        }
        self.avail_idx = idx;
        Ok(idx)
    }

    /// Chains available but not yet popped, as of the last read of `avail.idx`
    /// (re-read if that showed none).
    #[inline]
    pub fn pending(&mut self, mem: &GuestMemory) -> Result<u16, QueueError> {
        self.check_live()?;
        if self.avail_idx == self.next_avail {
            if let Err(e) = self.read_avail_idx(mem) {
                return Err(self.fail(e));
            }
        }
        Ok(self.avail_idx.wrapping_sub(self.next_avail))
    }

    /// Whether the guest published entries since the device last read `avail.idx` (not merely
    /// whether entries are waiting). Used while waiting for more RX buffers than are posted.
    /// An invalid index breaks the queue and is returned with its own kind.
    pub fn has_new_avail(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        self.check_live()?;
        let seen = self.avail_idx;
        match self.read_avail_idx(mem) {
            Ok(idx) => Ok(idx != seen),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Pops the next available chain into `chain`. `Ok(false)`: nothing available.
    /// An error breaks the queue; every later call returns [`QueueError::Broken`].
    ///
    /// `avail.idx` is read from guest memory only when the entries seen last time are used up,
    /// so a batch costs one shared-cache-line read.
    #[inline(always)]
    pub fn pop(&mut self, mem: &GuestMemory, chain: &mut Chain) -> Result<bool, QueueError> {
        if self.pending(mem)? == 0 {
            return Ok(false);
        }
        let walked = self
            .next_head(mem)
            .and_then(|head| chain::walk(mem, self.table, head, chain));
        match walked {
            Ok(()) => {
                self.next_avail = self.next_avail.wrapping_add(1);
                self.stats.chains += 1;
                self.stats.descriptors += chain.descriptors() as u64;
                Ok(true)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Pops up to `chains.len()` chains into `chains`, in ring order, handing each to `check`
    /// (for example the TX header parse) before it counts as popped. `avail.idx` is read at
    /// most once.
    ///
    /// Returns how many chains were popped and, if a chain was malformed or `check` refused
    /// it, the error: the queue is then broken (counted here), the bad chain is not popped, and
    /// the chains before it are good ones the caller must still complete.
    #[inline(always)]
    pub fn pop_batch<F>(
        &mut self,
        mem: &GuestMemory,
        chains: &mut [Chain],
        mut check: F,
    ) -> (usize, Option<QueueError>)
    where
        F: FnMut(&Chain) -> Result<(), QueueError>,
    {
        let want = match self.pending(mem) {
            Ok(p) => (p as usize).min(chains.len()),
            Err(e) => return (0, Some(e)),
        };
        let mut descriptors = 0u64;
        let mut done = 0;
        let mut failed = None;
        for chain in &mut chains[..want] {
            let walked = self
                .next_head(mem)
                .and_then(|head| chain::walk(mem, self.table, head, chain));
            if let Err(e) = walked.and_then(|()| check(chain)) {
                failed = Some(self.fail(e));
                break;
            }
            self.next_avail = self.next_avail.wrapping_add(1);
            descriptors += chain.descriptors() as u64;
            done += 1;
        }
        self.stats.chains += done as u64;
        self.stats.descriptors += descriptors;
        (done, failed)
    }

    /// Returns the chains `heads`, popped in this order, all with used length `len` (TX: 0).
    /// Not visible until [`DeviceQueue::publish_used`]. `heads` must be the oldest chains not
    /// yet returned, in pop order, at most a queue's worth.
    ///
    /// With `VIRTIO_F_IN_ORDER` only the last chain's element is written, so the driver takes
    /// the others as used completely (§2.7.9): call this only for read-only chains (`len` 0)
    /// or chains the device wrote whole.
    ///
    /// With `VIRTIO_F_IN_ORDER` the batch takes one used element, written in the batch's first
    /// slot and naming its last chain, and `used.idx` moves by the batch size (§2.7.9: "the
    /// device then skips forward in the ring according to the size of the batch"); the driver
    /// knows the order the buffers went in. Otherwise each chain gets its element, as
    /// [`DeviceQueue::add_used`] would write it.
    #[inline]
    pub fn add_used_batch(
        &mut self,
        mem: &GuestMemory,
        heads: impl Iterator<Item = u16>,
        len: u32,
    ) -> Result<(), QueueError> {
        let mut res = Ok(());
        let mut n: u16 = 0;
        if self.in_order {
            let mut last = None;
            for head in heads {
                last = Some(head);
                n = n.wrapping_add(1);
            }
            debug_assert!(n <= self.size, "a used batch larger than the queue");
            if let Some(head) = last {
                let off = self.used_off + used::ring(self.next_used & self.mask) as usize;
                res = mem.write_u64(off, head as u64 | (len as u64) << 32);
                match res {
                    Ok(()) => self.next_used = self.next_used.wrapping_add(n),
                    Err(_) => n = 0,
                }
            }
        } else {
            for head in heads {
                let off = self.used_off + used::ring(self.next_used & self.mask) as usize;
                // `res` is assigned only on the way out: overwriting it every element made the
                // loop run the drop glue of the `Result` it replaced, per element.
                if let Err(e) = mem.write_u64(off, head as u64 | (len as u64) << 32) {
                    res = Err(e);
                    break;
                }
                self.next_used = self.next_used.wrapping_add(1);
                n = n.wrapping_add(1);
            }
        }
        self.stats.used += n as u64;
        res.map_err(|e| {
            self.fail(QueueError::BadRing {
                part: "used",
                gpa: 0,
                source: Some(e),
            })
        })
    }

    /// Where the next chain's first buffer will most likely be: what the descriptor named by
    /// the next avail slot says now, before the guest publishes it (a driver recycling in order
    /// puts the same head there again). A hint for prefetching only: nothing here is trusted
    /// or consumed, and anything odd gives `None`.
    pub fn peek_next_buffer(&self, mem: &GuestMemory) -> Option<usize> {
        if self.broken.is_some() {
            return None;
        }
        let head = self.next_head(mem).ok().filter(|&h| h < self.size)?;
        let off = self.table.off + head as usize * vring::layout::Descriptor::SIZE;
        let (addr, hi) = mem.read_words(off).ok()?;
        mem.translate(addr, (hi as u32).max(1) as u64)
            .ok()
            .map(|s| s.off)
    }

    /// The head in the avail slot `next_avail` (unchecked: the walk checks it).
    #[inline(always)]
    fn next_head(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        let slot = self.avail_off + avail::ring(self.next_avail & self.mask) as usize;
        mem.read_u16(slot).map_err(|e| QueueError::BadRing {
            part: "avail",
            gpa: 0,
            source: Some(e),
        })
    }

    /// Gives back the last `n` popped chains (Linux `vhost_discard_vq_desc`), for example when
    /// a received frame did not fit in the buffers popped for it.
    /// The counters keep counting pops: a chain given back and popped again counts twice.
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Host offset of `used.idx`: a hint for taking its line before [`DeviceQueue::publish_used`]
    /// stores to it.
    pub fn used_idx_offset(&self) -> usize {
        self.used_off + used::IDX as usize
    }

    /// Host offset of the used element the next [`DeviceQueue::add_used`] writes: a hint for
    /// taking its line ahead of time.
    pub fn next_used_offset(&self) -> usize {
        self.used_off + used::ring(self.next_used & self.mask) as usize
    }

    /// Host offset of the used element `ahead` elements after the one the next
    /// [`DeviceQueue::add_used`] writes: a hint for taking a batch's lines ahead of time.
    pub fn used_elem_offset(&self, ahead: u16) -> usize {
        self.used_off + used::ring(self.next_used.wrapping_add(ahead) & self.mask) as usize
    }

    /// Adds a used element for chain `head` with `len` bytes written. Not visible to the guest
    /// until [`DeviceQueue::publish_used`].
    #[inline]
    /// Works on a broken queue too: chains popped before it broke are still returned to the
    /// guest (the ring memory itself was validated at set-up).
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        let off = self.used_off + used::ring(self.next_used & self.mask) as usize;
        let elem = (head as u64) | ((len as u64) << 32);
        if let Err(e) = mem.write_u64(off, elem) {
            return Err(self.fail(QueueError::BadRing {
                part: "used",
                gpa: 0,
                source: Some(e),
            }));
        }
        self.next_used = self.next_used.wrapping_add(1);
        self.stats.used += 1;
        Ok(())
    }

    /// Makes the used elements added so far visible to the guest: one store per batch.
    #[inline]
    pub fn publish_used(&mut self, mem: &GuestMemory) -> Result<(), QueueError> {
        if self.next_used == self.published_used {
            return Ok(());
        }
        // Release: the used elements written by `add_used` become visible no later than the new
        // index; pairs with the driver's Acquire load of `used.idx`.
        if let Err(e) = mem.store_u16(
            self.used_off + used::IDX as usize,
            self.next_used,
            Ordering::Release,
        ) {
            return Err(self.fail(QueueError::BadRing {
                part: "used",
                gpa: 0,
                source: Some(e),
            }));
        }
        self.published_used = self.next_used;
        self.stats.publishes += 1;
        Ok(())
    }

    /// Whether the guest wants an interrupt for what was published since the last one
    /// (Linux `vhost_notify`). Call after [`DeviceQueue::publish_used`]; a `true` should be
    /// followed by signalling the call eventfd.
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> bool {
        // SeqCst fence: closes the race where our read of `used_event`/`avail.flags` is ordered
        // before our `used.idx` store is visible, while the guest stores `used_event` and then
        // re-checks `used.idx` — each would see the other's old value and the interrupt would
        // be lost with the guest asleep.
        fence(Ordering::SeqCst);
        self.needs_notification_fenced(mem)
    }

    /// [`DeviceQueue::needs_notification`] without its fence, for a caller that publishes on
    /// several queues and then decides for all of them: it must issue the `SeqCst` fence
    /// itself, after its last [`DeviceQueue::publish_used`] and before this call.
    pub fn needs_notification_fenced(&mut self, mem: &GuestMemory) -> bool {
        if self.broken.is_some() {
            // A broken queue still tells the guest, so it can notice and reset.
            return true;
        }
        let new = self.published_used;
        let notify = if self.event_idx {
            // Relaxed atomic: ordered by the SeqCst fence above; atomic so the race with the
            // guest's store is defined.
            let ev = mem.load_u16(
                self.avail_off + avail::used_event(self.size) as usize,
                Ordering::Relaxed,
            );
            let old = self.signalled_used.replace(new);
            match (ev, old) {
                (Ok(ev), Some(old)) => layout::need_event(ev, new, old),
                // First notification, or an unreadable field: notify (spurious is safe).
                _ => true,
            }
        } else {
            match mem.load_u16(self.avail_off + avail::FLAGS as usize, Ordering::Relaxed) {
                Ok(flags) => {
                    let asked = flags & layout::VRING_AVAIL_F_NO_INTERRUPT == 0;
                    // The guest is awake again: a later request of its own is news.
                    self.early_notified &= asked;
                    asked
                }
                Err(_) => true,
            }
        };
        if notify {
            self.stats.notifies += 1;
        } else {
            self.stats.notifies_suppressed += 1;
        }
        notify
    }

    /// Whether the guest has already asked for an interrupt for what was published since the
    /// last one, as far as can be seen without a fence: for a decision in the middle of a run,
    /// after a batch is published, so a guest sleeping on a full ring is woken while the device
    /// still has the rest of the run to do (Linux signals after every `VHOST_NET_BATCH`).
    ///
    /// Never the last word: a `false` may come from a stale `used_event` (or flags), so the
    /// state is left as it was and the fenced [`DeviceQueue::needs_notification`] after the
    /// run's last publish still sees the whole range since the last interrupt. A `true` (to be
    /// followed by signalling) counts as the interrupt for everything published so far.
    ///
    /// Without event indices a guest's cleared `VRING_AVAIL_F_NO_INTERRUPT` says only "I am
    /// waiting", and stays clear until the woken guest sets it again, so one early notification
    /// goes out per wait: the next only once the flag has been seen set again (Linux would
    /// signal after every batch meanwhile, an eventfd write each). The fenced decision still
    /// notifies whenever the flag is clear, as before.
    pub fn needs_notification_early(&mut self, mem: &GuestMemory) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let new = self.published_used;
        let notify = if self.event_idx {
            if self.signalled_used == Some(new) {
                return false;
            }
            // Relaxed atomic, unfenced: see above.
            let ev = mem.load_u16(
                self.avail_off + avail::used_event(self.size) as usize,
                Ordering::Relaxed,
            );
            match (ev, self.signalled_used) {
                (Ok(ev), Some(old)) => layout::need_event(ev, new, old),
                // The first notification, as in `needs_notification_fenced`.
                (Ok(_), None) => true,
                (Err(_), _) => false,
            }
        } else {
            let asked =
                match mem.load_u16(self.avail_off + avail::FLAGS as usize, Ordering::Relaxed) {
                    Ok(flags) => flags & layout::VRING_AVAIL_F_NO_INTERRUPT == 0,
                    Err(_) => false,
                };
            // The guest is awake again: a later request of its own is news.
            self.early_notified &= asked;
            asked && !self.early_notified
        };
        if notify {
            if self.event_idx {
                self.signalled_used = Some(new);
            } else {
                self.early_notified = true;
            }
            self.stats.notifies += 1;
        }
        notify
    }

    /// Asks the guest not to kick while we are polling the ring (Linux `vhost_disable_notify`).
    /// With event indices nothing is written: `avail_event` stays behind, so the guest's
    /// `need_event` test fails until we move it again.
    pub fn disable_notifications(&mut self, mem: &GuestMemory) {
        if self.kicks_disabled {
            return;
        }
        self.kicks_disabled = true;
        if !self.event_idx {
            let _ = mem.store_u16(
                self.used_off + used::FLAGS as usize,
                layout::VRING_USED_F_NO_NOTIFY,
                Ordering::Relaxed,
            );
        }
    }

    /// Asks the guest to kick again, then re-checks the ring (Linux `vhost_enable_notify`).
    /// Returns `Ok(true)` if buffers were published since the device last looked: the caller
    /// must process them instead of sleeping, or that kick is lost.
    pub fn enable_notifications(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        self.check_live()?;
        self.kicks_disabled = false;
        // What we had already seen: only entries published after it are news. (Entries seen but
        // not consumed — RX buffers too few for the next frame — are no reason to look again;
        // the `avail_event` written below asks for a kick for anything newer.)
        let seen = self.avail_idx;
        let wrote = if self.event_idx {
            // Kick me once you publish past what I have already seen.
            // Relaxed atomic stores: the SeqCst fence below orders them before the re-read.
            mem.store_u16(
                self.used_off + used::avail_event(self.size) as usize,
                self.avail_idx,
                Ordering::Relaxed,
            )
        } else {
            mem.store_u16(self.used_off + used::FLAGS as usize, 0, Ordering::Relaxed)
        };
        if let Err(e) = wrote {
            return Err(self.fail(QueueError::BadRing {
                part: "used",
                gpa: 0,
                source: Some(e),
            }));
        }
        // SeqCst fence: closes the lost-kick race. The guest stores `avail.idx`, fences, then
        // reads `avail_event`/`used.flags` to decide whether to kick; we store `avail_event`,
        // fence, then read `avail.idx`. Without a full fence on both sides each could read the
        // other's old value: the guest skips the kick and we go to sleep with work queued.
        fence(Ordering::SeqCst);
        match self.read_avail_idx(mem) {
            Ok(idx) => Ok(idx != seen),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// `avail.idx` as the device last read it.
    pub fn seen_avail(&self) -> u16 {
        self.avail_idx
    }

    /// Index of the next avail entry to consume (`last_avail_idx`).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Index the next used element will get.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }
}
