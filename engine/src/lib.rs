//! The host side of vhostbench: a userspace reimplementation of Linux's vhost-net data path.
//!
//! - [`virtq`]: the device side of the split virtqueue, hardened against a hostile guest.
//! - [`net`]: virtio-net on top of it: feature negotiation, the TX header, RX delivery with
//!   mergeable buffers.
//!
//! Guest memory and the wire layout come from the shared [`vring`] crate, re-exported here as
//! [`memory`] and [`layout`]. The engine never needs privileges: every fd it uses is handed to
//! it.

pub mod net;
pub mod virtq;

pub use vring::layout;
pub use vring::memory;
