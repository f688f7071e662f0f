#![no_main]
//! Guest memory from a hostile vhost-user memory table.
//!
//! The input (`fuzz_common::mem_table::Input`) is a table of regions — guest-physical address,
//! size, frontend address, file and offset — and probes; the replay builds memory from it with
//! `GuestMemory::from_frontend` and checks acceptance, translation (one region, across regions,
//! frontend addresses) and the bytes against a model of its own. The input types, the replay
//! and the oracles live in `fuzz/common` (`mem_table`), where the regression tests replay the
//! same inputs.

use libfuzzer_sys::fuzz_target;

use fuzz_common::mem_table::{replay, Input};

fuzz_target!(|input: Input| {
    replay(&input);
});
