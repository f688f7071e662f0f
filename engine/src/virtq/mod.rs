//! The device side of the virtio split virtqueue.
//!
//! - [`split`]: [`DeviceQueue`] — avail/used rings, batching, notification suppression.
//! - [`chain`]: walking one descriptor chain (direct, `NEXT`-linked, indirect) into segments.
//! - [`error`]: what a hostile guest can do, as [`QueueError`] / [`ErrorKind`].

pub mod chain;
pub mod error;
pub mod split;

pub use chain::{Chain, MAX_SEGMENTS};
pub use error::{ErrorKind, QueueError};
pub use split::{DeviceQueue, QueueStats};

#[cfg(test)]
mod hostile_tests;
