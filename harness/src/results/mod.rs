//! The results file (schema version 2; documented field by field in `results/SCHEMA.md`).
//!
//! One JSON document per invocation: what was run (`config`), where (`host`), from which
//! source (`git_revision`), the machine's yardsticks measured in the same run (`calibration`,
//! `limits`), and one [`Record`] per (mode, workload, size, busy-poll setting) with min /
//! median / max over repeats, the 95% bootstrap interval of each median, and the raw
//! per-repeat values.
//!
//! - `schema`: the serde types, and the summaries and ratios computed from them; nothing here
//!   measures, so a tool that compares or reports on files reads them with these alone.
//! - `lockstep`: the types of the `lockstep` list (`run --lockstep`: counts per packet with
//!   no noise).
//! - `io`: reading and writing files, the workspace's `results/` directory.
//! - `clock`: the UTC timestamp of a run.
//! - [`benchmarks`]: a document as named benchmarks (one per configuration) and their metrics,
//!   what `compare` matches and the exports publish.

pub mod benchmarks;
mod clock;
mod io;
mod lockstep;
pub(crate) mod schema;

pub use clock::UtcTime;
pub use io::{default_results_path, read_results, workspace_root, write_results, Destination};
pub use lockstep::{label as lockstep_label, Counter, InstructionsPerPacket, LockstepRecord};
pub use schema::{
    gbps, placement_changed, CalibrationRecord, CpuNsPerPacket, FailedCombination, LimitResult,
    PctOfCeiling, Record, RepeatValues, Results, Workload, PLACEMENT_CHANGE_RATIO,
    READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, TOOL, UNIT_MPPS, UNIT_NS,
};
