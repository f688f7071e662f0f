#![no_main]
//! The virtio-net header codec and feature negotiation.
//!
//! Every 12-byte window of the input must survive `VirtioNetHdr` decode and encode unchanged,
//! and the input read as feature pairs must negotiate to exactly what was acked or fail with
//! the right error. The replay and its oracles live in `fuzz/common` (`net_header`), where the
//! regression tests replay the same bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_common::net_header::replay(data);
});
