//! The device side of the virtio split virtqueue.
//!
//! - [`split`]: [`DeviceQueue`] — avail/used rings, batching, notification suppression.
//! - [`chain`]: walking one descriptor chain (direct, `NEXT`-linked, indirect) into segments.
//! - [`error`]: what a hostile guest can do, as [`QueueError`] / [`ErrorKind`].
//! - [`state`]: where a queue stands, as a value ([`QueueState`]: `SET/GET_VRING_BASE`).

pub mod chain;
pub mod error;
pub mod split;
pub mod state;

pub use chain::{Chain, MAX_SEGMENTS};
pub use error::{ErrorKind, QueueError};
pub use split::{DeviceQueue, QueueStats};
pub use state::QueueState;

#[cfg(test)]
mod hostile_tests;
