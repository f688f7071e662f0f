//! A virtio-net device as its data paths see it: what the driver set up ([`DeviceSpec`]: guest
//! memory, negotiated features, a list of queue pairs), the running device ([`Device`]: a
//! thread serving those pairs, the vhost worker's or the emulated event loop's), and what it
//! reports when stopped ([`DeviceReport`]).

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vring::net::Features;
use vring::{Direction, GuestMemory, QueuePair};

use crate::metrics::DeviceMetrics;
use crate::sys;
use crate::virtq::{ErrorKind, QueueError};

/// What the driver set up, handed to the device (`VHOST_SET_MEM_TABLE`, `SET_FEATURES`, and
/// per queue `_SET_VRING_ADDR`, `_SET_VRING_KICK`, `_SET_VRING_CALL`).
#[derive(Debug)]
pub struct DeviceSpec {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// Negotiated features.
    pub features: Features,
    /// The queue pairs, pair `n` holding virtio-net queues `2n` (RX) and `2n + 1` (TX).
    pub pairs: Vec<QueuePair>,
}

impl DeviceSpec {
    /// Checks there is at least one pair and `given` (backends, taps, …) is one per pair.
    pub(crate) fn check_pairs(
        &self,
        given: usize,
        one_per_pair: &'static str,
    ) -> Result<(), DeviceError> {
        if self.pairs.is_empty() {
            return Err(DeviceError::Config(
                "a device needs at least one queue pair",
            ));
        }
        if given != self.pairs.len() {
            return Err(DeviceError::Config(one_per_pair));
        }
        Ok(())
    }
}

/// Device setup failures.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A queue's rings are unusable from the start.
    #[error("queue setup")]
    Queue(#[from] QueueError),
    /// io_uring, epoll, eventfd or thread setup failed.
    #[error("device setup")]
    Io(#[from] std::io::Error),
    /// Bad configuration.
    #[error("bad device config: {0}")]
    Config(&'static str),
}

/// The error that broke one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueFailure {
    /// Which pair.
    pub pair: usize,
    /// Which queue of the pair.
    pub dir: Direction,
    /// What kind of guest error (the counter it was added to).
    pub kind: ErrorKind,
    /// The error, as text.
    pub message: String,
}

impl std::fmt::Display for QueueFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} queue {}: {}",
            self.dir.name(),
            self.pair,
            self.message
        )
    }
}

/// What a stopped device reports.
#[derive(Debug, Default)]
pub struct DeviceReport {
    /// The first error of each queue that broke, in the order they broke.
    pub queue_failures: Vec<QueueFailure>,
    /// A backend or event-loop failure that stopped the device early, if any.
    pub fatal: Option<String>,
    /// The device thread's CPU time, ns.
    pub cpu_ns: u64,
    /// The backends' own counters (for example the null sink's order checks), summed over
    /// the pairs by name.
    pub backend_stats: Vec<(&'static str, u64)>,
    /// Where each queue stopped, by queue index (RX `2n`, TX `2n + 1`): the avail index the
    /// device would have taken next (`GET_VRING_BASE`). Empty for a device that does not
    /// say (the emulated loop).
    pub stopped_at: Vec<u16>,
}

impl DeviceReport {
    /// The first failure of a queue in direction `dir`, any pair.
    pub fn failure(&self, dir: Direction) -> Option<&QueueFailure> {
        self.queue_failures.iter().find(|f| f.dir == dir)
    }

    /// Records the error that broke queue `dir` of `pair`, unless that queue already has one;
    /// true if it was recorded.
    pub fn queue_failed(&mut self, pair: usize, dir: Direction, e: &QueueError) -> bool {
        let known = self
            .queue_failures
            .iter()
            .any(|f| f.pair == pair && f.dir == dir);
        if !known {
            self.queue_failures.push(QueueFailure {
                pair,
                dir,
                kind: e.kind(),
                message: e.to_string(),
            });
        }
        !known
    }

    /// Adds a backend's counters to [`DeviceReport::backend_stats`], summing same-named ones.
    pub fn add_backend_stats(&mut self, stats: Vec<(&'static str, u64)>) {
        for (name, n) in stats {
            match self.backend_stats.iter_mut().find(|(k, _)| *k == name) {
                Some((_, v)) => *v += n,
                None => self.backend_stats.push((name, n)),
            }
        }
    }
}

/// A running device: its thread, and how to stop it.
#[derive(Debug)]
pub struct Device {
    thread: Option<JoinHandle<DeviceReport>>,
    stop: Arc<AtomicBool>,
    stop_fd: File,
    metrics: Arc<DeviceMetrics>,
}

impl Device {
    /// Wraps a device thread: on stop, `stop` is set and `stop_fd` signalled, and the thread's
    /// report is collected.
    pub(crate) fn from_parts(
        thread: JoinHandle<DeviceReport>,
        stop: Arc<AtomicBool>,
        stop_fd: File,
        metrics: Arc<DeviceMetrics>,
    ) -> Device {
        Device {
            thread: Some(thread),
            stop,
            stop_fd,
            metrics,
        }
    }

    /// The device's live counters.
    pub fn metrics(&self) -> &Arc<DeviceMetrics> {
        &self.metrics
    }

    /// Stops the device and waits for it.
    pub fn stop(mut self) -> DeviceReport {
        self.shutdown()
    }

    fn shutdown(&mut self) -> DeviceReport {
        self.stop.store(true, Ordering::Release);
        let _ = sys::signal(&self.stop_fd);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => DeviceReport {
                fatal: Some("device thread panicked".into()),
                ..Default::default()
            },
            None => DeviceReport::default(),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Renders an error and its chain of causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
