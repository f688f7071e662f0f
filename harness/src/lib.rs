//! vhostbench: the harness that measures the engine and the alternatives side by side.
//!
//! `src/main.rs` is the CLI edge; everything it calls lives here so that tests, benches and
//! later subcommands can use it.
//!
//! - [`cli`]: arguments; [`modes`]: the data paths, one file each ([`modes::Mode`]), and the
//!   selector (`all`, `auto`, a name); [`run`]: the comparison as plan → execute → aggregate →
//!   render; [`ceilings`]: the machine's yardsticks ([`ceilings::Ceiling`]) and their measuring
//!   code; [`calibrate`]: the cross-core round trip every result is normalised by.
//! - [`results`]: the results file (schema in `results/SCHEMA.md`, file I/O, clock, the
//!   document as named benchmarks); [`stats`]: summaries, bootstrap intervals and tables;
//!   [`host`]: host and build description.
//! - [`compare`]: two results files matched configuration by configuration, each metric
//!   judged against a threshold and its confidence intervals (`vhostbench compare`, the CI
//!   gate); [`export`]: a results file as github-action-benchmark or Bencher JSON, Markdown or
//!   CSV (`vhostbench export`).
//! - [`pair`]: one device with both sides wired (on `guest_sim::testbed`), and one timed run
//!   over it.
//! - [`lockstep`]: `run --lockstep`: the guest and the device stepped in turn on one thread,
//!   counts per packet with no noise (instructions by the CPU's counter or callgrind; its
//!   `perf` module holds its `unsafe`).
//! - [`topology`]: network namespaces, taps, bridges, packet sockets, and their clean-up on
//!   every exit path; its `sys` module holds its `unsafe` (ioctls, setns). The tap ceiling's
//!   io_uring writer keeps its own in [`ceilings`].
//! - [`libvirt`]: a libvirt `<interface>` (and `<network>`) mapped to a mode and settings,
//!   with the reasons, what was probed, and what is unused or unsupported
//!   (`vhostbench interface`, `run --interface`).
//! - [`peers`]: real, independent peers — DPDK 22.11's `dpdk-testpmd` with its virtio-user and
//!   vhost PMDs ([`peers::dpdk`]), the hugepages it runs on, and the testpmd ↔ testpmd
//!   yardstick; cleaned up on every exit path like the topology.
//! - `exit` (private): the one panic hook and `vhb-signals` thread every clean-up registers
//!   with; [`out`]: where `run`'s prose goes (stdout, or stderr when stdout carries the
//!   results), and a closed stdout or an interrupt ending a run early with what finished.
//! - [`pin`]: pinned, named threads; [`padded`]: cache-line padding.

pub mod calibrate;
pub mod ceilings;
pub mod cli;
pub mod compare;
mod exit;
pub mod export;
pub mod host;
pub mod libvirt;
pub mod lockstep;
pub mod modes;
pub mod out;
pub mod padded;
pub mod pair;
pub mod peers;
pub mod pin;
pub mod results;
pub mod run;
pub mod serve;
pub mod stats;
pub mod testing;
pub mod topology;
