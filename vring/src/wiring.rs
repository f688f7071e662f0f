//! How a device is wired to its driver, queue pair by queue pair: what `VHOST_SET_VRING_ADDR`,
//! `_SET_VRING_KICK` and `_SET_VRING_CALL` hand a vhost device, and what the driver keeps of the
//! same queues. Both sides hold the same type, each with its own handles to the two eventfds of
//! a queue (the guest writes `kick` and waits on `call`; the device the other way round).
//!
//! A virtio-net device is a list of [`QueuePair`]s: queue `2n` is receive queue `n`, queue
//! `2n + 1` transmit queue `n` (virtio 1.2 §5.1.2). Nothing here assumes there is only one.

use std::fs::File;

use crate::layout::QueueAddrs;

/// One virtqueue: where its rings are in guest memory and its two eventfds.
#[derive(Debug)]
pub struct Virtqueue {
    /// The rings' guest-physical addresses and size.
    pub addrs: QueueAddrs,
    /// Written by the driver when it makes buffers available (and the device asked).
    pub kick: File,
    /// Written by the device when it has used buffers (and the driver asked).
    pub call: File,
    /// The avail index the device starts at: 0 for a fresh ring, or what a vhost-user
    /// frontend sends in `SET_VRING_BASE` (where a previous device stopped).
    pub base: u16,
}

/// A receive queue and a transmit queue, the unit of a virtio-net device's data path.
#[derive(Debug)]
pub struct QueuePair {
    /// Receive queue (host → guest), virtio-net queue `2n`.
    pub rx: Virtqueue,
    /// Transmit queue (guest → host), virtio-net queue `2n + 1`.
    pub tx: Virtqueue,
}

/// Which queue of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Host → guest.
    Rx,
    /// Guest → host.
    Tx,
}

impl Direction {
    /// `rx` or `tx`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
        }
    }
}

impl QueuePair {
    /// The virtio-net queue index of `dir` in pair `pair`.
    pub fn queue_index(pair: usize, dir: Direction) -> usize {
        2 * pair
            + match dir {
                Direction::Rx => 0,
                Direction::Tx => 1,
            }
    }

    /// The queue of `dir`.
    pub fn queue(&self, dir: Direction) -> &Virtqueue {
        match dir {
            Direction::Rx => &self.rx,
            Direction::Tx => &self.tx,
        }
    }

    /// Splits a list of queues in virtio-net order (RX 0, TX 0, RX 1, TX 1, …) into pairs,
    /// with `wire` giving each queue its eventfds. `None` if the count is odd.
    pub fn from_queues<E>(
        queues: &[QueueAddrs],
        mut wire: impl FnMut(QueueAddrs) -> Result<Virtqueue, E>,
    ) -> Option<Result<Vec<QueuePair>, E>> {
        if !queues.len().is_multiple_of(2) {
            return None;
        }
        Some(
            queues
                .chunks_exact(2)
                .map(|q| {
                    Ok(QueuePair {
                        rx: wire(q[0])?,
                        tx: wire(q[1])?,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_indices_follow_virtio_net() {
        assert_eq!(QueuePair::queue_index(0, Direction::Rx), 0);
        assert_eq!(QueuePair::queue_index(0, Direction::Tx), 1);
        assert_eq!(QueuePair::queue_index(3, Direction::Rx), 6);
        assert_eq!(QueuePair::queue_index(3, Direction::Tx), 7);
    }
}
