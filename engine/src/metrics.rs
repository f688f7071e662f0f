//! Counters of one device, shared between its worker (which adds, once per batch) and the
//! harness (which reads). Relaxed atomics: each counter is independent, and readers only need
//! eventually-consistent totals (Firecracker's `net/metrics.rs` does the same).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::virtq::ErrorKind;

/// Why a packet was dropped. Every packet is delivered or counted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// The backend could not take a transmitted frame (queue full, `EAGAIN`, `ENOBUFS`).
    BackendFull,
    /// The backend failed to transmit a frame (an I/O error other than a full queue).
    BackendError,
    /// A received frame was larger than the guest's buffer and mergeable buffers are off.
    RxTooLarge,
    /// A frame was lost because its queue broke (hostile or buggy guest).
    QueueBroken,
    /// A transmitted frame failed the backend's content check (corrupted on the way).
    Corrupt,
    /// A frame the device held (read, waiting for guest buffers) when it was stopped.
    Stopped,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = DropReason::Stopped as usize + 1;
    /// All reasons, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::BackendFull,
        DropReason::BackendError,
        DropReason::RxTooLarge,
        DropReason::QueueBroken,
        DropReason::Corrupt,
        DropReason::Stopped,
    ];
    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::BackendFull => "backend_full",
            DropReason::BackendError => "backend_error",
            DropReason::RxTooLarge => "rx_too_large",
            DropReason::QueueBroken => "queue_broken",
            DropReason::Corrupt => "corrupt",
            DropReason::Stopped => "held_at_stop",
        }
    }
}

/// Counters of one queue direction.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Frames moved (TX: handed to the backend; RX: delivered to the guest).
    pub packets: AtomicU64,
    /// Frame bytes moved, virtio-net header excluded.
    pub bytes: AtomicU64,
    /// Descriptor chains used.
    pub chains: AtomicU64,
    /// Backend submissions (batches of up to `VHOST_NET_BATCH` frames).
    pub batches: AtomicU64,
    /// Kicks received from the guest (completed kick-eventfd reads; one read may absorb
    /// several writes).
    pub kicks: AtomicU64,
    /// Interrupts sent to the guest (call-eventfd writes).
    pub calls: AtomicU64,
    /// Interrupts the guest's event index / flags suppressed.
    pub calls_suppressed: AtomicU64,
    /// Times the handler stopped on the packet/byte weight and requeued itself.
    pub weight_exhausted: AtomicU64,
}

/// Counters of one device.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Guest → host.
    pub tx: QueueMetrics,
    /// Host → guest.
    pub rx: QueueMetrics,
    /// Times the worker went to sleep in io_uring and woke up again.
    pub wakeups: AtomicU64,
    /// Busy-poll loop iterations.
    pub busy_poll_spins: AtomicU64,
    /// Busy-poll windows that found work before they ran out.
    pub busy_poll_hits: AtomicU64,
    /// io_uring submissions (`io_uring_enter` calls that submitted or waited).
    pub uring_submits: AtomicU64,
    /// Dropped packets, by [`DropReason`].
    pub drops: [AtomicU64; DropReason::COUNT],
    /// Queue errors, by [`ErrorKind`] (TX and RX together).
    pub queue_errors: [AtomicU64; ErrorKind::COUNT],
    /// The worker thread's CPU time so far, ns (refreshed every 64 sleeps, and when it stops).
    pub worker_cpu_ns: AtomicU64,
}

/// Adds `n` to a counter. Each counter has a single writer, the device's own thread (worker or
/// emulated loop); others only read. So this is a plain load and store, not a `fetch_add`: on
/// x86 a locked add is a full barrier that waits for every store before it — guest-memory
/// stores included — to reach the other core, which put a cross-core round trip in the middle
/// of each RX delivery.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        // Relaxed: counters are independent totals, read for reporting only.
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// Reads a counter.
#[inline]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl DeviceMetrics {
    /// Counts `n` drops for `why`.
    #[inline]
    pub fn drop_packets(&self, why: DropReason, n: u64) {
        add(&self.drops[why as usize], n);
    }

    /// Total drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(get).sum()
    }

    /// Non-zero drop counters by name.
    pub fn drops_by_reason(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), get(&self.drops[*r as usize])))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Non-zero queue-error counters by name.
    pub fn queue_errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        ErrorKind::ALL
            .iter()
            .map(|k| (k.name(), get(&self.queue_errors[*k as usize])))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
