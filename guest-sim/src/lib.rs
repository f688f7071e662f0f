//! The guest side of vhostbench: what a VM's virtio-net driver does, without a VM.
//!
//! - [`clock`]: the clock round trips are timed with (here and in the harness's ceilings).
//! - [`driver`]: the driver side of the split virtqueue ([`driver::DriverQueue`]).
//! - [`traffic`]: the `tx`, `rx` and `rr` workloads a vCPU runs on a device's queues.
//! - [`testbed`]: one device wired both ways (memory, queue pairs, eventfds, buffers): the
//!   device's half and each vCPU's half.
//! - [`vhost_user`]: the frontend's side of vhost-user, so any vhost-user backend can serve a
//!   testbed's queues.
//! - [`mock`]: guest memory with queues and a buffer arena; raw ring writers for playing a
//!   hostile guest in tests, benches and the fuzzer.
//!
//! No `unsafe` here: guest memory is reached through [`vring`]'s checked accessors only.
//!
//! It shares only [`vring`] (memory and wire layout) with the engine, never its internals.

#![forbid(unsafe_code)]

pub mod clock;
pub mod driver;
pub mod mock;
pub mod testbed;
pub mod traffic;
pub mod vhost_user;

pub use driver::{Buf, DriverError, DriverQueue, FreeOrder};
pub use mock::MockGuest;
