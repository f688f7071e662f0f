//! The host side of vhostbench: a userspace reimplementation of Linux's vhost-net data path.
//!
//! - [`virtq`]: the device side of the split virtqueue, hardened against a hostile guest.
//! - [`net`]: virtio-net on top of it: feature negotiation, the TX header, RX delivery with
//!   mergeable buffers.
//! - [`device`]: a device as its data paths see it: guest memory, features and a list of queue
//!   pairs ([`device::DeviceSpec`]); the running device and its report.
//! - [`datapath`]: one queue pair's TX/RX work ([`datapath::NetQueuePair`]), with no thread.
//! - [`worker`]: the vhost worker thread (`vhost-<dev>`) serving a device's pairs: io_uring
//!   kick waits, batching, weights, busy polling, notification suppression.
//! - [`backend`]: where frames go ([`backend::Backend`]); [`backend::null`] is the engine alone,
//!   [`backend::tap`] a tun/tap device through io_uring.
//! - [`emulated`]: the QEMU-style userspace virtio-net event loop (epoll, a syscall per frame),
//!   the baseline the worker is compared with.
//! - [`metrics`]: per-device counters, drops by reason, queue errors.
//! - [`sys`]: eventfds, thread CPU time, pinning.
//!
//! Guest memory and the wire layout come from the shared [`vring`] crate, re-exported here as
//! [`memory`] and [`layout`]. The engine never needs privileges: every fd it uses is handed to
//! it.

pub mod backend;
pub mod datapath;
pub mod device;
pub mod emulated;
pub mod metrics;
pub mod net;
pub mod sys;
pub mod vhost_user;
pub mod virtq;
pub mod worker;

pub use vring::layout;
pub use vring::memory;
