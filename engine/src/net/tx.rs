//! One TX batch (Linux `handle_tx_copy`'s inner loop): pop up to `VHOST_NET_BATCH` chains,
//! check their shape, hand them to the backend, return them all with one `used.idx` store.
//!
//! Kept apart from the worker so benches and tests can drive the exact per-packet path the
//! worker runs, single-threaded against a simulated driver.

use vring::GuestMemory;

use super::header::check_tx;
use crate::backend::tx_frame_len;
use crate::virtq::{Chain, DeviceQueue, QueueError};

/// Reusable storage for one batch of TX chains.
#[derive(Debug)]
pub struct TxBatch {
    chains: Vec<Chain>,
    len: usize,
}

impl TxBatch {
    /// Room for `max` chains.
    pub fn new(max: usize) -> Self {
        TxBatch {
            chains: (0..max).map(|_| Chain::with_capacity(8)).collect(),
            len: 0,
        }
    }

    /// Most chains a batch holds.
    pub fn capacity(&self) -> usize {
        self.chains.len()
    }

    /// Pops up to `max` chains (at most [`TxBatch::capacity`]) and checks each is a TX chain
    /// ([`check_tx`]). The chains popped before a malformed one stay in the batch and the error
    /// is returned with them: they are good frames and must still be sent and returned. The
    /// malformed chain itself is not returnable (the queue is broken).
    ///
    /// While walking, the first cache line of each frame is prefetched: the guest has just
    /// written it, so it sits in the guest's cache, and asking for a whole batch of them before
    /// the backend reads any overlaps the transfers instead of taking them one at a time.
    #[inline]
    pub fn pop(
        &mut self,
        q: &mut DeviceQueue,
        mem: &GuestMemory,
        max: usize,
    ) -> Option<QueueError> {
        let max = max.min(self.chains.len());
        let (n, failed) = q.pop_batch(mem, &mut self.chains[..max], |c| {
            check_tx(c)?;
            if let Some(s) = c.readable().first() {
                mem.prefetch(s.off);
            }
            Ok(())
        });
        self.len = n;
        failed
    }

    /// Chains in the batch.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The popped chains.
    #[inline]
    pub fn chains(&self) -> &[Chain] {
        &self.chains[..self.len]
    }

    /// Frame bytes (headers excluded) in the batch.
    pub fn bytes(&self) -> u64 {
        self.chains().iter().map(|c| tx_frame_len(c) as u64).sum()
    }

    /// Returns every chain of the batch to the guest (TX buffers are device-readable: used
    /// length 0) and publishes `used.idx` once. With `VIRTIO_F_IN_ORDER` that is one used
    /// element for the whole batch.
    #[inline]
    pub fn complete(&self, q: &mut DeviceQueue, mem: &GuestMemory) -> Result<(), QueueError> {
        q.add_used_batch(mem, self.chains().iter().map(Chain::head), 0)?;
        q.publish_used(mem)
    }
}
