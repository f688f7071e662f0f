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
pub mod vhost_msgs;
pub mod virtq_device;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held by a test while it replays inputs whose oracles look at the whole process
/// (`vhost_msgs` counts its open files): tests run in parallel threads of one process, and a
/// file another test opens meanwhile would look like a leak. A fuzz target runs one input at a
/// time and needs nothing.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed holding it poisoned it; the others still run one at a time.
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}
