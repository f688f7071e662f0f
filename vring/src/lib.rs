//! What the guest driver (`guest-sim`) and the vhost worker (`engine`) share, and nothing else:
//!
//! - [`memory`]: guest memory backed by a memfd, described by a region table of guest-physical
//!   ranges, with bounds-checked volatile access. All of the workspace's `unsafe` that touches
//!   guest memory lives there.
//! - [`layout`]: the split-virtqueue wire layout (virtio 1.2 §2.7): descriptor, avail and used
//!   rings, flags, and the event-index arithmetic.
//! - [`net`]: the virtio-net feature bits and the `virtio_net_hdr_v1` wire layout (§5.1).
//! - [`wiring`]: a device as a list of queue pairs, each queue with its rings and eventfds —
//!   the one wiring type both sides hold.
//!
//! The two sides never call into each other; they meet only in guest memory, through these
//! definitions — the way a real guest kernel and a real vhost worker do.

pub mod frame;
pub mod layout;
pub mod memory;
pub mod net;
pub mod wiring;

pub use memory::{FrontendRegion, GuestMemory, MemError, RegionSpec, Span};
pub use wiring::{Direction, QueuePair, Virtqueue};
