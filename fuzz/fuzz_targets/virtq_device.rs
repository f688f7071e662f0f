#![no_main]
//! The device side of a split virtqueue against a hostile guest.
//!
//! The input (`fuzz_common::virtq_device::Input`) picks a queue size, the features, where the
//! rings go, what the guest writes and a sequence of device operations; the replay checks the
//! chains, the index bookkeeping, the used elements and the broken state after every one. The
//! input types, the replay and the oracles live in `fuzz/common` (`virtq_device`), where the
//! regression tests replay the same inputs.

use libfuzzer_sys::fuzz_target;

use fuzz_common::virtq_device::{replay, Input};

fuzz_target!(|input: Input| {
    replay(&input);
});
