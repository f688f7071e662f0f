//! Peers: real, independent implementations of the other end of a virtio device, run beside
//! the harness's own so that both ends can be checked against something that is not ours.
//!
//! - [`dpdk`]: DPDK 22.11's `dpdk-testpmd` from the Debian packages, with its virtio-user PMD
//!   (a virtio driver, the guest side) and its vhost PMD (a vhost-user back end, the host
//!   side), the hugepages it needs, and a testpmd ↔ testpmd yardstick.
//!
//! The private `sys` module holds the peers' `unsafe` (`flock`, `kill`, `prctl`).

pub mod dpdk;
pub mod pairings;
mod sys;
