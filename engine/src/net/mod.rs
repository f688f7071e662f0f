//! virtio-net device logic on top of [`crate::virtq`].
//!
//! - [`device`]: feature negotiation as a set.
//! - [`header`]: the TX side: a chain → its `virtio_net_hdr_v1` and frame segments.
//! - [`rx`]: the RX side: a frame → one or more guest chains (mergeable buffers).
//! - [`tx`]: one TX batch: pop, parse, return with one `used.idx` store.

pub mod device;
pub mod header;
pub mod rx;
pub mod tx;

pub use vring::net::{bit, FeatureError, Features, VirtioNetHdr};
