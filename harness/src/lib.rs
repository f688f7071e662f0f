//! vhostbench: the harness that measures the engine and the alternatives side by side.
//!
//! `src/main.rs` is the CLI edge; everything it calls lives here so that tests, benches and
//! later subcommands can use it.
//!
//! - [`cli`]: arguments; [`run`]: the benchmark matrix; [`limits`]: machine ceilings;
//!   [`calibrate`]: the cross-core round trip every result is normalised by.
//! - [`results`]: the results file (schema in `results/SCHEMA.md`); [`stats`]: summaries and
//!   tables; [`host`]: host and build description.
//! - [`pair`]: one device with both sides wired, and one timed run over it.
//! - [`topology`]: network namespaces, taps, bridges, packet sockets, and their clean-up on
//!   every exit path; its `sys` module holds the harness's only `unsafe` (ioctls, setns).
//! - [`pin`]: pinned, named threads; [`padded`]: cache-line padding.

pub mod calibrate;
pub mod cli;
pub mod host;
pub mod limits;
pub mod modes;
pub mod padded;
pub mod pair;
pub mod pin;
pub mod results;
pub mod run;
pub mod stats;
pub mod topology;
