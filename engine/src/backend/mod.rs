//! Where frames go after the virtqueue: the backend of a vhost device (`VHOST_NET_SET_BACKEND`).
//!
//! A backend implements a narrow trait: send a batch of guest frames, and on the receive side
//! say how long the next frame is and write it into guest buffers. Hooks a backend may not need
//! have default bodies.

pub mod af_xdp;
pub mod frames;
pub mod null;
pub mod packet;
pub mod tap;

use std::os::fd::BorrowedFd;

use vring::{GuestMemory, Span};

use crate::metrics::DropReason;
use crate::virtq::Chain;

/// Backend failures that stop the device (not per-frame drops, which are counted).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// An I/O call failed in a way that is not a per-frame drop.
    #[error("backend i/o failed")]
    Io(#[from] std::io::Error),
    /// Guest memory could not be accessed.
    #[error("guest memory")]
    Memory(#[from] vring::MemError),
}

/// What happened to TX frames: counts a backend adds to as it sends (the worker keeps one for a
/// whole round and adds it to the shared counters once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxResult {
    /// Frames the backend took.
    pub sent: u64,
    /// Frame bytes (header excluded) the backend took.
    pub bytes: u64,
    /// Frames dropped, by [`DropReason`].
    pub dropped: [u64; DropReason::COUNT],
}

impl TxResult {
    /// Frames accounted for: sent or dropped.
    pub fn frames(&self) -> u64 {
        self.sent + self.dropped.iter().sum::<u64>()
    }

    /// Counts one drop.
    #[inline]
    pub fn drop_one(&mut self, why: DropReason) {
        self.dropped[why as usize] += 1;
    }
}

/// Frame bytes of a checked TX chain: its readable part minus the virtio-net header.
#[inline]
pub fn tx_frame_len(chain: &Chain) -> u32 {
    chain
        .readable_len()
        .saturating_sub(vring::net::VirtioNetHdr::SIZE as u32)
}

/// A vhost-net backend.
pub trait Backend: Send {
    /// Short name, for reports.
    fn name(&self) -> &'static str;

    /// Transmits a batch. Each chain's readable part is the 12-byte virtio-net header and then
    /// the frame (checked by [`crate::net::header::check_tx`]: no writable part, at least a
    /// header; [`tx_frame_len`] is the frame's length). Parsing the header is the backend's
    /// business, as in Linux, where vhost-net hands the chain to tun and tun reads the header.
    /// Every frame must be added to `out` as sent or as a counted drop, on `Err` too (`out`
    /// holds earlier batches' counts: add, do not overwrite).
    fn send(
        &mut self,
        mem: &GuestMemory,
        chains: &[Chain],
        out: &mut TxResult,
    ) -> Result<(), BackendError>;

    /// Length in bytes, virtio-net header included, of the next frame for the guest, if one is
    /// ready now (Linux `peek_head_len`).
    fn rx_peek(&mut self) -> Option<usize> {
        None
    }

    /// Writes the next frame, header first, into `iov`, and returns the bytes written.
    fn rx_recv(&mut self, _mem: &GuestMemory, _iov: &[Span]) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Discards the next frame (it cannot fit the guest's buffers). Returns whether a frame
    /// was really there to discard (only those count as drops).
    fn rx_discard(&mut self) -> bool {
        false
    }

    /// The worker saw [`Backend::rx_fd`] become readable: frames may be waiting again.
    fn rx_wake(&mut self) {}

    /// The backend's own counters, by name (reported when the worker stops).
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A file descriptor that becomes readable when RX frames arrive from outside the worker
    /// (a tap or socket). `None`: RX readiness only changes when the worker itself acts.
    fn rx_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}
