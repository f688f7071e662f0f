//! A split queue's state as a value (rust-vmm `virtio-queue`'s `QueueState`): what a
//! vhost-user frontend gives when it starts a queue and gets back when it stops one.
//!
//! - `VHOST_USER_SET_VRING_NUM` / `SET_VRING_ADDR`: [`QueueState::addrs`] (ring addresses come
//!   as frontend addresses; `GuestMemory::va_to_gpa` turns them into guest-physical ones).
//! - `VHOST_USER_SET_VRING_BASE`: [`QueueState::next_avail`], the avail index the device takes
//!   next (`last_avail_idx`). With a split ring that is all the base says: the device takes
//!   its used index from `used.idx` in guest memory, where the ring's last user left it (Linux
//!   `vhost_vq_init_access` reads `used->idx` into `last_used_idx`).
//! - `VHOST_USER_GET_VRING_BASE`: the queue stops ([`crate::virtq::DeviceQueue::stop`]) and
//!   its `next_avail` goes back to the frontend, which starts the next device from it — after
//!   a reconnect, on the destination of a migration.
//!
//! Chains the device popped and has not returned when it stops are past `next_avail` but not
//! in the used ring: the guest never gets them back. Return them (or give RX buffers back with
//! `unpop`) before stopping, as vhost-net flushes its queues before answering
//! `GET_VRING_BASE`; [`crate::virtq::DeviceQueue::in_flight`] says how many there are.

use vring::layout::QueueAddrs;

/// Where a split queue is and where the device stands in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Size and ring addresses (guest-physical).
    pub addrs: QueueAddrs,
    /// The next avail-ring entry the device consumes: the `num` of `SET_VRING_BASE` and
    /// `GET_VRING_BASE`.
    pub next_avail: u16,
}

impl QueueState {
    /// A queue at `addrs` that no device has used yet: base 0.
    pub fn new(addrs: QueueAddrs) -> QueueState {
        QueueState {
            addrs,
            next_avail: 0,
        }
    }
}
