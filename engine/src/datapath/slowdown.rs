//! A deliberate per-packet slowdown, for testing the gate that should catch one: with the
//! cargo feature `test-slowdown` (off by default, never part of a build that is measured for
//! its own sake), the TX and RX handlers do [`TEST_SLOWDOWN_ITERATIONS`] iterations of an
//! opaque loop for every packet they move. Without the feature the hook is empty and
//! compiles to nothing.

/// Loop iterations added per packet (0 without the feature `test-slowdown`).
pub const TEST_SLOWDOWN_ITERATIONS: u64 = if cfg!(feature = "test-slowdown") {
    64
} else {
    0
};

/// The slowdown for `packets` packets: a loop the optimiser can neither remove (each counter
/// value passes through `black_box`) nor unroll (its length is opaque too), so every call
/// site runs the same four instructions per iteration (store, add, compare, branch).
#[inline(always)]
pub(crate) fn per_packets(packets: u64) {
    #[cfg(feature = "test-slowdown")]
    for i in 0..std::hint::black_box(packets * TEST_SLOWDOWN_ITERATIONS) {
        std::hint::black_box(i);
    }
    #[cfg(not(feature = "test-slowdown"))]
    let _ = packets;
}
