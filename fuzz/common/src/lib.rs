//! The fuzz targets' inputs, replays and oracles, as a library.
//!
//! Each module is one target of `fuzz/`: the input types (deriving `Arbitrary`), a `replay`
//! that runs one input, and the invariants checked along the way (asserts: a broken one
//! panics). The targets in `fuzz/fuzz_targets/` only call `replay`, so the tests in
//! `fuzz/common/tests/` can run hand-written inputs and every file of the committed corpus
//! through the same code: a crash the fuzzer finds becomes a regression test by copying its
//! bytes into `fuzz/seeds/<target>/`. This is the layout of rust-vmm vm-virtio's
//! `fuzz/common`.

pub mod mem_table;
pub mod net_header;
pub mod virtq_device;
